//! Identities and trust: the cluster certificate authority, node certificates and join tokens.
//!
//! Everything that decides *who is a member* lives here, as plain data and pure functions: no
//! sockets, no async. The transport (`noodle-link`) turns this material into TLS configurations;
//! the node (`noodle-node`) stores it in the data directory.
//!
//! Architecture invariant: a certificate is issued only after [`JoinToken::verify`] accepted the
//! token for the cluster's own CA (fingerprint, cluster id, expiry) and the control plane's
//! record of the token matched its secret ([`JoinToken::matches`]) and had a use left.

mod ca;
mod token;

pub use ca::{
    CLUSTER_SERVER_NAME, ClusterCa, NODE_CERT_TTL, NodeKey, cert_validity, check_node_cert,
    fingerprint, node_id_for_host, node_id_of_cert, renewal_due,
};
pub use token::{JoinToken, TOKEN_PREFIX, TokenError};

/// Errors from certificate work.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("certificate generation failed: {0}")]
    Rcgen(#[from] rcgen::Error),
    #[error("invalid key or certificate: {0}")]
    Invalid(String),
}
