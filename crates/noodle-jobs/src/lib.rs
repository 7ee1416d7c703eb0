//! Jobs for ordinary programs (`noodle run`): the durable queue's records and transitions
//! ([`state`]), one node's side of running them as a sans-IO state machine ([`engine`]), and
//! a deterministic simulation of the lease logic that keeps a job from running on two nodes
//! at once ([`sim`]).
//!
//! Architecture invariant: this crate does no I/O, reads no clock and spawns nothing. The
//! control plane applies [`state::transition`] in its replicated state machine; a node's
//! runtime drives an [`engine::Engine`] with what it observes and does what the engine asks.
//! Nothing here depends on the control plane or the node crates: they depend on this one.

#![forbid(unsafe_code)]

pub mod engine;
pub mod sim;
pub mod state;

pub use engine::{ClusterView, Effect, Engine, EngineConfig, Reported, Signal};
pub use state::{JobCommand, JobFile, JobRecord, JobSpec, JobState, transition};
