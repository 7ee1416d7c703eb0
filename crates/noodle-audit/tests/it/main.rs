//! Integration tests for noodle-audit: chain round trips, tamper detection, checkpoints,
//! streaming verification, encoding, rendering and properties.

#![allow(clippy::unwrap_used)]

use noodle_audit::*;
use proptest::prelude::*;

// ---------------------------------------------------------------- helpers

fn key(n: u8) -> AuditKey {
    AuditKey::from_bytes([n; 32])
}

/// Signer ids known to the verifier: node-a (key 1) and node-b (key 2).
fn key_of(signer: &str) -> Option<AuditPublicKey> {
    match signer {
        "node-a" => Some(key(1).public_key()),
        "node-b" => Some(key(2).public_key()),
        _ => None,
    }
}

/// A varied record: outcomes, empty targets and rights cycle with `i`.
fn rec(i: u64) -> Record {
    let outcome = match i % 3 {
        0 => Outcome::Allowed,
        1 => Outcome::denied(format!("token expired {i}")),
        _ => Outcome::failed("disk full"),
    };
    let target = if i.is_multiple_of(4) {
        String::new()
    } else {
        format!("key-{i}")
    };
    let right = if i.is_multiple_of(5) {
        ""
    } else {
        "config:write"
    };
    Record::new(
        1_795_439_101_123 + i,
        format!("admin@node-{}", i % 2),
        "config.set",
        target,
        right,
        outcome,
    )
}

/// `n` entries, with node-a signing a checkpoint after every `every` entries (0: never).
fn build(n: u64, every: u64) -> (Vec<Entry>, Vec<Checkpoint>) {
    let mut chain = Chain::new();
    let mut entries = Vec::new();
    let mut checkpoints = Vec::new();
    for i in 1..=n {
        entries.push(chain.append(rec(i)));
        if every != 0 && i % every == 0 {
            let (seq, hash) = chain.head();
            checkpoints.push(Checkpoint::sign(
                seq,
                hash,
                "node-a",
                2_000_000 + i,
                &key(1),
            ));
        }
    }
    (entries, checkpoints)
}

fn entry_err(seq: u64, problem: EntryProblem) -> VerifyError {
    VerifyError::Entry { seq, problem }
}

fn cp_err(upto_seq: u64, signer: &str, problem: CheckpointProblem) -> VerifyError {
    VerifyError::Checkpoint {
        upto_seq,
        signer: signer.to_owned(),
        problem,
    }
}

type RecordEdit = fn(&mut Record);
type ErrorCheck = fn(&DecodeError) -> bool;

// ---------------------------------------------------------------- round trips

#[test]
fn append_then_verify_round_trips() {
    // (entries, checkpoint every, expected checkpoints, expected last checkpointed seq)
    let cases = [
        (0, 10, 0, None),
        (1, 10, 0, None),
        (2, 10, 0, None),
        (2, 1, 2, Some(2)),
        (100, 10, 10, Some(100)),
        (105, 10, 10, Some(100)),
    ];
    for (n, every, want_cps, want_last) in cases {
        let (entries, checkpoints) = build(n, every);
        let head_hash = entries.last().map_or(GENESIS_PREV, |e| e.hash);
        let summary =
            verify(entries, &checkpoints, key_of).unwrap_or_else(|e| panic!("n={n}: {e}"));
        assert_eq!(
            summary,
            VerifySummary {
                entries: n,
                checkpoints: want_cps,
                head_seq: n,
                head_hash: hex::encode(head_hash),
                last_checkpoint_seq: want_last,
            },
            "n={n} every={every}"
        );
        assert_eq!(summary.unsigned_tail(), n - want_last.unwrap_or(0));
    }
}

#[test]
fn entries_link_and_number_from_one() {
    let (entries, _) = build(5, 0);
    assert_eq!(entries[0].prev, GENESIS_PREV);
    for (i, e) in entries.iter().enumerate() {
        assert_eq!(e.seq, i as u64 + 1);
        assert!(e.hash_matches());
        if i > 0 {
            assert_eq!(e.prev, entries[i - 1].hash);
        }
    }
}

#[test]
fn two_chains_fed_the_same_records_are_identical() {
    let (a, ca) = build(50, 10);
    let (b, cb) = build(50, 10);
    assert_eq!(a, b);
    // Ed25519 signing is deterministic too, so checkpoints are reproducible.
    assert_eq!(ca, cb);
    let encoded_a: Vec<_> = a.iter().map(Entry::encode).collect();
    let encoded_b: Vec<_> = b.iter().map(Entry::encode).collect();
    assert_eq!(encoded_a, encoded_b);
}

/// Pins the hash construction and storage encoding: if either changes, old logs stop
/// verifying, so this must only change together with a new context / format version.
#[test]
fn construction_test_vector() {
    let mut chain = Chain::new();
    let e = chain.append(Record::new(1, "a", "b", "c", "d", Outcome::denied("e")));
    assert_eq!(hex::encode(e.hash), HASH_V1);
    assert_eq!(hex::encode(e.encode()), ENCODED_V1);
    let manual = {
        let mut h = blake3::Hasher::new_derive_key("noodle audit entry v1");
        h.update(&[0; 32]);
        h.update(&1u64.to_le_bytes());
        h.update(&1u64.to_le_bytes());
        for s in ["a", "b", "c", "d"] {
            h.update(&(s.len() as u64).to_le_bytes());
            h.update(s.as_bytes());
        }
        h.update(&[1]);
        h.update(&1u64.to_le_bytes());
        h.update(b"e");
        *h.finalize().as_bytes()
    };
    assert_eq!(e.hash, manual, "documented construction");
}

const HASH_V1: &str = "d17888d50fb1b6eeb98bfaf18211481a957c27decf0613ddc6f5755e2a38570d";
/// version 0, seq 1, prev (32 zero bytes), at_ms 1, "a" "b" "c" "d", Denied (1) "e", hash.
const ENCODED_V1: &str = concat!(
    "00",
    "01",
    "0000000000000000000000000000000000000000000000000000000000000000",
    "01",
    "0161016201630164",
    "010165",
    "d17888d50fb1b6eeb98bfaf18211481a957c27decf0613ddc6f5755e2a38570d",
);

// ---------------------------------------------------------------- tamper detection

/// Flips every byte of a few encoded entries, by its low bit and by all bits (which also
/// toggles a varint continuation bit). Each flip must either fail to
/// decode or make verification fail at exactly that entry.
#[test]
fn any_flipped_byte_is_detected_at_its_entry() {
    let (entries, checkpoints) = build(12, 5);
    let (mut by_decode, mut by_verify) = (0, 0);
    // First, checkpointed, right after a checkpoint, last (uncovered).
    for target in [0usize, 4, 5, 11] {
        let encoded = entries[target].encode();
        for pos in 0..encoded.len() {
            for mask in [0x01u8, 0xff] {
                let mut bytes = encoded.clone();
                bytes[pos] ^= mask;
                let Ok(decoded) = Entry::decode(&bytes) else {
                    by_decode += 1;
                    continue;
                };
                assert_ne!(
                    decoded, entries[target],
                    "flip at {pos} decoded to the same entry"
                );
                let mut tampered = entries.clone();
                tampered[target] = decoded;
                let err =
                    verify(tampered, &checkpoints, key_of).expect_err("tampering must be detected");
                match err {
                    VerifyError::Entry { seq, .. } => {
                        assert_eq!(seq, target as u64 + 1, "byte {pos} mask {mask:#x}: {err}")
                    }
                    other => panic!("byte {pos} mask {mask:#x} of entry {}: {other}", target + 1),
                }
                by_verify += 1;
            }
        }
    }
    // Both paths must actually be exercised.
    assert!(
        by_decode > 0 && by_verify > 0,
        "decode {by_decode}, verify {by_verify}"
    );
}

#[test]
fn any_flipped_byte_of_a_checkpoint_is_detected() {
    let (entries, checkpoints) = build(10, 5);
    for target in 0..checkpoints.len() {
        let encoded = checkpoints[target].encode();
        for pos in 0..encoded.len() {
            let mut bytes = encoded.clone();
            bytes[pos] ^= 0x01;
            let Ok(decoded) = Checkpoint::decode(&bytes) else {
                continue;
            };
            let mut tampered = checkpoints.clone();
            tampered[target] = decoded;
            match verify(entries.clone(), &tampered, key_of) {
                Err(VerifyError::Checkpoint { .. }) => {}
                other => panic!("byte {pos} of checkpoint {target}: {other:?}"),
            }
        }
    }
}

#[test]
fn editing_a_record_after_hashing_names_the_entry() {
    let edits: [(&str, RecordEdit); 8] = [
        ("at_ms", |r| r.at_ms += 1),
        ("actor", |r| r.actor.push('x')),
        ("action", |r| r.action = "cap.revoke".into()),
        ("target", |r| r.target.clear()),
        ("right", |r| r.right = "config:read".into()),
        ("outcome", |r| r.outcome = Outcome::Allowed),
        ("denied to failed", |r| {
            r.outcome = Outcome::failed(r.outcome.reason().unwrap_or("").to_owned())
        }),
        ("reason", |r| r.outcome = Outcome::denied("nothing to see")),
    ];
    let (entries, checkpoints) = build(20, 5);
    // Entry 7 is a denial with a target and a right, so every edit changes something.
    let seq = 7;
    for (name, edit) in edits {
        let mut tampered = entries.clone();
        let before = tampered[seq - 1].record.clone();
        edit(&mut tampered[seq - 1].record);
        assert_ne!(
            before,
            tampered[seq - 1].record,
            "edit {name} changed nothing"
        );
        assert_eq!(
            verify(tampered, &checkpoints, key_of),
            Err(entry_err(seq as u64, EntryProblem::HashMismatch)),
            "edit {name}"
        );
    }
}

#[test]
fn rehashing_an_edited_entry_breaks_the_next_link() {
    let (entries, checkpoints) = build(20, 5);
    let mut tampered = entries.clone();
    let e = &mut tampered[6];
    e.record.outcome = Outcome::Allowed;
    e.hash = Entry::compute_hash(e.seq, &e.prev, &e.record);
    assert_eq!(
        verify(tampered, &checkpoints, key_of),
        Err(entry_err(8, EntryProblem::BrokenLink { prev_seq: 7 }))
    );
}

#[test]
fn rewriting_the_whole_tail_is_caught_by_the_next_checkpoint() {
    let (entries, checkpoints) = build(20, 5);
    let mut chain = Chain::resume(6, entries[5].hash);
    let mut forged: Vec<Entry> = entries[..6].to_vec();
    for e in &entries[6..] {
        let mut r = e.record.clone();
        r.outcome = Outcome::Allowed;
        forged.push(chain.append(r));
    }
    assert_eq!(
        verify(forged.clone(), &checkpoints, key_of),
        Err(cp_err(
            10,
            "node-a",
            CheckpointProblem::HashDiffers { seq: 10 }
        ))
    );
    // Without checkpoints the forgery is a perfectly valid chain: that is what they are for.
    assert!(verify(forged, &[], key_of).is_ok());
}

#[test]
fn removing_reordering_or_repeating_entries_names_the_first_wrong_seq() {
    type Edit = fn(&mut Vec<Entry>);
    let gap = |expected, found| entry_err(expected, EntryProblem::SequenceGap { expected, found });
    let cases: [(&str, Edit, VerifyError); 7] = [
        ("remove first", |v| drop(v.remove(0)), gap(1, 2)),
        ("remove middle", |v| drop(v.remove(6)), gap(7, 8)),
        ("swap 7 and 8", |v| v.swap(6, 7), gap(7, 8)),
        ("move last to front", |v| v.rotate_right(1), gap(1, 20)),
        ("repeat 7", |v| v.insert(7, v[6].clone()), gap(8, 7)),
        ("renumber 9", |v| v[8].seq = 10, gap(9, 10)),
        (
            "remove the checkpointed last entry",
            |v| drop(v.pop()),
            cp_err(20, "node-a", CheckpointProblem::BeyondEnd { head_seq: 19 }),
        ),
    ];
    let (entries, checkpoints) = build(20, 5);
    for (name, edit, want) in cases {
        let mut tampered = entries.clone();
        edit(&mut tampered);
        assert_eq!(verify(tampered, &checkpoints, key_of), Err(want), "{name}");
    }
}

#[test]
fn a_truncated_unsigned_tail_is_only_visible_by_comparing_heads() {
    let (entries, checkpoints) = build(23, 5);
    let full = verify(entries.clone(), &checkpoints, key_of).unwrap();
    let cut = verify(entries[..21].to_vec(), &checkpoints, key_of).unwrap();
    assert_eq!((full.unsigned_tail(), cut.unsigned_tail()), (3, 1));
    assert_ne!(full.head_hash, cut.head_hash, "heads differ between nodes");
}

#[test]
fn first_entry_must_link_to_genesis() {
    let (mut entries, _) = build(3, 0);
    entries[0].prev = [1; 32];
    assert_eq!(
        verify(entries, &[], key_of),
        Err(entry_err(1, EntryProblem::NotGenesis))
    );
}

#[test]
fn oversized_fields_are_rejected() {
    let (mut entries, _) = build(3, 0);
    let e = &mut entries[1];
    e.record.target = "x".repeat(FIELD_LEN_MAX + 1);
    e.hash = Entry::compute_hash(e.seq, &e.prev, &e.record);
    assert!(matches!(
        Entry::decode(&e.encode()),
        Err(DecodeError::FieldTooLong { field: "target" })
    ));
    assert_eq!(
        verify(entries, &[], key_of),
        Err(entry_err(2, EntryProblem::FieldTooLong { field: "target" }))
    );
}

// ---------------------------------------------------------------- checkpoints

#[test]
fn bad_checkpoints_are_reported() {
    let (entries, good) = build(20, 5);
    let hash_at = |seq: usize| entries[seq - 1].hash;
    let cases: Vec<(&str, Checkpoint, VerifyError)> = vec![
        (
            "signed with the wrong key",
            Checkpoint::sign(10, hash_at(10), "node-a", 0, &key(2)),
            cp_err(10, "node-a", CheckpointProblem::BadSignature),
        ),
        (
            "unknown signer",
            Checkpoint::sign(10, hash_at(10), "node-x", 0, &key(1)),
            cp_err(10, "node-x", CheckpointProblem::UnknownSigner),
        ),
        (
            "hash of another entry",
            Checkpoint::sign(10, hash_at(9), "node-b", 0, &key(2)),
            cp_err(10, "node-b", CheckpointProblem::HashDiffers { seq: 10 }),
        ),
        (
            "beyond the end",
            Checkpoint::sign(21, hash_at(20), "node-b", 0, &key(2)),
            cp_err(21, "node-b", CheckpointProblem::BeyondEnd { head_seq: 20 }),
        ),
        (
            "covers nothing",
            Checkpoint::sign(0, GENESIS_PREV, "node-b", 0, &key(2)),
            cp_err(0, "node-b", CheckpointProblem::ZeroSeq),
        ),
        (
            "field edited after signing",
            Checkpoint {
                at_ms: 1,
                ..Checkpoint::sign(10, hash_at(10), "node-b", 0, &key(2))
            },
            cp_err(10, "node-b", CheckpointProblem::BadSignature),
        ),
    ];
    for (name, bad, want) in cases {
        let mut checkpoints = good.clone();
        checkpoints.push(bad);
        assert_eq!(
            verify(entries.clone(), &checkpoints, key_of),
            Err(want),
            "{name}"
        );
    }
    // A second signer over the same entry is fine.
    let mut checkpoints = good.clone();
    checkpoints.push(Checkpoint::sign(10, hash_at(10), "node-b", 0, &key(2)));
    assert_eq!(
        verify(entries, &checkpoints, key_of).unwrap().checkpoints,
        5
    );
}

#[test]
fn checkpoint_errors_come_in_log_order() {
    let (mut entries, mut checkpoints) = build(20, 5);
    entries[12].record.actor.push('!');
    checkpoints[2].signature[0] ^= 1; // at 15, after the bad entry 13
    assert_eq!(
        verify(entries.clone(), &checkpoints, key_of),
        Err(entry_err(13, EntryProblem::HashMismatch))
    );
    checkpoints[1].signature[0] ^= 1; // at 10, before it
    assert_eq!(
        verify(entries, &checkpoints, key_of),
        Err(cp_err(10, "node-a", CheckpointProblem::BadSignature))
    );
}

#[test]
fn signature_is_domain_separated() {
    let hash = [7; 32];
    let cp = Checkpoint::sign(3, hash, "node-a", 9, &key(1));
    let message = Checkpoint::message(3, &hash, "node-a", 9);
    assert!(message.starts_with(b"noodle audit checkpoint v1"));
    assert!(cp.signature_verifies(&key(1).public_key()));
    assert!(!cp.signature_verifies(&key(2).public_key()));
}

// ---------------------------------------------------------------- streaming verifier

#[test]
fn verifier_accepts_checkpoints_early_or_on_time() {
    let (entries, checkpoints) = build(20, 5);
    let mut v = Verifier::new(key_of);
    for cp in &checkpoints {
        v.push_checkpoint(cp).unwrap(); // all ahead of the head: they wait
    }
    for e in &entries {
        v.push_entry(e).unwrap();
    }
    let summary = v.finish().unwrap();
    assert_eq!(
        (summary.checkpoints, summary.last_checkpoint_seq),
        (4, Some(20))
    );
}

#[test]
fn verifier_reports_waiting_checkpoint_when_its_entry_arrives() {
    let (entries, _) = build(20, 0);
    let bad = Checkpoint::sign(5, [9; 32], "node-a", 0, &key(1));
    let mut v = Verifier::new(key_of);
    v.push_checkpoint(&bad).unwrap();
    for e in &entries[..4] {
        v.push_entry(e).unwrap();
    }
    assert_eq!(
        v.push_entry(&entries[4]),
        Err(cp_err(
            5,
            "node-a",
            CheckpointProblem::HashDiffers { seq: 5 }
        ))
    );
}

#[test]
fn verifier_rejects_late_and_excess_checkpoints() {
    let (entries, checkpoints) = build(20, 5);
    let mut v = Verifier::new(key_of);
    for e in &entries[..6] {
        v.push_entry(e).unwrap();
    }
    assert_eq!(
        v.push_checkpoint(&checkpoints[0]),
        Err(cp_err(
            5,
            "node-a",
            CheckpointProblem::AlreadyPassed {
                head_seq: 6,
                upto_seq: 5
            }
        ))
    );
    let ahead = Checkpoint::sign(100, [0; 32], "node-a", 0, &key(1));
    for _ in 0..PENDING_CHECKPOINTS_MAX {
        v.push_checkpoint(&ahead).unwrap();
    }
    assert_eq!(
        v.push_checkpoint(&ahead),
        Err(cp_err(100, "node-a", CheckpointProblem::TooManyPending))
    );
    assert_eq!(
        v.finish(),
        Err(cp_err(
            100,
            "node-a",
            CheckpointProblem::BeyondEnd { head_seq: 6 }
        ))
    );
}

#[test]
fn verifier_can_start_after_a_trusted_checkpoint() {
    let (entries, checkpoints) = build(20, 5);
    let anchor = &checkpoints[1]; // entry 10
    let mut v = Verifier::starting_after(anchor.upto_seq, anchor.hash, key_of);
    v.push_checkpoint(anchor).unwrap();
    for e in &entries[10..] {
        v.push_entry(e).unwrap();
    }
    let summary = v.finish().unwrap();
    assert_eq!((summary.entries, summary.head_seq), (10, 20));
    let mut v = Verifier::starting_after(anchor.upto_seq, anchor.hash, key_of);
    assert_eq!(
        v.push_entry(&entries[11]),
        Err(entry_err(
            11,
            EntryProblem::SequenceGap {
                expected: 11,
                found: 12
            }
        ))
    );
}

// ---------------------------------------------------------------- encoding

#[test]
fn encode_decode_round_trips() {
    let (entries, checkpoints) = build(12, 5);
    for e in &entries {
        let bytes = e.encode();
        assert_eq!(bytes[0], FORMAT_V1);
        assert_eq!(&Entry::decode(&bytes).unwrap(), e);
    }
    for cp in &checkpoints {
        assert_eq!(&Checkpoint::decode(&cp.encode()).unwrap(), cp);
    }
}

#[test]
fn decode_rejects_bad_input() {
    let (entries, _) = build(1, 0);
    let good = entries[0].encode();
    let mut trailing = good.clone();
    trailing.push(0);
    let mut wrong_version = good.clone();
    wrong_version[0] = 1;
    let cases: Vec<(&str, Vec<u8>, ErrorCheck)> = vec![
        ("empty", vec![], |e| matches!(e, DecodeError::Empty)),
        ("too large", vec![0; ENCODED_LEN_MAX + 1], |e| {
            matches!(e, DecodeError::TooLarge { .. })
        }),
        ("version", wrong_version, |e| {
            matches!(e, DecodeError::UnsupportedVersion { version: 1 })
        }),
        ("trailing", trailing, |e| {
            matches!(e, DecodeError::TrailingBytes { count: 1 })
        }),
        ("truncated", good[..good.len() - 1].to_vec(), |e| {
            matches!(e, DecodeError::Malformed(_))
        }),
    ];
    for (name, bytes, want) in cases {
        let err = Entry::decode(&bytes).expect_err(name);
        assert!(want(&err), "{name}: {err:?}");
    }
}

#[test]
fn decode_rejects_non_canonical_varints() {
    // seq 1 is the single byte 0x01 right after the version byte; 0x81 0x00 also means 1.
    let (entries, _) = build(1, 0);
    let good = entries[0].encode();
    assert_eq!(good[1], 1);
    let mut bytes = vec![good[0], 0x81, 0x00];
    bytes.extend_from_slice(&good[2..]);
    assert!(matches!(
        Entry::decode(&bytes),
        Err(DecodeError::NonCanonical)
    ));
}

#[test]
fn json_uses_hex_for_bytes() {
    let (entries, checkpoints) = build(5, 5);
    let json = serde_json::to_value(&entries[0]).unwrap();
    assert_eq!(json["hash"], hex::encode(entries[0].hash));
    assert_eq!(serde_json::from_value::<Entry>(json).unwrap(), entries[0]);
    let json = serde_json::to_string(&checkpoints[0]).unwrap();
    assert!(json.contains(&hex::encode(checkpoints[0].signature)));
    assert_eq!(
        serde_json::from_str::<Checkpoint>(&json).unwrap(),
        checkpoints[0]
    );
}

#[test]
fn chain_state_survives_a_snapshot() {
    let mut chain = Chain::new();
    for i in 1..=5 {
        chain.append(rec(i));
    }
    let bytes = postcard::to_stdvec(&chain).unwrap();
    let mut restored: Chain = postcard::from_bytes(&bytes).unwrap();
    assert_eq!(restored.append(rec(6)), chain.append(rec(6)));
    assert_eq!(Chain::new().head(), (0, GENESIS_PREV));
}

// ---------------------------------------------------------------- keys

#[test]
fn public_key_text_round_trips() {
    let pk = key(1).public_key();
    let text = pk.to_string();
    assert_eq!(text.len(), 64);
    assert_eq!(text.parse::<AuditPublicKey>().unwrap(), pk);
    assert_eq!(
        serde_json::from_str::<AuditPublicKey>(&serde_json::to_string(&pk).unwrap()).unwrap(),
        pk
    );
    let bad = [("short", "abcd"), ("not hex", &"zz".repeat(32)[..])];
    for (name, s) in bad {
        assert_eq!(
            s.parse::<AuditPublicKey>(),
            Err(PublicKeyError::NotHex),
            "{name}"
        );
    }
    assert_eq!(AuditKey::from_bytes(key(1).to_bytes()).public_key(), pk);
}

#[test]
fn debug_hides_the_secret() {
    let k = key(0xab);
    let debug = format!("{k:?}");
    assert!(!debug.contains(&hex::encode(k.to_bytes())), "{debug}");
    assert!(!debug.contains("171"), "{debug}"); // 0xab as a decimal byte
    assert!(debug.contains(&k.public_key().to_string()));
}

// ---------------------------------------------------------------- records and rendering

#[test]
fn long_fields_are_truncated_with_a_marker() {
    let cases = [
        ("ascii", "x".repeat(5000)),
        ("multibyte", "é".repeat(3000)),
        ("4-byte", "🦀".repeat(1000)),
        ("exactly at the limit", "y".repeat(FIELD_LEN_MAX)),
    ];
    for (name, s) in cases {
        let r = Record::new(0, &s, &s, &s, &s, Outcome::denied(s.clone()));
        for field in [
            &r.actor,
            &r.action,
            &r.target,
            &r.right,
            &r.outcome.reason().unwrap().to_owned(),
        ] {
            assert!(field.len() <= FIELD_LEN_MAX, "{name}");
            if s.len() > FIELD_LEN_MAX {
                assert!(field.ends_with(TRUNCATION_MARKER), "{name}");
                assert!(
                    s.starts_with(field.trim_end_matches(TRUNCATION_MARKER)),
                    "{name}"
                );
                assert!(field.len() > FIELD_LEN_MAX - 8, "{name}: kept too little");
            } else {
                assert_eq!(field, &s, "{name}");
            }
        }
    }
    // append bounds hand-built records too.
    let raw = Record {
        actor: "z".repeat(10_000),
        ..rec(1)
    };
    assert!(Chain::new().append(raw).record.oversized_field().is_none());
}

#[test]
fn render_line_examples() {
    let at = 1_795_439_101_123;
    let cases = [
        (
            Record::new(
                at,
                "admin@node-a",
                "config.set",
                "retries",
                "config:write",
                Outcome::Allowed,
            ),
            "#12 2026-11-23T13:05:01.123Z admin@node-a config.set retries (config:write) allowed",
        ),
        (
            Record::new(
                at,
                "token:ab12cd34 (alice)",
                "cap.revoke",
                "tok-9",
                "cap:admin",
                Outcome::denied("token expired"),
            ),
            "#12 2026-11-23T13:05:01.123Z \"token:ab12cd34 (alice)\" cap.revoke tok-9 (cap:admin) denied: token expired",
        ),
        (
            Record::new(
                at,
                "node:node-b",
                "node.join",
                "",
                "",
                Outcome::failed("disk full"),
            ),
            "#12 2026-11-23T13:05:01.123Z node:node-b node.join - failed: disk full",
        ),
        (
            Record::new(
                at,
                "x",
                "y",
                "evil\n#13 fake line",
                "r",
                Outcome::denied("a\nb"),
            ),
            "#12 2026-11-23T13:05:01.123Z x y \"evil\\n#13 fake line\" (r) denied: a\\nb",
        ),
        (
            Record::new(at, "x", "y", "-", "r", Outcome::Allowed),
            "#12 2026-11-23T13:05:01.123Z x y \"-\" (r) allowed",
        ),
    ];
    for (record, want) in cases {
        let mut chain = Chain::resume(11, [0; 32]);
        let line = render_line(&chain.append(record));
        assert_eq!(line, want);
        assert!(!line.contains('\n'));
    }
}

#[test]
fn errors_read_well() {
    let cases = [
        (
            entry_err(
                5,
                EntryProblem::SequenceGap {
                    expected: 5,
                    found: 7,
                },
            ),
            "entry #5: sequence gap: expected 5, found 7",
        ),
        (
            entry_err(8, EntryProblem::BrokenLink { prev_seq: 7 }),
            "entry #8: prev does not link to entry 7",
        ),
        (
            entry_err(3, EntryProblem::HashMismatch),
            "entry #3: hash does not match its contents",
        ),
        (
            cp_err(20, "node-x", CheckpointProblem::UnknownSigner),
            "checkpoint at #20 by \"node-x\": unknown signer",
        ),
        (
            cp_err(20, "node-a", CheckpointProblem::HashDiffers { seq: 20 }),
            "checkpoint at #20 by \"node-a\": hash differs from the chain at entry 20",
        ),
    ];
    for (err, want) in cases {
        assert_eq!(err.to_string(), want);
    }
}

// ---------------------------------------------------------------- properties

fn any_text() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => any::<String>(),
        1 => proptest::collection::vec(any::<char>(), 300..1200).prop_map(String::from_iter),
    ]
}

fn any_outcome() -> impl Strategy<Value = Outcome> {
    prop_oneof![
        Just(Outcome::Allowed),
        any_text().prop_map(Outcome::denied),
        any_text().prop_map(Outcome::failed)
    ]
}

fn any_record() -> impl Strategy<Value = Record> {
    (
        any::<u64>(),
        any_text(),
        any_text(),
        any_text(),
        any_text(),
        any_outcome(),
    )
        .prop_map(|(at, actor, action, target, right, outcome)| {
            Record::new(at, actor, action, target, right, outcome)
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn arbitrary_records_chain_and_verify(records in proptest::collection::vec(any_record(), 0..40), every in 1u64..8) {
        let mut chain = Chain::new();
        let mut entries = Vec::new();
        let mut checkpoints = Vec::new();
        for r in records {
            let e = chain.append(r);
            prop_assert_eq!(&Entry::decode(&e.encode()).unwrap(), &e);
            prop_assert!(!render_line(&e).contains('\n'));
            if e.seq.is_multiple_of(every) {
                checkpoints.push(Checkpoint::sign(e.seq, e.hash, "node-b", e.seq, &key(2)));
            }
            entries.push(e);
        }
        let n = entries.len() as u64;
        let summary = verify(entries, &checkpoints, key_of).unwrap();
        prop_assert_eq!(summary.head_seq, n);
        prop_assert_eq!(summary.checkpoints, n / every);
    }

    #[test]
    fn bounded_strings_fit_and_keep_a_prefix(s in any_text()) {
        let b = bound_str(&s);
        prop_assert!(b.len() <= FIELD_LEN_MAX);
        if s.len() <= FIELD_LEN_MAX {
            prop_assert_eq!(b, s);
        } else {
            let kept = b.strip_suffix(TRUNCATION_MARKER).unwrap();
            prop_assert!(s.starts_with(kept));
        }
    }
}

/// A log pruned up to a checkpoint verifies from that checkpoint: its signature stands for
/// the entries before it, tampering after it is still found, and a forged anchor is refused.
#[test]
fn a_log_pruned_at_a_checkpoint_verifies_from_it() {
    let (entries, checkpoints) = build(40, 8);
    let anchor = checkpoints.iter().find(|c| c.upto_seq == 16).unwrap();
    let kept = entries[16..].to_vec();
    let summary = verify_from(Some(anchor), kept.clone(), &checkpoints, key_of).unwrap();
    assert_eq!((summary.head_seq, summary.entries), (40, 24));
    assert_eq!(summary.last_checkpoint_seq, Some(40));

    let mut tampered = kept.clone();
    tampered[3].record.target = "forged".into();
    assert_eq!(
        verify_from(Some(anchor), tampered, &checkpoints, key_of),
        Err(entry_err(20, EntryProblem::HashMismatch))
    );
    // An anchor signed by a key the cluster does not know, or not covering the kept log.
    let forged = Checkpoint::sign(16, anchor.hash, "node-a", 1, &key(9));
    assert_eq!(
        verify_from(Some(&forged), kept.clone(), &checkpoints, key_of),
        Err(cp_err(16, "node-a", CheckpointProblem::BadSignature))
    );
    let elsewhere = checkpoints.iter().find(|c| c.upto_seq == 8).unwrap();
    assert_eq!(
        verify_from(Some(elsewhere), kept, &checkpoints, key_of),
        Err(entry_err(
            9,
            EntryProblem::SequenceGap {
                expected: 9,
                found: 17
            }
        ))
    );
}
