#![no_main]
//! Request frames as a member's stream delivers them.
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok((header, body)) = noodle_link::frame::decode_request(data) {
        let again = noodle_link::frame::encode_request(&header.method, header.deadline_ms, body);
        assert_eq!(noodle_link::frame::decode_request(&again).map(|(h, b)| (h, b.to_vec())), Ok((header, body.to_vec())));
    }
});
