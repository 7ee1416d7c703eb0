//! The body of every fuzz target: one function per decoder that reads untrusted bytes. The
//! `fuzz/` crate (cargo-fuzz, nightly) calls these from its targets; this crate's test replays
//! the committed seeds (`fuzz/seeds/<target>/`) through them on stable, so every seed keeps
//! passing and the targets keep compiling. A function panics only when a property fails.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a failed property is a panic"
)]

use base64::Engine;
use noodle_caps::{Authoriser, Context, Policy, Request, RootKey, TokenSpec, inspect, mint_at};
use noodle_control::StateMachine;
use std::sync::{LazyLock, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// One target: it panics only when a property fails.
pub type Target = fn(&[u8]);

/// Every target, by the name of its fuzz binary and seed directory.
pub const TARGETS: &[(&str, Target)] = &[
    ("frame_request", frame_request),
    ("frame_response", frame_response),
    ("join_token", join_token),
    ("gossip_sync", gossip_sync),
    ("membership_packet", membership_packet),
    ("cap_token", cap_token),
    ("policy", policy),
    ("stored_records", stored_records),
    ("job_output_frames", job_output_frames),
    ("control_records", control_records),
];

/// A fixed instant, so that tokens minted for the targets never expire under them.
fn now() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_800_000_000)
}

/// Request frames as a member's stream delivers them: what decodes re-encodes to the same.
pub fn frame_request(data: &[u8]) {
    use noodle_link::frame::{decode_request, encode_request};
    if let Ok((header, body)) = decode_request(data) {
        let again = encode_request(&header.method, header.deadline_ms, body);
        assert_eq!(
            decode_request(&again).map(|(h, b)| (h, b.to_vec())),
            Ok((header, body.to_vec()))
        );
    }
}

/// Response frames as a caller reads them.
pub fn frame_response(data: &[u8]) {
    let _ = noodle_link::frame::decode_response(data);
}

/// Join tokens as a user pastes them: what decodes round-trips.
pub fn join_token(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data)
        && let Ok(token) = noodle_security::JoinToken::decode(text)
    {
        assert_eq!(
            noodle_security::JoinToken::decode(&token.encode()),
            Ok(token)
        );
    }
}

/// Node-table gossip as a member receives it: the table stays bounded.
pub fn gossip_sync(data: &[u8]) {
    if let Ok(msg) = postcard::from_bytes::<noodle_discovery::SyncMessage>(data) {
        let me = noodle_discovery::NodeInfo {
            id: "me".into(),
            name: "me".into(),
            addr: "127.0.0.1:1".parse().expect("literal address"),
            version: 1,
            software: String::new(),
            resources: Default::default(),
            labels: Default::default(),
            links: Vec::new(),
            control_incarnation: 0,
            job_slots: 1,
            control_up: true,
            signature: Vec::new(),
        };
        let mut table = noodle_discovery::NodeTable::new(me);
        let _ = table.newer_than(&msg.entries);
        // The node checks signatures with a closure; here every entry passes, so the table's
        // own bounds are what is tried.
        table.merge(msg.entries, |_| true);
        assert!(table.iter().count() <= noodle_discovery::table::NODES_MAX);
    }
}

static MEMBERSHIP: Mutex<Option<noodle_discovery::Membership>> = Mutex::new(None);

/// SWIM datagrams as they arrive over QUIC.
pub fn membership_packet(data: &[u8]) {
    let mut guard = MEMBERSHIP.lock().unwrap_or_else(|e| e.into_inner());
    let m = guard.get_or_insert_with(|| {
        let id = noodle_discovery::MemberId {
            node_id: "fuzz".into(),
            addr: "127.0.0.1:1".parse().expect("literal address"),
            bump: 1,
        };
        noodle_discovery::Membership::new(id, &Default::default(), 1).expect("default config")
    });
    let _ = m.handle_datagram(data);
    let _ = m.effects();
}

static AUTH: LazyLock<(RootKey, Authoriser)> = LazyLock::new(|| {
    let root = RootKey::from_bytes(&[7; 32]).expect("fixed key bytes are valid");
    let auth = Authoriser::new(root.public());
    (root, auth)
});

fn check_token(token: &str) {
    let req = Request::new("fabric", "read").on("/datasets/x");
    let _ = AUTH.1.authorise(token, &req, &Context::new(now()));
    let _ = AUTH.1.authenticate(token, &Context::new(now()));
    if let Ok(inspection) = inspect(token) {
        let _ = inspection.explain_at(now());
        let _ = noodle_caps::attenuate_at(token, &inspection.effective_rights, None, now());
    }
}

/// Capability tokens as callers present them: any text through the authoriser and inspect,
/// and any bytes as a token's binary form (base64-encoded, so the decoder sees them).
pub fn cap_token(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        check_token(text);
    }
    check_token(&base64::engine::general_purpose::URL_SAFE.encode(data));
}

/// A token of the targets' fixed root key, for seeds and for [`policy`].
pub fn sample_token() -> String {
    let spec = TokenSpec {
        rights: vec![
            "config:read".parse().expect("valid right"),
            "fabric:read:/d/".parse().expect("valid right"),
        ],
        quotas: vec!["cpus=4".parse().expect("valid quota")],
        ttl: Duration::from_secs(3600),
        holder: Some("fuzz".to_string()),
    };
    mint_at(&AUTH.0, &spec, now()).expect("minting a fixed spec works")
}

static POLICY_TOKEN: LazyLock<String> = LazyLock::new(sample_token);

/// Cluster policies as an operator types them: parse any text, and run what parses against a
/// real token.
pub fn policy(data: &[u8]) {
    let Ok(source) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(policy) = Policy::parse("fuzz", source) {
        let policies = [policy];
        let ctx = Context::new(now()).with_policies(&policies);
        for req in [
            Request::new("config", "read"),
            Request::new("fabric", "read").on("/d/x"),
        ] {
            let _ = AUTH.1.authorise(&POLICY_TOKEN, &req, &ctx);
        }
    }
}

/// Records read back from disk or a peer: chunk manifests, audit entries and checkpoints.
/// A manifest round-trips, and audit records (strictly canonical) encode back to the very
/// bytes they were decoded from.
pub fn stored_records(data: &[u8]) {
    if let Ok(m) = noodle_chunks::Manifest::decode(data) {
        let again = noodle_chunks::Manifest::decode(&m.encode()).expect("re-decodes");
        assert_eq!(again.id(), m.id());
    }
    if let Ok(e) = noodle_audit::Entry::decode(data) {
        assert_eq!(e.encode(), data);
    }
    if let Ok(c) = noodle_audit::Checkpoint::decode(data) {
        assert_eq!(c.encode(), data);
    }
}

/// Job output as `noodle run` reads it from the node: a stream of frames, each of which
/// re-encodes to its own bytes.
pub fn job_output_frames(data: &[u8]) {
    use noodle_api::output_frame::{HEADER_BYTES, decode, encode};
    let mut rest = data;
    while let Ok(Some((kind, payload, used))) = decode(rest) {
        assert!(used >= HEADER_BYTES);
        assert_eq!(used, HEADER_BYTES + payload.len());
        let mut again = Vec::new();
        encode(kind, payload, &mut again);
        assert_eq!(&again[..], &rest[..used]);
        rest = &rest[used..];
    }
}

/// Control-plane records as a member reads them back from its database or a peer: proposals
/// (Raft log entries, subsystem commands among them) and job records. Decoding and validating
/// never panic, and a job record survives a round trip.
pub fn control_records(data: &[u8]) {
    if let Ok(p) = postcard::from_bytes::<noodle_control::Proposal>(data) {
        let _ = p.command.validate();
    }
    let _ = noodle_jobs::machine::JobsMachine.validate(data);
    if let Ok(job) = postcard::from_bytes::<noodle_jobs::JobRecord>(data) {
        let _ = job.state.to_string();
        let bytes = postcard::to_allocvec(&job).expect("encodes");
        let again: noodle_jobs::JobRecord = postcard::from_bytes(&bytes).expect("decodes");
        assert_eq!(again, job);
    }
}
