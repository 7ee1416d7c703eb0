//! The cluster's tamper-evident audit log: a hash chain of [`Entry`]s plus signed
//! [`Checkpoint`]s, and the [`verify`] behind `noodle audit verify`.
//!
//! Sans-IO: no clocks, no randomness, no files. The replicated state machine holds a [`Chain`]
//! (next sequence number and last hash) and calls [`Chain::append`] for each committed
//! [`Record`]; the result depends only on that state and the record, so every replica computes
//! byte-identical entries. Times (`at_ms`) and keys are chosen by the caller.
//!
//! # Construction
//!
//! Entry `n` (1-based) stores `prev`, the hash of entry `n - 1` (32 zero bytes for entry 1),
//! and
//!
//! ```text
//! hash = blake3::derive_key("noodle audit entry v1",
//!            prev (32) || seq (u64 LE) || at_ms (u64 LE)
//!            || str(actor) || str(action) || str(target) || str(right)
//!            || outcome tag (u8: 0 allowed, 1 denied, 2 failed) [|| str(reason)])
//! str(s) = byte length (u64 LE) || UTF-8 bytes
//! ```
//!
//! Every variable-length part is length-prefixed, so distinct entries never share a hash input,
//! and the hash input is written by hand rather than by a serializer, so it stays fixed even if
//! the storage encoding changes. Record strings are bounded to [`FIELD_LEN_MAX`] bytes
//! (truncated with [`TRUNCATION_MARKER`]) so nobody can bloat the log.
//!
//! Every so often the leader signs a [`Checkpoint`]: Ed25519 over
//! `"noodle audit checkpoint v1" || upto_seq (u64 LE) || hash || signer length (u64 LE) ||
//! signer || at_ms (u64 LE)`, where `hash` is the chain hash at entry `upto_seq`.
//!
//! Entries and checkpoints are stored as a format version byte (`0` = v1) followed by postcard;
//! [`Entry::decode`] is strict (bounded to [`ENCODED_LEN_MAX`], canonical, no trailing bytes).
//!
//! # What verification proves
//!
//! [`verify`] (or a streaming [`Verifier`]) recomputes every hash and link from entry 1 and
//! checks every checkpoint's signature and hash, and names the first entry or checkpoint that
//! fails. Success proves that:
//!
//! - the entries presented form one unbroken chain from entry 1: altering, inserting,
//!   removing or reordering any entry breaks it unless every later hash is recomputed, and
//! - every entry up to the last verified checkpoint is exactly what its signer saw: rewriting
//!   that prefix would need the signer's private key.
//!
//! It does **not** prove:
//!
//! - anything about the tail after the last checkpoint. The hash is unkeyed, so whoever can
//!   write the log can drop the newest entries (leaving a valid shorter chain) or rewrite them
//!   and recompute their hashes. Only comparing heads ([`Chain::head`]) between nodes, or the
//!   next checkpoint, reveals it; [`VerifySummary::unsigned_tail`] says how many entries are
//!   exposed;
//! - anything against someone holding a signing key, who can rewrite the whole log and sign
//!   new checkpoints — keys and their holders are trusted;
//! - that `at_ms` is true; it is whatever the proposer said.

#![forbid(unsafe_code)]

mod bytes_serde;
mod checkpoint;
mod codec;
mod entry;
mod record;
mod render;
mod verify;

pub use checkpoint::{AuditKey, AuditPublicKey, CHECKPOINT_CONTEXT, Checkpoint, PublicKeyError};
pub use codec::{DecodeError, ENCODED_LEN_MAX, FORMAT_V1};
pub use entry::{Chain, ENTRY_HASH_CONTEXT, Entry, GENESIS_PREV};
pub use record::{FIELD_LEN_MAX, Outcome, Record, TRUNCATION_MARKER, bound_str};
pub use render::{format_utc_ms, render_line};
pub use verify::{
    CheckpointProblem, EntryProblem, PENDING_CHECKPOINTS_MAX, Verifier, VerifyError, VerifySummary,
    verify, verify_encoded, verify_encoded_from, verify_from,
};
