#![no_main]
//! See `noodle_fuzz_targets::control_records`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| noodle_fuzz_targets::control_records(data));
