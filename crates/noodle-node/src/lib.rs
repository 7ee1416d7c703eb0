//! One running Noodle node: wires transport, discovery, membership, resources, events and the
//! API together, and owns the data directory.
//!
//! The protocol logic lives in the subsystem crates (sans-IO where it matters); this crate is the
//! I/O shell around them: tokio tasks, timers, files. It must never hold a lock across an
//! `.await`, and every queue it owns is bounded.

mod api;
mod api_control;
mod api_jobs;
mod control;
mod dashboard;
mod datadir;
mod events;
mod jobs;
mod join;
mod node;
mod process;
mod ship;

pub use control::{ControlPlaneError, LinkTransport, serve_control, verify_audit_file};
pub use datadir::{DataDir, DataDirError};
pub use join::JoinError;
pub use node::{JobsConfig, NODE_LABEL, NodeConfig, NodeError, RunningNode, start};

/// Unix time in milliseconds (0 if the clock is before 1970).
pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
