//! NoodleDiscovery: who is in the cluster and what each member has.
//!
//! - [`membership`]: SWIM failure detection (foca) as a sans-IO state machine. It takes datagrams
//!   and timer firings and returns datagrams to send and timers to set; the node carries them
//!   over the authenticated QUIC link, never over plain UDP.
//! - [`table`]: the gossiped table of node information (address, resources, labels, measured
//!   links), merged by version with push-pull anti-entropy.
//! - [`mdns`]: LAN discovery of candidate nodes of one cluster. Finding a node admits nothing:
//!   admission still needs a join token.
//!
//! Nothing here opens a socket except the mDNS responder, and nothing reads the clock: callers
//! pass `now`.

pub mod mdns;
pub mod membership;
pub mod table;

pub use membership::{Effect, MemberId, Membership, MembershipConfig, Timer};
pub use table::{LabelError, LinkSample, NodeInfo, NodeTable, SyncMessage, validate_label};
