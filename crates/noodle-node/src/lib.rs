//! One running Noodle node: wires transport, discovery, membership, resources, the control
//! plane, the subsystems, events and the API together, and owns the data directory.
//!
//! The protocol logic lives in the subsystem crates (sans-IO where it matters) and the seam
//! between the node and its subsystems in `noodle-host`; this crate is the I/O shell that
//! starts them: tokio tasks, timers, files. It must never hold a lock across an `.await`, and
//! every queue it owns is bounded. Modules depend on each other in one direction only
//! (`node` → `api`, `service`, `membership`, `control_api` → `control`, `join` → `cluster`,
//! `datadir`): none imports one that imports it.

mod api;
mod cluster;
mod control;
mod control_api;
mod dashboard;
mod datadir;
mod join;
mod keys;
mod membership;
mod node;
mod removal;
mod service;
mod session;

pub use control::{ControlPlaneError, LinkTransport};
pub use datadir::{DataDir, DataDirError};
pub use join::JoinError;
pub use keys::CERT_TTL_MIN;
pub use node::{NodeConfig, NodeError, RunningNode, start};

/// Verifies the audit log of a control-plane database file of a stopped node (or a copy).
pub fn verify_audit_file(
    path: &std::path::Path,
) -> Result<noodle_api::AuditVerifyReport, noodle_control::DbError> {
    let in_file =
        |e: noodle_control::DbError| noodle_control::DbError(format!("{}: {e}", path.display()));
    let store = noodle_control::Store::open(path).map_err(in_file)?;
    noodle_host::verify_audit(&store.view().map_err(in_file)?).map_err(in_file)
}
