#![no_main]
//! Capability tokens as callers present them: any text through the authoriser and inspect, and
//! any bytes as a token's binary form (base64-encoded here, so the fuzzer reaches the decoder).
use base64::Engine;
use noodle_caps::{Authoriser, Context, Request, RootKey, inspect};
use std::sync::LazyLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

static AUTH: LazyLock<Authoriser> = LazyLock::new(|| {
    let root = RootKey::from_bytes(&[7; 32]).expect("fixed key bytes are valid");
    Authoriser::new(root.public())
});

fn now() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_800_000_000)
}

fn check(token: &str) {
    let req = Request::new("fabric", "read").on("/datasets/x");
    let _ = AUTH.authorise(token, &req, &Context::new(now()));
    if let Ok(inspection) = inspect(token) {
        let _ = inspection.explain_at(now());
        let _ = noodle_caps::attenuate_at(token, &inspection.effective_rights, None, now());
    }
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        check(text);
    }
    check(&base64::engine::general_purpose::URL_SAFE.encode(data));
});
