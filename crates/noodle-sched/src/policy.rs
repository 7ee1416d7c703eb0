//! Placement policies: given a job and the nodes it fits on right now, pick one.
//!
//! A policy only chooses among nodes the [`crate::Scheduler`] already checked for capacity and
//! labels; it can never oversubscribe a node. [`Scored`] is ours; [`RoundRobin`] and
//! [`LeastLoaded`] are the baselines the simulation compares it with.

use std::collections::HashMap;

use crate::{JobSpec, NodeSpec, RttTable, labels_match};

/// A node the job fits on, with what is reserved on it.
#[derive(Debug, Clone, Copy)]
pub struct NodeView<'a> {
    /// The node as advertised.
    pub spec: &'a NodeSpec,
    /// CPU slots reserved by running jobs.
    pub used_cpus: u32,
    /// Memory reserved by running jobs.
    pub used_mem: u64,
    /// GPUs reserved by running jobs.
    pub used_gpus: u32,
    /// Last reported 1-minute load average.
    pub load_1m: f64,
    /// Number of jobs running there.
    pub running: usize,
}

/// Picks a node for a job.
pub trait Policy {
    /// Returns an index into `fits` (never empty; every node there has room for `job`), or
    /// `None` to leave the job queued for now.
    fn choose(&mut self, job: &JobSpec, fits: &[NodeView<'_>], ctx: &Context<'_>) -> Option<usize>;
}

/// What a policy may know about the cluster besides the fitting nodes.
#[derive(Debug, Clone, Copy)]
pub struct Context<'a> {
    /// Measured RTTs.
    pub rtt: &'a RttTable,
    /// Every node, busy or not, in id order.
    pub nodes: &'a [&'a NodeSpec],
}

/// Weights of [`Scored`]'s terms. The score of a node is
///
/// ```text
/// (1 + UTIL·util_after + LOAD·load/cpus + RUNNING·running/cpus + RTT_PER_MS·rtt_origin_ms
///    + INPUT_PER_GIB_MS·Σ input_gib·rtt_ms + COST·cost + GPU_HOARD·[job needs no GPU but
///    node has GPUs]) / speed^SPEED_EXP
/// ```
///
/// and the lowest score wins. The constant 1 makes speed matter even on an idle, local node.
pub mod weights {
    /// Highest utilisation (CPUs, memory, GPUs) of the node after placement, 0..1: spreads
    /// work so jobs do not compete for memory bandwidth and caches.
    pub const UTIL: f64 = 0.5;
    /// Load average per CPU slot: work the scheduler did not place (other tenants, daemons).
    pub const LOAD: f64 = 1.0;
    /// Jobs already running per CPU slot: a proxy for the node's local queue.
    pub const RUNNING: f64 = 0.2;
    /// Per millisecond of RTT between the node and the job's origin (interactive output).
    pub const RTT_PER_MS: f64 = 0.01;
    /// Per GiB·ms of input data that must cross the network to reach the node.
    pub const INPUT_PER_GIB_MS: f64 = 0.05;
    /// Per unit of the node's `cost` label (1.0 is a normal node).
    pub const COST: f64 = 0.3;
    /// Penalty for putting a job that needs no GPU on a node with GPUs: keeps the scarce
    /// GPU nodes free for the GPU jobs that can run nowhere else.
    pub const GPU_HOARD: f64 = 2.0;
    /// Exponent on speed: above 1 so a node twice as fast wins over a moderately busier one.
    pub const SPEED_EXP: f64 = 2.0;
}

/// Our policy: lowest score wins (see [`weights`]); ties go to the first node in id order.
#[derive(Debug, Clone, Copy, Default)]
pub struct Scored;

impl Scored {
    /// The score of placing `job` on `node` (lower is better).
    pub fn score(job: &JobSpec, node: &NodeView<'_>, rtt: &RttTable) -> f64 {
        let spec = node.spec;
        let frac =
            |used: f64, need: f64, cap: f64| if cap > 0.0 { (used + need) / cap } else { 0.0 };
        let util = frac(
            f64::from(node.used_cpus),
            f64::from(job.cpus),
            f64::from(spec.cpus),
        )
        .max(frac(
            node.used_mem as f64,
            job.mem_bytes as f64,
            spec.mem_bytes as f64,
        ))
        .max(frac(
            f64::from(node.used_gpus),
            f64::from(job.gpus),
            f64::from(spec.gpus),
        ));
        let cpus = f64::from(spec.cpus.max(1));
        let rtt_origin_ms = rtt.get(&job.origin, &spec.id) as f64 / 1000.0;
        let input: f64 = job
            .inputs
            .iter()
            .map(|(holder, bytes)| {
                let gib = *bytes as f64 / (1u64 << 30) as f64;
                gib * rtt.get(holder, &spec.id) as f64 / 1000.0
            })
            .sum();
        let hoard = if job.gpus == 0 && spec.gpus > 0 {
            weights::GPU_HOARD
        } else {
            0.0
        };
        let base = 1.0
            + weights::UTIL * util
            + weights::LOAD * node.load_1m / cpus
            + weights::RUNNING * node.running as f64 / cpus
            + weights::RTT_PER_MS * rtt_origin_ms
            + weights::INPUT_PER_GIB_MS * input
            + weights::COST * spec.cost()
            + hoard;
        base / spec.speed().powf(weights::SPEED_EXP)
    }
}

impl Policy for Scored {
    fn choose(&mut self, job: &JobSpec, fits: &[NodeView<'_>], ctx: &Context<'_>) -> Option<usize> {
        let mut best: Option<(usize, f64)> = None;
        for (i, node) in fits.iter().enumerate() {
            let s = Self::score(job, node, ctx.rtt);
            if best.is_none_or(|(_, b)| s < b) {
                best = Some((i, s));
            }
        }
        best.map(|(i, _)| i)
    }
}

/// Baseline: classic round-robin dispatch. Each job is assigned, when first considered, the
/// next node in rotation among those that could ever run it, and waits for that node even if
/// another has room (like a round-robin load balancer that knows capacities but not speeds).
#[derive(Debug, Clone, Default)]
pub struct RoundRobin {
    last: Option<String>,
    /// Jobs assigned but not yet placed. Entries of jobs cancelled while waiting stay until
    /// the policy is dropped; the baseline is for simulation.
    assigned: HashMap<u64, String>,
}

impl Policy for RoundRobin {
    fn choose(&mut self, job: &JobSpec, fits: &[NodeView<'_>], ctx: &Context<'_>) -> Option<usize> {
        let node = match self.assigned.get(&job.id) {
            Some(n) => n.clone(),
            None => {
                // `ctx.nodes` is in id order, so "after the last one" is the first id above it.
                let able = || ctx.nodes.iter().filter(|n| could_ever_run(n, job));
                let next = match &self.last {
                    Some(last) => able().find(|n| n.id.as_str() > last.as_str()),
                    None => None,
                };
                let id = next.or_else(|| able().next())?.id.clone();
                self.last = Some(id.clone());
                self.assigned.insert(job.id, id.clone());
                id
            }
        };
        let i = fits.iter().position(|n| n.spec.id == node)?;
        self.assigned.remove(&job.id);
        Some(i)
    }
}

/// Baseline: greedy round-robin over the nodes with room right now: the first fitting node
/// after the one chosen last, in id order (wrapping). Never leaves a job waiting when some
/// node has room.
#[derive(Debug, Clone, Default)]
pub struct NextFit {
    last: Option<String>,
}

impl Policy for NextFit {
    fn choose(
        &mut self,
        _job: &JobSpec,
        fits: &[NodeView<'_>],
        _ctx: &Context<'_>,
    ) -> Option<usize> {
        let i = match &self.last {
            Some(last) => fits
                .iter()
                .position(|n| n.spec.id.as_str() > last.as_str())
                .unwrap_or(0),
            None => 0,
        };
        self.last = Some(fits.get(i)?.spec.id.clone());
        Some(i)
    }
}

/// Baseline: the fitting node with the smallest fraction of CPU slots reserved.
#[derive(Debug, Clone, Copy, Default)]
pub struct LeastLoaded;

impl Policy for LeastLoaded {
    fn choose(
        &mut self,
        _job: &JobSpec,
        fits: &[NodeView<'_>],
        _ctx: &Context<'_>,
    ) -> Option<usize> {
        let mut best: Option<(usize, f64)> = None;
        for (i, node) in fits.iter().enumerate() {
            let cpus = f64::from(node.spec.cpus.max(1));
            let load = (f64::from(node.used_cpus) + node.load_1m) / cpus;
            if best.is_none_or(|(_, b)| load < b) {
                best = Some((i, load));
            }
        }
        best.map(|(i, _)| i)
    }
}

/// Whether `job` fits on `node` when nothing else runs there.
fn could_ever_run(node: &NodeSpec, job: &JobSpec) -> bool {
    job.cpus <= node.cpus
        && job.mem_bytes <= node.mem_bytes
        && job.gpus <= node.gpus
        && labels_match(node, job)
}
