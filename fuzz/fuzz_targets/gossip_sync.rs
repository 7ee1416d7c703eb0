#![no_main]
//! See `noodle_fuzz_targets::gossip_sync`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| noodle_fuzz_targets::gossip_sync(data));
