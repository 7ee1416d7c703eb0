//! The join protocol: a node with a token asks a member for a certificate.
//!
//! The joiner dials a seed (from the token, `--peer`, or mDNS) on the join ALPN, pinning the CA
//! fingerprint from its token, and sends a [`JoinRequest`]. The member checks the token
//! ([`noodle_security::JoinToken::verify`]) before it issues anything and answers with the
//! cluster's material and the members it knows.

use noodle_security::{ClusterCa, JoinToken, NodeKey};
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::time::Duration;

/// What a joiner sends.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct JoinRequest {
    pub token: String,
    pub node_id: String,
    pub name: String,
    /// Raw P-256 public key to certify.
    pub public_key: Vec<u8>,
}

/// What an admitted joiner receives.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct JoinResponse {
    pub cluster_id: String,
    pub ca_cert: Vec<u8>,
    pub ca_key_pem: String,
    pub node_cert: Vec<u8>,
    /// The joiner's address as the member saw it: tells a node bound to 0.0.0.0 its own IP.
    pub observed_addr: SocketAddr,
    /// Members the admitting node knows: (node id, cluster address).
    pub members: Vec<(String, SocketAddr)>,
}

/// Everything a newly admitted node stores.
pub(crate) struct Admission {
    pub response: JoinResponse,
    pub via: SocketAddr,
}

#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    #[error(transparent)]
    Token(#[from] noodle_security::TokenError),
    #[error(
        "no seed address to join through: the token has none and mDNS found no node of cluster {0} (pass --peer ADDR)"
    )]
    NoSeeds(String),
    #[error("could not join cluster {cluster}: {attempts}")]
    Failed { cluster: String, attempts: String },
}

/// Admission check on the member side: verifies the token and issues the joiner's certificate.
pub(crate) fn admit(ca: &ClusterCa, req: &JoinRequest, now_unix: u64) -> Result<Vec<u8>, String> {
    let token = JoinToken::decode(&req.token).map_err(|e| e.to_string())?;
    token.verify(ca, now_unix).map_err(|e| e.to_string())?;
    if req.node_id.is_empty()
        || req.node_id.len() > 63
        || rustls_pki_types::ServerName::try_from(req.node_id.as_str()).is_err()
    {
        return Err(format!("invalid node id `{}`", req.node_id));
    }
    let cert = ca
        .issue_node_cert(&req.node_id, &req.public_key)
        .map_err(|e| format!("cannot issue certificate: {e}"))?;
    Ok(cert.to_vec())
}

/// Tries each seed in turn until one admits us.
pub(crate) async fn join(
    token: &JoinToken,
    token_text: &str,
    seeds: &[SocketAddr],
    node_id: &str,
    name: &str,
    key: &NodeKey,
) -> Result<Admission, JoinError> {
    let request = JoinRequest {
        token: token_text.trim().to_string(),
        node_id: node_id.to_string(),
        name: name.to_string(),
        public_key: key.public_key_raw(),
    };
    let body = postcard::to_stdvec(&request).unwrap_or_default();
    let mut failures = Vec::new();
    for &seed in seeds {
        match noodle_link::join_call(seed, token.ca_fingerprint(), &body, Duration::from_secs(5))
            .await
        {
            Ok(answer) => match postcard::from_bytes::<JoinResponse>(&answer) {
                Ok(response) if response.cluster_id == token.cluster_id() => {
                    return Ok(Admission {
                        response,
                        via: seed,
                    });
                }
                Ok(_) => failures.push(format!("{seed}: answered for another cluster")),
                Err(e) => failures.push(format!("{seed}: unreadable answer ({e})")),
            },
            Err(e) => failures.push(e.to_string()),
        }
    }
    Err(JoinError::Failed {
        cluster: token.cluster_id().to_string(),
        attempts: failures.join("; "),
    })
}
