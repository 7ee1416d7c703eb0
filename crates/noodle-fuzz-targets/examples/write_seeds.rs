//! Writes the seed corpus of every fuzz target into `fuzz/seeds/<target>/seed-N`: valid
//! inputs of each decoder, from which the fuzzer mutates. Run it again after a format change
//! (`cargo run -p noodle-fuzz-targets --example write_seeds`) and commit the result.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use noodle_audit::{Chain, Outcome, Record};
use noodle_control::{Command, Proposal};
use std::path::PathBuf;

fn main() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/seeds");
    let token = noodle_fuzz_targets::sample_token();
    let ca = noodle_security::ClusterCa::generate("fuzz").expect("a CA");
    let join = noodle_security::JoinToken::mint(
        ca.cluster_id(),
        ca.fingerprint(),
        1_800_000_000,
        vec!["127.0.0.1:7070".parse().unwrap()],
    );
    let mut chain = Chain::new();
    let entry = chain.append(Record::new(
        1_700_000_000_000,
        "admin@n1",
        "config.set",
        "retries",
        "config:write:retries",
        Outcome::Allowed,
    ));
    let mut frames = Vec::new();
    noodle_api::output_frame::encode(noodle_api::output_frame::STDOUT, b"hello\n", &mut frames);
    noodle_api::output_frame::encode(noodle_api::output_frame::STDERR, b"oops\n", &mut frames);
    let node = noodle_discovery::NodeInfo {
        id: "n2".into(),
        name: "n2".into(),
        addr: "127.0.0.1:7071".parse().unwrap(),
        version: 3,
        software: "0.1.0".into(),
        resources: Default::default(),
        labels: [("zone".to_string(), "a".to_string())].into(),
        links: Vec::new(),
        control_incarnation: 0,
        job_slots: 2,
        control_up: true,
        signature: vec![7; 64],
    };
    let seeds: Vec<(&str, Vec<Vec<u8>>)> = vec![
        (
            "frame_request",
            vec![
                noodle_link::frame::encode_request("config.get", 5000, br#"{"key":"a"}"#),
                noodle_link::frame::encode_request("raft.append", 0, &[]),
            ],
        ),
        (
            "frame_response",
            vec![
                noodle_link::frame::encode_response(&Ok(b"ok".to_vec())),
                noodle_link::frame::encode_response(&Err(noodle_link::RemoteError::new(
                    403, "denied",
                ))),
            ],
        ),
        ("join_token", vec![join.encode().into_bytes()]),
        (
            "gossip_sync",
            vec![
                postcard::to_allocvec(&noodle_discovery::SyncMessage {
                    entries: vec![node],
                })
                .unwrap(),
            ],
        ),
        (
            "membership_packet",
            vec![vec![0; 16], b"not a packet".to_vec()],
        ),
        ("cap_token", vec![token.clone().into_bytes()]),
        (
            "policy",
            vec![
                b"deny if operation(\"jobs\", \"run\"), time($t), $t > 2026-12-24T18:00:00Z;"
                    .to_vec(),
                b"check if time($t), $t < 2030-01-01T00:00:00Z;".to_vec(),
            ],
        ),
        ("stored_records", vec![entry.encode()]),
        ("job_output_frames", vec![frames]),
        (
            "control_records",
            vec![
                postcard::to_allocvec(&Proposal::new(Command::ConfigSet {
                    key: "retries".into(),
                    value: "3".into(),
                }))
                .unwrap(),
            ],
        ),
    ];
    for (target, inputs) in seeds {
        let dir = root.join(target);
        std::fs::create_dir_all(&dir).unwrap();
        for (i, input) in inputs.iter().enumerate() {
            std::fs::write(dir.join(format!("seed-{i}")), input).unwrap();
        }
        println!("{target}: {} seeds", inputs.len());
    }
}
