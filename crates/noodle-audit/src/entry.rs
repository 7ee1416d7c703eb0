//! The hash chain: [`Entry`] and the state machine's [`Chain`].

use serde::{Deserialize, Serialize};

use crate::codec::{self, DecodeError};
use crate::record::Record;

/// The blake3 `derive_key` context of entry hashes. Changing the construction means a new
/// context (`... v2`), never a silent change under this one.
pub const ENTRY_HASH_CONTEXT: &str = "noodle audit entry v1";

/// The `prev` of entry 1.
pub const GENESIS_PREV: [u8; 32] = [0; 32];

/// One link of the audit chain.
///
/// `hash` is [`Entry::compute_hash`] of the other three fields; `prev` is the `hash` of entry
/// `seq - 1` ([`GENESIS_PREV`] for entry 1).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Entry {
    /// Position in the log, starting at 1.
    pub seq: u64,
    /// Hash of the previous entry.
    #[serde(with = "crate::bytes_serde")]
    pub prev: [u8; 32],
    /// What happened.
    pub record: Record,
    /// This entry's hash.
    #[serde(with = "crate::bytes_serde")]
    pub hash: [u8; 32],
}

impl Entry {
    /// `blake3::derive_key("noodle audit entry v1", prev || seq as u64 LE || record bytes)`,
    /// where the record bytes are the canonical layout described in the crate docs.
    pub fn compute_hash(seq: u64, prev: &[u8; 32], record: &Record) -> [u8; 32] {
        let mut hasher = blake3::Hasher::new_derive_key(ENTRY_HASH_CONTEXT);
        hasher.update(prev);
        hasher.update(&seq.to_le_bytes());
        record.hash_input(&mut hasher);
        *hasher.finalize().as_bytes()
    }

    /// Whether `hash` matches `seq`, `prev` and `record`. Says nothing about the link to the
    /// previous entry; that takes a [`crate::Verifier`].
    pub fn hash_matches(&self) -> bool {
        Entry::compute_hash(self.seq, &self.prev, &self.record) == self.hash
    }

    /// The storage encoding: a format version byte ([`crate::FORMAT_V1`]) then postcard.
    pub fn encode(&self) -> Vec<u8> {
        codec::encode(self)
    }

    /// Decodes [`Entry::encode`]'s output. Strict: at most [`crate::ENCODED_LEN_MAX`] bytes,
    /// canonical, nothing trailing, every record field within [`crate::FIELD_LEN_MAX`].
    /// Does not check the hash; verification does.
    pub fn decode(bytes: &[u8]) -> Result<Entry, DecodeError> {
        let entry: Entry = codec::decode(bytes)?;
        if let Some(field) = entry.record.oversized_field() {
            return Err(DecodeError::FieldTooLong { field });
        }
        Ok(entry)
    }
}

/// The state the replicated state machine keeps to extend the chain: the next sequence number
/// and the hash of the last entry. A few dozen bytes, serialisable into snapshots.
///
/// [`Chain::append`] is a pure function of this state and the record — no clock, no
/// randomness — so every replica that applies the same log computes the same entries.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Chain {
    next_seq: u64,
    #[serde(with = "crate::bytes_serde")]
    last_hash: [u8; 32],
}

impl Default for Chain {
    fn default() -> Self {
        Chain::new()
    }
}

impl Chain {
    /// An empty chain: the next entry is #1 and links to [`GENESIS_PREV`].
    pub fn new() -> Self {
        Chain {
            next_seq: 1,
            last_hash: GENESIS_PREV,
        }
    }

    /// A chain whose last entry is `head_seq` with hash `head_hash` (from [`Chain::head`] of
    /// another chain, e.g. after pruning old entries into an archive).
    pub fn resume(head_seq: u64, head_hash: [u8; 32]) -> Self {
        Chain {
            next_seq: head_seq.saturating_add(1),
            last_hash: head_hash,
        }
    }

    /// Appends `record` (re-bounded with [`Record::bounded`]) and returns the new entry.
    ///
    /// Sequence numbers saturate at `u64::MAX`; a log that long cannot exist, and if it did,
    /// the repeated number would fail verification rather than wrap silently.
    pub fn append(&mut self, record: Record) -> Entry {
        let record = record.bounded();
        let seq = self.next_seq;
        let prev = self.last_hash;
        let hash = Entry::compute_hash(seq, &prev, &record);
        self.next_seq = seq.saturating_add(1);
        self.last_hash = hash;
        Entry {
            seq,
            prev,
            record,
            hash,
        }
    }

    /// The last entry's sequence number and hash; `(0, GENESIS_PREV)` for an empty chain.
    /// This is what a checkpoint signs and what nodes compare to detect a truncated tail.
    pub fn head(&self) -> (u64, [u8; 32]) {
        (self.next_seq.saturating_sub(1), self.last_hash)
    }
}
