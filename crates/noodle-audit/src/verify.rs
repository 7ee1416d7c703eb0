//! Verification of a stored log: [`Verifier`] (streaming) and [`verify`] (all at once).

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::checkpoint::{AuditPublicKey, Checkpoint};
use crate::entry::{Entry, GENESIS_PREV};
use crate::record::FIELD_LEN_MAX;

/// How many checkpoints a [`Verifier`] holds while waiting for the entry they cover.
/// [`verify`] pushes each checkpoint right after its entry and never needs more than one.
pub const PENDING_CHECKPOINTS_MAX: usize = 64;

/// The first thing in a log that does not verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum VerifyError {
    /// The entry at position `seq` (the sequence number it should have had) is wrong.
    #[error("entry #{seq}: {problem}")]
    Entry {
        /// The position in the log where the bad entry was found: the sequence number the
        /// verifier expected, which is also the entry's own `seq` unless that is the problem.
        seq: u64,
        /// What is wrong with it.
        problem: EntryProblem,
    },
    /// A checkpoint is wrong.
    #[error("checkpoint at #{upto_seq} by {signer:?}: {problem}")]
    Checkpoint {
        /// The checkpoint's `upto_seq`.
        upto_seq: u64,
        /// The checkpoint's `signer`.
        signer: String,
        /// What is wrong with it.
        problem: CheckpointProblem,
    },
}

/// What is wrong with an entry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EntryProblem {
    /// Entries are missing, repeated or out of order.
    #[error("sequence gap: expected {expected}, found {found}")]
    SequenceGap {
        /// The sequence number that should come next.
        expected: u64,
        /// The one that did.
        found: u64,
    },
    /// Entry 1's `prev` is not [`GENESIS_PREV`].
    #[error("prev of the first entry is not the genesis hash (32 zero bytes)")]
    NotGenesis,
    /// `prev` is not the previous entry's hash.
    #[error("prev does not link to entry {prev_seq}")]
    BrokenLink {
        /// The previous entry's sequence number.
        prev_seq: u64,
    },
    /// A record field is longer than [`FIELD_LEN_MAX`], which [`crate::Chain::append`] never writes.
    #[error("record field {field} is longer than {max} bytes", max = FIELD_LEN_MAX)]
    FieldTooLong {
        /// The field's name.
        field: &'static str,
    },
    /// `hash` is not the hash of `seq`, `prev` and `record`: the entry was altered.
    #[error("hash does not match its contents")]
    HashMismatch,
    #[error("unreadable: {detail}")]
    Unreadable { detail: String },
}

/// What is wrong with a checkpoint.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CheckpointProblem {
    /// The log was pruned at this entry, but the checkpoint that vouches for the pruned
    /// entries is not there.
    #[error("the log was pruned here, and the checkpoint that vouches for it is missing")]
    PrunedWithoutCheckpoint,
    /// `upto_seq` is 0; a checkpoint covers at least one entry.
    #[error("checkpoint covers no entries (upto_seq 0)")]
    ZeroSeq,
    /// `key_of` does not know the signer.
    #[error("unknown signer")]
    UnknownSigner,
    /// The signature is not the signer's over the checkpoint's fields.
    #[error("signature does not verify")]
    BadSignature,
    /// The signed hash is not the chain's hash at `upto_seq`.
    #[error("hash differs from the chain at entry {seq}")]
    HashDiffers {
        /// The entry whose hash differs (the checkpoint's `upto_seq`).
        seq: u64,
    },
    /// The log ends before `upto_seq`: entries were cut off (or the checkpoint is forged).
    #[error("checkpoint beyond the end of the log (last entry is #{head_seq})")]
    BeyondEnd {
        /// The last entry in the log.
        head_seq: u64,
    },
    /// A [`Verifier`] got the checkpoint after it had already passed the entry it covers,
    /// so it no longer knows that entry's hash.
    #[error(
        "checkpoint pushed after the verifier passed its entry (now at #{head_seq}); push it right after entry {upto_seq}"
    )]
    AlreadyPassed {
        /// Where the verifier was.
        head_seq: u64,
        /// The checkpoint's `upto_seq`.
        upto_seq: u64,
    },
    /// More than [`PENDING_CHECKPOINTS_MAX`] checkpoints ahead of the verified entries.
    #[error("more than {max} checkpoints waiting for their entries", max = PENDING_CHECKPOINTS_MAX)]
    TooManyPending,
}

/// What a successful verification covered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerifySummary {
    /// Entries verified.
    pub entries: u64,
    /// Checkpoints verified (signature and hash).
    pub checkpoints: u64,
    /// Sequence number of the last entry (0 for an empty log).
    pub head_seq: u64,
    /// Hash of the last entry, hex (the genesis hash for an empty log).
    pub head_hash: String,
    /// The highest entry covered by a verified checkpoint.
    pub last_checkpoint_seq: Option<u64>,
}

impl VerifySummary {
    /// Entries after the last checkpoint. Only a signed checkpoint proves they were not cut
    /// off, so these are vouched for by the chain alone (compare heads between nodes).
    pub fn unsigned_tail(&self) -> u64 {
        self.head_seq - self.last_checkpoint_seq.unwrap_or(0).min(self.head_seq)
    }
}

impl fmt::Display for VerifySummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} entries and {} checkpoints verified; head #{} {}",
            self.entries, self.checkpoints, self.head_seq, self.head_hash
        )?;
        match self.last_checkpoint_seq {
            Some(seq) => write!(f, "; last checkpoint at #{seq}"),
            None => write!(f, "; no checkpoint"),
        }
    }
}

/// Verifies a log one entry at a time, holding only the head and a few checkpoints, so a node
/// can check a log far larger than its memory.
///
/// Push entries in order. Push each checkpoint at any time before the verifier passes the
/// entry it covers: right after that entry (as [`verify`] does), or earlier, in which case it
/// waits (at most [`PENDING_CHECKPOINTS_MAX`]) and is checked when its entry arrives.
/// A rejected entry is not accepted: the head stays at the last good entry.
pub struct Verifier<K> {
    key_of: K,
    start_seq: u64,
    next_seq: u64,
    last_hash: [u8; 32],
    checkpoints: u64,
    last_checkpoint_seq: Option<u64>,
    /// Signature-checked checkpoints with `upto_seq` beyond the head.
    pending: Vec<Checkpoint>,
}

impl<K: Fn(&str) -> Option<AuditPublicKey>> Verifier<K> {
    /// A verifier for a log starting at entry 1. `key_of` maps a signer id to its public key.
    pub fn new(key_of: K) -> Self {
        Verifier::starting_after(0, GENESIS_PREV, key_of)
    }

    /// A verifier for a log that continues after entry `head_seq` whose hash (trusted, e.g.
    /// from a checkpoint already verified) is `head_hash`.
    pub fn starting_after(head_seq: u64, head_hash: [u8; 32], key_of: K) -> Self {
        Verifier {
            key_of,
            start_seq: head_seq,
            next_seq: head_seq.saturating_add(1),
            last_hash: head_hash,
            checkpoints: 0,
            last_checkpoint_seq: None,
            pending: Vec::new(),
        }
    }

    /// A verifier for a log pruned up to `anchor`: the checkpoint's signature is checked
    /// now, and the log continues after the entry it covers, whose hash it vouches for.
    pub fn anchored(anchor: &Checkpoint, key_of: K) -> Result<Self, VerifyError> {
        let fail = |problem| VerifyError::Checkpoint {
            upto_seq: anchor.upto_seq,
            signer: anchor.signer.clone(),
            problem,
        };
        if anchor.upto_seq == 0 {
            return Err(fail(CheckpointProblem::ZeroSeq));
        }
        let key = key_of(&anchor.signer).ok_or_else(|| fail(CheckpointProblem::UnknownSigner))?;
        if !anchor.signature_verifies(&key) {
            return Err(fail(CheckpointProblem::BadSignature));
        }
        let mut verifier = Verifier::starting_after(anchor.upto_seq, anchor.hash, key_of);
        verifier.checkpoints = 1;
        verifier.last_checkpoint_seq = Some(anchor.upto_seq);
        Ok(verifier)
    }

    /// The last verified entry's sequence number and hash.
    pub fn head(&self) -> (u64, [u8; 32]) {
        (self.next_seq - 1, self.last_hash)
    }

    /// Checks the next entry: its sequence number, its link to the previous entry, its field
    /// bounds and its hash, in that order; then any waiting checkpoint that covers it.
    pub fn push_entry(&mut self, entry: &Entry) -> Result<(), VerifyError> {
        let seq = self.next_seq;
        let fail = |problem| Err(VerifyError::Entry { seq, problem });
        if entry.seq != seq {
            return fail(EntryProblem::SequenceGap {
                expected: seq,
                found: entry.seq,
            });
        }
        if entry.prev != self.last_hash {
            return fail(if seq == 1 {
                EntryProblem::NotGenesis
            } else {
                EntryProblem::BrokenLink { prev_seq: seq - 1 }
            });
        }
        if let Some(field) = entry.record.oversized_field() {
            return fail(EntryProblem::FieldTooLong { field });
        }
        if !entry.hash_matches() {
            return fail(EntryProblem::HashMismatch);
        }
        self.next_seq = seq.saturating_add(1);
        self.last_hash = entry.hash;

        let mut result = Ok(());
        let mut i = 0;
        while i < self.pending.len() {
            if self.pending[i].upto_seq == seq {
                let checkpoint = self.pending.swap_remove(i);
                if result.is_ok() {
                    result = self.check_hash_at_head(&checkpoint);
                }
            } else {
                i += 1;
            }
        }
        result
    }

    /// Checks a checkpoint's signature now, and its hash now if it covers the last verified
    /// entry, or once that entry is pushed if it lies ahead.
    pub fn push_checkpoint(&mut self, checkpoint: &Checkpoint) -> Result<(), VerifyError> {
        let (head_seq, _) = self.head();
        let fail = |problem| {
            Err(VerifyError::Checkpoint {
                upto_seq: checkpoint.upto_seq,
                signer: checkpoint.signer.clone(),
                problem,
            })
        };
        if checkpoint.upto_seq == 0 {
            return fail(CheckpointProblem::ZeroSeq);
        }
        let Some(key) = (self.key_of)(&checkpoint.signer) else {
            return fail(CheckpointProblem::UnknownSigner);
        };
        if !checkpoint.signature_verifies(&key) {
            return fail(CheckpointProblem::BadSignature);
        }
        if checkpoint.upto_seq < head_seq {
            return fail(CheckpointProblem::AlreadyPassed {
                head_seq,
                upto_seq: checkpoint.upto_seq,
            });
        }
        if checkpoint.upto_seq == head_seq {
            return self.check_hash_at_head(checkpoint);
        }
        if self.pending.len() >= PENDING_CHECKPOINTS_MAX {
            return fail(CheckpointProblem::TooManyPending);
        }
        self.pending.push(checkpoint.clone());
        Ok(())
    }

    /// What has been verified so far.
    pub fn summary(&self) -> VerifySummary {
        let (head_seq, head_hash) = self.head();
        VerifySummary {
            entries: head_seq - self.start_seq,
            checkpoints: self.checkpoints,
            head_seq,
            head_hash: hex::encode(head_hash),
            last_checkpoint_seq: self.last_checkpoint_seq,
        }
    }

    /// Ends verification: fails if a checkpoint is still waiting for an entry the log does
    /// not have, otherwise returns the [`VerifySummary`].
    pub fn finish(self) -> Result<VerifySummary, VerifyError> {
        let (head_seq, _) = self.head();
        if let Some(checkpoint) = self.pending.iter().min_by_key(|c| c.upto_seq) {
            return Err(VerifyError::Checkpoint {
                upto_seq: checkpoint.upto_seq,
                signer: checkpoint.signer.clone(),
                problem: CheckpointProblem::BeyondEnd { head_seq },
            });
        }
        Ok(self.summary())
    }

    /// `checkpoint` (already signature-checked) covers the head: compare hashes and count it.
    fn check_hash_at_head(&mut self, checkpoint: &Checkpoint) -> Result<(), VerifyError> {
        let (head_seq, head_hash) = self.head();
        if checkpoint.hash != head_hash {
            return Err(VerifyError::Checkpoint {
                upto_seq: checkpoint.upto_seq,
                signer: checkpoint.signer.clone(),
                problem: CheckpointProblem::HashDiffers { seq: head_seq },
            });
        }
        self.checkpoints += 1;
        self.last_checkpoint_seq = Some(
            self.last_checkpoint_seq
                .map_or(head_seq, |s| s.max(head_seq)),
        );
        Ok(())
    }
}

/// Verifies a whole log from entry 1: every entry's hash and link, and every checkpoint's
/// signature and hash. Returns the first problem in log order (a checkpoint is checked right
/// after the entry it covers). `key_of` maps a signer id to its public key.
///
/// Entries are consumed one at a time, so `entries` may stream from disk.
pub fn verify(
    entries: impl IntoIterator<Item = Entry>,
    checkpoints: &[Checkpoint],
    key_of: impl Fn(&str) -> Option<AuditPublicKey>,
) -> Result<VerifySummary, VerifyError> {
    verify_from(None, entries, checkpoints, key_of)
}

/// [`verify`] of a log whose entries up to a checkpoint were pruned: the verification starts
/// at `anchor` (its signature checked first; its hash then stands for everything before it)
/// and takes the entries after it. `None`: the whole log from entry 1.
pub fn verify_from(
    anchor: Option<&Checkpoint>,
    entries: impl IntoIterator<Item = Entry>,
    checkpoints: &[Checkpoint],
    key_of: impl Fn(&str) -> Option<AuditPublicKey>,
) -> Result<VerifySummary, VerifyError> {
    // From an anchor, the checkpoints it supersedes (itself included) are not checked again.
    let mut ordered: Vec<&Checkpoint> = checkpoints
        .iter()
        .filter(|c| anchor.is_none_or(|a| c.upto_seq > a.upto_seq))
        .collect();
    ordered.sort_by_key(|c| c.upto_seq);
    let mut ordered = ordered.into_iter().peekable();
    let mut verifier = match anchor {
        None => Verifier::new(key_of),
        Some(anchor) => Verifier::anchored(anchor, key_of)?,
    };

    for entry in entries {
        while let Some(checkpoint) = ordered.next_if(|c| c.upto_seq <= verifier.head().0) {
            verifier.push_checkpoint(checkpoint)?;
        }
        verifier.push_entry(&entry)?;
    }
    while let Some(checkpoint) = ordered.next_if(|c| c.upto_seq <= verifier.head().0) {
        verifier.push_checkpoint(checkpoint)?;
    }
    // Anything left lies beyond the end: one is enough to report it (after its signature).
    if let Some(checkpoint) = ordered.next() {
        verifier.push_checkpoint(checkpoint)?;
    }
    verifier.finish()
}

/// [`verify`] over entries as stored (`(seq, encoded bytes)`): an entry that does not decode
/// is reported as [`EntryProblem::Unreadable`] under the sequence number it was stored at.
pub fn verify_encoded(
    entries: impl IntoIterator<Item = (u64, Vec<u8>)>,
    checkpoints: &[Checkpoint],
    key_of: impl Fn(&str) -> Option<AuditPublicKey>,
) -> Result<VerifySummary, VerifyError> {
    verify_encoded_from(None, entries, checkpoints, key_of)
}

/// [`verify_encoded`] from `anchor` (see [`verify_from`]).
pub fn verify_encoded_from(
    anchor: Option<&Checkpoint>,
    entries: impl IntoIterator<Item = (u64, Vec<u8>)>,
    checkpoints: &[Checkpoint],
    key_of: impl Fn(&str) -> Option<AuditPublicKey>,
) -> Result<VerifySummary, VerifyError> {
    let mut unreadable = None;
    let decoded = entries
        .into_iter()
        .map_while(|(seq, bytes)| match Entry::decode(&bytes) {
            Ok(e) => Some(e),
            Err(e) => {
                unreadable = Some(VerifyError::Entry {
                    seq,
                    problem: EntryProblem::Unreadable {
                        detail: e.to_string(),
                    },
                });
                None
            }
        });
    let result = verify_from(anchor, decoded, checkpoints, key_of);
    match unreadable {
        // Everything before the unreadable entry verified (or failed first, which wins).
        Some(e)
            if result.is_ok()
                || matches!(
                    result,
                    Err(VerifyError::Checkpoint {
                        problem: CheckpointProblem::BeyondEnd { .. },
                        ..
                    })
                ) =>
        {
            Err(e)
        }
        _ => result,
    }
}
