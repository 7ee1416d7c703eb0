//! Jobs for ordinary programs (`noodle run`), as a subsystem of the node.
//!
//! The core is sans-IO: the durable queue's records and transitions ([`state`]), the
//! control plane's state machine over them ([`machine`]), one node's side of running them
//! ([`engine`]: executor, self-fencing, the leader's leases and placement), and a deterministic
//! simulation of the lease logic that keeps a job from running on two nodes at once ([`sim`]).
//! Architecture invariant: those four modules do no I/O, read no clock and spawn nothing.
//!
//! Around them, the tokio shell the node starts as the `jobs` subsystem ([`Jobs`]): the loop
//! that drives the engine (`runtime`), one job's process (`process`: process group,
//! environment, rlimits or cgroup v2, parent-death signal, bounded output log), shipped files
//! (`ship`, over `chunks.get` streams), output streams to other nodes (`output`), job events
//! (`events`), the `/v1/jobs` and `/v1/chunks` routes (`api`) and the dashboard panel
//! (`panel`).

mod api;
pub mod bench;
pub mod engine;
pub mod events;
pub mod machine;
mod output;
mod panel;
mod process;
mod runtime;

pub mod sim;
pub mod state;
mod subsystem;

pub use engine::{ClusterView, Effect, Engine, EngineConfig, Reported, Signal};
pub use process::sandbox::SandboxConfig;
pub use runtime::JobsError;
pub use state::{JobCommand, JobFile, JobRecord, JobSpec, JobState};
pub use subsystem::{Jobs, JobsConfig, READ, RUN};

/// The label every node carries implicitly for the scheduler: its node id (`noodle run --on
/// NODE` is this label).
pub const NODE_LABEL: &str = "noodle.node";
