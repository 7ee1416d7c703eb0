//! A deterministic simulation of the job lease: executor nodes, each with a real [`Engine`],
//! a control plane that applies commands with the real [`transition`] (so fencing by epoch is
//! the real code), and a nemesis that kills, restarts and cuts off nodes and loses answers.
//! Every step checks that a job never runs on two nodes at once and that a node never runs
//! more CPUs of jobs than its slots; after the faults heal every job must end.
//!
//! # What is modelled
//!
//! - **Time**: one discrete-event loop on virtual milliseconds; nothing reads a clock.
//! - **The control plane**: one logical replicated state of job records, with a leader that
//!   may move (failover after 0.5–3 s without one; while there is none every proposal and
//!   probe fails). Proposals are applied 1–30 ms after they are made; 2 % lose their answer
//!   (half of those were applied anyway). Clients submit jobs and cancel some.
//! - **Nodes** (3–5, 4–8 CPU slots each): each runs the runtime's side of the contract of
//!   [`crate::engine`]: ticks every 100 ms, looks at the records every 250 ms, probes the
//!   control plane every 500 ms while the engine wants contact (answered in 2–40 ms, or failed
//!   after a quarter of the lease), proposes what the engine asks, and runs processes: 5–300 ms
//!   to fetch and spawn (2 % fail to start), 0.3–8 s of work (one job in ten: 8–40 s), and a
//!   kill that takes 5–300 ms (SIGTERM: 10–1500 ms).
//! - **The leader's engine** sees a scheduler built from the alive nodes' slots, and the
//!   membership view: a node dead or cut off is seen gone 3 s later, and alive again as soon
//!   as it is back.
//! - **Faults**, every 1–8 s: a node dies (its processes die with it, as with the parent-death
//!   signal) and restarts 1–20 s later with a fresh engine; a node is cut off from the control
//!   plane and the membership view for 0.5–30 s (its proposals are not delivered, its probes
//!   fail, and its view of the records freezes: a node restarted while cut off sees what its
//!   disk kept); the leader fails over.
//!
//! # What is not
//!
//! Raft itself (see `noodle-sim`: here the replicated state is one map, and a node in reach
//! sees it current), lag of a follower's records, gossip's own failures (one membership view
//! for all, no false suspicion of a node in reach), file shipping, output, GPUs, memory and
//! labels, and clocks that drift.
//!
//! # Determinism
//!
//! Everything random comes from one seeded generator (SplitMix64), drawn in event order; the
//! state is kept in ordered maps. [`SimReport::fingerprint`] hashes every event line of a run;
//! two runs of one seed give the same fingerprint. A failing run names its seed and keeps the
//! last events ([`SimFailure::trace_tail`]); `keep_trace` keeps them all.

use crate::engine::{ClusterView, Effect, Engine, EngineConfig, Reported, Signal};
use crate::state::{JobCommand, JobRecord, JobSpec, JobState, transition};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt;

#[cfg(test)]
mod tests;

/// Events kept for a failure report.
const TRACE_TAIL: usize = 400;
const TICK_MS: u64 = 100;
const OBSERVE_MS: u64 = 250;
const PROBE_MS: u64 = 500;

/// What a run simulates. [`SimOptions::default`] is what the tests run.
#[derive(Debug, Clone)]
pub struct SimOptions {
    /// Jobs submitted during the faults.
    pub jobs: usize,
    /// How long faults are injected; then everything heals.
    pub chaos_ms: u64,
    /// How long after healing every job must have ended.
    pub drain_ms_max: u64,
    pub lease_ms: u64,
    /// How long the membership view takes to see a node gone.
    pub detect_ms: u64,
    /// Self-fencing of every node's engine; `false` plants the bug the run must catch.
    pub self_fence: bool,
    /// Keep every event in [`SimReport::trace`].
    pub keep_trace: bool,
}

impl Default for SimOptions {
    fn default() -> Self {
        SimOptions {
            jobs: 250,
            chaos_ms: 150_000,
            drain_ms_max: 300_000,
            lease_ms: 10_000,
            detect_ms: 3_000,
            self_fence: true,
            keep_trace: false,
        }
    }
}

/// A run that kept every invariant. Equal for two runs of one seed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimReport {
    pub seed: u64,
    pub nodes: usize,
    pub jobs: usize,
    /// How the jobs ended.
    pub succeeded: usize,
    pub failed: usize,
    pub cancelled: usize,
    pub lost: usize,
    /// Processes spawned (attempts that ran).
    pub processes: usize,
    /// Executions stopped by self-fencing or failed start reports.
    pub fenced: usize,
    pub deaths: usize,
    pub cuts: usize,
    pub failovers: usize,
    /// Proposals whose answer was lost.
    pub lost_answers: usize,
    /// Virtual time the run took.
    pub simulated_ms: u64,
    /// FNV-1a of every event line, in order, with its time.
    pub fingerprint: String,
    pub trace: Vec<String>,
}

/// An invariant a run broke.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Violation {
    #[error(
        "job {job} runs on {first} (epoch {first_epoch}) and on {second} (epoch {second_epoch}) at once"
    )]
    TwoAtOnce {
        job: u64,
        first: String,
        first_epoch: u64,
        second: String,
        second_epoch: u64,
    },
    #[error("node {node} runs {cpus} CPUs of jobs with {slots} slots")]
    OverSlots { node: String, cpus: u32, slots: u32 },
    #[error("job {job} ended lost (no retries left) but runs on {node} (epoch {epoch})")]
    RunsAfterLost { job: u64, node: String, epoch: u64 },
    #[error("job {job} has not ended {after_ms} ms after the faults healed: {state}")]
    Stuck {
        job: u64,
        state: String,
        after_ms: u64,
    },
    #[error("job {job} ended but its process still runs on {node}")]
    Orphan { job: u64, node: String },
}

/// A run that broke an invariant.
#[derive(Debug, Clone)]
pub struct SimFailure {
    pub seed: u64,
    pub at_ms: u64,
    pub violation: Violation,
    /// The last events of the run, one a line with its time.
    pub trace_tail: Vec<String>,
}

impl fmt::Display for SimFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "seed {} at {} ms: {}",
            self.seed, self.at_ms, self.violation
        )
    }
}

impl std::error::Error for SimFailure {}

/// Runs one seed and checks every invariant. The same seed gives the same run.
pub fn run_seed(seed: u64, opts: &SimOptions) -> Result<SimReport, SimFailure> {
    let mut sim = Sim::new(seed, opts.clone());
    match sim.run() {
        Ok(()) => Ok(sim.report()),
        Err(violation) => Err(SimFailure {
            seed,
            at_ms: sim.now,
            violation,
            trace_tail: sim.tail.into_iter().collect(),
        }),
    }
}

/// SplitMix64: small, fast, and the same on every platform and version.
#[derive(Debug, Clone)]
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `lo..=hi` (the modulo bias is irrelevant here).
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi.saturating_sub(lo) + 1)
    }

    /// True with probability `percent` / 100.
    fn percent(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }

    fn index(&mut self, len: usize) -> usize {
        (self.next() % len.max(1) as u64) as usize
    }
}

/// The job records: the control plane's, or a node's stale copy.
#[derive(Debug, Clone, Default)]
struct Records {
    all: BTreeMap<u64, JobRecord>,
    /// The jobs that have not ended, in id order.
    active: Vec<JobRecord>,
}

impl Records {
    /// Applies `command` to job `id`; a refused command changes nothing.
    fn apply(&mut self, id: u64, command: &JobCommand) -> Result<(), String> {
        let job = self.all.get_mut(&id).ok_or("no such job")?;
        transition(job, command)?;
        let job = job.clone();
        if let Ok(i) = self.active.binary_search_by_key(&id, |j| j.id) {
            if job.state.is_terminal() {
                self.active.remove(i);
            } else {
                self.active[i] = job;
            }
        }
        Ok(())
    }

    /// Adds a job submitted just now (ids only grow, so `active` stays in id order).
    fn insert(&mut self, job: JobRecord) {
        self.active.push(job.clone());
        self.all.insert(job.id, job);
    }
}

/// A process of a job on a node, from the engine's [`Effect::Start`] to its end.
#[derive(Debug, Clone)]
struct Proc {
    epoch: u64,
    cpus: u32,
    spawned: bool,
    signal: Option<Signal>,
}

#[derive(Debug)]
struct Node {
    id: String,
    slots: u32,
    /// Bumped at every death: events of an earlier life are dropped.
    life: u64,
    engine: Option<Engine>,
    cut: bool,
    /// Since when the node has been out of reach (dead or cut off).
    gone_since: Option<u64>,
    /// The records as the node last saw them, while it is out of reach (its disk's copy).
    stale: Option<Records>,
    procs: BTreeMap<u64, Proc>,
    probing: bool,
}

impl Node {
    fn up(&self) -> bool {
        self.engine.is_some()
    }
}

#[derive(Debug, Clone)]
enum Ev {
    Tick(usize, u64),
    Observe(usize, u64),
    Probe(usize, u64),
    ProbeAnswer(usize, u64, bool),
    /// A proposal reaches the control plane; `answer` says whether its answer gets back.
    Apply(usize, u64, JobCommand, bool),
    Answer(usize, u64, JobCommand, Reported),
    Spawned(usize, u64, u64, u64),
    Exit(usize, u64, u64, u64, i32),
    Submit,
    Cancel(u64),
    Fault,
    Heal(usize),
    Restart(usize),
    Election,
    EndChaos,
}

struct Sim {
    opts: SimOptions,
    seed: u64,
    rng: Rng,
    now: u64,
    seq: u64,
    events: BTreeMap<(u64, u64), Ev>,
    plane: Records,
    next_job: u64,
    leader: Option<usize>,
    electing: bool,
    nodes: Vec<Node>,
    /// Live processes per job: (node, epoch).
    live: BTreeMap<u64, Vec<(usize, u64)>>,
    /// CPUs of live processes per node.
    node_cpus: Vec<u32>,
    /// A process was spawned or a command applied since the last check.
    dirty: bool,
    chaos: bool,
    submitted: usize,
    healed_at: Option<u64>,
    all_ended_at: Option<u64>,
    fingerprint: u64,
    tail: VecDeque<String>,
    trace: Vec<String>,
    processes: usize,
    fenced: usize,
    deaths: usize,
    cuts: usize,
    failovers: usize,
    lost_answers: usize,
}

impl Sim {
    fn new(seed: u64, opts: SimOptions) -> Sim {
        let mut rng = Rng(seed ^ 0x6a6f_6273_5f73_696d);
        let n = rng.range(3, 5) as usize;
        let nodes: Vec<Node> = (0..n)
            .map(|i| Node {
                id: format!("n{i}"),
                slots: rng.range(4, 8) as u32,
                life: 0,
                engine: None,
                cut: false,
                gone_since: None,
                stale: None,
                procs: BTreeMap::new(),
                probing: false,
            })
            .collect();
        let mut sim = Sim {
            opts,
            seed,
            rng,
            now: 0,
            seq: 0,
            events: BTreeMap::new(),
            plane: Records::default(),
            next_job: 1,
            leader: Some(0),
            electing: false,
            node_cpus: vec![0; n],
            nodes,
            live: BTreeMap::new(),
            dirty: false,
            chaos: true,
            submitted: 0,
            healed_at: None,
            all_ended_at: None,
            fingerprint: 0xcbf2_9ce4_8422_2325,
            tail: VecDeque::new(),
            trace: Vec::new(),
            processes: 0,
            fenced: 0,
            deaths: 0,
            cuts: 0,
            failovers: 0,
            lost_answers: 0,
        };
        for i in 0..n {
            sim.boot(i);
        }
        let (submit, fault, end) = (
            sim.rng.range(0, 500),
            sim.rng.range(2_000, 8_000),
            sim.opts.chaos_ms,
        );
        sim.at(submit, Ev::Submit);
        sim.at(fault, Ev::Fault);
        sim.at(end, Ev::EndChaos);
        sim
    }

    fn at(&mut self, delay_ms: u64, ev: Ev) {
        self.seq += 1;
        self.events.insert((self.now + delay_ms, self.seq), ev);
    }

    fn log(&mut self, line: String) {
        let line = format!("{:>7} {line}", self.now);
        for b in line.bytes().chain(std::iter::once(b'\n')) {
            self.fingerprint ^= u64::from(b);
            self.fingerprint = self.fingerprint.wrapping_mul(0x0100_0000_01b3);
        }
        if self.opts.keep_trace {
            self.trace.push(line.clone());
        }
        if self.tail.len() == TRACE_TAIL {
            self.tail.pop_front();
        }
        self.tail.push_back(line);
    }

    fn run(&mut self) -> Result<(), Violation> {
        let end_max = self.opts.chaos_ms + self.opts.drain_ms_max;
        while let Some(((t, _), ev)) = self.events.pop_first() {
            self.now = t;
            if t > end_max {
                break;
            }
            self.handle(ev);
            if std::mem::take(&mut self.dirty) {
                self.check()?;
            }
            if let Some(done) = self.finished() {
                return done;
            }
        }
        self.stuck(end_max)
    }

    /// `Some` once the run is over: every job ended after healing, and a few seconds later
    /// every process is gone.
    fn finished(&mut self) -> Option<Result<(), Violation>> {
        self.healed_at?;
        if !self.plane.active.is_empty() {
            self.all_ended_at = None;
            return None;
        }
        let since = *self.all_ended_at.get_or_insert(self.now);
        if self.now < since + 5_000 {
            return None;
        }
        if let Some((job, procs)) = self.live.iter().find(|(_, p)| !p.is_empty()) {
            let node = self.nodes[procs[0].0].id.clone();
            return Some(Err(Violation::Orphan { job: *job, node }));
        }
        Some(Ok(()))
    }

    fn stuck(&self, end_max: u64) -> Result<(), Violation> {
        match self.plane.active.first() {
            Some(job) => Err(Violation::Stuck {
                job: job.id,
                state: format!("{:?}", job.state),
                after_ms: end_max - self.opts.chaos_ms,
            }),
            None => Ok(()),
        }
    }

    /// The invariants that hold at every step, checked after every event that could break
    /// them (a process spawned, a command applied).
    fn check(&self) -> Result<(), Violation> {
        for (job, procs) in &self.live {
            if let [(a, ea), (b, eb), ..] = procs.as_slice() {
                return Err(Violation::TwoAtOnce {
                    job: *job,
                    first: self.nodes[*a].id.clone(),
                    first_epoch: *ea,
                    second: self.nodes[*b].id.clone(),
                    second_epoch: *eb,
                });
            }
            if let Some((node, epoch)) = procs.first()
                && self
                    .plane
                    .all
                    .get(job)
                    .is_some_and(|j| j.state == JobState::Lost)
            {
                return Err(Violation::RunsAfterLost {
                    job: *job,
                    node: self.nodes[*node].id.clone(),
                    epoch: *epoch,
                });
            }
        }
        for (node, cpus) in self.nodes.iter().zip(&self.node_cpus) {
            if *cpus > node.slots {
                return Err(Violation::OverSlots {
                    node: node.id.clone(),
                    cpus: *cpus,
                    slots: node.slots,
                });
            }
        }
        Ok(())
    }

    fn handle(&mut self, ev: Ev) {
        match ev {
            Ev::Tick(n, life) if self.alive(n, life) => {
                let now = self.now;
                self.with_engine(n, |e| e.tick(now));
                self.at(TICK_MS, Ev::Tick(n, life));
            }
            Ev::Observe(n, life) if self.alive(n, life) => {
                self.observe(n);
                self.at(OBSERVE_MS, Ev::Observe(n, life));
            }
            Ev::Probe(n, life) if self.alive(n, life) => {
                let wants = self.nodes[n]
                    .engine
                    .as_ref()
                    .is_some_and(|e| e.wants_contact());
                if wants && !self.nodes[n].probing {
                    self.nodes[n].probing = true;
                    let ok = self.in_reach(n);
                    let delay = if ok {
                        self.rng.range(2, 40)
                    } else {
                        self.opts.lease_ms / 4
                    };
                    self.at(delay, Ev::ProbeAnswer(n, life, ok));
                } else {
                    self.at(PROBE_MS, Ev::Probe(n, life));
                }
            }
            Ev::ProbeAnswer(n, life, ok) if self.alive(n, life) => {
                self.nodes[n].probing = false;
                self.log(format!("{} contact {ok}", self.nodes[n].id));
                let now = self.now;
                self.with_engine(n, |e| e.contact(now, ok));
                self.at(PROBE_MS, Ev::Probe(n, life));
            }
            Ev::Apply(n, life, command, answer) => {
                let outcome = self.apply(&command);
                let node = self.nodes[n].id.clone();
                self.log(format!("{node} proposed {command:?}: {outcome:?}"));
                if answer {
                    let delay = self.rng.range(1, 30);
                    self.at(delay, Ev::Answer(n, life, command, outcome));
                } else {
                    let delay = self.rng.range(500, 3_000);
                    self.at(delay, Ev::Answer(n, life, command, Reported::NotDelivered));
                }
            }
            Ev::Answer(n, life, command, outcome) if self.alive(n, life) => {
                let now = self.now;
                self.with_engine(n, |e| e.reported(now, &command, outcome));
            }
            Ev::Spawned(n, life, id, epoch) if self.alive(n, life) => self.spawned(n, id, epoch),
            Ev::Exit(n, life, id, epoch, code) if self.alive(n, life) => {
                self.exited(n, id, epoch, code)
            }
            Ev::Submit => self.submit(),
            Ev::Cancel(id) => {
                let cancel = JobCommand::Cancel {
                    id,
                    at_ms: self.now,
                };
                if self.plane.apply(id, &cancel).is_ok() {
                    self.log(format!("client cancelled job {id}"));
                }
            }
            Ev::Fault if self.chaos => {
                self.fault();
                let delay = self.rng.range(1_000, 8_000);
                self.at(delay, Ev::Fault);
            }
            Ev::Heal(n) if self.chaos => self.heal(n),
            Ev::Restart(n) if self.chaos => self.restart(n),
            Ev::Election => self.elect(),
            Ev::EndChaos => self.end_chaos(),
            _ => {}
        }
    }

    fn alive(&self, n: usize, life: u64) -> bool {
        self.nodes[n].up() && self.nodes[n].life == life
    }

    /// The control plane answers `n`: up, not cut off, and there is a leader.
    fn in_reach(&self, n: usize) -> bool {
        self.nodes[n].up() && !self.nodes[n].cut && self.leader.is_some()
    }

    fn with_engine(&mut self, n: usize, f: impl FnOnce(&mut Engine)) {
        let Some(engine) = self.nodes[n].engine.as_mut() else {
            return;
        };
        f(engine);
        let effects = engine.effects();
        for effect in effects {
            self.effect(n, effect);
        }
    }

    fn observe(&mut self, n: usize) {
        let now = self.now;
        let leader = self.leader == Some(n);
        let alive: BTreeSet<String> = self
            .nodes
            .iter()
            .enumerate()
            .filter(|(i, m)| {
                *i == n
                    || m.gone_since
                        .is_none_or(|since| now - since < self.opts.detect_ms)
            })
            .map(|(_, m)| m.id.clone())
            .collect();
        let records = self.nodes[n].stale.as_ref().unwrap_or(&self.plane);
        let scheduler = (leader && records.active.iter().any(|j| j.state == JobState::Queued))
            .then(|| {
                let mut sched = noodle_sched::Scheduler::default();
                for m in self.nodes.iter().filter(|m| alive.contains(&m.id)) {
                    let _ = sched.add_node(noodle_sched::NodeSpec {
                        id: m.id.clone(),
                        cpus: m.slots,
                        mem_bytes: 1 << 40,
                        gpus: 0,
                        labels: BTreeMap::new(),
                    });
                }
                sched
            });
        let cluster = ClusterView {
            leader,
            alive,
            scheduler,
        };
        let plane = &self.plane;
        let node = &mut self.nodes[n];
        let records = node.stale.as_ref().unwrap_or(plane);
        let Some(engine) = node.engine.as_mut() else {
            return;
        };
        let ended = |id: u64| records.all.get(&id).map(|j| j.state.clone());
        engine.observe(now, &records.active, ended, cluster);
        let effects = engine.effects();
        for effect in effects {
            self.effect(n, effect);
        }
    }

    /// Does what a node's engine asked, as its runtime would.
    fn effect(&mut self, n: usize, effect: Effect) {
        let life = self.nodes[n].life;
        let node = self.nodes[n].id.clone();
        match effect {
            Effect::Start { job, epoch, .. } => {
                self.log(format!("{node} starts job {} epoch {epoch}", job.id));
                let proc = Proc {
                    epoch,
                    cpus: job.spec.cpus,
                    spawned: false,
                    signal: None,
                };
                self.nodes[n].procs.insert(job.id, proc);
                let delay = self.rng.range(5, 300);
                self.at(delay, Ev::Spawned(n, life, job.id, epoch));
            }
            Effect::Signal { id, epoch, signal } => {
                self.log(format!("{node} signals job {id} epoch {epoch}: {signal:?}"));
                if signal == Signal::Fence {
                    self.fenced += 1;
                }
                let Some(proc) = self.nodes[n].procs.get_mut(&id) else {
                    return;
                };
                if proc.epoch != epoch || proc.signal.is_some() {
                    return;
                }
                proc.signal = Some(signal);
                if proc.spawned {
                    let (code, delay) = match signal {
                        Signal::Terminate => (143, self.rng.range(10, 1_500)),
                        Signal::Kill | Signal::Fence => (137, self.rng.range(5, 300)),
                    };
                    self.at(delay, Ev::Exit(n, life, id, epoch, code));
                }
            }
            Effect::Propose(command) => {
                if !self.in_reach(n) {
                    let delay = self.rng.range(100, 3_000);
                    self.at(delay, Ev::Answer(n, life, command, Reported::NotDelivered));
                    return;
                }
                let answer = if self.rng.percent(2) {
                    self.lost_answers += 1;
                    if self.rng.percent(50) {
                        // Lost before it was applied.
                        self.log(format!("{node} proposal lost: {command:?}"));
                        let delay = self.rng.range(500, 3_000);
                        self.at(delay, Ev::Answer(n, life, command, Reported::NotDelivered));
                        return;
                    }
                    false
                } else {
                    true
                };
                let delay = self.rng.range(1, 30);
                self.at(delay, Ev::Apply(n, life, command, answer));
            }
        }
    }

    fn apply(&mut self, command: &JobCommand) -> Reported {
        self.dirty = true;
        let id = command.job_id().unwrap_or(0);
        match self.plane.apply(id, command) {
            Ok(()) => Reported::Applied,
            Err(_) => Reported::Refused,
        }
    }

    fn spawned(&mut self, n: usize, id: u64, epoch: u64) {
        let node = self.nodes[n].id.clone();
        let Some(proc) = self.nodes[n].procs.get(&id).filter(|p| p.epoch == epoch) else {
            return;
        };
        let now = self.now;
        if proc.signal.is_some() || self.rng.percent(2) {
            self.nodes[n].procs.remove(&id);
            self.log(format!("{node} could not start job {id} epoch {epoch}"));
            let error = format!("no such program `job` on node {node}");
            self.with_engine(n, |e| e.start_failed(now, id, epoch, 127, error));
            return;
        }
        let cpus = proc.cpus;
        if let Some(p) = self.nodes[n].procs.get_mut(&id) {
            p.spawned = true;
        }
        self.processes += 1;
        self.dirty = true;
        self.live.entry(id).or_default().push((n, epoch));
        self.node_cpus[n] += cpus;
        self.log(format!("{node} spawned job {id} epoch {epoch}"));
        let run = if self.rng.percent(10) {
            self.rng.range(8_000, 40_000)
        } else {
            self.rng.range(300, 8_000)
        };
        let code = if self.rng.percent(10) { 1 } else { 0 };
        let life = self.nodes[n].life;
        self.at(run, Ev::Exit(n, life, id, epoch, code));
        self.with_engine(n, |e| e.process_started(now, id, epoch));
    }

    fn exited(&mut self, n: usize, id: u64, epoch: u64, code: i32) {
        let node = self.nodes[n].id.clone();
        let Some(proc) = self.nodes[n]
            .procs
            .get(&id)
            .filter(|p| p.epoch == epoch && p.spawned)
        else {
            return;
        };
        let cpus = proc.cpus;
        self.nodes[n].procs.remove(&id);
        self.gone(n, id, cpus);
        self.log(format!("{node} job {id} epoch {epoch} exited {code}"));
        let now = self.now;
        self.with_engine(n, |e| e.process_exited(now, id, epoch, code));
    }

    /// A process of job `id` on node `n` is gone.
    fn gone(&mut self, n: usize, id: u64, cpus: u32) {
        if let Some(procs) = self.live.get_mut(&id) {
            procs.retain(|(node, _)| *node != n);
            if procs.is_empty() {
                self.live.remove(&id);
            }
        }
        self.node_cpus[n] = self.node_cpus[n].saturating_sub(cpus);
    }

    fn submit(&mut self) {
        if self.submitted >= self.opts.jobs || !self.chaos {
            return;
        }
        let id = self.next_job;
        self.next_job += 1;
        self.submitted += 1;
        let origin = self.rng.index(self.nodes.len());
        let spec = JobSpec {
            command: vec!["job".into()],
            cpus: self.rng.range(1, 2) as u32,
            mem_bytes: 0,
            gpus: 0,
            labels: BTreeMap::new(),
            submitter: format!("user{}", self.rng.range(0, 2)),
            retries: self.rng.range(0, 2) as u32,
            origin: self.nodes[origin].id.clone(),
            files: Vec::new(),
            reads: Vec::new(),
            writes: Vec::new(),
            held: Vec::new(),
        };
        self.log(format!(
            "client submits job {id}: {} cpus, {} retries",
            spec.cpus, spec.retries
        ));
        self.plane.insert(JobRecord::queued(id, spec, self.now));
        if self.rng.percent(6) {
            let delay = self.rng.range(0, 20_000);
            self.at(delay, Ev::Cancel(id));
        }
        let gap = 2 * self.opts.chaos_ms * 9 / 10 / self.opts.jobs.max(1) as u64;
        let delay = self.rng.range(0, gap);
        self.at(delay, Ev::Submit);
    }

    fn fault(&mut self) {
        let n = self.rng.index(self.nodes.len());
        match self.rng.range(0, 9) {
            0..=3 if self.nodes[n].up() => {
                self.kill(n);
                let delay = self.rng.range(1_000, 20_000);
                self.at(delay, Ev::Restart(n));
            }
            4..=7 if !self.nodes[n].cut => {
                self.cuts += 1;
                self.log(format!("nemesis cuts {} off", self.nodes[n].id));
                self.lose_sync(n);
                self.nodes[n].cut = true;
                let delay = self.rng.range(500, 30_000);
                self.at(delay, Ev::Heal(n));
            }
            8 | 9 if self.leader.is_some() => {
                self.failovers += 1;
                self.log("nemesis: leader fails over".into());
                self.leader = None;
                self.start_election();
            }
            _ => {}
        }
    }

    /// Node `n` is out of reach from now: it keeps the records it has, and loses the lead.
    fn lose_sync(&mut self, n: usize) {
        let node = &mut self.nodes[n];
        if node.stale.is_none() {
            node.stale = Some(self.plane.clone());
        }
        node.gone_since.get_or_insert(self.now);
        if self.leader == Some(n) {
            self.leader = None;
            self.start_election();
        }
    }

    fn start_election(&mut self) {
        if !self.electing {
            self.electing = true;
            let delay = self.rng.range(500, 3_000);
            self.at(delay, Ev::Election);
        }
    }

    fn elect(&mut self) {
        self.electing = false;
        if self.leader.is_some() {
            return;
        }
        let candidates: Vec<usize> = (0..self.nodes.len())
            .filter(|i| self.nodes[*i].up() && !self.nodes[*i].cut)
            .collect();
        if candidates.is_empty() {
            self.start_election();
            return;
        }
        let n = candidates[self.rng.index(candidates.len())];
        self.leader = Some(n);
        self.log(format!("{} leads", self.nodes[n].id));
    }

    /// Node `n` dies, and its processes with it.
    fn kill(&mut self, n: usize) {
        self.deaths += 1;
        self.log(format!("nemesis kills {}", self.nodes[n].id));
        self.lose_sync(n);
        let procs = std::mem::take(&mut self.nodes[n].procs);
        for (id, proc) in procs {
            if proc.spawned {
                self.gone(n, id, proc.cpus);
            }
        }
        let node = &mut self.nodes[n];
        node.engine = None;
        node.life += 1;
        node.probing = false;
    }

    fn restart(&mut self, n: usize) {
        if self.nodes[n].up() {
            return;
        }
        self.log(format!("{} restarts", self.nodes[n].id));
        self.boot(n);
        if !self.nodes[n].cut {
            self.back_in_sync(n);
        }
    }

    fn heal(&mut self, n: usize) {
        if !self.nodes[n].cut {
            return;
        }
        self.log(format!("{} is back in reach", self.nodes[n].id));
        self.nodes[n].cut = false;
        if self.nodes[n].up() {
            self.back_in_sync(n);
        }
    }

    fn back_in_sync(&mut self, n: usize) {
        self.nodes[n].stale = None;
        self.nodes[n].gone_since = None;
    }

    /// Starts node `n`'s runtime with a fresh engine.
    fn boot(&mut self, n: usize) {
        let mut cfg = EngineConfig::new(self.opts.lease_ms, self.nodes[n].slots, Vec::new());
        cfg.self_fence = self.opts.self_fence;
        let node = &mut self.nodes[n];
        node.engine = Some(Engine::new(node.id.clone(), cfg));
        let life = node.life;
        let (tick, observe, probe) = (
            self.rng.range(0, TICK_MS),
            self.rng.range(0, OBSERVE_MS),
            self.rng.range(0, PROBE_MS),
        );
        self.at(tick, Ev::Tick(n, life));
        self.at(observe, Ev::Observe(n, life));
        self.at(probe, Ev::Probe(n, life));
    }

    /// The faults stop: every node comes back in reach, and there is a leader.
    fn end_chaos(&mut self) {
        self.chaos = false;
        self.healed_at = Some(self.now);
        self.log("the faults stop".into());
        for n in 0..self.nodes.len() {
            if !self.nodes[n].up() {
                self.boot(n);
            }
            self.nodes[n].cut = false;
            self.back_in_sync(n);
        }
        if self.leader.is_none() {
            self.start_election();
        }
    }

    fn report(&self) -> SimReport {
        let count =
            |f: fn(&JobState) -> bool| self.plane.all.values().filter(|j| f(&j.state)).count();
        SimReport {
            seed: self.seed,
            nodes: self.nodes.len(),
            jobs: self.plane.all.len(),
            succeeded: count(|s| matches!(s, JobState::Succeeded { .. })),
            failed: count(|s| matches!(s, JobState::Failed { .. })),
            cancelled: count(|s| *s == JobState::Cancelled),
            lost: count(|s| *s == JobState::Lost),
            processes: self.processes,
            fenced: self.fenced,
            deaths: self.deaths,
            cuts: self.cuts,
            failovers: self.failovers,
            lost_answers: self.lost_answers,
            simulated_ms: self.now,
            fingerprint: format!("{:016x}", self.fingerprint),
            trace: self.trace.clone(),
        }
    }
}
