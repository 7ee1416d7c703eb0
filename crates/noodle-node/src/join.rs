//! The join protocol: a node with a token asks a member for a certificate.
//!
//! The joiner dials a seed (from the token, `--peer`, or mDNS) on the join ALPN, pinning the CA
//! fingerprint from its token, and sends a [`JoinRequest`]. The member checks the token
//! ([`noodle_security::JoinToken::verify`]) before it issues anything and answers with the
//! cluster's material and the members it knows.

use crate::cluster::ClusterState;
use noodle_api::{EventKind, TokenRequest, TokenResponse};
use noodle_host::EventBus;
use noodle_link::{JoinPeer, RemoteError};
use noodle_security::{ClusterCa, JoinToken, NodeKey};
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::time::Duration;

/// Seeds a join token carries besides this node, at most.
const TOKEN_SEEDS_MAX: usize = 7;

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

fn now_unix() -> u64 {
    noodle_host::now_ms() / 1000
}

/// Mints a join token; seeds are the alive members' cluster addresses unless left out.
pub(crate) fn create_token(
    ca: &ClusterCa,
    cluster: &ClusterState,
    req: &TokenRequest,
) -> TokenResponse {
    let seeds: Vec<SocketAddr> = if req.no_addresses {
        Vec::new()
    } else {
        let mut seeds = vec![cluster.advertise];
        seeds.extend(
            cluster
                .members_where(|s| s == noodle_api::NodeState::Alive)
                .into_iter()
                .map(|(_, addr)| addr)
                .take(TOKEN_SEEDS_MAX),
        );
        seeds
    };
    let expires = now_unix().saturating_add(req.ttl_secs);
    let token = JoinToken::mint(ca, expires, seeds.clone());
    TokenResponse {
        token: token.encode(),
        expires_at_unix: expires,
        seeds: seeds.iter().map(ToString::to_string).collect(),
    }
}

/// Answers a joiner (member side): checks its token, issues its certificate, and tells it the
/// cluster's material and the members this node knows.
pub(crate) fn handle_join(
    ca: &ClusterCa,
    cluster: &ClusterState,
    events: &EventBus,
    peer: &JoinPeer,
    body: &[u8],
) -> Result<Vec<u8>, RemoteError> {
    let req: JoinRequest = postcard::from_bytes(body)
        .map_err(|_| RemoteError::new(RemoteError::BAD_REQUEST, "unreadable join request"))?;
    match admit(ca, &req, now_unix()) {
        Ok(node_cert) => {
            let mut members = vec![(cluster.node_id.clone(), cluster.advertise)];
            members.extend(cluster.live_members());
            let response = JoinResponse {
                cluster_id: cluster.cluster_id.clone(),
                ca_cert: ca.cert_der().to_vec(),
                ca_key_pem: ca.key_pem(),
                node_cert,
                observed_addr: peer.remote,
                members,
            };
            events.emit(
                EventKind::JOIN_ADMITTED,
                &req.node_id,
                format!("{} ({}) from {}", req.name, req.node_id, peer.remote),
            );
            Ok(postcard::to_stdvec(&response).unwrap_or_default())
        }
        Err(reason) => {
            metrics::counter!("noodle_join_refused_total").increment(1);
            events.emit(
                EventKind::JOIN_REFUSED,
                &req.node_id,
                format!("from {}: {reason}", peer.remote),
            );
            Err(RemoteError::new(RemoteError::FORBIDDEN, reason))
        }
    }
}
