//! What happened: [`Record`] and [`Outcome`], with bounded field lengths.
//!
//! Every string in a record is capped at [`FIELD_LEN_MAX`] bytes. Records come partly from
//! untrusted input (a token id, a key name, an error message), and the log is replicated to
//! every node and kept forever, so an attacker must not be able to bloat it by asking for
//! something with a 10 MB name. Over-long strings are cut at a UTF-8 character boundary and
//! end in [`TRUNCATION_MARKER`]; the result is still at most [`FIELD_LEN_MAX`] bytes.

use serde::{Deserialize, Serialize};

/// Upper bound, in bytes, on every string field of a [`Record`] (and on a checkpoint's signer).
pub const FIELD_LEN_MAX: usize = 1024;

/// Appended to a string that was cut to fit [`FIELD_LEN_MAX`].
pub const TRUNCATION_MARKER: &str = "…[truncated]";

/// How an audited action ended.
///
/// Stored with postcard: the variant index is part of the storage format and of the entry
/// hash, so variants are never reordered or removed; new ones go at the end.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Outcome {
    /// The action was permitted and carried out.
    Allowed,
    /// The action was refused by policy (missing right, expired token, ...).
    Denied {
        /// Why, for a human.
        reason: String,
    },
    /// The action was permitted but did not complete.
    Failed {
        /// Why, for a human.
        reason: String,
    },
}

impl Outcome {
    /// A refusal with the given reason.
    pub fn denied(reason: impl Into<String>) -> Self {
        Outcome::Denied {
            reason: reason.into(),
        }
    }

    /// A failure with the given reason.
    pub fn failed(reason: impl Into<String>) -> Self {
        Outcome::Failed {
            reason: reason.into(),
        }
    }

    /// The reason of a denial or failure; `None` for [`Outcome::Allowed`].
    pub fn reason(&self) -> Option<&str> {
        match self {
            Outcome::Allowed => None,
            Outcome::Denied { reason } | Outcome::Failed { reason } => Some(reason),
        }
    }

    /// The tag used in the hash input and in rendering.
    pub(crate) fn tag(&self) -> u8 {
        match self {
            Outcome::Allowed => 0,
            Outcome::Denied { .. } => 1,
            Outcome::Failed { .. } => 2,
        }
    }
}

/// One audited action: who did what to which target, under which right, and how it ended.
///
/// Build records with [`Record::new`], which enforces the field bounds. The fields are public
/// so callers can read and match on them; [`crate::Chain::append`] re-applies the bounds, so a
/// record assembled by hand cannot bloat the log either.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Record {
    /// Unix time in milliseconds, chosen by the proposer (the state machine never reads a clock).
    pub at_ms: u64,
    /// Who acted, e.g. `admin@node-a`, `token:ab12cd34 (alice)`, `node:node-b`.
    pub actor: String,
    /// What was attempted, e.g. `config.set`, `cap.revoke`.
    pub action: String,
    /// What it was attempted on, e.g. a key name or token id; may be empty.
    pub target: String,
    /// The right that was required, e.g. `config:write`; may be empty.
    pub right: String,
    /// How it ended.
    pub outcome: Outcome,
}

impl Record {
    /// Builds a record, truncating every string longer than [`FIELD_LEN_MAX`] bytes.
    pub fn new(
        at_ms: u64,
        actor: impl Into<String>,
        action: impl Into<String>,
        target: impl Into<String>,
        right: impl Into<String>,
        outcome: Outcome,
    ) -> Self {
        Record {
            at_ms,
            actor: actor.into(),
            action: action.into(),
            target: target.into(),
            right: right.into(),
            outcome,
        }
        .bounded()
    }

    /// Returns the record with every string cut to [`FIELD_LEN_MAX`] bytes (see [`bound_str`]).
    /// Records already within bounds are returned unchanged.
    pub fn bounded(mut self) -> Self {
        bound_in_place(&mut self.actor);
        bound_in_place(&mut self.action);
        bound_in_place(&mut self.target);
        bound_in_place(&mut self.right);
        match &mut self.outcome {
            Outcome::Allowed => {}
            Outcome::Denied { reason } | Outcome::Failed { reason } => bound_in_place(reason),
        }
        self
    }

    /// The name of the first string field longer than [`FIELD_LEN_MAX`], if any.
    pub fn oversized_field(&self) -> Option<&'static str> {
        let fields = [
            ("actor", self.actor.as_str()),
            ("action", self.action.as_str()),
            ("target", self.target.as_str()),
            ("right", self.right.as_str()),
            ("reason", self.outcome.reason().unwrap_or("")),
        ];
        fields
            .into_iter()
            .find(|(_, value)| value.len() > FIELD_LEN_MAX)
            .map(|(name, _)| name)
    }

    /// The canonical byte string that goes into the entry hash (see the crate docs):
    /// `at_ms` as u64 little-endian, then `actor`, `action`, `target`, `right` each as a
    /// u64 little-endian byte length followed by the UTF-8 bytes, then the outcome tag
    /// (0 allowed, 1 denied, 2 failed) and, for denied and failed, the reason as a string.
    ///
    /// Hand-written rather than postcard so the hash never depends on a serializer's choices.
    pub(crate) fn hash_input(&self, hasher: &mut blake3::Hasher) {
        fn put_str(hasher: &mut blake3::Hasher, s: &str) {
            hasher.update(&(s.len() as u64).to_le_bytes());
            hasher.update(s.as_bytes());
        }
        hasher.update(&self.at_ms.to_le_bytes());
        put_str(hasher, &self.actor);
        put_str(hasher, &self.action);
        put_str(hasher, &self.target);
        put_str(hasher, &self.right);
        hasher.update(&[self.outcome.tag()]);
        if let Some(reason) = self.outcome.reason() {
            put_str(hasher, reason);
        }
    }
}

/// Cuts `s` to at most [`FIELD_LEN_MAX`] bytes: strings that fit are returned as they are;
/// longer ones keep their longest prefix (on a character boundary) that leaves room for
/// [`TRUNCATION_MARKER`], followed by the marker.
pub fn bound_str(s: &str) -> String {
    let mut owned = s.to_owned();
    bound_in_place(&mut owned);
    owned
}

fn bound_in_place(s: &mut String) {
    if s.len() <= FIELD_LEN_MAX {
        return;
    }
    let mut keep = FIELD_LEN_MAX - TRUNCATION_MARKER.len();
    while !s.is_char_boundary(keep) {
        keep -= 1;
    }
    s.truncate(keep);
    s.push_str(TRUNCATION_MARKER);
}
