#![no_main]
//! Cluster policies as an operator types them: parse any text, and run what parses against a
//! real token.
use noodle_caps::{Authoriser, Context, Policy, Request, RootKey, TokenSpec, mint_at};
use std::sync::LazyLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

fn now() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_800_000_000)
}

static SETUP: LazyLock<(Authoriser, String)> = LazyLock::new(|| {
    let root = RootKey::from_bytes(&[7; 32]).expect("fixed key bytes are valid");
    let spec = TokenSpec {
        rights: vec!["config:read".parse().expect("valid right"), "fabric:read:/d/".parse().expect("valid right")],
        quotas: vec!["cpus=4".parse().expect("valid quota")],
        ttl: Duration::from_secs(3600),
        holder: Some("fuzz".to_string()),
    };
    let token = mint_at(&root, &spec, now()).expect("minting a fixed spec works");
    (Authoriser::new(root.public()), token)
});

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Ok(source) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(policy) = Policy::parse("fuzz", source) {
        let (auth, token) = &*SETUP;
        let policies = [policy];
        let ctx = Context::new(now()).with_policies(&policies);
        for req in [Request::new("config", "read"), Request::new("fabric", "read").on("/d/x")] {
            let _ = auth.authorise(token, &req, &ctx);
        }
    }
});
