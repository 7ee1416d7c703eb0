#![no_main]
//! See `noodle_fuzz_targets::join_token`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| noodle_fuzz_targets::join_token(data));
