#![no_main]
//! See `noodle_fuzz_targets::job_output_frames`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| noodle_fuzz_targets::job_output_frames(data));
