#![no_main]
//! Job output as `noodle run` reads it from the node: a stream of frames.
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let mut rest = data;
    while let Ok(Some((kind, payload, used))) = noodle_api::output_frame::decode(rest) {
        assert!(used >= noodle_api::output_frame::HEADER_BYTES);
        assert_eq!(used, noodle_api::output_frame::HEADER_BYTES + payload.len());
        let mut again = Vec::new();
        noodle_api::output_frame::encode(kind, payload, &mut again);
        assert_eq!(&again[..], &rest[..used]);
        rest = &rest[used..];
    }
});
