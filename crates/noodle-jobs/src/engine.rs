//! One node's side of jobs as a sans-IO state machine: the executor (start what is placed
//! here, report starts and ends, stop what is no longer ours), self-fencing, and the leader's
//! duties (leases of unreachable nodes, placement of queued jobs).
//!
//! The runtime (the tokio code of a node, or the simulation in [`crate::sim`]) feeds the
//! [`Engine`] what it learns: a look at the replicated state ([`Engine::observe`]), what became
//! of a process ([`Engine::process_started`], [`Engine::start_failed`],
//! [`Engine::process_exited`]), of a proposal ([`Engine::reported`]) and of a probe of the
//! control plane ([`Engine::contact`]), and the passing of time ([`Engine::tick`]). It does
//! what the engine asks in [`Engine::effects`]: start a process, signal one, propose a
//! command.
//!
//! Times (`now_ms`) are milliseconds since the Unix epoch from a clock that never goes back,
//! supplied by the runtime: the wall clock read once at start plus a monotonic elapsed time
//! does. Leases are measured with differences of it, and it stamps the commands proposed
//! (`at_ms`, which users see as dates).
//!
//! This module must never read a clock, spawn, sleep, draw random numbers or do I/O: the same
//! inputs always give the same effects, which is what lets the simulation replay a seed.
//!
//! # The lease
//!
//! A job runs on one node at a time because both sides of a lease hold:
//!
//! - **The executor** runs jobs only while it is in touch with the control plane: a process is
//!   started only if a probe of the control plane succeeded less than half a lease ago, and
//!   when no probe has succeeded for half a lease every process running here is killed
//!   ([`Signal::Fence`]) and reported lost once the control plane answers again. A process
//!   whose start report does not get through after a few tries is fenced the same way.
//! - **The leader** declares a job lost only after its node has been out of the membership
//!   view for a whole lease (the timer starts when this leader first sees the node gone), by
//!   which time the executor, if it still lives, has stopped the job. A late report of the old
//!   executor carries a stale epoch and is refused by [`crate::state::transition`].
//!
//! # The runtime's side of the contract
//!
//! - Every [`Effect::Propose`] is proposed and answered with exactly one [`Engine::reported`].
//! - Every [`Effect::Start`] ends in exactly one [`Engine::start_failed`] (nothing was
//!   spawned) or [`Engine::process_started`] followed by one [`Engine::process_exited`].
//! - A [`Effect::Signal`] for an execution whose process is not spawned yet means "do not
//!   spawn it": the runtime answers with [`Engine::start_failed`].
//! - While [`Engine::wants_contact`] is true the runtime probes the control plane (a
//!   linearizable read, answered within a quarter of the lease) every half second or so and
//!   calls [`Engine::contact`] with the outcome, and it calls [`Engine::tick`] at least every
//!   [`EngineConfig::started_retry_pause_ms`].
//! - The records given to [`Engine::observe`] are read after the last [`Engine::reported`]
//!   given to the engine: the engine trusts a record to include its own applied proposals.

use crate::state::{JobCommand, JobRecord, JobSpec, JobState, limits};
use std::collections::{BTreeMap, BTreeSet, HashSet, VecDeque};

#[cfg(test)]
mod tests;

/// Executions that ended here, remembered so that a record lagging behind does not start
/// them again.
pub const FINISHED_REMEMBERED: usize = 4096;
/// Reports kept for sending again (ended attempts whose report did not get through). More
/// than this many can only mean thousands of jobs ended while cut off; the oldest are
/// dropped, and the leader's lease then settles those jobs.
pub const UNREPORTED_MAX: usize = 4096;

/// How an [`Engine`] behaves; [`EngineConfig::new`] gives the defaults of a node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineConfig {
    /// How long a node may be out of the membership view before the leader declares its jobs
    /// lost. The executor stops its jobs after half of it without the control plane.
    pub lease_ms: u64,
    /// Tries of a start report, after the first, before the job is stopped and reported lost.
    pub started_retries: u32,
    /// Pause between two tries of a start report.
    pub started_retry_pause_ms: u64,
    /// CPU slots of this node: a new job waits while processes that are being stopped still
    /// hold the slots it needs.
    pub slots: u32,
    /// This node's GPU indices, handed out to jobs that ask for GPUs.
    pub gpus: Vec<u32>,
    /// Self-fencing on (always, outside tests). `false` plants a bug on purpose: a node that
    /// keeps running its jobs when it cannot reach the control plane, which the simulation
    /// must catch running a job twice at once.
    pub self_fence: bool,
}

impl EngineConfig {
    /// A node's defaults: 10 start-report retries 200 ms apart, self-fencing on.
    pub fn new(lease_ms: u64, slots: u32, gpus: Vec<u32>) -> EngineConfig {
        EngineConfig {
            lease_ms,
            started_retries: 10,
            started_retry_pause_ms: 200,
            slots,
            gpus,
            self_fence: true,
        }
    }
}

/// What the engine asks a running execution to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Signal {
    /// Cancelled: SIGTERM, then SIGKILL after the grace period; the exit is reported.
    Terminate,
    /// The placement is no longer ours: SIGKILL now, report nothing.
    Kill,
    /// This node lost the control plane: SIGKILL now; the job is reported lost.
    Fence,
}

/// What became of a proposal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reported {
    Applied,
    /// The state machine refused it (a stale epoch, a job that has ended).
    Refused,
    /// It may or may not have been applied: no leader, or the control plane out of reach.
    NotDelivered,
}

/// What the engine asks the runtime to do.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    /// Fetch the job's files and spawn its process with `gpus` visible, then call
    /// [`Engine::process_started`] or [`Engine::start_failed`].
    Start {
        job: Box<JobRecord>,
        epoch: u64,
        gpus: Vec<u32>,
    },
    /// Stop the execution `(id, epoch)` (see [`Signal`]); its exit is still given to
    /// [`Engine::process_exited`].
    Signal { id: u64, epoch: u64, signal: Signal },
    /// Propose this command and give the outcome to [`Engine::reported`].
    Propose(JobCommand),
}

/// The cluster as this node sees it at an [`Engine::observe`].
#[derive(Debug)]
pub struct ClusterView {
    /// This node leads the control plane: it declares jobs lost and places queued jobs.
    pub leader: bool,
    /// The nodes the membership view holds alive, this node included.
    pub alive: BTreeSet<String>,
    /// A scheduler that knows the alive nodes (slots, memory, GPUs, labels, load, RTTs) and
    /// nothing of the jobs; needed only when leading with queued jobs (`None` otherwise).
    pub scheduler: Option<noodle_sched::Scheduler>,
}

/// Where the start report of an execution is.
#[derive(Debug, Clone, PartialEq)]
enum StartReport {
    /// The process is not spawned yet.
    NotSpawned,
    /// Proposed; `retries` tries after the first were made.
    InFlight { command: JobCommand, retries: u32 },
    /// Not delivered; proposed again at `at_ms`.
    RetryAt {
        command: JobCommand,
        retries: u32,
        at_ms: u64,
    },
    /// Applied or refused: nothing more to do.
    Done,
}

/// One attempt of a job on this node, from [`Effect::Start`] to its end.
#[derive(Debug, Clone)]
struct Execution {
    epoch: u64,
    cpus: u32,
    gpus: Vec<u32>,
    /// The signal sent, if any (only the first is sent).
    signal: Option<Signal>,
    report: StartReport,
    /// The process exited (exit code, when) while its start report was still on its way: the
    /// end is reported once the start is, so the two are applied in order.
    exited: Option<(i32, u64)>,
}

/// One node's job engine; see the module docs.
#[derive(Debug)]
pub struct Engine {
    me: String,
    cfg: EngineConfig,
    /// Executions here, by job id (one per job: a new placement of a job waits for the old
    /// execution to end).
    running: BTreeMap<u64, Execution>,
    /// Reports of ended attempts that did not get through, by (job, epoch): proposed again
    /// at each [`Engine::observe`] while the job still holds that placement.
    unreported: BTreeMap<(u64, u64), JobCommand>,
    finished: VecDeque<(u64, u64)>,
    /// The same as `finished`, for lookups (never iterated, so its order does not matter).
    finished_set: HashSet<(u64, u64)>,
    /// The last successful probe of the control plane; `None` until the first.
    last_contact_ms: Option<u64>,
    /// A job placed here waits for a probe to succeed before it starts.
    waiting_for_contact: bool,
    /// Leader: when this leader first saw each node gone from the membership view.
    unreachable_since: BTreeMap<String, u64>,
    /// Leader: `Lost` declarations proposed and not answered yet, by (job, epoch).
    lost_in_flight: BTreeSet<(u64, u64)>,
    /// Leader: placements proposed and not answered yet. No new round of placements starts
    /// before they are answered: the scheduler is rebuilt from the records, which do not show
    /// them yet, so it would hand their resources out a second time.
    places_in_flight: BTreeSet<u64>,
    effects: Vec<Effect>,
}

impl Engine {
    /// A fresh engine: nothing runs, no contact yet (nothing starts before the first
    /// successful [`Engine::contact`]).
    pub fn new(node_id: impl Into<String>, cfg: EngineConfig) -> Engine {
        Engine {
            me: node_id.into(),
            cfg,
            running: BTreeMap::new(),
            unreported: BTreeMap::new(),
            finished: VecDeque::new(),
            finished_set: HashSet::new(),
            last_contact_ms: None,
            waiting_for_contact: false,
            unreachable_since: BTreeMap::new(),
            lost_in_flight: BTreeSet::new(),
            places_in_flight: BTreeSet::new(),
            effects: Vec::new(),
        }
    }

    /// This node's id.
    pub fn node_id(&self) -> &str {
        &self.me
    }

    /// A look at the replicated state: `active` holds the jobs that have not ended, and
    /// `ended_state` answers the state of a job that is not among them (to tell a cancelled
    /// job, stopped gently, from one that is no longer ours). Starts what is placed here,
    /// stops what no longer is, sends again the reports that did not get through, and, when
    /// leading, declares lost the jobs of long-gone nodes and places queued jobs.
    pub fn observe(
        &mut self,
        now_ms: u64,
        active: &[JobRecord],
        ended_state: impl Fn(u64) -> Option<JobState>,
        cluster: ClusterView,
    ) {
        // Stop first: a start then sees the slots of the executions being stopped.
        self.stop_unplaced(active, ended_state);
        self.start_placed(now_ms, active);
        self.resend_unreported(active);
        if cluster.leader {
            self.declare_lost(now_ms, active, &cluster.alive);
            if let Some(sched) = cluster.scheduler {
                self.schedule(active, sched);
            }
        } else {
            self.unreachable_since.clear();
        }
    }

    /// Starts the jobs placed here that neither run nor ended here, and reports lost the
    /// jobs recorded running here that do not run here.
    fn start_placed(&mut self, now_ms: u64, active: &[JobRecord]) {
        self.waiting_for_contact = false;
        for job in active {
            let Some((node, epoch)) = job.state.placement() else {
                continue;
            };
            if node != self.me
                || self.running.contains_key(&job.id)
                || self.finished_set.contains(&(job.id, epoch))
            {
                continue;
            }
            match job.state {
                JobState::Placed { .. } => self.start(now_ms, job, epoch),
                JobState::Running { .. } => {
                    // It ran under an earlier process of this node, which took it along when
                    // it died (parent-death signal): it is lost.
                    self.remember_finished(job.id, epoch);
                    self.propose(JobCommand::Lost {
                        id: job.id,
                        epoch,
                        at_ms: now_ms,
                    });
                }
                _ => {}
            }
        }
    }

    fn start(&mut self, now_ms: u64, job: &JobRecord, epoch: u64) {
        if !self.in_touch(now_ms) {
            // The records may be stale (this node may be cut off, or just restarted from what
            // its disk kept): the job may have moved on. Wait for the control plane.
            self.waiting_for_contact = true;
            return;
        }
        let dying = self.running.values().any(|e| e.signal.is_some());
        let in_use: Vec<u32> = self
            .running
            .values()
            .flat_map(|e| e.gpus.iter().copied())
            .collect();
        let gpus = pick_gpus(&self.cfg.gpus, &in_use, job.spec.gpus);
        if dying {
            // Processes being stopped still hold CPUs and GPUs the leader already counts as
            // free: wait until they are gone rather than run more than this node offers.
            let used: u32 = self.running.values().map(|e| e.cpus).sum();
            if used.saturating_add(job.spec.cpus) > self.cfg.slots || gpus.is_none() {
                return;
            }
        }
        let Some(gpus) = gpus else {
            self.remember_finished(job.id, epoch);
            let error = format!(
                "node {} has {} free GPUs; the job asks for {}",
                self.me,
                self.cfg.gpus.len().saturating_sub(in_use.len()),
                job.spec.gpus
            );
            self.propose(start_failed(job.id, epoch, 126, error, now_ms));
            return;
        };
        self.running.insert(
            job.id,
            Execution {
                epoch,
                cpus: job.spec.cpus,
                gpus: gpus.clone(),
                signal: None,
                report: StartReport::NotSpawned,
                exited: None,
            },
        );
        self.effects.push(Effect::Start {
            job: Box::new(job.clone()),
            epoch,
            gpus,
        });
    }

    /// Reports that did not get through: again, while the job still waits for them.
    fn resend_unreported(&mut self, active: &[JobRecord]) {
        let unreported = std::mem::take(&mut self.unreported);
        for ((id, epoch), command) in unreported {
            let waiting = active
                .iter()
                .any(|j| j.id == id && j.state.placement() == Some((self.me.as_str(), epoch)));
            if waiting {
                self.propose(command);
            }
        }
    }

    /// Stops the executions whose record no longer holds this node's placement: ended (maybe
    /// by our own report), cancelled, declared lost, or placed again.
    fn stop_unplaced(
        &mut self,
        active: &[JobRecord],
        ended_state: impl Fn(u64) -> Option<JobState>,
    ) {
        if self.running.is_empty() {
            return;
        }
        // Only the records of what runs here: there may be thousands of queued jobs.
        let by_id: BTreeMap<u64, &JobRecord> = active
            .iter()
            .filter(|j| self.running.contains_key(&j.id))
            .map(|j| (j.id, j))
            .collect();
        let mut signals = Vec::new();
        for (id, execution) in &self.running {
            if execution.signal.is_some() {
                continue;
            }
            let record = by_id.get(id);
            let ours = record
                .is_some_and(|j| j.state.placement() == Some((self.me.as_str(), execution.epoch)));
            if ours {
                continue;
            }
            let cancelled = record.is_none() && ended_state(*id) == Some(JobState::Cancelled);
            let signal = if cancelled {
                Signal::Terminate
            } else {
                Signal::Kill
            };
            signals.push((*id, signal));
        }
        for (id, signal) in signals {
            self.signal(id, signal);
        }
    }

    /// Leader: declares lost the jobs of nodes gone from the membership view for a lease.
    fn declare_lost(&mut self, now_ms: u64, active: &[JobRecord], alive: &BTreeSet<String>) {
        self.unreachable_since
            .retain(|node, _| !alive.contains(node));
        for job in active {
            let Some((node, epoch)) = job.state.placement() else {
                continue;
            };
            if alive.contains(node) {
                continue;
            }
            let since = *self
                .unreachable_since
                .entry(node.to_string())
                .or_insert(now_ms);
            if now_ms.saturating_sub(since) >= self.cfg.lease_ms
                && self.lost_in_flight.insert((job.id, epoch))
            {
                self.effects.push(Effect::Propose(JobCommand::Lost {
                    id: job.id,
                    epoch,
                    at_ms: now_ms,
                }));
            }
        }
    }

    /// Leader: places queued jobs with `sched`, which knows the nodes but no jobs yet.
    fn schedule(&mut self, active: &[JobRecord], mut sched: noodle_sched::Scheduler) {
        if !self.places_in_flight.is_empty() || !active.iter().any(|j| j.state == JobState::Queued)
        {
            return;
        }
        for job in active {
            if let Some((node, _)) = job.state.placement() {
                sched.restore_running(sched_spec(job.id, &job.spec), node);
            } else if job.state == JobState::Queued {
                // A job that fits nowhere now waits (nodes may come back).
                let _ = sched.submit(sched_spec(job.id, &job.spec));
            }
        }
        for p in sched.place() {
            self.places_in_flight.insert(p.job);
            self.effects.push(Effect::Propose(JobCommand::Place {
                id: p.job,
                node: p.node,
            }));
        }
    }

    /// The process of `(id, epoch)` was spawned: its start is reported.
    pub fn process_started(&mut self, now_ms: u64, id: u64, epoch: u64) {
        let Some(execution) = self.execution_mut(id, epoch) else {
            return;
        };
        if execution.signal.is_some() || execution.report != StartReport::NotSpawned {
            // Signalled while it was spawned: the runtime applies the signal, and the end of
            // the process is reported as the signal says.
            return;
        }
        let command = JobCommand::Started {
            id,
            epoch,
            at_ms: now_ms,
        };
        execution.report = StartReport::InFlight {
            command: command.clone(),
            retries: 0,
        };
        self.propose(command);
    }

    /// The execution `(id, epoch)` ends without a process: it could not start (no such
    /// program, a file that could not be fetched), or it was signalled before it was spawned.
    pub fn start_failed(
        &mut self,
        now_ms: u64,
        id: u64,
        epoch: u64,
        exit_code: i32,
        error: String,
    ) {
        let Some(execution) = self.end_execution(id, epoch) else {
            return;
        };
        let report = match execution.signal {
            None => Some(start_failed(id, epoch, exit_code, error, now_ms)),
            Some(Signal::Fence) => Some(JobCommand::Lost {
                id,
                epoch,
                at_ms: now_ms,
            }),
            Some(Signal::Kill | Signal::Terminate) => None,
        };
        if let Some(report) = report {
            self.propose(report);
        }
    }

    /// The process of `(id, epoch)` exited with `exit_code`. If its start report is on its
    /// way, the end waits for its answer: two reports proposed at once may be applied in either
    /// order, and an end applied first would make the start look refused. (A start report
    /// waiting to be retried is dropped: an end is taken from a placed job too.)
    pub fn process_exited(&mut self, now_ms: u64, id: u64, epoch: u64, exit_code: i32) {
        if let Some(execution) = self.running.get_mut(&id).filter(|e| e.epoch == epoch)
            && matches!(execution.report, StartReport::InFlight { .. })
            && execution.signal.is_none()
        {
            execution.exited = Some((exit_code, now_ms));
            return;
        }
        self.report_exit(now_ms, id, epoch, exit_code);
    }

    /// Reports the end of `(id, epoch)` as its signal says, and forgets the execution.
    fn report_exit(&mut self, now_ms: u64, id: u64, epoch: u64, exit_code: i32) {
        let Some(execution) = self.end_execution(id, epoch) else {
            return;
        };
        let report = match execution.signal {
            // A cancelled job's end is reported too (and refused: it has ended already).
            None | Some(Signal::Terminate) => Some(JobCommand::Ended {
                id,
                epoch,
                exit_code,
                at_ms: now_ms,
            }),
            Some(Signal::Kill) => None,
            Some(Signal::Fence) => Some(JobCommand::Lost {
                id,
                epoch,
                at_ms: now_ms,
            }),
        };
        if let Some(report) = report {
            self.propose(report);
        }
    }

    /// What became of a [`Effect::Propose`].
    pub fn reported(&mut self, now_ms: u64, command: &JobCommand, outcome: Reported) {
        match command {
            JobCommand::Place { id, .. } => {
                self.places_in_flight.remove(id);
            }
            JobCommand::Started { id, epoch, .. } => {
                self.started_reported(now_ms, *id, *epoch, outcome)
            }
            JobCommand::Lost { id, epoch, .. } if self.lost_in_flight.remove(&(*id, *epoch)) => {
                // The leader's declaration: made again at the next look if still due.
            }
            JobCommand::Lost { id, epoch, .. }
            | JobCommand::Ended { id, epoch, .. }
            | JobCommand::StartFailed { id, epoch, .. } => {
                if outcome == Reported::NotDelivered {
                    self.keep_unreported(*id, *epoch, command.clone());
                }
            }
            JobCommand::Submit { .. } | JobCommand::Cancel { .. } => {}
        }
    }

    fn started_reported(&mut self, now_ms: u64, id: u64, epoch: u64, outcome: Reported) {
        let pause_ms = self.cfg.started_retry_pause_ms;
        let retries_max = self.cfg.started_retries;
        let Some(execution) = self.execution_mut(id, epoch) else {
            return;
        };
        let StartReport::InFlight { command, retries } =
            std::mem::replace(&mut execution.report, StartReport::Done)
        else {
            return;
        };
        let signal = execution.signal;
        match outcome {
            Reported::Applied => {}
            // Cancelled or placed elsewhere meanwhile: stop it, report nothing.
            Reported::Refused if signal.is_none() => self.signal(id, Signal::Kill),
            Reported::Refused => {}
            Reported::NotDelivered if signal.is_some() => {}
            Reported::NotDelivered if retries < retries_max => {
                execution.report = StartReport::RetryAt {
                    command,
                    retries: retries + 1,
                    at_ms: now_ms.saturating_add(pause_ms),
                };
            }
            // The control plane stays out of reach: stop, and report the job lost.
            Reported::NotDelivered => self.signal(id, Signal::Fence),
        }
        self.report_deferred_exit(id, epoch);
    }

    /// Reports an exit that waited for the start report's answer.
    fn report_deferred_exit(&mut self, id: u64, epoch: u64) {
        let Some(execution) = self.running.get(&id).filter(|e| e.epoch == epoch) else {
            return;
        };
        if let Some((exit_code, at_ms)) = execution.exited {
            self.report_exit(at_ms, id, epoch, exit_code);
        }
    }

    /// The outcome of a probe of the control plane (a linearizable read).
    pub fn contact(&mut self, now_ms: u64, ok: bool) {
        if ok {
            self.last_contact_ms = Some(self.last_contact_ms.map_or(now_ms, |t| t.max(now_ms)));
        }
    }

    /// Timers: start reports due again, and self-fencing.
    pub fn tick(&mut self, now_ms: u64) {
        let mut due = Vec::new();
        for (id, execution) in &mut self.running {
            if let StartReport::RetryAt {
                command,
                retries,
                at_ms,
            } = &execution.report
                && now_ms >= *at_ms
                && execution.signal.is_none()
            {
                let (command, retries) = (command.clone(), *retries);
                execution.report = StartReport::InFlight {
                    command: command.clone(),
                    retries,
                };
                due.push((*id, command));
            }
        }
        for (_, command) in due {
            self.propose(command);
        }
        if self.cfg.self_fence && !self.running.is_empty() && !self.in_touch(now_ms) {
            let ids: Vec<u64> = self
                .running
                .iter()
                .filter(|(_, e)| e.signal.is_none())
                .map(|(id, _)| *id)
                .collect();
            for id in ids {
                self.signal(id, Signal::Fence);
            }
        }
    }

    /// The effects asked for since the last call, in order.
    pub fn effects(&mut self) -> Vec<Effect> {
        std::mem::take(&mut self.effects)
    }

    /// Executions here (starting, running or being stopped).
    pub fn running(&self) -> usize {
        self.running.len()
    }

    /// Whether the runtime should probe the control plane: something runs here (self-fencing
    /// needs fresh contact), or a job waits for contact to start.
    pub fn wants_contact(&self) -> bool {
        !self.running.is_empty() || self.waiting_for_contact
    }

    /// A successful probe less than half a lease ago.
    fn in_touch(&self, now_ms: u64) -> bool {
        self.last_contact_ms
            .is_some_and(|t| now_ms.saturating_sub(t) < self.cfg.lease_ms / 2)
    }

    fn execution_mut(&mut self, id: u64, epoch: u64) -> Option<&mut Execution> {
        self.running.get_mut(&id).filter(|e| e.epoch == epoch)
    }

    /// Forgets the execution `(id, epoch)` (freeing its slots and GPUs) and remembers that it
    /// ended here.
    fn end_execution(&mut self, id: u64, epoch: u64) -> Option<Execution> {
        self.running.get(&id).filter(|e| e.epoch == epoch)?;
        let execution = self.running.remove(&id)?;
        self.remember_finished(id, epoch);
        Some(execution)
    }

    fn signal(&mut self, id: u64, signal: Signal) {
        let Some(execution) = self.running.get_mut(&id) else {
            return;
        };
        if execution.signal.is_some() {
            return;
        }
        execution.signal = Some(signal);
        let epoch = execution.epoch;
        if execution.exited.is_some() {
            // Nothing left to signal: the end is reported as the signal says.
            self.report_deferred_exit(id, epoch);
            return;
        }
        self.effects.push(Effect::Signal { id, epoch, signal });
    }

    fn propose(&mut self, command: JobCommand) {
        self.effects.push(Effect::Propose(command));
    }

    fn keep_unreported(&mut self, id: u64, epoch: u64, command: JobCommand) {
        self.unreported.insert((id, epoch), command);
        while self.unreported.len() > UNREPORTED_MAX {
            self.unreported.pop_first();
        }
    }

    fn remember_finished(&mut self, id: u64, epoch: u64) {
        if self.finished_set.insert((id, epoch)) {
            self.finished.push_back((id, epoch));
            if self.finished.len() > FINISHED_REMEMBERED
                && let Some(old) = self.finished.pop_front()
            {
                self.finished_set.remove(&old);
            }
        }
    }
}

/// A job as the scheduler sees it. Its input data, for scoring, is its shipped files, all on
/// the submitting node, and its `--read` inputs where the fabric holds them.
pub fn sched_spec(id: u64, spec: &JobSpec) -> noodle_sched::JobSpec {
    let shipped: u64 = spec.files.iter().map(|f| f.bytes).sum();
    let shipped = (shipped > 0).then(|| (spec.origin.clone(), shipped));
    noodle_sched::JobSpec {
        id,
        submitter: spec.submitter.clone(),
        origin: spec.origin.clone(),
        cpus: spec.cpus,
        mem_bytes: spec.mem_bytes,
        gpus: spec.gpus,
        labels: spec.labels.clone(),
        inputs: shipped
            .into_iter()
            .chain(spec.held.iter().cloned())
            .collect(),
    }
}

/// The first `n` of this node's GPU indices that no running job holds; `None` if there are
/// fewer free.
pub fn pick_gpus(all: &[u32], in_use: &[u32], n: u32) -> Option<Vec<u32>> {
    let free: Vec<u32> = all
        .iter()
        .copied()
        .filter(|g| !in_use.contains(g))
        .take(n as usize)
        .collect();
    (free.len() == n as usize).then_some(free)
}

/// A start failure report, its error cut to what the state machine accepts (at a character
/// boundary: a message may hold any UTF-8, from file names or the OS).
fn start_failed(id: u64, epoch: u64, exit_code: i32, error: String, at_ms: u64) -> JobCommand {
    JobCommand::StartFailed {
        id,
        epoch,
        exit_code,
        error: truncate(error, limits::ERROR_BYTES_MAX - 8),
        at_ms,
    }
}

/// `s` cut to at most `max` bytes, at a character boundary.
fn truncate(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut end = max;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
    s
}
