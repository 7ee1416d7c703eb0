#![no_main]
//! See `noodle_fuzz_targets::cap_token`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| noodle_fuzz_targets::cap_token(data));
