#![no_main]
//! See `noodle_fuzz_targets::membership_packet`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| noodle_fuzz_targets::membership_packet(data));
