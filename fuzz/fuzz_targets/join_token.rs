#![no_main]
//! Join tokens as a user pastes them.
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(token) = noodle_security::JoinToken::decode(text) {
            assert_eq!(noodle_security::JoinToken::decode(&token.encode()), Ok(token));
        }
    }
});
