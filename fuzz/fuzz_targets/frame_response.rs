#![no_main]
//! See `noodle_fuzz_targets::frame_response`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| noodle_fuzz_targets::frame_response(data));
