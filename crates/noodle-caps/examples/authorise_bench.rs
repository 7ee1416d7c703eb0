//! Authorisations per second on one core, for a typical token (run with `--release`):
//! `cargo run --release -p noodle-caps --example authorise_bench`.
#![allow(clippy::unwrap_used)]

use noodle_caps::{
    Authoriser, Context, Policy, Quota, Request, RootKey, TokenSpec, attenuate, mint,
};
use std::collections::HashSet;
use std::time::{Duration, Instant, SystemTime};

fn main() {
    let root = RootKey::generate();
    let auth = Authoriser::new(root.public());
    let token = mint(
        &root,
        &TokenSpec {
            rights: ["config:read", "fabric:read:/datasets/", "jobs:run"]
                .iter()
                .map(|r| r.parse().unwrap())
                .collect(),
            quotas: vec![Quota {
                name: "cpus".into(),
                value: 4,
            }],
            ttl: Duration::from_secs(3600),
            holder: Some("alice".into()),
        },
    )
    .unwrap();
    let narrowed = attenuate(&token, &["fabric:read:/datasets/".parse().unwrap()], None).unwrap();
    let policies = vec![
        Policy::parse(
            "no-jobs-at-night",
            r#"deny if operation("jobs", "run"), time($t), $t < 2000-01-01T00:00:00Z;"#,
        )
        .unwrap(),
        Policy::parse(
            "no-secrets",
            r#"reject if resource($r), $r.starts_with("/secret/");"#,
        )
        .unwrap(),
    ];
    let revoked: HashSet<String> = (0..1000).map(|i| format!("{i:0128x}")).collect();
    let req = Request::new("fabric", "read").on("/datasets/images/0001.png");
    let cases: [(&str, &str, &[Policy]); 4] = [
        ("minted token, no policies", &token, &[]),
        ("minted token, 2 policies", &token, &policies),
        ("narrowed token, no policies", &narrowed, &[]),
        ("narrowed token, 2 policies", &narrowed, &policies),
    ];
    for (name, token, policies) in cases {
        let ctx = Context::new(SystemTime::now())
            .with_revoked(&revoked)
            .with_policies(policies);
        auth.authorise(token, &req, &ctx).unwrap();
        let n = 50_000;
        let mut denied = 0;
        let start = Instant::now();
        for _ in 0..n {
            if auth.authorise(token, &req, &ctx).is_err() {
                denied += 1;
            }
        }
        let secs = start.elapsed().as_secs_f64();
        println!(
            "{name:32} {:>8.0} authorisations/s ({:.1} us each, {denied} spurious denials)",
            n as f64 / secs,
            secs / n as f64 * 1e6
        );
    }
    // Without the cache every call verifies signatures: what a cold token costs.
    let start = Instant::now();
    let n = 2_000;
    for _ in 0..n {
        let fresh = Authoriser::new(root.public());
        fresh
            .authorise(&token, &req, &Context::new(SystemTime::now()))
            .unwrap();
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "{:32} {:>8.0} authorisations/s ({:.1} us each)",
        "uncached (verify every call)",
        n as f64 / secs,
        secs / n as f64 * 1e6
    );
}
