//! Join tokens: what `noodle token create` prints and `noodle up --join` takes.
//!
//! Text form: `noodle1.` followed by URL-safe base64 of `postcard(body) ++ check`, where `check`
//! is the first 4 bytes of blake3 of the body, so a token mangled by copy and paste is told apart
//! from a forged one. The body carries the cluster id, the CA fingerprint the joiner pins, seed
//! addresses, an expiry and a random 32-byte secret. The cluster keeps only the secret's hash
//! (see [`JoinToken::secret_hash`]), so a token is checked against the control plane's record
//! of it and no node holds a key that could make one: whoever steals a member's data directory
//! finds hashes, not tokens.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;

pub const TOKEN_PREFIX: &str = "noodle1.";
/// A token longer than this is refused before decoding.
const TOKEN_CHARS_MAX: usize = 4096;
const SEEDS_MAX: usize = 32;
const CHECK_BYTES: usize = 4;
/// The token format this code writes and reads (1 carried a MAC keyed by the CA key).
const VERSION: u8 = 2;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("not a noodle join token (it should start with `{TOKEN_PREFIX}`)")]
    Prefix,
    #[error("join token is too long ({0} characters)")]
    TooLong(usize),
    #[error("join token is corrupt: {0}")]
    Corrupt(&'static str),
    #[error(
        "join token was made by an older noodle (format {0}); create a new one with `noodle token create`"
    )]
    OldFormat(u8),
    #[error("join token expired {0} s ago; create a new one with `noodle token create`")]
    Expired(u64),
    #[error("join token is for cluster {token}, this node is in cluster {ours}")]
    ForeignCluster { token: String, ours: String },
    #[error("join token pins a different cluster CA than this cluster's")]
    ForeignCa,
}

/// The content of a join token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Body {
    version: u8,
    cluster_id: String,
    ca_fingerprint: [u8; 32],
    secret: [u8; 32],
    expires_at_unix: u64,
    seeds: Vec<SocketAddr>,
}

/// A decoded join token. Decoding checks only its form; [`JoinToken::verify`] checks it is
/// meant for a cluster, and the cluster's record of [`JoinToken::secret_hash`] that it was made
/// there and is not used up.
#[derive(Clone, PartialEq, Eq)]
pub struct JoinToken {
    body: Body,
}

impl std::fmt::Debug for JoinToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the secret.
        f.debug_struct("JoinToken")
            .field("id", &self.id_hex())
            .field("cluster_id", &self.body.cluster_id)
            .field("expires_at_unix", &self.body.expires_at_unix)
            .field("seeds", &self.body.seeds)
            .finish()
    }
}

impl JoinToken {
    /// Makes a token for the cluster `cluster_id` whose CA certificate has `ca_fingerprint`,
    /// valid until `expires_at_unix`. It admits nobody until the cluster records its
    /// [`JoinToken::secret_hash`].
    pub fn mint(
        cluster_id: &str,
        ca_fingerprint: [u8; 32],
        expires_at_unix: u64,
        seeds: Vec<SocketAddr>,
    ) -> JoinToken {
        let mut seeds = seeds;
        seeds.truncate(SEEDS_MAX);
        JoinToken {
            body: Body {
                version: VERSION,
                cluster_id: cluster_id.to_string(),
                ca_fingerprint,
                secret: rand::random(),
                expires_at_unix,
                seeds,
            },
        }
    }

    pub fn cluster_id(&self) -> &str {
        &self.body.cluster_id
    }

    pub fn ca_fingerprint(&self) -> [u8; 32] {
        self.body.ca_fingerprint
    }

    pub fn seeds(&self) -> &[SocketAddr] {
        &self.body.seeds
    }

    pub fn expires_at_unix(&self) -> u64 {
        self.body.expires_at_unix
    }

    /// What the cluster records of the token: a hash of its secret, which does not give the
    /// secret back.
    pub fn secret_hash(&self) -> [u8; 32] {
        blake3::derive_key("noodle 2026-12 join token secret v2", &self.body.secret)
    }

    /// Whether `recorded` is this token's [`JoinToken::secret_hash`] (in constant time).
    pub fn matches(&self, recorded: &[u8; 32]) -> bool {
        blake3::Hash::from(self.secret_hash()) == blake3::Hash::from(*recorded)
    }

    /// Short id for `noodle token ls`, logs and the audit trail, taken from the secret's hash:
    /// never enough to rebuild the token.
    pub fn id_hex(&self) -> String {
        self.secret_hash()[..8]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    /// Fails if the token has expired at `now_unix`; joiners check this before dialling anyone.
    pub fn check_expiry(&self, now_unix: u64) -> Result<(), TokenError> {
        let exp = self.body.expires_at_unix;
        if now_unix >= exp {
            return Err(TokenError::Expired(now_unix - exp));
        }
        Ok(())
    }

    /// Checks that the token is meant for the cluster `cluster_id` with this CA and is still
    /// valid at `now_unix`. Whether the cluster made it is for its record to say.
    pub fn verify(
        &self,
        cluster_id: &str,
        ca_fingerprint: [u8; 32],
        now_unix: u64,
    ) -> Result<(), TokenError> {
        let body = &self.body;
        if body.cluster_id != cluster_id {
            return Err(TokenError::ForeignCluster {
                token: body.cluster_id.clone(),
                ours: cluster_id.to_string(),
            });
        }
        if body.ca_fingerprint != ca_fingerprint {
            return Err(TokenError::ForeignCa);
        }
        self.check_expiry(now_unix)
    }

    pub fn encode(&self) -> String {
        // Serialising plain data into a Vec cannot fail.
        let mut bytes = postcard::to_stdvec(&self.body).unwrap_or_default();
        let check = blake3::hash(&bytes);
        bytes.extend_from_slice(&check.as_bytes()[..CHECK_BYTES]);
        format!("{TOKEN_PREFIX}{}", URL_SAFE_NO_PAD.encode(bytes))
    }

    pub fn decode(text: &str) -> Result<JoinToken, TokenError> {
        let text = text.trim();
        if text.len() > TOKEN_CHARS_MAX {
            return Err(TokenError::TooLong(text.len()));
        }
        let b64 = text.strip_prefix(TOKEN_PREFIX).ok_or(TokenError::Prefix)?;
        let bytes = URL_SAFE_NO_PAD
            .decode(b64)
            .map_err(|_| TokenError::Corrupt("not valid base64"))?;
        if bytes.len() <= CHECK_BYTES {
            return Err(TokenError::Corrupt("too short"));
        }
        let (payload, check) = bytes.split_at(bytes.len() - CHECK_BYTES);
        if blake3::hash(payload).as_bytes()[..CHECK_BYTES] != *check {
            return Err(TokenError::Corrupt("checksum mismatch"));
        }
        // The version comes first in every format.
        match payload.first() {
            Some(&VERSION) => {}
            Some(&v) if v < VERSION => return Err(TokenError::OldFormat(v)),
            _ => return Err(TokenError::Corrupt("unknown token version")),
        }
        let (body, rest): (Body, _) = postcard::take_from_bytes(payload)
            .map_err(|_| TokenError::Corrupt("unreadable content"))?;
        if !rest.is_empty() {
            return Err(TokenError::Corrupt("trailing bytes"));
        }
        if body.seeds.len() > SEEDS_MAX {
            return Err(TokenError::Corrupt("too many seed addresses"));
        }
        Ok(JoinToken { body })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const FP: [u8; 32] = [7; 32];

    fn mint(expires: u64) -> JoinToken {
        JoinToken::mint("cluster-a", FP, expires, vec![])
    }

    #[test]
    fn round_trip_and_verify() {
        let seeds = vec!["127.0.0.1:7070".parse().unwrap()];
        let t = JoinToken::mint("cluster-a", FP, 1_000, seeds.clone());
        let decoded = JoinToken::decode(&t.encode()).unwrap();
        assert_eq!(decoded, t);
        assert_eq!(decoded.seeds(), &seeds[..]);
        decoded.verify("cluster-a", FP, 999).unwrap();
        assert_eq!(
            decoded.verify("cluster-a", FP, 1_005),
            Err(TokenError::Expired(5))
        );
        assert!(decoded.matches(&t.secret_hash()));
        // The id names the token and nothing in what the cluster records gives the secret.
        assert_eq!(decoded.id_hex().len(), 16);
        assert!(!format!("{t:?}").contains(&format!("{:?}", t.body.secret)));
    }

    #[test]
    fn foreign_and_forged_tokens_are_refused() {
        let t = JoinToken::mint("cluster-b", FP, u64::MAX, vec![]);
        assert!(matches!(
            t.verify("cluster-a", FP, 0),
            Err(TokenError::ForeignCluster { .. })
        ));
        // Same cluster id, different CA.
        assert_eq!(
            t.verify("cluster-b", [8; 32], 0),
            Err(TokenError::ForeignCa)
        );
        // A token made up by someone else matches no record the cluster holds: each token's
        // secret is its own, and a changed secret no longer matches.
        let real = mint(10);
        let forged = mint(10);
        assert!(!forged.matches(&real.secret_hash()));
        let mut changed = real.clone();
        changed.body.secret[0] ^= 1;
        assert!(!changed.matches(&real.secret_hash()));
        assert_ne!(changed.id_hex(), real.id_hex());
    }

    #[test]
    fn an_old_format_token_is_named_as_such() {
        let mut bytes = vec![1u8, 0, 0];
        let check = blake3::hash(&bytes);
        bytes.extend_from_slice(&check.as_bytes()[..CHECK_BYTES]);
        let text = format!("{TOKEN_PREFIX}{}", URL_SAFE_NO_PAD.encode(bytes));
        assert_eq!(JoinToken::decode(&text), Err(TokenError::OldFormat(1)));
    }

    #[test]
    fn malformed_text_is_refused_with_a_reason() {
        let good = mint(5).encode();
        // Change one character in the middle (the last one also carries padding bits, so
        // changing it can make the text invalid base64 instead).
        let mut chars: Vec<char> = good.chars().collect();
        let mid = chars.len() / 2;
        chars[mid] = if chars[mid] == 'A' { 'B' } else { 'A' };
        let flipped: String = chars.into_iter().collect();
        let cases: Vec<(String, TokenError)> = vec![
            ("hello".into(), TokenError::Prefix),
            (
                format!("{TOKEN_PREFIX}!!!"),
                TokenError::Corrupt("not valid base64"),
            ),
            (
                format!("{TOKEN_PREFIX}AA"),
                TokenError::Corrupt("too short"),
            ),
            (flipped, TokenError::Corrupt("checksum mismatch")),
            ("x".repeat(5000), TokenError::TooLong(5000)),
        ];
        for (text, want) in cases {
            assert_eq!(JoinToken::decode(&text), Err(want), "{text}");
        }
    }

    proptest! {
        #[test]
        fn decode_never_panics(s in "\\PC{0,300}") {
            let _ = JoinToken::decode(&s);
        }

        #[test]
        fn decode_never_panics_on_prefixed_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = JoinToken::decode(&format!("{TOKEN_PREFIX}{}", URL_SAFE_NO_PAD.encode(bytes)));
        }
    }
}
