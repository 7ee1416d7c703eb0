//! Deterministic simulation of the control plane: five real `noodle-control` nodes under
//! partitions, crashes, power losses and delayed, reordered messages, with the safety
//! invariants checked on every run.
//!
//! # What is real and what is simulated
//!
//! Real: `noodle-control` as a node runs it — openraft 0.9 with its elections, replication,
//! snapshots and membership changes, the redb database with its commit protocol, group commit,
//! and [`Control::propose`](noodle_control::Control::propose) and
//! [`Control::read`](noodle_control::Control::read) with their forwarding and read-index
//! paths. Each node grows the cluster itself (`n0` initializes it, every node runs
//! `maintain_membership`), so it has five voters before the first fault.
//!
//! Simulated, all by turmoil on one thread:
//! - the network: TCP with 1–20 ms per message, each message delayed on its own so calls
//!   overtake each other; links that break at random; partitions of one or two nodes (clients
//!   on either side); links of a node held for up to 400 ms and then delivered at once;
//! - the clock: tokio's paused time, advanced by turmoil; nothing reads the wall clock;
//! - the disk: [`disk::Disk`], a redb `StorageBackend` that keeps what was synced and loses
//!   everything written after the last `sync_data` when its node crashes;
//! - crashes: turmoil drops a node's runtime (one node, or several at once as in a power loss),
//!   and the node boots again later from what its disk kept.
//!
//! Clients (three, plus a checker after the faults) reach the nodes over the same network:
//! compare-and-sets and reads of three registers, and writes of unique configuration keys,
//! each sent to a random node.
//!
//! # What a run checks
//!
//! 1. **No acknowledged write is lost.** After the faults stop and the cluster heals, one
//!    linearizable read must return every configuration write that was acknowledged, with its
//!    value.
//! 2. **At most one leader per term.** Every node's Raft metrics are sampled after every step
//!    of the simulation (every simulated millisecond); two nodes seen as leader of the same term
//!    fail the run.
//! 3. **The compare-and-set registers are linearizable.** The history of each register goes to
//!    stateright's [`LinearizabilityTester`](stateright::semantics::LinearizabilityTester);
//!    operations whose outcome the client never learnt are left open, so they may have taken
//!    effect or not. The checker's reads after healing are part of the history.
//!
//! A node whose Raft stops with a fatal error, and a cluster that cannot answer reads within
//! 15 s of healing, fail the run too.
//!
//! # Determinism, and reproducing a seed
//!
//! Everything random comes from the seed: turmoil's network (`Builder::rng_seed`), the clients'
//! and the nemesis's choices (a generator each, derived from the seed), and openraft's election
//! timeouts (`noodle_control::runtime::seed_thread_rng`, seeded once per run: every host runs
//! on the calling thread, so one generator drawn in a fixed order serves them all). The harness
//! keeps its state in ordered maps. [`SimReport::fingerprint`] hashes every event of a run, and
//! two runs of one seed give the same fingerprint.
//!
//! tokio has one source of randomness no seed reaches (without `--cfg tokio_unstable`): it
//! wakes the tasks waiting on one `watch` channel, and picks between ready `select!` branches,
//! in an order drawn from a per-runtime generator. The simulation keeps off those paths:
//! metrics are sampled between steps instead of awaited; Raft messages that cannot connect fail
//! as timeouts (see `net`); and the control plane waits for its applied index without them.
//! Connections live in the hosts' `LocalSet` tasks, because the order in which a crashed
//! runtime drops its other tasks depends on tokio's process-wide task ids.
//!
//! A failing run names its seed and what broke; run it again alone, with its events, with
//! `NOODLE_SIM_SEED=<seed> NOODLE_SIM_TRACE=1 cargo test -p noodle-sim --test it hundred_seeds
//! -- --nocapture`. `NOODLE_SIM_SEEDS=<n>` runs seeds `0..n` instead of the default 100, and
//! `NOODLE_SIM_TWICE=1` runs each seed a second time and compares the fingerprints.

pub mod disk;
mod harness;
mod history;
mod net;

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

/// What a run simulates. [`SimOptions::default`] is what CI runs.
#[derive(Debug, Clone)]
pub struct SimOptions {
    /// How long faults are injected, after a warm-up of 1.5 s in which the cluster grows to five
    /// voters. The run then heals everything and checks.
    pub chaos: Duration,
    /// Workload clients (each one a "thread" of the register history).
    pub clients: usize,
    /// Compare-and-set registers the clients share.
    pub registers: usize,
    /// A client waits up to this long between two operations.
    pub think_ms_max: u64,
    /// Simulated time per step. Messages are delivered at step boundaries.
    pub tick: Duration,
    /// Probability that a message breaks its link for a while (turmoil's `fail_rate`).
    pub message_fail_rate: f64,
    /// The deliberately broken variant: log appends are acknowledged before they are synced.
    /// The invariants must catch it.
    pub ack_before_fsync: bool,
    /// Keep every event of the run in [`SimReport::trace`] (a failure keeps the last ones
    /// regardless).
    pub keep_trace: bool,
}

impl Default for SimOptions {
    fn default() -> Self {
        SimOptions {
            chaos: Duration::from_secs(6),
            clients: 3,
            registers: 3,
            think_ms_max: 40,
            tick: Duration::from_millis(1),
            message_fail_rate: 0.001,
            ack_before_fsync: false,
            keep_trace: false,
        }
    }
}

/// What a run that kept every invariant did. Equal for two runs of the same seed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimReport {
    pub seed: u64,
    /// Register operations that answered, that certainly did nothing, and whose outcome is
    /// unknown (timeouts).
    pub register_ops_returned: usize,
    pub register_ops_not_applied: usize,
    pub register_ops_unknown: usize,
    pub writes_acknowledged: usize,
    pub writes_not_acknowledged: usize,
    /// The leader of each term that had one.
    pub leaders: BTreeMap<u64, String>,
    /// Node crashes, power losses (several nodes at once, each counted in `crashes` too),
    /// partitions and held links.
    pub crashes: usize,
    pub power_losses: usize,
    pub partitions: usize,
    pub delays: usize,
    /// Voters the leader counted when the faults began (5 once the cluster has grown).
    pub voters_before_faults: usize,
    /// The applied index of the node that answered the final read.
    pub final_commit_index: u64,
    /// Simulated time the run took.
    pub simulated: Duration,
    /// blake3 of every event of the run (operations and their outcomes, faults, leaders), in
    /// order, with its simulated time.
    pub fingerprint: String,
    /// Every event, one a line with its simulated time, if [`SimOptions::keep_trace`] asked.
    pub trace: Vec<String>,
}

/// One broken invariant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// An acknowledged write is missing or has another value after the cluster healed.
    LostWrite {
        key: String,
        value: String,
        found: Option<String>,
    },
    /// The register's history has no linearization; `history` lists its operations.
    NotLinearizable { register: String, history: String },
    TwoLeaders {
        term: u64,
        first: String,
        second: String,
    },
    /// A node's Raft stopped with a fatal error (a panic or a storage failure).
    NodeFatal { node: String, error: String },
    /// After healing, the cluster did not answer in time.
    NoRecovery { what: String },
    /// The simulation itself failed: a node could not boot, or it ran out of time.
    Simulation(String),
}

impl Failure {
    /// Failures sorted by how much they say: a lost write first.
    fn rank(&self) -> u8 {
        match self {
            Failure::LostWrite { .. } => 0,
            Failure::NotLinearizable { .. } => 1,
            Failure::TwoLeaders { .. } => 2,
            Failure::NodeFatal { .. } => 3,
            Failure::NoRecovery { .. } => 4,
            Failure::Simulation(_) => 5,
        }
    }

    /// True for the invariants on data: a lost write or a non-linearizable history.
    pub fn is_data_loss(&self) -> bool {
        matches!(
            self,
            Failure::LostWrite { .. } | Failure::NotLinearizable { .. }
        )
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::LostWrite {
                key,
                value,
                found: None,
            } => {
                write!(f, "acknowledged write {key}={value} was lost")
            }
            Failure::LostWrite {
                key,
                value,
                found: Some(found),
            } => write!(
                f,
                "acknowledged write {key}={value} was lost: the cluster has {key}={found}"
            ),
            Failure::NotLinearizable { register, history } => {
                write!(
                    f,
                    "history of register {register} is not linearizable:\n{history}"
                )
            }
            Failure::TwoLeaders {
                term,
                first,
                second,
            } => {
                write!(f, "two leaders in term {term}: {first} and {second}")
            }
            Failure::NodeFatal { node, error } => write!(f, "node {node} stopped: {error}"),
            Failure::NoRecovery { what } => {
                write!(f, "the cluster did not recover after healing: {what}")
            }
            Failure::Simulation(e) => write!(f, "the simulation failed: {e}"),
        }
    }
}

/// A run that broke an invariant.
#[derive(Debug, Clone)]
pub struct SimFailure {
    pub seed: u64,
    /// Every broken invariant, the most telling first.
    pub failures: Vec<Failure>,
    /// The last events of the run, one a line with its simulated time.
    pub trace_tail: Vec<String>,
}

impl fmt::Display for SimFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "seed {}: ", self.seed)?;
        match self.failures.split_first() {
            Some((first, rest)) => {
                write!(f, "{first}")?;
                if !rest.is_empty() {
                    write!(f, "\n(and {} more:", rest.len())?;
                    for other in rest.iter().take(10) {
                        let line = other.to_string();
                        let line = line.lines().next().unwrap_or_default();
                        write!(f, "\n  {line}")?;
                    }
                    write!(f, ")")?;
                }
                Ok(())
            }
            None => write!(f, "failed"),
        }
    }
}

impl std::error::Error for SimFailure {}

/// Runs one seed and checks every invariant. The same seed gives the same run.
pub fn run_seed(seed: u64, opts: &SimOptions) -> Result<SimReport, SimFailure> {
    harness::run(seed, opts)
}

#[cfg(test)]
mod tests;
