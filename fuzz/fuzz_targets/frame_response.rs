#![no_main]
//! Response frames as a caller reads them.
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = noodle_link::frame::decode_response(data);
});
