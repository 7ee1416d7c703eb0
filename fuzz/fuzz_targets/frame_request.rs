#![no_main]
//! See `noodle_fuzz_targets::frame_request`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| noodle_fuzz_targets::frame_request(data));
