//! Jobs on this node (`noodle run`): the executor, the scheduler, job events and output.
//!
//! Every node runs one [`run`] loop. It wakes when the control plane applies entries (and four
//! times a second) and reads the jobs that have not ended from its replicated state:
//!
//! - **Executor** (every node): a job placed on this node is started (files fetched from the
//!   submitting node first, then the process, see [`crate::process`]); its start, its end or
//!   why it could not start is proposed with the placement's fencing epoch. A running job
//!   whose record no longer holds this node's epoch (cancelled, declared lost, placed again) is
//!   stopped: SIGTERM and a grace period for a cancellation, SIGKILL otherwise.
//! - **Scheduler** (the leader only): rebuilds a [`noodle_sched::Scheduler`] from the alive
//!   nodes (their advertised CPU slots, memory, GPUs, labels, load and link RTTs) and the job
//!   records (placed and running jobs hold their resources), and proposes the placements it
//!   makes. Rebuilding from durable records each time means a new leader needs no hand-over.
//! - **Leases** (the leader): a job whose node has not been alive for [`JobsConfig::lease`] is
//!   declared lost (run again if it has retries). The other half is on the executor: a node
//!   that cannot reach the control plane for half the lease kills its jobs ([`self_fence`]),
//!   so by the time the leader gives a job to another node, the first copy is gone; a late
//!   report from it carries a stale epoch and is refused by the state machine.
//! - **Events** (every node): job transitions become `job_*` events on the node's bus.
//!
//! Output is kept per attempt in `<data>/jobs/<id>.<epoch>/output.log` (bounded) and served to
//! other nodes through the `jobs.output` request ([`serve_output`]).

use crate::JobsConfig;
use crate::control::ControlPlane;
use crate::node::Shared;
use crate::process::{JobProcess, OutputLog, ProcessSpec, SpawnError};
use crate::ship::Shipping;
use noodle_api::{EventKind, JobInfo};
use noodle_audit::{Outcome, Record};
use noodle_control::jobs::{JobCommand, JobRecord, JobState};
use noodle_control::{Command, Proposal, Response};
use noodle_link::RemoteError;
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, HashSet, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// How often the loop runs without being woken by the control plane.
const TICK: Duration = Duration::from_millis(250);
/// Executions that ended here, remembered so that a record lagging behind does not start
/// them again.
const FINISHED_REMEMBERED: usize = 4096;
/// Ended jobs whose directories (output) are kept; older ones are removed.
const KEPT_JOB_DIRS: usize = 1000;
/// Attempts that end between two prunings of the job directories.
const PRUNE_EVERY: u64 = 64;
/// Most bytes of output one `jobs.output` answer carries.
pub(crate) const OUTPUT_READ_MAX: usize = 1 << 20;
/// Longest a `jobs.output` request waits for new output.
const OUTPUT_WAIT_MAX: Duration = Duration::from_secs(2);
/// Tries of a start report that does not get through before the job is stopped.
const STARTED_RETRIES: u32 = 10;
const STARTED_RETRY_PAUSE: Duration = Duration::from_millis(200);
/// Chunk store size for shipped files.
const SHIPPING_CAP_BYTES: u64 = 8 << 30;

/// What the loop asks a running execution to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Signal {
    Run,
    /// Cancelled: SIGTERM, then SIGKILL after the grace period.
    Terminate,
    /// The placement is no longer ours: SIGKILL now, report nothing.
    Kill,
    /// This node lost the control plane: SIGKILL now; report the job lost once it can.
    Fence,
}

struct Execution {
    epoch: u64,
    log: Arc<OutputLog>,
    signal: watch::Sender<Signal>,
}

#[derive(Default)]
struct Local {
    running: HashMap<u64, Execution>,
    /// GPU indices held by the jobs running here.
    gpus: HashMap<u64, Vec<u32>>,
    /// Reports of ended attempts that did not reach the control plane (no leader, cut off):
    /// sent again until they are applied or the job has moved on.
    unreported: HashMap<(u64, u64), JobCommand>,
    finished: VecDeque<(u64, u64)>,
    finished_set: HashSet<(u64, u64)>,
}

impl Local {
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

/// The node's side of jobs: executions running here and the shipped-file store.
pub(crate) struct JobRuntime {
    pub(crate) cfg: JobsConfig,
    dir: PathBuf,
    pub(crate) shipping: Shipping,
    cgroup: Option<PathBuf>,
    local: Mutex<Local>,
    /// Attempts that ended here since the node started.
    ended: AtomicU64,
}

#[derive(Debug, thiserror::Error)]
pub enum JobsError {
    #[error("cannot create {path}: {source}")]
    Dir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("shipped-file store: {0}")]
    Shipping(String),
}

impl JobRuntime {
    pub(crate) fn open(
        data_dir: &std::path::Path,
        cfg: JobsConfig,
    ) -> Result<JobRuntime, JobsError> {
        let dir = data_dir.join("jobs");
        std::fs::create_dir_all(&dir).map_err(|source| JobsError::Dir {
            path: dir.clone(),
            source,
        })?;
        let shipping = Shipping::open(data_dir, SHIPPING_CAP_BYTES)
            .map_err(|e| JobsError::Shipping(e.to_string()))?;
        let cgroup = crate::process::cgroup_v2_root();
        match &cgroup {
            Some(c) => tracing::info!(cgroup = %c.display(), "job limits: cgroup v2"),
            None => tracing::info!("job limits: rlimits (no writable cgroup v2)"),
        }
        Ok(JobRuntime {
            cfg,
            dir,
            shipping,
            cgroup,
            local: Mutex::new(Local::default()),
            ended: AtomicU64::new(0),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Local> {
        self.local.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn attempt_dir(&self, id: u64, epoch: u64) -> PathBuf {
        self.dir.join(format!("{id}.{epoch}"))
    }

    /// The output log of one attempt: live if it runs here, else as kept on disk.
    pub(crate) fn output_log(&self, id: u64, epoch: u64) -> Option<Arc<OutputLog>> {
        if let Some(e) = self.lock().running.get(&id)
            && e.epoch == epoch
        {
            return Some(e.log.clone());
        }
        OutputLog::open_existing(&self.attempt_dir(id, epoch).join("output.log")).ok()
    }

    /// Starts what is placed here and stops what no longer is.
    fn reconcile(
        self: &Arc<Self>,
        shared: &Arc<Shared>,
        plane: &Arc<ControlPlane>,
        active: &[JobRecord],
    ) {
        let me = shared.node_id.as_str();
        let mut local = self.lock();
        for job in active {
            match &job.state {
                JobState::Placed { node, epoch } if node == me => {
                    if local.running.contains_key(&job.id)
                        || local.finished_set.contains(&(job.id, *epoch))
                    {
                        continue;
                    }
                    let log = match std::fs::create_dir_all(self.attempt_dir(job.id, *epoch))
                        .and_then(|()| {
                            OutputLog::create(
                                &self.attempt_dir(job.id, *epoch).join("output.log"),
                                self.cfg.output_max_bytes,
                            )
                        }) {
                        Ok(log) => log,
                        Err(e) => {
                            tracing::error!(job = job.id, error = %e, "cannot create the job's directory");
                            local.remember_finished(job.id, *epoch);
                            let error = format!("node {me} cannot create the job's directory: {e}");
                            let failed = start_failed(job.id, *epoch, 126, error);
                            tokio::spawn(self.clone().deliver(plane.clone(), me.into(), failed));
                            continue;
                        }
                    };
                    let (tx, rx) = watch::channel(Signal::Run);
                    local.running.insert(
                        job.id,
                        Execution {
                            epoch: *epoch,
                            log: log.clone(),
                            signal: tx,
                        },
                    );
                    tokio::spawn(self.clone().execute(
                        shared.clone(),
                        plane.clone(),
                        job.clone(),
                        *epoch,
                        log,
                        rx,
                    ));
                }
                JobState::Running { node, epoch }
                    if node == me
                        && !local.running.contains_key(&job.id)
                        && !local.finished_set.contains(&(job.id, *epoch)) =>
                {
                    // It ran under an earlier process of this node, which took it along when
                    // it died (parent-death signal): it is lost.
                    local.remember_finished(job.id, *epoch);
                    let lost = JobCommand::Lost {
                        id: job.id,
                        epoch: *epoch,
                        at_ms: crate::now_ms(),
                    };
                    tokio::spawn(self.clone().deliver(plane.clone(), me.into(), lost));
                }
                _ => {}
            }
        }
        // Reports that did not get through: again, while the job still waits for them.
        let unreported = std::mem::take(&mut local.unreported);
        for ((id, epoch), command) in unreported {
            let waiting = active
                .iter()
                .any(|j| j.id == id && j.state.placement() == Some((me, epoch)));
            if waiting {
                tokio::spawn(self.clone().deliver(plane.clone(), me.into(), command));
            }
        }
        let by_id: HashMap<u64, &JobRecord> = active.iter().map(|j| (j.id, j)).collect();
        for (id, execution) in &local.running {
            let ours = by_id
                .get(id)
                .is_some_and(|j| j.state.placement() == Some((me, execution.epoch)));
            if ours || *execution.signal.borrow() != Signal::Run {
                continue;
            }
            // Ended (maybe by our own report), cancelled, or no longer ours.
            let cancelled = !by_id.contains_key(id)
                && plane
                    .control
                    .read_local(|v| v.job(*id))
                    .ok()
                    .flatten()
                    .is_some_and(|j| j.state == JobState::Cancelled);
            let _ = execution.signal.send(if cancelled {
                Signal::Terminate
            } else {
                Signal::Kill
            });
        }
    }

    /// Kills every job running here: this node cannot reach the control plane.
    fn fence_all(&self) {
        for (id, e) in &self.lock().running {
            if *e.signal.borrow() == Signal::Run {
                tracing::warn!(job = id, "control plane unreachable: stopping the job");
                let _ = e.signal.send(Signal::Fence);
            }
        }
    }

    /// Proposes an executor's report; one that does not get through is kept and sent again
    /// by [`JobRuntime::reconcile`] while the job still waits for it.
    async fn deliver(self: Arc<Self>, plane: Arc<ControlPlane>, node: String, command: JobCommand) {
        let (Some(id), Some(epoch)) = (command.job_id(), command.epoch()) else {
            return;
        };
        if report(plane, node, command.clone()).await == Reported::NotDelivered {
            self.lock().unreported.insert((id, epoch), command);
        }
    }

    fn running_count(&self) -> usize {
        self.lock().running.len()
    }

    /// Runs one attempt of a job placed here, from fetching its files to reporting its end.
    async fn execute(
        self: Arc<Self>,
        shared: Arc<Shared>,
        plane: Arc<ControlPlane>,
        job: JobRecord,
        epoch: u64,
        log: Arc<OutputLog>,
        mut signal: watch::Receiver<Signal>,
    ) {
        let id = job.id;
        let me = shared.node_id.clone();
        let outcome = self
            .attempt(&shared, &plane, &job, epoch, &log, &mut signal)
            .await;
        log.close();
        let command = match outcome {
            Attempt::Ended { exit_code, at_ms } => Some(JobCommand::Ended {
                id,
                epoch,
                exit_code,
                at_ms,
            }),
            Attempt::StartFailed { exit_code, error } => {
                Some(start_failed(id, epoch, exit_code, error))
            }
            Attempt::Fenced => Some(JobCommand::Lost {
                id,
                epoch,
                at_ms: crate::now_ms(),
            }),
            Attempt::Superseded => None,
        };
        if let Some(command) = command {
            self.clone().deliver(plane.clone(), me, command).await;
        }
        {
            let mut local = self.lock();
            local.running.remove(&id);
            local.gpus.remove(&id);
            local.remember_finished(id, epoch);
        }
        let work = self.attempt_dir(id, epoch).join("work");
        // Listing the directory costs as much as the jobs it holds: prune now and then only.
        let prune = (self
            .ended
            .fetch_add(1, Ordering::Relaxed)
            .is_multiple_of(PRUNE_EVERY))
        .then(|| self.dir.clone());
        let _ = tokio::task::spawn_blocking(move || {
            let _ = std::fs::remove_dir_all(&work);
            if let Some(dir) = prune {
                prune_job_dirs(&dir);
            }
        })
        .await;
    }

    async fn attempt(
        &self,
        shared: &Arc<Shared>,
        plane: &Arc<ControlPlane>,
        job: &JobRecord,
        epoch: u64,
        log: &Arc<OutputLog>,
        signal: &mut watch::Receiver<Signal>,
    ) -> Attempt {
        let me = shared.node_id.as_str();
        let work = self.attempt_dir(job.id, epoch).join("work");
        if let Err(e) = tokio::fs::create_dir_all(&work).await {
            return Attempt::StartFailed {
                exit_code: 126,
                error: format!("node {me} cannot create the job's working directory: {e}"),
            };
        }
        for f in &job.spec.files {
            let file = noodle_api::JobFile {
                name: f.name.clone(),
                manifest: f.manifest.clone(),
                executable: f.executable,
                bytes: f.bytes,
            };
            let fetched = match (shared.peer_addr(&job.spec.origin), shared.link()) {
                (Some(origin), Some(link)) => self
                    .shipping
                    .materialize(link, origin, &file, &work)
                    .await
                    .map_err(|e| e.to_string()),
                _ => Err(format!(
                    "the submitting node {} is not known",
                    job.spec.origin
                )),
            };
            if let Err(e) = fetched {
                return Attempt::StartFailed {
                    exit_code: 126,
                    error: format!(
                        "node {me} could not fetch {} from {}: {e}",
                        f.name, job.spec.origin
                    ),
                };
            }
        }
        if *signal.borrow() != Signal::Run {
            return Attempt::Superseded;
        }
        // The job sees only the GPUs it was given (none if it asked for none).
        let gpus = {
            let mut local = self.lock();
            let in_use = local.gpus.values().flatten().copied().collect::<Vec<_>>();
            let all = shared.own_gpu_indices();
            match pick_gpus(&all, &in_use, job.spec.gpus) {
                Some(picked) => {
                    local.gpus.insert(job.id, picked.clone());
                    picked
                }
                None => {
                    return Attempt::StartFailed {
                        exit_code: 126,
                        error: format!(
                            "node {me} has {} free GPUs; the job asks for {}",
                            all.len().saturating_sub(in_use.len()),
                            job.spec.gpus
                        ),
                    };
                }
            }
        };
        let visible = gpus
            .iter()
            .map(u32::to_string)
            .collect::<Vec<_>>()
            .join(",");
        let spec = ProcessSpec {
            command: job.spec.command.clone(),
            workdir: work,
            env: vec![
                ("NOODLE_JOB_ID".into(), job.id.to_string()),
                ("NOODLE_JOB_EPOCH".into(), epoch.to_string()),
                ("NOODLE_NODE".into(), me.to_string()),
                ("CUDA_VISIBLE_DEVICES".into(), visible),
            ],
            cpus: job.spec.cpus,
            mem_bytes: job.spec.mem_bytes,
            cgroup_parent: self.cgroup.clone(),
        };
        let mut process = match JobProcess::spawn(&spec, log.clone()) {
            Ok(p) => p,
            Err(e) => {
                let exit_code = match e {
                    SpawnError::NotFound { .. } => 127,
                    _ => 126,
                };
                return Attempt::StartFailed {
                    exit_code,
                    error: format!("{e} on node {me}"),
                };
            }
        };
        let started = JobCommand::Started {
            id: job.id,
            epoch,
            at_ms: crate::now_ms(),
        };
        let mut delivered = report(plane.clone(), me.to_string(), started.clone()).await;
        for _ in 0..STARTED_RETRIES {
            if delivered != Reported::NotDelivered || *signal.borrow() != Signal::Run {
                break;
            }
            tokio::time::sleep(STARTED_RETRY_PAUSE).await;
            delivered = report(plane.clone(), me.to_string(), started.clone()).await;
        }
        match delivered {
            Reported::Applied => {}
            Reported::Refused => {
                // Cancelled or placed elsewhere meanwhile.
                process.kill();
                let _ = process.wait().await;
                return Attempt::Superseded;
            }
            Reported::NotDelivered => {
                // The control plane stays out of reach: stop, and report the job lost.
                process.kill();
                let _ = process.wait().await;
                return Attempt::Fenced;
            }
        }
        let killer = process.killer();
        let grace = self.cfg.kill_grace;
        let wait = process.wait();
        tokio::pin!(wait);
        let mut fenced = false;
        let mut superseded = false;
        let exit_code = loop {
            tokio::select! {
                code = &mut wait => break code,
                changed = signal.changed() => {
                    let s = if changed.is_err() { Signal::Kill } else { *signal.borrow() };
                    match s {
                        Signal::Run => {}
                        Signal::Terminate => killer.terminate(grace),
                        Signal::Kill => { superseded = true; killer.kill() }
                        Signal::Fence => { fenced = true; killer.kill() }
                    }
                }
            }
        };
        let at_ms = crate::now_ms();
        if fenced {
            Attempt::Fenced
        } else if superseded {
            Attempt::Superseded
        } else {
            Attempt::Ended { exit_code, at_ms }
        }
    }
}

/// The first `n` of this node's GPU indices that no running job holds; `None` if there are
/// fewer free.
fn pick_gpus(all: &[u32], in_use: &[u32], n: u32) -> Option<Vec<u32>> {
    let free: Vec<u32> = all
        .iter()
        .copied()
        .filter(|g| !in_use.contains(g))
        .take(n as usize)
        .collect();
    (free.len() == n as usize).then_some(free)
}

enum Attempt {
    Ended {
        exit_code: i32,
        at_ms: u64,
    },
    StartFailed {
        exit_code: i32,
        error: String,
    },
    /// Killed because this node lost the control plane: report it lost.
    Fenced,
    /// The placement is gone (cancelled, lost, elsewhere): nothing to report.
    Superseded,
}

fn start_failed(id: u64, epoch: u64, exit_code: i32, error: String) -> JobCommand {
    let mut error = error;
    error.truncate(noodle_control::jobs::limits::ERROR_BYTES_MAX - 8);
    JobCommand::StartFailed {
        id,
        epoch,
        exit_code,
        error,
        at_ms: crate::now_ms(),
    }
}

/// What became of a report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reported {
    Applied,
    /// The state machine refused it (a stale epoch, a job that has ended).
    Refused,
    /// It may not have been applied: no leader, or the control plane out of reach.
    NotDelivered,
}

/// Proposes an executor's or the leader's report, audited as the node.
async fn report(plane: Arc<ControlPlane>, node: String, command: JobCommand) -> Reported {
    let (action, outcome) = match &command {
        JobCommand::Started { .. } => ("job.start", None),
        JobCommand::Ended { exit_code, .. } => ("job.end", Some(format!("exit {exit_code}"))),
        JobCommand::StartFailed { error, .. } => ("job.end", Some(error.clone())),
        JobCommand::Lost { .. } => ("job.lost", None),
        JobCommand::Place { .. } => ("job.place", None),
        JobCommand::Submit { .. } | JobCommand::Cancel { .. } => ("job", None),
    };
    let id = command.job_id().unwrap_or(0);
    let target = match outcome {
        Some(o) => format!("job {id}: {o}"),
        None => format!("job {id}"),
    };
    // Outcomes and losses go to the audit log; starts and placements do not (they are in
    // the job record, and a busy cluster would fill the log with them).
    let proposal = if matches!(action, "job.end" | "job.lost") {
        Proposal::audited(
            Command::Job(command),
            Record::new(
                crate::now_ms(),
                format!("node:{node}"),
                action,
                target,
                "jobs:execute".to_string(),
                Outcome::Allowed,
            ),
        )
    } else {
        Proposal::new(Command::Job(command))
    };
    match plane.control.propose(proposal).await {
        Ok(Response::Done) => Reported::Applied,
        Ok(other) => {
            tracing::debug!(job = id, answer = ?other, "job report refused");
            Reported::Refused
        }
        Err(e) => {
            tracing::warn!(job = id, error = %e, "job report not applied");
            Reported::NotDelivered
        }
    }
}

/// Keeps the newest [`KEPT_JOB_DIRS`] attempt directories.
fn prune_job_dirs(dir: &std::path::Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut attempts: Vec<((u64, u64), PathBuf)> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let (id, epoch) = name.split_once('.')?;
            Some(((id.parse().ok()?, epoch.parse().ok()?), e.path()))
        })
        .collect();
    if attempts.len() <= KEPT_JOB_DIRS {
        return;
    }
    attempts.sort();
    let excess = attempts.len() - KEPT_JOB_DIRS;
    for (_, path) in attempts.into_iter().take(excess) {
        let _ = std::fs::remove_dir_all(path);
    }
}

/// The node's job loop; see the module docs.
pub(crate) async fn run(shared: Arc<Shared>, plane: Arc<ControlPlane>, jobs: Arc<JobRuntime>) {
    let mut metrics = plane.control.watch();
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut seen: Option<Seen> = None;
    let mut unreachable_since: HashMap<String, Instant> = HashMap::new();
    let mut last_applied = None;
    loop {
        let ticked = tokio::select! {
            changed = metrics.changed() => {
                if changed.is_err() {
                    return;
                }
                false
            }
            _ = tick.tick() => true,
        };
        let applied = metrics.borrow().last_applied;
        if !ticked && applied == last_applied {
            continue;
        }
        last_applied = applied;
        // The jobs that have not ended and the newest job id, from one consistent view.
        let read = plane.control.read_local(|v| {
            let newest = v.recent_jobs(1)?.first().map_or(0, |j| j.id);
            Ok((v.active_jobs()?, newest))
        });
        let (active, newest) = match read {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the job queue");
                continue;
            }
        };
        match &mut seen {
            Some(seen) => emit_events(&shared, &plane, seen, &active, newest),
            None => seen = Some(Seen::new(&active, newest)),
        }
        jobs.reconcile(&shared, &plane, &active);
        if plane.control.status().role == "leader" {
            declare_lost(&shared, &plane, &jobs.cfg, &active, &mut unreachable_since).await;
            schedule(&shared, &plane, &active).await;
        } else {
            unreachable_since.clear();
        }
    }
}

/// Stops this node's jobs when it cannot reach the control plane for half the lease (see the
/// module docs).
pub(crate) async fn self_fence(plane: Arc<ControlPlane>, jobs: Arc<JobRuntime>) {
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_contact = Instant::now();
    let half = jobs.cfg.lease / 2;
    loop {
        tick.tick().await;
        if jobs.running_count() == 0 {
            last_contact = Instant::now();
            continue;
        }
        // A linearizable read goes through the leader and needs a majority to answer. It may
        // take a quarter of the lease at most, so the jobs stop well before the leader, a full
        // lease after this node went quiet, gives them to another node.
        let probe = tokio::time::timeout(
            (half / 2).max(Duration::from_millis(100)),
            plane.control.read(|_| Ok(())),
        );
        if matches!(probe.await, Ok(Ok(()))) {
            last_contact = Instant::now();
        } else if last_contact.elapsed() >= half {
            jobs.fence_all();
        }
    }
}

/// The leader declares lost the jobs of nodes that stayed unreachable for the lease.
async fn declare_lost(
    shared: &Arc<Shared>,
    plane: &Arc<ControlPlane>,
    cfg: &JobsConfig,
    active: &[JobRecord],
    unreachable_since: &mut HashMap<String, Instant>,
) {
    let alive = shared.alive_node_ids();
    unreachable_since.retain(|node, _| !alive.contains(node));
    let now = Instant::now();
    let mut reports = Vec::new();
    for job in active {
        let Some((node, epoch)) = job.state.placement() else {
            continue;
        };
        if alive.contains(node) {
            continue;
        }
        let since = *unreachable_since.entry(node.to_string()).or_insert(now);
        if now.duration_since(since) >= cfg.lease {
            let lost = JobCommand::Lost {
                id: job.id,
                epoch,
                at_ms: crate::now_ms(),
            };
            reports.push(report(plane.clone(), shared.node_id.clone(), lost));
        }
    }
    futures_util::future::join_all(reports).await;
}

/// A job as the scheduler sees it. Its input data, for scoring, is its shipped files, all on
/// the submitting node.
pub(crate) fn sched_spec(id: u64, spec: &noodle_control::jobs::JobSpec) -> noodle_sched::JobSpec {
    let shipped: u64 = spec.files.iter().map(|f| f.bytes).sum();
    noodle_sched::JobSpec {
        id,
        submitter: spec.submitter.clone(),
        origin: spec.origin.clone(),
        cpus: spec.cpus,
        mem_bytes: spec.mem_bytes,
        gpus: spec.gpus,
        labels: spec.labels.clone(),
        inputs: if shipped > 0 {
            vec![(spec.origin.clone(), shipped)]
        } else {
            Vec::new()
        },
    }
}

/// The leader places queued jobs.
async fn schedule(shared: &Arc<Shared>, plane: &Arc<ControlPlane>, active: &[JobRecord]) {
    if !active.iter().any(|j| j.state == JobState::Queued) {
        return;
    }
    let mut sched = shared.scheduler();
    for job in active {
        if let Some((node, _)) = job.state.placement() {
            sched.restore_running(sched_spec(job.id, &job.spec), node);
        } else if job.state == JobState::Queued {
            // A job that fits nowhere now waits (nodes may come back).
            let _ = sched.submit(sched_spec(job.id, &job.spec));
        }
    }
    let placements = sched.place();
    let proposals = placements.into_iter().map(|p| {
        let plane = plane.clone();
        async move {
            let place = Command::Job(JobCommand::Place {
                id: p.job,
                node: p.node,
            });
            if let Err(e) = plane.control.propose(Proposal::new(place)).await {
                tracing::warn!(job = p.job, error = %e, "placement not applied");
            }
        }
    });
    futures_util::future::join_all(proposals).await;
}

/// What the event loop last saw of the jobs.
struct Seen {
    /// States of the jobs that had not ended.
    active: HashMap<u64, JobState>,
    /// Ids below this were all seen.
    next_id: u64,
}

impl Seen {
    fn new(active: &[JobRecord], newest: u64) -> Seen {
        Seen {
            active: active.iter().map(|j| (j.id, j.state.clone())).collect(),
            next_id: newest + 1,
        }
    }
}

/// Turns job transitions into events on this node's bus. Several transitions of one job can
/// be applied between two looks (a short job can be submitted, run and end in between); each
/// is still reported, in order.
fn emit_events(
    shared: &Shared,
    plane: &ControlPlane,
    seen: &mut Seen,
    active: &[JobRecord],
    newest: u64,
) {
    let emit = |kind, node: &str, detail: String| shared.events.emit(kind, node, detail);
    let now: HashMap<u64, &JobRecord> = active.iter().map(|j| (j.id, j)).collect();
    // Jobs that were active, and jobs submitted since the last look that already ended.
    let mut ended: Vec<u64> = seen
        .active
        .keys()
        .copied()
        .chain(seen.next_id..=newest)
        .filter(|id| !now.contains_key(id))
        .collect();
    ended.sort_unstable();
    ended.dedup();
    let mut events: Vec<(u64, JobRecord, Option<JobState>)> = Vec::new();
    for id in ended {
        if let Ok(Some(job)) = plane.control.read_local(|v| v.job(id)) {
            events.push((id, job, seen.active.get(&id).cloned()));
        }
    }
    for job in active {
        events.push((job.id, job.clone(), seen.active.get(&job.id).cloned()));
    }
    events.sort_by_key(|(id, _, _)| *id);
    for (id, job, before) in events {
        let command = short(&job.spec.command.join(" "));
        let node = job.node.clone().unwrap_or_default();
        if before.is_none() && id >= seen.next_id {
            let what = format!("job {id} by {}: {command}", job.spec.submitter);
            emit(EventKind::JobSubmitted, &job.spec.origin, what);
        }
        let was_running = matches!(before, Some(JobState::Running { .. }));
        let started = match &job.state {
            JobState::Running { .. } => true,
            s if s.is_terminal() => job.started_at_ms.is_some(),
            _ => false,
        };
        if started && !was_running {
            emit(
                EventKind::JobStarted,
                &node,
                format!("job {id} on {node}: {command}"),
            );
        }
        let lost_then_queued = job.state == JobState::Queued
            && matches!(
                before,
                Some(JobState::Placed { .. } | JobState::Running { .. })
            );
        if lost_then_queued {
            let what = format!(
                "job {id} lost on {node}; running it again ({} retries left)",
                job.retries_left
            );
            emit(EventKind::JobLost, &node, what);
        }
        let end = match &job.state {
            JobState::Succeeded { .. } => Some((EventKind::JobEnded, "succeeded".to_string())),
            JobState::Failed { exit_code } => Some((
                EventKind::JobEnded,
                match &job.error {
                    Some(e) => format!("failed: {e}"),
                    None => format!("failed (exit {exit_code})"),
                },
            )),
            JobState::Cancelled => Some((EventKind::JobEnded, "cancelled".to_string())),
            JobState::Lost => Some((EventKind::JobLost, "lost (no retries left)".to_string())),
            _ => None,
        };
        if let Some((kind, what)) = end {
            emit(kind, &node, format!("job {id} {what}"));
        }
    }
    seen.active = active.iter().map(|j| (j.id, j.state.clone())).collect();
    seen.next_id = seen.next_id.max(newest + 1);
}

fn short(s: &str) -> String {
    const MAX: usize = 80;
    if s.len() <= MAX {
        return s.to_string();
    }
    let mut end = MAX;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

/// `jobs.output` request: output of one attempt from `offset` on.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct OutputRequest {
    pub(crate) id: u64,
    pub(crate) epoch: u64,
    pub(crate) offset: u64,
    /// How long to wait for output past `offset` (capped at [`OUTPUT_WAIT_MAX`]).
    pub(crate) wait_ms: u32,
}

/// `jobs.output` answer.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct OutputChunk {
    /// Whole frames (see `noodle_api::output_frame`).
    pub(crate) frames: Vec<u8>,
    pub(crate) next: u64,
    /// The attempt has ended and everything up to `next` is all there is.
    pub(crate) closed: bool,
    /// This node has no output for the attempt (never ran it here, or the output was pruned).
    pub(crate) unknown: bool,
}

/// Reads one attempt's output on this node, waiting up to `wait` for more.
pub(crate) async fn read_output(
    jobs: &JobRuntime,
    req: &OutputRequest,
) -> Result<OutputChunk, String> {
    let Some(log) = jobs.output_log(req.id, req.epoch) else {
        return Ok(OutputChunk {
            frames: Vec::new(),
            next: req.offset,
            closed: false,
            unknown: true,
        });
    };
    let wait = Duration::from_millis(u64::from(req.wait_ms)).min(OUTPUT_WAIT_MAX);
    if !wait.is_zero() && log.len() <= req.offset && !log.is_closed() {
        log.wait_past(req.offset, wait).await;
    }
    let closed = log.is_closed();
    let (frames, next) = log
        .read(req.offset, OUTPUT_READ_MAX)
        .map_err(|e| format!("output of job {}: {e}", req.id))?;
    Ok(OutputChunk {
        closed: closed && next >= log.len(),
        frames,
        next,
        unknown: false,
    })
}

/// Serves `jobs.output` to other nodes.
pub(crate) async fn serve_output(jobs: &JobRuntime, body: &[u8]) -> Result<Vec<u8>, RemoteError> {
    let req: OutputRequest = postcard::from_bytes(body)
        .map_err(|_| RemoteError::new(RemoteError::BAD_REQUEST, "unreadable output request"))?;
    let chunk = read_output(jobs, &req)
        .await
        .map_err(|e| RemoteError::new(RemoteError::BAD_REQUEST, e))?;
    postcard::to_stdvec(&chunk).map_err(|e| RemoteError::new(RemoteError::INTERNAL, e.to_string()))
}

/// A job record as the API shows it.
pub(crate) fn info(job: &JobRecord) -> JobInfo {
    let state = match &job.state {
        JobState::Queued => "queued",
        JobState::Placed { .. } => "placed",
        JobState::Running { .. } => "running",
        JobState::Succeeded { .. } => "succeeded",
        JobState::Failed { .. } => "failed",
        JobState::Cancelled => "cancelled",
        JobState::Lost => "lost",
    };
    let at = noodle_audit::format_utc_ms;
    JobInfo {
        id: job.id,
        state: state.into(),
        node: job.node.clone(),
        exit_code: job.exit_code,
        command: job.spec.command.clone(),
        submitted_at: at(job.submitted_at_ms),
        started_at: job.started_at_ms.map(at),
        ended_at: job.ended_at_ms.map(at),
        submitted_at_ms: job.submitted_at_ms,
        started_at_ms: job.started_at_ms,
        ended_at_ms: job.ended_at_ms,
        cpus: job.spec.cpus,
        mem_bytes: job.spec.mem_bytes,
        gpus: job.spec.gpus,
        labels: job.spec.labels.clone(),
        submitter: job.spec.submitter.clone(),
        retries_left: job.retries_left,
        epoch: job.epoch,
        error: job.error.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::pick_gpus;

    #[test]
    fn gpus_are_handed_out_once() {
        let all = [0, 1, 2, 3];
        assert_eq!(pick_gpus(&all, &[], 0), Some(vec![]));
        assert_eq!(pick_gpus(&all, &[], 2), Some(vec![0, 1]));
        assert_eq!(pick_gpus(&all, &[0, 2], 2), Some(vec![1, 3]));
        assert_eq!(pick_gpus(&all, &[0, 2], 3), None);
        assert_eq!(pick_gpus(&[], &[], 1), None);
    }
}
