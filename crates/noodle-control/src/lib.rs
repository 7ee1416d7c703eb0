//! The control plane: cluster-wide state kept by Raft (openraft) on redb.
//!
//! Every voter keeps the Raft log and the replicated state in one redb database ([`Store`]).
//! A write ([`Proposal`]) is acknowledged only after it is durable on a majority and applied;
//! reads through [`Control::read`] are linearizable. The replicated state holds the
//! user-visible configuration, compare-and-set registers, the capability root key, the token
//! revocation list, cluster policies, and the hash-chained audit log with its signed
//! checkpoints ([`state`] lists the layout). Subsystems keep their own records beside these
//! through a [`StateMachine`] each (jobs, later the fabric's metadata): this crate knows
//! none of their types. Every proposal is applied once, however often it is resent.
//!
//! The crate does no I/O of its own besides the database: Raft messages go through a
//! [`Transport`] the caller provides (NoodleLink in a node, turmoil in `noodle-sim`), and the
//! caller reports membership health to [`Control::maintain_membership`].

mod control;
mod machine;
mod network;
pub mod runtime;
pub mod state;
mod store;
mod types;

pub use control::{
    Control, ControlConfig, ControlError, ControlStatus, Metrics, MetricsWatch, PeerHealth, Role,
    WireError,
};
pub use machine::{
    Applied, MACHINE_NAME_BYTES_MAX, MachineTable, MachineView, Machines, Pairs, Records,
    Rejection, StateMachine,
};
pub use network::{Transport, TransportError, TransportFuture};
pub use state::{AUDIT_PRUNE_ENTRIES_MAX, StateView};
pub use store::{AppendDurability, DbError, Store};
pub use types::{
    Command, ForwardGate, Forwarded, Member, Needs, Proposal, RaftId, Response, TypeConfig,
    base_node_id, limits, raft_id, validate_config_key,
};
