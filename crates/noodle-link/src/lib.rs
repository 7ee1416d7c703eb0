//! NoodleLink: the QUIC transport between nodes.
//!
//! Every connection is QUIC (quinn) with TLS 1.3 (rustls on aws-lc-rs), key exchange restricted to
//! the post-quantum hybrid X25519MLKEM768, and mutual authentication with certificates of the
//! cluster CA. Two ALPNs share one UDP port:
//!
//! - `noodle/1`: member to member. Both sides present a certificate issued by the cluster CA; a
//!   connection without one is closed before any byte of application data is read.
//! - `noodle-join/1`: a joiner that has no certificate yet. It pins the CA fingerprint from its
//!   token and may send exactly one request, the join request, which the node checks against the
//!   token before anything is issued.
//!
//! On top: request/response over bidirectional streams ([`frame`]), datagrams (for membership
//! gossip), raw streams (bulk), connection reuse, deadlines and bounded retries.
//!
//! This crate knows nothing about what the requests mean; it must never read or write the data
//! directory.

pub mod frame;
mod gate;
mod link;
mod messages;
mod tls;

pub use frame::{FrameError, RemoteError};
pub use gate::{HANDSHAKES_MAX, HANDSHAKES_PER_SOURCE_MAX};
pub use link::{
    JoinPeer, Link, LinkConfig, LinkError, LinkEvent, LinkInfo, Peer, Service, ServiceFuture,
    join_call,
};
pub use messages::{MessageError, recv_message, send_message};
/// The two halves of a raw stream ([`Link::open_stream`], [`Service::stream`]).
pub use quinn::{RecvStream, SendStream};
pub use tls::{TlsError, TlsMaterial, client_config_with_cert};

/// ALPN of member-to-member connections.
pub const ALPN_CLUSTER: &[u8] = b"noodle/1";
/// ALPN of a joiner's connection.
pub const ALPN_JOIN: &[u8] = b"noodle-join/1";
/// The only key-exchange group node-to-node links accept.
pub const KX_GROUP: &str = "X25519MLKEM768";
