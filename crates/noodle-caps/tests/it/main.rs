//! The public API end to end: mint, narrow, inspect, revoke and authorise, with policies.
#![allow(clippy::unwrap_used)]

mod attenuate;
mod authorise;
mod inspect;
mod policy;
mod robustness;

use noodle_caps::{
    Authoriser, Context, Limits, Quota, Request, Right, RootKey, TokenSpec, mint_at,
};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// 2027-01-15T08:00:00Z: every test runs at a fixed time.
pub(crate) const T0_UNIX: u64 = 1_800_000_000;

pub(crate) fn at(secs_after_t0: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(T0_UNIX + secs_after_t0)
}

pub(crate) fn rights(list: &[&str]) -> Vec<Right> {
    list.iter().map(|r| r.parse().unwrap()).collect()
}

/// A one-hour token for alice with `cpus=4`, minted at T0.
pub(crate) fn token(root: &RootKey, list: &[&str]) -> String {
    mint_at(
        root,
        &TokenSpec {
            rights: rights(list),
            quotas: vec![Quota {
                name: "cpus".to_string(),
                value: 4,
            }],
            ttl: Duration::from_secs(3600),
            holder: Some("alice".to_string()),
        },
        at(0),
    )
    .unwrap()
}

/// An authoriser with a generous time limit, so a loaded test machine cannot make it flaky
/// (the limit itself is exercised with facts and iterations, which are deterministic).
pub(crate) fn authoriser(root: &RootKey) -> Authoriser {
    Authoriser::with_limits(
        root.public(),
        Limits {
            time_max: Duration::from_millis(500),
            ..Limits::default()
        },
    )
}

/// `subsystem:action[ on resource]`.
pub(crate) fn request(text: &str) -> Request {
    let (op, resource) = match text.split_once(" on ") {
        Some((op, resource)) => (op, Some(resource)),
        None => (text, None),
    };
    let (subsystem, action) = op.split_once(':').unwrap();
    let req = Request::new(subsystem, action);
    match resource {
        Some(r) => req.on(r),
        None => req,
    }
}

/// "allow" or the denial's message.
pub(crate) fn verdict(auth: &Authoriser, token: &str, req: &str, ctx: &Context<'_>) -> String {
    match auth.authorise(token, &request(req), ctx) {
        Ok(_) => "allow".to_string(),
        Err(denied) => denied.to_string(),
    }
}
