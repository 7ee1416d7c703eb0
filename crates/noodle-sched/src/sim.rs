//! A deterministic discrete-event simulation of a cluster driven by a [`Scheduler`], used to
//! compare placement policies.
//!
//! No randomness here: the caller builds the workload (seeded) and the simulation replays it.
//! Time is an abstract tick; a job with `work` ticks of work runs `ceil(work / speed)` ticks on a
//! node whose `speed` label is `speed`. The loop is: submit arrivals, place, advance to the next
//! finish or arrival, free the finished jobs, repeat. At every placement the simulation checks
//! its own tally of reserved resources against each node's spec, independently of the
//! scheduler's, and every job must finish exactly once.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap};

use thiserror::Error;

use crate::{JobSpec, NodeSpec, Policy, Rejected, Scheduler};

/// One job of a workload.
#[derive(Debug, Clone)]
pub struct SimJob {
    /// The job as submitted.
    pub spec: JobSpec,
    /// Tick at which it is submitted.
    pub arrival: u64,
    /// Work in ticks at speed 1.0; at least 1.
    pub work: u64,
}

/// What a run measured.
#[derive(Debug, Clone, PartialEq)]
pub struct SimReport {
    /// Tick at which the last job finished.
    pub makespan: u64,
    /// Mean ticks between arrival and start.
    pub mean_wait: f64,
    /// Jobs that finished (each exactly once).
    pub finished: usize,
    /// Jobs placed per node.
    pub per_node: BTreeMap<String, usize>,
}

/// Why a simulation run failed: each is a bug in the scheduler or a bad workload.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum SimError {
    /// A node was rejected.
    #[error("node rejected: {0}")]
    Node(#[from] crate::NodeError),
    /// A job of the workload was rejected.
    #[error("job {job} rejected: {reason}")]
    Rejected { job: u64, reason: Rejected },
    /// A node was given more than it advertised.
    #[error("node {node} oversubscribed at tick {at}: {used:?} of {cap:?}")]
    Oversubscribed {
        node: String,
        at: u64,
        used: (u32, u64, u32),
        cap: (u32, u64, u32),
    },
    /// A job was placed twice, or a placement named an unknown job or node.
    #[error("bad placement of job {job} at tick {at}")]
    BadPlacement { job: u64, at: u64 },
    /// Jobs are queued, nothing runs and nothing will arrive: the scheduler is stuck.
    #[error("stuck at tick {at} with {queued} jobs queued")]
    Stuck { at: u64, queued: usize },
}

/// Runs `jobs` on `nodes` with `policy`.
pub fn simulate<P: Policy>(
    policy: P,
    nodes: &[NodeSpec],
    jobs: &[SimJob],
) -> Result<SimReport, SimError> {
    let mut sched = Scheduler::new(policy);
    let mut used: HashMap<&str, (u32, u64, u32)> = HashMap::new();
    let mut specs: HashMap<&str, &NodeSpec> = HashMap::new();
    for node in nodes {
        sched.add_node(node.clone())?;
        used.insert(&node.id, (0, 0, 0));
        specs.insert(&node.id, node);
    }
    let by_id: HashMap<u64, &SimJob> = jobs.iter().map(|j| (j.spec.id, j)).collect();
    let mut arrivals: Vec<&SimJob> = jobs.iter().collect();
    arrivals.sort_by_key(|j| (j.arrival, j.spec.id));
    let mut next_arrival = 0;

    let mut finishing: BinaryHeap<Reverse<(u64, u64)>> = BinaryHeap::new();
    let mut started: HashMap<u64, (u64, String)> = HashMap::new();
    let mut per_node: BTreeMap<String, usize> = BTreeMap::new();
    let mut finished = 0usize;
    let mut wait_total = 0u128;
    let mut makespan = 0u64;
    let mut now = 0u64;

    loop {
        while let Some(job) = arrivals.get(next_arrival).filter(|j| j.arrival <= now) {
            sched
                .submit(job.spec.clone())
                .map_err(|reason| SimError::Rejected {
                    job: job.spec.id,
                    reason,
                })?;
            next_arrival += 1;
        }

        for p in sched.place() {
            let bad = || SimError::BadPlacement {
                job: p.job,
                at: now,
            };
            let job = by_id.get(&p.job).ok_or_else(bad)?;
            let spec = specs.get(p.node.as_str()).ok_or_else(bad)?;
            let u = used.get_mut(p.node.as_str()).ok_or_else(bad)?;
            *u = (
                u.0 + job.spec.cpus,
                u.1 + job.spec.mem_bytes,
                u.2 + job.spec.gpus,
            );
            if u.0 > spec.cpus || u.1 > spec.mem_bytes || u.2 > spec.gpus {
                return Err(SimError::Oversubscribed {
                    node: p.node.clone(),
                    at: now,
                    used: *u,
                    cap: (spec.cpus, spec.mem_bytes, spec.gpus),
                });
            }
            if started.contains_key(&p.job) {
                return Err(bad());
            }
            let run = (job.work as f64 / spec.speed()).ceil().max(1.0) as u64;
            finishing.push(Reverse((now + run, p.job)));
            wait_total += u128::from(now - job.arrival);
            *per_node.entry(p.node.clone()).or_default() += 1;
            started.insert(p.job, (now, p.node));
        }

        let next_finish = finishing.peek().map(|Reverse((t, _))| *t);
        let next_arrive = arrivals.get(next_arrival).map(|j| j.arrival);
        now = match (next_finish, next_arrive) {
            (Some(f), Some(a)) => f.min(a),
            (Some(f), None) => f,
            (None, Some(a)) => a,
            (None, None) if sched.queued_len() == 0 => break,
            (None, None) => {
                return Err(SimError::Stuck {
                    at: now,
                    queued: sched.queued_len(),
                });
            }
        };
        while let Some(Reverse((t, job_id))) = finishing.peek().copied() {
            if t > now {
                break;
            }
            finishing.pop();
            let bad = || SimError::BadPlacement {
                job: job_id,
                at: now,
            };
            if !sched.finished(job_id) {
                return Err(bad());
            }
            let job = by_id.get(&job_id).ok_or_else(bad)?;
            let node = &started.get(&job_id).ok_or_else(bad)?.1;
            let u = used.get_mut(node.as_str()).ok_or_else(bad)?;
            *u = (
                u.0 - job.spec.cpus,
                u.1 - job.spec.mem_bytes,
                u.2 - job.spec.gpus,
            );
            finished += 1;
            makespan = makespan.max(t);
        }
    }

    if finished != jobs.len() || started.len() != jobs.len() {
        return Err(SimError::Stuck {
            at: now,
            queued: jobs.len() - finished,
        });
    }
    let mean_wait = if jobs.is_empty() {
        0.0
    } else {
        wait_total as f64 / jobs.len() as f64
    };
    Ok(SimReport {
        makespan,
        mean_wait,
        finished,
        per_node,
    })
}
