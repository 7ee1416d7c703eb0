//! The job scheduler behind `noodle run`: decides which node runs which job.
//!
//! Sans-IO: no clocks, no randomness, no sockets. The caller feeds in cluster facts
//! ([`Scheduler::add_node`], [`Scheduler::set_rtt`], [`Scheduler::set_load`]) and job events
//! ([`Scheduler::submit`], [`Scheduler::finished`], [`Scheduler::cancel`]), and asks
//! [`Scheduler::place`] for the [`Placement`]s that can start now. The same inputs always give
//! the same placements, so the scheduler can be replayed in a simulation ([`sim`]).
//!
//! # Invariants
//!
//! * **A node never runs more than it advertised**: the sum of the CPUs, memory and GPUs of the
//!   jobs placed on a node never exceeds its [`NodeSpec`]. Resources are reserved when a job is
//!   placed and released by [`Scheduler::finished`], [`Scheduler::cancel`] or
//!   [`Scheduler::remove_node`]. The check lives in the scheduler, not in the [`Policy`], so no
//!   policy (ours or a baseline) can break it.
//! * **A job that can never fit is rejected at once** by [`Scheduler::submit`], with a
//!   [`Rejected`] that says why, judged against the nodes known at submission time.
//! * **Everything is bounded**: queued jobs ([`QUEUED_MAX`]), nodes ([`NODES_MAX`]), RTT
//!   entries ([`RTT_ENTRIES_MAX`]), inputs and labels per job.
//!
//! # Queueing and fairness
//!
//! Each submitter has its own FIFO queue; [`Scheduler::place`] serves submitters round-robin
//! (in name order, resuming after the last submitter it served), one job per turn.
//!
//! *Within* one submitter the queue is strict FIFO with head-of-line blocking: if a submitter's
//! oldest job does not fit anywhere right now, none of that submitter's later jobs start, even
//! if they would fit. We chose this because users expect `noodle run a; noodle run b` to start
//! in order, and it keeps a large job from being starved by its own submitter's small jobs.
//!
//! *Across* submitters there is backfill: a blocked head only blocks its own submitter, so one
//! submitter's 64-CPU job never holds up another submitter's 1-CPU jobs. The price is that a
//! large job can wait for as long as other submitters keep the cluster busy; there is no
//! reservation for it (yet).
//!
//! Queued jobs stay queued when a node is removed (it may come back); callers that want to give
//! up on them use [`Scheduler::cancel`].

#![forbid(unsafe_code)]

mod policy;
pub mod sim;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};

use serde::{Deserialize, Serialize};
use thiserror::Error;

pub use policy::{Context, LeastLoaded, NextFit, NodeView, Policy, RoundRobin, Scored, weights};

/// Most jobs that may wait in the queue, over all submitters.
pub const QUEUED_MAX: usize = 100_000;
/// Most nodes the scheduler tracks.
pub const NODES_MAX: usize = 10_000;
/// Most entries in the RTT table; further [`Scheduler::set_rtt`] calls for new pairs are ignored.
pub const RTT_ENTRIES_MAX: usize = 1_000_000;
/// Most `(node, bytes)` inputs one job may declare.
pub const INPUTS_MAX: usize = 256;
/// Most labels one job or node may carry.
pub const LABELS_MAX: usize = 64;
/// RTT assumed between two nodes nobody measured: pessimistic, so measured nodes win.
pub const RTT_UNKNOWN_US: u64 = 50_000;

/// A node as it advertises itself.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeSpec {
    /// Node id, unique in the cluster.
    pub id: String,
    /// CPU slots: the most CPUs' worth of jobs the node runs at once.
    pub cpus: u32,
    /// Memory available to jobs.
    pub mem_bytes: u64,
    /// GPUs available to jobs.
    pub gpus: u32,
    /// Free-form labels. Two are read by the scheduler: `cost` (relative cost/energy weight,
    /// float, default 1.0) and `speed` (relative per-CPU speed, float, default 1.0).
    pub labels: BTreeMap<String, String>,
}

impl NodeSpec {
    /// The `cost` label as a positive float; 1.0 when absent or malformed.
    pub fn cost(&self) -> f64 {
        positive_label(&self.labels, "cost")
    }

    /// The `speed` label as a positive float; 1.0 when absent or malformed.
    pub fn speed(&self) -> f64 {
        positive_label(&self.labels, "speed")
    }
}

fn positive_label(labels: &BTreeMap<String, String>, key: &str) -> f64 {
    labels
        .get(key)
        .and_then(|v| v.parse::<f64>().ok())
        .filter(|v| v.is_finite() && *v > 0.0)
        .unwrap_or(1.0)
}

/// A job as submitted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobSpec {
    /// Job id, unique among queued and running jobs.
    pub id: u64,
    /// Who submitted it; the unit of fairness.
    pub submitter: String,
    /// The node it was submitted from (for RTT to the submitter).
    pub origin: String,
    /// CPU slots needed; at least 1.
    pub cpus: u32,
    /// Memory needed.
    pub mem_bytes: u64,
    /// GPUs needed.
    pub gpus: u32,
    /// Labels the node must carry with exactly these values.
    pub labels: BTreeMap<String, String>,
    /// Input data: the node holding it and its size.
    pub inputs: Vec<(String, u64)>,
}

/// The decision to start a job on a node. Its resources are already reserved.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Placement {
    /// The job.
    pub job: u64,
    /// The node to run it on.
    pub node: String,
}

/// Why [`Scheduler::submit`] refused a job. Nothing changed in the scheduler.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum Rejected {
    /// The job asked for zero CPUs.
    #[error("job {job} asks for 0 CPUs; ask for at least 1")]
    ZeroCpus { job: u64 },
    /// The cluster has no nodes.
    #[error("no nodes in the cluster; add a node and resubmit")]
    NoNodes,
    /// No node has that many CPU slots.
    #[error("needs {needed} CPUs; the largest node has {largest}")]
    TooManyCpus { needed: u32, largest: u32 },
    /// No node has that much memory.
    #[error("needs {needed} bytes of memory; the largest node has {largest}")]
    TooMuchMemory { needed: u64, largest: u64 },
    /// No node has that many GPUs.
    #[error("needs {needed} GPUs; the largest node has {largest}")]
    TooManyGpus { needed: u32, largest: u32 },
    /// No node carries a required label.
    #[error("no node has label {key}={value}")]
    NoSuchLabel { key: String, value: String },
    /// Every requirement is met by some node, but no single node meets them all.
    #[error(
        "no single node has {cpus} CPUs, {mem_bytes} bytes, {gpus} GPUs and the labels asked for"
    )]
    NoSingleNodeFits {
        cpus: u32,
        mem_bytes: u64,
        gpus: u32,
    },
    /// A queued or running job already has this id.
    #[error("job id {job} is already queued or running")]
    DuplicateId { job: u64 },
    /// Too many inputs or labels.
    #[error("job {job} declares too many inputs or labels (at most {INPUTS_MAX} and {LABELS_MAX})")]
    TooLarge { job: u64 },
    /// The queue is full.
    #[error("the queue is full ({max} jobs); retry later")]
    QueueFull { max: usize },
}

/// Why [`Scheduler::add_node`] refused a node. Nothing changed in the scheduler.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum NodeError {
    /// A node with this id is already known; remove it first.
    #[error("node {0} is already known; remove it first")]
    Duplicate(String),
    /// The scheduler already tracks [`NODES_MAX`] nodes.
    #[error("too many nodes (at most {NODES_MAX})")]
    TooMany,
    /// The node carries more than [`LABELS_MAX`] labels.
    #[error("node {0} has too many labels (at most {LABELS_MAX})")]
    TooManyLabels(String),
}

/// Where a job is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobState {
    /// Waiting for resources.
    Queued,
    /// Placed and holding resources.
    Running,
}

/// A node and what is reserved on it.
#[derive(Debug, Clone)]
struct NodeState {
    spec: NodeSpec,
    used_cpus: u32,
    used_mem: u64,
    used_gpus: u32,
    load_1m: f64,
    running: BTreeSet<u64>,
}

impl NodeState {
    fn fits(&self, job: &JobSpec) -> bool {
        // Checked arithmetic: a job's request is user input and may be absurd.
        let cpus_ok = self
            .used_cpus
            .checked_add(job.cpus)
            .is_some_and(|c| c <= self.spec.cpus);
        let mem_ok = self
            .used_mem
            .checked_add(job.mem_bytes)
            .is_some_and(|m| m <= self.spec.mem_bytes);
        let gpus_ok = self
            .used_gpus
            .checked_add(job.gpus)
            .is_some_and(|g| g <= self.spec.gpus);
        cpus_ok && mem_ok && gpus_ok && labels_match(&self.spec, job)
    }

    fn view(&self) -> NodeView<'_> {
        NodeView {
            spec: &self.spec,
            used_cpus: self.used_cpus,
            used_mem: self.used_mem,
            used_gpus: self.used_gpus,
            load_1m: self.load_1m,
            running: self.running.len(),
        }
    }
}

fn labels_match(node: &NodeSpec, job: &JobSpec) -> bool {
    job.labels
        .iter()
        .all(|(k, v)| node.labels.get(k).is_some_and(|nv| nv == v))
}

/// Measured round-trip times between nodes, symmetric.
#[derive(Debug, Clone, Default)]
pub struct RttTable {
    us: HashMap<(String, String), u64>,
}

impl RttTable {
    fn key(a: &str, b: &str) -> (String, String) {
        if a <= b {
            (a.to_owned(), b.to_owned())
        } else {
            (b.to_owned(), a.to_owned())
        }
    }

    /// RTT between `a` and `b` in microseconds: 0 for the same node, [`RTT_UNKNOWN_US`] when
    /// never measured.
    pub fn get(&self, a: &str, b: &str) -> u64 {
        if a == b {
            return 0;
        }
        self.us
            .get(&Self::key(a, b))
            .copied()
            .unwrap_or(RTT_UNKNOWN_US)
    }
}

/// The scheduler: nodes, queues and reservations, with a pluggable [`Policy`] that picks among
/// the nodes a job fits on.
#[derive(Debug)]
pub struct Scheduler<P: Policy = Scored> {
    policy: P,
    nodes: BTreeMap<String, NodeState>,
    rtt: RttTable,
    /// Per-submitter FIFO queues of job ids; a submitter with an empty queue has no entry.
    queues: BTreeMap<String, VecDeque<u64>>,
    /// The submitter served last by [`Scheduler::place`]; the next round starts after it.
    cursor: Option<String>,
    queued: HashMap<u64, JobSpec>,
    /// Running jobs and the node each runs on.
    running: HashMap<u64, (JobSpec, String)>,
}

impl Default for Scheduler<Scored> {
    fn default() -> Self {
        Self::new(Scored)
    }
}

impl<P: Policy> Scheduler<P> {
    /// An empty scheduler that picks nodes with `policy`.
    pub fn new(policy: P) -> Self {
        Self {
            policy,
            nodes: BTreeMap::new(),
            rtt: RttTable::default(),
            queues: BTreeMap::new(),
            cursor: None,
            queued: HashMap::new(),
            running: HashMap::new(),
        }
    }

    /// Adds a node with nothing reserved on it.
    pub fn add_node(&mut self, spec: NodeSpec) -> Result<(), NodeError> {
        if self.nodes.contains_key(&spec.id) {
            return Err(NodeError::Duplicate(spec.id));
        }
        if self.nodes.len() >= NODES_MAX {
            return Err(NodeError::TooMany);
        }
        if spec.labels.len() > LABELS_MAX {
            return Err(NodeError::TooManyLabels(spec.id));
        }
        let state = NodeState {
            spec,
            used_cpus: 0,
            used_mem: 0,
            used_gpus: 0,
            load_1m: 0.0,
            running: BTreeSet::new(),
        };
        self.nodes.insert(state.spec.id.clone(), state);
        Ok(())
    }

    /// Removes a node and returns the ids of the jobs that were running on it, in ascending
    /// order; they are forgotten here, and the caller decides whether to mark them lost or
    /// resubmit them. Unknown nodes return nothing.
    pub fn remove_node(&mut self, id: &str) -> Vec<u64> {
        let Some(state) = self.nodes.remove(id) else {
            return Vec::new();
        };
        for job in &state.running {
            self.running.remove(job);
        }
        state.running.into_iter().collect()
    }

    /// Records the RTT between two nodes in microseconds (symmetric). Returns false when the
    /// table is full and the pair is new, in which case nothing changed.
    pub fn set_rtt(&mut self, from: &str, to: &str, us: u64) -> bool {
        let key = RttTable::key(from, to);
        if self.rtt.us.len() >= RTT_ENTRIES_MAX && !self.rtt.us.contains_key(&key) {
            return false;
        }
        self.rtt.us.insert(key, us);
        true
    }

    /// Records a node's 1-minute load average (from outside the scheduler's own jobs too).
    /// Ignored for unknown nodes and non-finite or negative values.
    pub fn set_load(&mut self, node: &str, load_1m: f64) {
        if let Some(state) = self.nodes.get_mut(node)
            && load_1m.is_finite()
            && load_1m >= 0.0
        {
            state.load_1m = load_1m;
        }
    }

    /// Queues a job, or rejects it at once if no known node could ever run it.
    pub fn submit(&mut self, job: JobSpec) -> Result<(), Rejected> {
        self.check_possible(&job)?;
        if self.queued.contains_key(&job.id) || self.running.contains_key(&job.id) {
            return Err(Rejected::DuplicateId { job: job.id });
        }
        if self.queued.len() >= QUEUED_MAX {
            return Err(Rejected::QueueFull { max: QUEUED_MAX });
        }
        self.queues
            .entry(job.submitter.clone())
            .or_default()
            .push_back(job.id);
        self.queued.insert(job.id, job);
        Ok(())
    }

    /// Would `job` fit on some empty node? If not, says which requirement fails first.
    fn check_possible(&self, job: &JobSpec) -> Result<(), Rejected> {
        if job.cpus == 0 {
            return Err(Rejected::ZeroCpus { job: job.id });
        }
        if job.inputs.len() > INPUTS_MAX || job.labels.len() > LABELS_MAX {
            return Err(Rejected::TooLarge { job: job.id });
        }
        let specs = || self.nodes.values().map(|n| &n.spec);
        let Some(largest_cpus) = specs().map(|s| s.cpus).max() else {
            return Err(Rejected::NoNodes);
        };
        if job.cpus > largest_cpus {
            return Err(Rejected::TooManyCpus {
                needed: job.cpus,
                largest: largest_cpus,
            });
        }
        let largest_mem = specs().map(|s| s.mem_bytes).max().unwrap_or(0);
        if job.mem_bytes > largest_mem {
            return Err(Rejected::TooMuchMemory {
                needed: job.mem_bytes,
                largest: largest_mem,
            });
        }
        let largest_gpus = specs().map(|s| s.gpus).max().unwrap_or(0);
        if job.gpus > largest_gpus {
            return Err(Rejected::TooManyGpus {
                needed: job.gpus,
                largest: largest_gpus,
            });
        }
        for (key, value) in &job.labels {
            if !specs().any(|s| s.labels.get(key) == Some(value)) {
                return Err(Rejected::NoSuchLabel {
                    key: key.clone(),
                    value: value.clone(),
                });
            }
        }
        let fits_empty = specs().any(|s| {
            job.cpus <= s.cpus
                && job.mem_bytes <= s.mem_bytes
                && job.gpus <= s.gpus
                && labels_match(s, job)
        });
        if !fits_empty {
            return Err(Rejected::NoSingleNodeFits {
                cpus: job.cpus,
                mem_bytes: job.mem_bytes,
                gpus: job.gpus,
            });
        }
        Ok(())
    }

    /// Places every queued job that can start now and reserves its resources.
    ///
    /// Submitters are served round-robin, one job per turn; a submitter whose oldest job fits
    /// nowhere (or that the policy declines to place) sits out the rest of this call. See the
    /// crate docs for the fairness rules.
    pub fn place(&mut self) -> Vec<Placement> {
        let mut placements = Vec::new();
        let mut blocked: BTreeSet<String> = BTreeSet::new();
        while let Some(submitter) = self.next_submitter(&blocked) {
            self.cursor = Some(submitter.clone());
            match self.try_place_head(&submitter) {
                Some(p) => placements.push(p),
                None => {
                    blocked.insert(submitter);
                }
            }
        }
        placements
    }

    /// The first submitter after the cursor (wrapping) with queued jobs that is not blocked.
    fn next_submitter(&self, blocked: &BTreeSet<String>) -> Option<String> {
        let eligible = |(name, _): &(&String, &VecDeque<u64>)| !blocked.contains(*name);
        let after = match &self.cursor {
            Some(c) => self
                .queues
                .range::<String, _>((
                    std::ops::Bound::Excluded(c.clone()),
                    std::ops::Bound::Unbounded,
                ))
                .find(eligible),
            None => None,
        };
        after
            .or_else(|| self.queues.iter().find(eligible))
            .map(|(name, _)| name.clone())
    }

    /// Tries to place `submitter`'s oldest job; returns the placement if it started.
    fn try_place_head(&mut self, submitter: &str) -> Option<Placement> {
        let job_id = *self.queues.get(submitter)?.front()?;
        let job = self.queued.get(&job_id)?;
        let fitting: Vec<&NodeState> = self.nodes.values().filter(|n| n.fits(job)).collect();
        if fitting.is_empty() {
            return None;
        }
        let views: Vec<NodeView<'_>> = fitting.iter().map(|n| n.view()).collect();
        let all: Vec<&NodeSpec> = self.nodes.values().map(|n| &n.spec).collect();
        let ctx = Context {
            rtt: &self.rtt,
            nodes: &all,
        };
        let chosen = self.policy.choose(job, &views, &ctx)?;
        // A policy returning an out-of-range index is treated as declining.
        let node_id = fitting.get(chosen)?.spec.id.clone();

        let queue = self.queues.get_mut(submitter)?;
        queue.pop_front();
        if queue.is_empty() {
            self.queues.remove(submitter);
        }
        let job = self.queued.remove(&job_id)?;
        let node = self.nodes.get_mut(&node_id)?;
        // `fits` held above, so these cannot overflow or exceed the node's capacity.
        node.used_cpus += job.cpus;
        node.used_mem += job.mem_bytes;
        node.used_gpus += job.gpus;
        node.running.insert(job_id);
        self.running.insert(job_id, (job, node_id.clone()));
        Some(Placement {
            job: job_id,
            node: node_id,
        })
    }

    /// Records a job that already runs on `node` (placed earlier, by this scheduler or a
    /// previous one: the caller rebuilds the scheduler from durable job records). Its resources
    /// are reserved even if the node now advertises less, so nothing more is placed there
    /// until it ends. Returns false, changing nothing, if the node is unknown or the job id is
    /// queued or running already.
    pub fn restore_running(&mut self, job: JobSpec, node: &str) -> bool {
        if self.queued.contains_key(&job.id) || self.running.contains_key(&job.id) {
            return false;
        }
        let Some(n) = self.nodes.get_mut(node) else {
            return false;
        };
        n.used_cpus = n.used_cpus.saturating_add(job.cpus);
        n.used_mem = n.used_mem.saturating_add(job.mem_bytes);
        n.used_gpus = n.used_gpus.saturating_add(job.gpus);
        n.running.insert(job.id);
        self.running.insert(job.id, (job, node.to_string()));
        true
    }

    /// A running job ended; frees its resources. Returns false if it was not running.
    pub fn finished(&mut self, job_id: u64) -> bool {
        let Some((job, node_id)) = self.running.remove(&job_id) else {
            return false;
        };
        if let Some(node) = self.nodes.get_mut(&node_id) {
            // Saturating: a restored job may have been reserved beyond a node's capacity.
            node.used_cpus = node.used_cpus.saturating_sub(job.cpus);
            node.used_mem = node.used_mem.saturating_sub(job.mem_bytes);
            node.used_gpus = node.used_gpus.saturating_sub(job.gpus);
            node.running.remove(&job_id);
        }
        true
    }

    /// Cancels a queued or running job (freeing its resources); returns where it was, or
    /// `None` if unknown. The caller stops a running job itself.
    pub fn cancel(&mut self, job_id: u64) -> Option<JobState> {
        if let Some(job) = self.queued.remove(&job_id) {
            if let Some(queue) = self.queues.get_mut(&job.submitter) {
                queue.retain(|id| *id != job_id);
                if queue.is_empty() {
                    self.queues.remove(&job.submitter);
                }
            }
            return Some(JobState::Queued);
        }
        self.finished(job_id).then_some(JobState::Running)
    }

    /// Ids of queued jobs: each submitter's queue in FIFO order, submitters in name order.
    pub fn queued(&self) -> Vec<u64> {
        self.queues.values().flatten().copied().collect()
    }

    /// Number of queued jobs.
    pub fn queued_len(&self) -> usize {
        self.queued.len()
    }

    /// Ids of the jobs running on `node`, ascending; empty for unknown nodes.
    pub fn running_on(&self, node: &str) -> Vec<u64> {
        self.nodes
            .get(node)
            .map(|n| n.running.iter().copied().collect())
            .unwrap_or_default()
    }

    /// The node a job runs on, or `None` if it is not running.
    pub fn node_of(&self, job_id: u64) -> Option<&str> {
        self.running.get(&job_id).map(|(_, n)| n.as_str())
    }

    /// Whether a job is queued, running, or unknown.
    pub fn state(&self, job_id: u64) -> Option<JobState> {
        if self.queued.contains_key(&job_id) {
            Some(JobState::Queued)
        } else if self.running.contains_key(&job_id) {
            Some(JobState::Running)
        } else {
            None
        }
    }

    /// Reserved `(cpus, mem_bytes, gpus)` on `node`, or `None` for unknown nodes.
    pub fn usage(&self, node: &str) -> Option<(u32, u64, u32)> {
        self.nodes
            .get(node)
            .map(|n| (n.used_cpus, n.used_mem, n.used_gpus))
    }

    /// The spec of a known node.
    pub fn node(&self, id: &str) -> Option<&NodeSpec> {
        self.nodes.get(id).map(|n| &n.spec)
    }
}
