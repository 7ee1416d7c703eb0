//! The memory fabric: one replicated, versioned, queryable store for the whole cluster.
//!
//! [`chunks`] is a node's chunk store and how chunks move between nodes (jobs ship their files
//! with it too). Sans-IO cores, each with its own tests:
//! - [`path`]: what a fabric path and a prefix are;
//! - [`hlc`]: hybrid logical time, which orders versions across nodes;
//! - [`placement`]: which nodes hold a chunk's copies (weighted rendezvous hashing over free
//!   disk, spread over failure domains);
//! - [`replication`]: where a new version goes, when its write is acknowledged, and what
//!   repair copies where; [`sim`] runs it through node deaths, disk loss and corruption;
//! - [`machine`]: the fabric's part of the replicated state (paths, versions, tags, replica
//!   locations), applied by the control plane. Chunks and bulk bytes never go through Raft;
//! - [`grants`]: which nodes may write where because they run a job given `--write`.
//! - [`vector`]: the approximate-nearest-neighbour index over the vectors attached to
//!   objects (HNSW, cosine similarity), one per top-level namespace.

mod api;
pub mod chunks;
mod gc;
pub mod grants;
mod handle;
pub mod hlc;
pub mod machine;
mod near;
pub mod path;
pub mod placement;
mod repair;
pub mod replication;
pub mod sim;
mod snapshots;
mod stats;
mod subsystem;
pub mod vector;

pub use handle::{FabricHandle, HOLDERS_MAX, HandleError, Pins};
pub use hlc::{Hlc, HlcClock};
pub use path::{ObjectPath, PathError, Prefix};
pub use placement::{Candidate, place};
pub use subsystem::{Fabric, FabricConfig, READ, WRITE};
