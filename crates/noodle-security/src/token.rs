//! Join tokens: what `noodle token create` prints and `noodle up --join` takes.
//!
//! Text form: `noodle1.` followed by URL-safe base64 of `postcard(body) ++ check`, where `check`
//! is the first 4 bytes of blake3 of the body, so a token mangled by copy and paste is told apart
//! from a forged one. The body carries the cluster id, the CA fingerprint the joiner pins, seed
//! addresses, an expiry and a MAC keyed by the cluster (see `ClusterCa::join_key`).

use crate::ClusterCa;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;

pub const TOKEN_PREFIX: &str = "noodle1.";
/// A token longer than this is refused before decoding.
const TOKEN_CHARS_MAX: usize = 4096;
const SEEDS_MAX: usize = 32;
const CHECK_BYTES: usize = 4;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("not a noodle join token (it should start with `{TOKEN_PREFIX}`)")]
    Prefix,
    #[error("join token is too long ({0} characters)")]
    TooLong(usize),
    #[error("join token is corrupt: {0}")]
    Corrupt(&'static str),
    #[error("join token expired {0} s ago; create a new one with `noodle token create`")]
    Expired(u64),
    #[error("join token is for cluster {token}, this node is in cluster {ours}")]
    ForeignCluster { token: String, ours: String },
    #[error("join token pins a different cluster CA than this cluster's")]
    ForeignCa,
    #[error("join token signature does not verify: it was not made by this cluster")]
    BadMac,
}

/// The signed content of a join token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Body {
    version: u8,
    cluster_id: String,
    ca_fingerprint: [u8; 32],
    token_id: [u8; 16],
    expires_at_unix: u64,
    seeds: Vec<SocketAddr>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Wire {
    body: Body,
    mac: [u8; 32],
}

/// A decoded join token. Decoding checks only its form; [`JoinToken::verify`] checks it belongs
/// to a cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinToken {
    wire: Wire,
}

impl JoinToken {
    /// Mints a token for `ca`'s cluster, valid until `expires_at_unix`.
    pub fn mint(ca: &ClusterCa, expires_at_unix: u64, seeds: Vec<SocketAddr>) -> JoinToken {
        let mut seeds = seeds;
        seeds.truncate(SEEDS_MAX);
        let body = Body {
            version: 1,
            cluster_id: ca.cluster_id().to_string(),
            ca_fingerprint: ca.fingerprint(),
            token_id: rand::random(),
            expires_at_unix,
            seeds,
        };
        let mac = mac_of(&ca.join_key(), &body);
        JoinToken {
            wire: Wire { body, mac },
        }
    }

    pub fn cluster_id(&self) -> &str {
        &self.wire.body.cluster_id
    }

    pub fn ca_fingerprint(&self) -> [u8; 32] {
        self.wire.body.ca_fingerprint
    }

    pub fn seeds(&self) -> &[SocketAddr] {
        &self.wire.body.seeds
    }

    pub fn expires_at_unix(&self) -> u64 {
        self.wire.body.expires_at_unix
    }

    /// Short id for logs and the audit trail; never enough to rebuild the token.
    pub fn id_hex(&self) -> String {
        self.wire.body.token_id[..6]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    /// Fails if the token has expired at `now_unix`; joiners check this before dialling anyone.
    pub fn check_expiry(&self, now_unix: u64) -> Result<(), TokenError> {
        let exp = self.wire.body.expires_at_unix;
        if now_unix >= exp {
            return Err(TokenError::Expired(now_unix - exp));
        }
        Ok(())
    }

    /// Checks that `ca` minted this token and that it is still valid at `now_unix`.
    pub fn verify(&self, ca: &ClusterCa, now_unix: u64) -> Result<(), TokenError> {
        let body = &self.wire.body;
        if body.cluster_id != ca.cluster_id() {
            return Err(TokenError::ForeignCluster {
                token: body.cluster_id.clone(),
                ours: ca.cluster_id().to_string(),
            });
        }
        if body.ca_fingerprint != ca.fingerprint() {
            return Err(TokenError::ForeignCa);
        }
        // blake3::Hash compares in constant time.
        let expected = blake3::Hash::from(mac_of(&ca.join_key(), body));
        if expected != blake3::Hash::from(self.wire.mac) {
            return Err(TokenError::BadMac);
        }
        self.check_expiry(now_unix)
    }

    pub fn encode(&self) -> String {
        // Serialising plain data into a Vec cannot fail.
        let mut bytes = postcard::to_stdvec(&self.wire).unwrap_or_default();
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
        let (wire, rest): (Wire, _) = postcard::take_from_bytes(payload)
            .map_err(|_| TokenError::Corrupt("unreadable content"))?;
        if !rest.is_empty() {
            return Err(TokenError::Corrupt("trailing bytes"));
        }
        if wire.body.version != 1 {
            return Err(TokenError::Corrupt("unknown token version"));
        }
        if wire.body.seeds.len() > SEEDS_MAX {
            return Err(TokenError::Corrupt("too many seed addresses"));
        }
        Ok(JoinToken { wire })
    }
}

fn mac_of(key: &[u8; 32], body: &Body) -> [u8; 32] {
    let bytes = postcard::to_stdvec(body).unwrap_or_default();
    *blake3::keyed_hash(key, &bytes).as_bytes()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ca() -> ClusterCa {
        ClusterCa::generate("cluster-a").unwrap()
    }

    #[test]
    fn round_trip_and_verify() {
        let ca = ca();
        let seeds = vec!["127.0.0.1:7070".parse().unwrap()];
        let t = JoinToken::mint(&ca, 1_000, seeds.clone());
        let decoded = JoinToken::decode(&t.encode()).unwrap();
        assert_eq!(decoded, t);
        assert_eq!(decoded.seeds(), &seeds[..]);
        decoded.verify(&ca, 999).unwrap();
        assert_eq!(decoded.verify(&ca, 1_005), Err(TokenError::Expired(5)));
    }

    #[test]
    fn foreign_and_forged_tokens_are_refused() {
        let ca = ca();
        let other = ClusterCa::generate("cluster-b").unwrap();
        let t = JoinToken::mint(&other, u64::MAX, vec![]);
        assert!(matches!(
            t.verify(&ca, 0),
            Err(TokenError::ForeignCluster { .. })
        ));
        // Same cluster id, different CA.
        let twin = ClusterCa::generate("cluster-a").unwrap();
        let t = JoinToken::mint(&twin, u64::MAX, vec![]);
        assert_eq!(t.verify(&ca, 0), Err(TokenError::ForeignCa));
        // Right CA, changed body: the MAC fails.
        let mut t = JoinToken::mint(&ca, 10, vec![]);
        t.wire.body.expires_at_unix = u64::MAX;
        assert_eq!(t.verify(&ca, 100), Err(TokenError::BadMac));
    }

    #[test]
    fn malformed_text_is_refused_with_a_reason() {
        let good = JoinToken::mint(&ca(), 5, vec![]).encode();
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
