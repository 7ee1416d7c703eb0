//! The tokio shell around the [`Engine`]: one loop per node owns the engine, feeds it what the
//! node observes and carries out its effects.
//!
//! - **Observe**: when the control plane applies entries (and every [`TICK`] anyway, since the
//!   membership view changes without entries), the loop reads the jobs that have not ended from
//!   the node's replicated state and gives them to the engine with who is alive and, on the
//!   leader, a scheduler of the alive nodes.
//! - **Start**: an attempt runs as its own task: the job's files are fetched from the
//!   submitting node, then the process is spawned ([`crate::process`]) in
//!   `<data>/jobs/<id>.<epoch>/work`, its output kept in the attempt's bounded log.
//! - **Signal**: cancelled (SIGTERM, then SIGKILL after the grace), no longer ours or fenced
//!   (SIGKILL).
//! - **Propose**: reports go to the control plane (ends and losses audited as the node), and
//!   their outcome back to the engine.
//! - **Probe**: while the engine wants contact, a linearizable read of the control plane at most
//!   every [`PROBE_PERIOD`], answered within a quarter of the lease.
//!
//! The loop also turns job transitions into `job_*` events ([`crate::events`]).

use crate::JobsConfig;
use crate::engine::{ClusterView, Effect, Engine, EngineConfig, Reported, Signal};
use crate::events::Seen;
use crate::machine;
use crate::process::sandbox::{DISK_WALK_ENTRIES, usage_within};
use crate::process::{JobProcess, OutputLog, ProcessSpec, Sandbox, SpawnError};
use crate::state::{JobCommand, JobRecord, JobState};
use noodle_api::NodeState;
use noodle_audit::{Outcome, Record};
use noodle_control::{Control, Proposal, Response};
use noodle_fabric::chunks::ChunkStore as Shipping;
use noodle_host::Host;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, watch};

/// How often the loop runs without being woken by the control plane; also the engine's tick.
const TICK: Duration = Duration::from_millis(200);
/// Least time between two probes of the control plane while jobs run here.
const PROBE_PERIOD: Duration = Duration::from_millis(500);
/// Inputs from attempts and proposals waiting for the loop, at most. Senders wait when it is
/// full: an input is never dropped (the engine's contract needs every answer).
const INPUTS_MAX: usize = 4096;
/// Ended jobs whose directories (output) are kept; older ones are removed.
const KEPT_JOB_DIRS: usize = 1000;
/// Attempts that end between two prunings of the job directories.
const PRUNE_EVERY: u64 = 64;
/// How often a sandboxed job's working directory is measured against its bound.
const DISK_CHECK: Duration = Duration::from_secs(1);
/// Where a job finds its `--read` inputs (`$NOODLE_FABRIC`), in its working directory.
const INPUTS: &str = crate::process::sandbox::READ_ONLY_DIR;
/// Where a job leaves its `--write` output (`$NOODLE_OUT`), in its working directory.
const OUTPUT: &str = "out";
/// Chunk store size for shipped files.
const SHIPPING_CAP_BYTES: u64 = 8 << 30;
/// The exit code of a job that could not start for a reason of the node's (126, as a shell).
const CANNOT_RUN: i32 = 126;
/// The exit code of a job whose program does not exist (127, as a shell).
const NOT_FOUND: i32 = 127;

/// The node's side of jobs that outlives any one attempt: where attempts keep their files and
/// output, the shipped-file store, and the output logs of what runs here.
pub(crate) struct JobRuntime {
    pub(crate) cfg: JobsConfig,
    dir: PathBuf,
    pub(crate) shipping: Shipping,
    /// The node's fabric: `--read` inputs and `--write` output.
    pub(crate) fabric: noodle_fabric::FabricHandle,
    cgroup: Option<PathBuf>,
    /// How jobs are confined here: `Err` says why they cannot be (then none runs here);
    /// `Ok(None)` when the operator opted out.
    sandbox: Result<Option<Sandbox>, String>,
    logs: Mutex<HashMap<(u64, u64), Arc<OutputLog>>>,
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
    /// Opens `<data_dir>/jobs` and the shipped-file store. Blocking: it scans the store.
    pub(crate) fn open(
        data_dir: &Path,
        cfg: JobsConfig,
        fabric: noodle_fabric::FabricHandle,
    ) -> Result<JobRuntime, JobsError> {
        let dir = data_dir.join("jobs");
        std::fs::create_dir_all(&dir).map_err(|source| JobsError::Dir {
            path: dir.clone(),
            source,
        })?;
        // The node's one chunk store is the fabric's; a node without the fabric keeps its own.
        let shipping = match fabric.store(noodle_fabric::chunks::METHOD_GET) {
            Some(store) => store,
            None => Shipping::open(
                data_dir,
                SHIPPING_CAP_BYTES,
                noodle_fabric::chunks::METHOD_GET,
            )
            .map_err(|e| JobsError::Shipping(e.to_string()))?,
        };
        let cgroup = crate::process::cgroup_v2_root();
        match &cgroup {
            Some(c) => tracing::info!(cgroup = %c.display(), "job limits: cgroup v2"),
            None => tracing::info!("job limits: rlimits (no writable cgroup v2)"),
        }
        let sandbox = if cfg.sandbox.enabled {
            match Sandbox::new(&cfg.sandbox, data_dir) {
                Ok(sandbox) => {
                    tracing::info!(?sandbox, "job sandbox ready");
                    Ok(Some(sandbox))
                }
                Err(error) => {
                    tracing::error!(%error, "jobs cannot be sandboxed here: this node runs none");
                    Err(error.to_string())
                }
            }
        } else {
            tracing::warn!(
                "JOBS ARE NOT SANDBOXED (--unsandboxed-jobs): every job runs as this node's user and can read its keys"
            );
            Ok(None)
        };
        Ok(JobRuntime {
            cfg,
            dir,
            shipping,
            fabric,
            cgroup,
            sandbox,
            logs: Mutex::default(),
            ended: AtomicU64::new(0),
        })
    }

    fn logs(&self) -> std::sync::MutexGuard<'_, HashMap<(u64, u64), Arc<OutputLog>>> {
        self.logs.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn attempt_dir(&self, id: u64, epoch: u64) -> PathBuf {
        self.dir.join(format!("{id}.{epoch}"))
    }

    /// The output log of one attempt: live if it runs here, else as kept on disk.
    pub(crate) fn output_log(&self, id: u64, epoch: u64) -> Option<Arc<OutputLog>> {
        if let Some(log) = self.logs().get(&(id, epoch)) {
            return Some(log.clone());
        }
        OutputLog::open_existing(&self.attempt_dir(id, epoch).join("output.log")).ok()
    }

    /// Creates an attempt's directory and output log.
    fn create_log(&self, id: u64, epoch: u64) -> std::io::Result<Arc<OutputLog>> {
        let dir = self.attempt_dir(id, epoch);
        std::fs::create_dir_all(&dir)?;
        let log = OutputLog::create(&dir.join("output.log"), self.cfg.output_max_bytes)?;
        self.logs().insert((id, epoch), log.clone());
        Ok(log)
    }

    /// Forgets an ended attempt's live log and removes its working directory; now and then
    /// keeps only the newest [`KEPT_JOB_DIRS`] attempt directories.
    async fn attempt_ended(&self, id: u64, epoch: u64) {
        self.logs().remove(&(id, epoch));
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
}

/// Keeps the newest [`KEPT_JOB_DIRS`] attempt directories.
fn prune_job_dirs(dir: &Path) {
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

/// What attempts and proposals tell the loop.
enum Input {
    Started {
        id: u64,
        epoch: u64,
    },
    StartFailed {
        id: u64,
        epoch: u64,
        exit_code: i32,
        error: String,
    },
    Exited {
        id: u64,
        epoch: u64,
        exit_code: i32,
    },
    Reported {
        command: JobCommand,
        outcome: Reported,
    },
    Contact(bool),
}

/// The engine's clock: Unix milliseconds read once, advanced by a clock that never goes back.
struct EngineClock {
    host: Host,
    base_ms: u64,
}

impl EngineClock {
    fn new(host: &Host) -> EngineClock {
        let base_ms = host
            .clock
            .now_ms()
            .saturating_sub(host.clock.monotonic_ms());
        EngineClock {
            host: host.clone(),
            base_ms,
        }
    }

    fn now_ms(&self) -> u64 {
        self.base_ms + self.host.clock.monotonic_ms()
    }
}

/// A job scheduler that knows the alive nodes: their CPU slots, memory, GPUs, labels and load,
/// and the RTTs of their links.
pub(crate) fn scheduler(cluster: &dyn noodle_host::ClusterView) -> noodle_sched::Scheduler {
    let mut sched = noodle_sched::Scheduler::default();
    for (e, state) in cluster.nodes() {
        if state != NodeState::Alive {
            continue;
        }
        // Every node also carries its id as a label, so `noodle run --on NODE` is a label.
        let mut labels = e.labels.clone();
        labels.insert(crate::NODE_LABEL.into(), e.id.clone());
        let spec = noodle_sched::NodeSpec {
            id: e.id.clone(),
            cpus: e.job_slots,
            mem_bytes: e.resources.mem_total_bytes,
            gpus: e.resources.gpus.len() as u32,
            labels,
        };
        if sched.add_node(spec).is_ok() {
            sched.set_load(&e.id, e.resources.load_1m);
        }
        for l in &e.links {
            sched.set_rtt(&e.id, &l.peer, l.rtt_us);
        }
    }
    sched
}

/// This node's CPU slots for jobs, as it gossips them.
fn own_slots(host: &Host) -> u32 {
    host.cluster
        .nodes()
        .into_iter()
        .find(|(e, _)| e.id == host.node_id)
        .map_or(1, |(e, _)| e.job_slots)
}

/// The node's job loop; see the module docs.
pub(crate) async fn run(host: Host, rt: Arc<JobRuntime>) {
    let clock = EngineClock::new(&host);
    let cfg = EngineConfig::new(
        u64::try_from(rt.cfg.lease.as_millis()).unwrap_or(u64::MAX),
        own_slots(&host),
        host.cluster.own_gpu_indices(),
    );
    let mut engine = Engine::new(host.node_id.clone(), cfg);
    let (tx, mut rx) = mpsc::channel::<Input>(INPUTS_MAX);
    let mut signals: HashMap<(u64, u64), watch::Sender<Option<Signal>>> = HashMap::new();
    let mut metrics = host.control.watch();
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut seen: Option<Seen> = None;
    let mut last_applied = None;
    let mut probing = false;
    let mut last_probe_ms: Option<u64> = None;
    loop {
        let mut look = false;
        tokio::select! {
            input = rx.recv() => {
                let Some(input) = input else { return };
                let now = clock.now_ms();
                match input {
                    Input::Started { id, epoch } => engine.process_started(now, id, epoch),
                    Input::StartFailed { id, epoch, exit_code, error } => {
                        signals.remove(&(id, epoch));
                        engine.start_failed(now, id, epoch, exit_code, error);
                    }
                    Input::Exited { id, epoch, exit_code } => {
                        signals.remove(&(id, epoch));
                        engine.process_exited(now, id, epoch, exit_code);
                    }
                    Input::Reported { command, outcome } => engine.reported(now, &command, outcome),
                    Input::Contact(ok) => {
                        probing = false;
                        engine.contact(now, ok);
                        look = true;
                    }
                }
            }
            changed = metrics.changed() => {
                if changed.is_err() {
                    return;
                }
                let applied = metrics.borrow_and_update().last_applied;
                look = applied != last_applied;
                last_applied = applied;
            }
            _ = tick.tick() => {
                engine.tick(clock.now_ms());
                look = true;
            }
        }
        if look {
            observe(&host, &clock, &mut engine, &mut seen);
        }
        let now = clock.now_ms();
        if !engine.wants_contact() {
            last_probe_ms = None;
        } else if !probing
            && last_probe_ms
                .is_none_or(|t| now.saturating_sub(t) >= PROBE_PERIOD.as_millis() as u64)
        {
            probing = true;
            last_probe_ms = Some(now);
            tokio::spawn(probe(host.control.clone(), rt.cfg.lease / 4, tx.clone()));
        }
        for effect in engine.effects() {
            match effect {
                Effect::Start { job, epoch, gpus } => {
                    let (signal_tx, signal_rx) = watch::channel(None);
                    signals.insert((job.id, epoch), signal_tx);
                    let attempt = Attempt {
                        host: host.clone(),
                        rt: rt.clone(),
                        job: *job,
                        epoch,
                        gpus,
                        signal: signal_rx,
                        tx: tx.clone(),
                    };
                    tokio::spawn(attempt.run());
                }
                Effect::Signal { id, epoch, signal } => {
                    if let Some(s) = signals.get(&(id, epoch)) {
                        s.send_replace(Some(signal));
                    }
                }
                Effect::Propose(command) => {
                    let (control, node, tx) =
                        (host.control.clone(), host.node_id.clone(), tx.clone());
                    tokio::spawn(async move {
                        let outcome = report(&control, &node, command.clone()).await;
                        let _ = tx.send(Input::Reported { command, outcome }).await;
                    });
                }
            }
        }
    }
}

/// Gives the engine a look at the jobs that have not ended, and turns transitions into events.
fn observe(host: &Host, clock: &EngineClock, engine: &mut Engine, seen: &mut Option<Seen>) {
    // The jobs that have not ended and the newest job id, from one consistent view.
    let read = host.control.read_local(|v| {
        let jobs = machine::view(v);
        let newest = jobs.recent_jobs(1)?.first().map_or(0, |j| j.id);
        Ok((jobs.active_jobs()?, newest))
    });
    let (active, newest) = match read {
        Ok(r) => r,
        // A control plane stopped by a storage error says so itself; do not repeat it 5 times a
        // second.
        Err(e) if host.control.status().error.is_some() => {
            tracing::debug!(error = %e, "cannot read the job queue");
            return;
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the job queue");
            return;
        }
    };
    let lookup = |id: u64| -> Option<JobRecord> {
        host.control
            .read_local(|v| machine::view(v).job(id))
            .ok()
            .flatten()
    };
    match seen {
        Some(seen) => seen.emit(&host.events, &active, newest, &lookup),
        None => *seen = Some(Seen::new(&active, newest)),
    }
    let leader = host.control.is_leader();
    // The scheduler is built from the gossiped node table only when there is something to place.
    let queued = active.iter().any(|j| j.state == JobState::Queued);
    let cluster = ClusterView {
        leader,
        alive: host.cluster.alive_node_ids().into_iter().collect(),
        scheduler: (leader && queued).then(|| scheduler(host.cluster.as_ref())),
    };
    engine.observe(
        clock.now_ms(),
        &active,
        |id| lookup(id).map(|j| j.state),
        cluster,
    );
}

/// One probe of the control plane: a linearizable read, which needs the leader and a majority,
/// answered within `within` (a quarter of the lease, so the jobs stop well before the leader
/// gives them to another node).
async fn probe(control: Control, within: Duration, tx: mpsc::Sender<Input>) {
    let read = tokio::time::timeout(
        within.max(Duration::from_millis(100)),
        control.read(|_| Ok(())),
    );
    let ok = matches!(read.await, Ok(Ok(())));
    let _ = tx.send(Input::Contact(ok)).await;
}

/// Proposes an executor's or the leader's report, audited as the node.
async fn report(control: &Control, node: &str, command: JobCommand) -> Reported {
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
    let mut proposal = Proposal::machine(machine::NAME, machine::encode(&command));
    // Outcomes and losses go to the audit log; starts and placements do not (they are in
    // the job record, and a busy cluster would fill the log with them).
    if matches!(action, "job.end" | "job.lost") {
        proposal.audit = Some(Record::new(
            noodle_host::now_ms(),
            format!("node:{node}"),
            action,
            target,
            "jobs:execute".to_string(),
            Outcome::Allowed,
        ));
    }
    match control.propose(proposal).await {
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

/// Makes `dir` and every directory under it 0755 (links are not followed).
fn open_dirs(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o755))?;
        for entry in std::fs::read_dir(&d)? {
            let entry = entry?;
            if entry.file_type()?.is_dir() {
                stack.push(entry.path());
            }
        }
    }
    Ok(())
}

/// One attempt of a job placed here, from fetching its files to its exit.
struct Attempt {
    host: Host,
    rt: Arc<JobRuntime>,
    job: JobRecord,
    epoch: u64,
    gpus: Vec<u32>,
    signal: watch::Receiver<Option<Signal>>,
    tx: mpsc::Sender<Input>,
}

impl Attempt {
    async fn run(mut self) {
        let (id, epoch) = (self.job.id, self.epoch);
        let input = match self.rt.create_log(id, epoch) {
            Err(e) => Input::StartFailed {
                id,
                epoch,
                exit_code: CANNOT_RUN,
                error: format!(
                    "node {} cannot create the job's directory: {e}",
                    self.host.node_id
                ),
            },
            Ok(log) => {
                let input = self.start_and_wait(&log).await;
                log.close();
                input
            }
        };
        let _ = self.tx.send(input).await;
        self.rt.attempt_ended(id, epoch).await;
    }

    fn start_failed(&self, exit_code: i32, error: String) -> Input {
        Input::StartFailed {
            id: self.job.id,
            epoch: self.epoch,
            exit_code,
            error,
        }
    }

    /// Fetches the files, spawns the process, tells the loop it started, and waits for its
    /// exit while obeying signals. Returns the input that ends the attempt.
    async fn start_and_wait(&mut self, log: &Arc<OutputLog>) -> Input {
        let me = self.host.node_id.clone();
        let job = &self.job;
        let sandbox = match &self.rt.sandbox {
            Ok(sandbox) => sandbox.as_ref(),
            Err(reason) => {
                return self.start_failed(
                    CANNOT_RUN,
                    format!(
                        "node {me} runs no jobs: it cannot sandbox them ({reason}); its operator may start it with --unsandboxed-jobs"
                    ),
                );
            }
        };
        let work = self.rt.attempt_dir(job.id, self.epoch).join("work");
        if let Err(e) = tokio::fs::create_dir_all(&work).await {
            return self.start_failed(
                CANNOT_RUN,
                format!("node {me} cannot create the job's working directory: {e}"),
            );
        }
        for f in &job.spec.files {
            let file = noodle_api::JobFile {
                name: f.name.clone(),
                manifest: f.manifest.clone(),
                executable: f.executable,
                bytes: f.bytes,
            };
            let fetched = match self.host.cluster.peer_addr(&job.spec.origin) {
                Some(origin) => self
                    .rt
                    .shipping
                    .materialize(&self.host.link, origin, &file, &work)
                    .await
                    .map_err(|e| e.to_string()),
                None => Err(format!(
                    "the submitting node {} is not known",
                    job.spec.origin
                )),
            };
            if let Err(e) = fetched {
                return self.start_failed(
                    CANNOT_RUN,
                    format!(
                        "node {me} could not fetch {} from {}: {e}",
                        f.name, job.spec.origin
                    ),
                );
            }
        }
        let input_bytes = match self.prepare_fabric(&work).await {
            Ok(bytes) => bytes,
            Err(e) => return self.start_failed(CANNOT_RUN, format!("node {me}: {e}")),
        };
        if self.signal.borrow().is_some() {
            return self.start_failed(CANNOT_RUN, "stopped before it started".into());
        }
        let confinement = match sandbox.map(|s| s.confine(&work, &self.gpus)).transpose() {
            Ok(c) => c,
            Err(e) => return self.start_failed(CANNOT_RUN, format!("node {me}: {e}")),
        };
        // The inputs are the node's, not the job's writing.
        let disk_max = sandbox.map(|s| s.disk_max_bytes().saturating_add(input_bytes));
        let visible = self
            .gpus
            .iter()
            .map(u32::to_string)
            .collect::<Vec<_>>()
            .join(",");
        let spec = ProcessSpec {
            command: job.spec.command.clone(),
            workdir: work.clone(),
            env: vec![
                ("NOODLE_JOB_ID".into(), job.id.to_string()),
                ("NOODLE_JOB_EPOCH".into(), self.epoch.to_string()),
                ("NOODLE_NODE".into(), me.clone()),
                // The job sees only the GPUs it was given (none if it asked for none).
                ("CUDA_VISIBLE_DEVICES".into(), visible),
            ],
            env_in_workdir: [
                (!job.spec.reads.is_empty()).then(|| ("NOODLE_FABRIC".into(), INPUTS.into())),
                (!job.spec.writes.is_empty()).then(|| ("NOODLE_OUT".into(), OUTPUT.into())),
            ]
            .into_iter()
            .flatten()
            .collect(),
            path: sandbox.map(|s| s.job_path(&crate::process::node_path())),
            cpus: job.spec.cpus,
            mem_bytes: match job.spec.mem_bytes {
                0 => self.rt.cfg.default_mem_bytes,
                asked => asked,
            },
            cgroup_parent: self.rt.cgroup.clone(),
        };
        let mut process = match JobProcess::spawn(&spec, log.clone(), confinement) {
            Ok(p) => p,
            Err(e) => {
                let exit_code = match e {
                    SpawnError::NotFound { .. } => NOT_FOUND,
                    _ => CANNOT_RUN,
                };
                return self.start_failed(exit_code, format!("{e} on node {me}"));
            }
        };
        let started = Input::Started {
            id: job.id,
            epoch: self.epoch,
        };
        if self.tx.send(started).await.is_err() {
            process.kill();
        }
        if !job.spec.writes.is_empty() {
            process.leave_log_open();
        }
        let killer = process.killer();
        let grace = self.rt.cfg.kill_grace;
        let wait = process.wait();
        tokio::pin!(wait);
        let mut disk_check = tokio::time::interval(DISK_CHECK);
        let mut over_disk = false;
        // Whether the node stopped it (then its output is not the job's finished work).
        let mut stopped = false;
        let exit_code = loop {
            tokio::select! {
                code = &mut wait => break code,
                _ = disk_check.tick(), if disk_max.is_some() && !over_disk => {
                    let (dir, max) = (work.clone(), disk_max.unwrap_or(u64::MAX));
                    let within = tokio::task::spawn_blocking(move || usage_within(&dir, max).is_some())
                        .await
                        .unwrap_or(true);
                    if !within {
                        over_disk = true;
                        stopped = true;
                        log.notice(&format!(
                            "node {me}: the job's working directory grew past its bound of {max} bytes (or {DISK_WALK_ENTRIES} files): the job was stopped"
                        ));
                        killer.kill();
                    }
                }
                changed = self.signal.changed() => {
                    let signal = if changed.is_err() { Some(Signal::Kill) } else { *self.signal.borrow() };
                    stopped |= signal.is_some();
                    match signal {
                        None => {}
                        Some(Signal::Terminate) => killer.terminate(grace),
                        Some(Signal::Kill) => killer.kill(),
                        Some(Signal::Fence) => {
                            tracing::warn!(job = job.id, "control plane unreachable: stopping the job");
                            log.notice(&format!(
                                "node {me} lost the control plane: the job was stopped so that it never runs twice"
                            ));
                            killer.kill();
                        }
                    }
                }
            }
        };
        let exit_code = match self.write_output(&work, exit_code, stopped).await {
            Ok(()) => exit_code,
            Err(e) => {
                log.notice(&format!("node {me}: {e}"));
                if exit_code == 0 {
                    CANNOT_RUN
                } else {
                    exit_code
                }
            }
        };
        Input::Exited {
            id: job.id,
            epoch: self.epoch,
            exit_code,
        }
    }

    /// Creates the job's [`OUTPUT`] directory if it has a `--write` prefix, and copies the
    /// objects under its `--read` prefixes into its [`INPUTS`] directory. Returns their bytes.
    async fn prepare_fabric(&self, work: &Path) -> Result<u64, String> {
        if !self.job.spec.writes.is_empty() {
            tokio::fs::create_dir_all(work.join(OUTPUT))
                .await
                .map_err(|e| format!("cannot create the job's output directory: {e}"))?;
        }
        let max = match &self.rt.sandbox {
            Ok(Some(s)) => s.disk_max_bytes(),
            _ => u64::MAX,
        };
        let mut total = 0;
        for prefix in &self.job.spec.reads {
            let (_, bytes) = self
                .rt
                .fabric
                .read_prefix(prefix, &work.join(INPUTS), max.saturating_sub(total))
                .await
                .map_err(|e| format!("could not read {prefix} from the fabric: {e}"))?;
            total += bytes;
        }
        // Readable by the job's own user, writable only by the node (whatever its umask).
        let inputs = work.join(INPUTS);
        if !self.job.spec.reads.is_empty() {
            tokio::task::spawn_blocking(move || open_dirs(&inputs))
                .await
                .map_err(|e| e.to_string())?
                .map_err(|e| format!("cannot open the inputs to the job: {e}"))?;
        }
        Ok(total)
    }

    /// Makes what the job left in its [`OUTPUT`] directory versions under its `--write`
    /// prefix, tagged with the job and its exit code; not when the node stopped it.
    async fn write_output(&self, work: &Path, exit_code: i32, stopped: bool) -> Result<(), String> {
        let Some(prefix) = self.job.spec.writes.first() else {
            return Ok(());
        };
        if stopped {
            return Ok(());
        }
        let tags = [
            ("job".to_string(), self.job.id.to_string()),
            ("exit".to_string(), exit_code.to_string()),
        ]
        .into();
        let written = self
            .rt
            .fabric
            .write_dir(&work.join(OUTPUT), prefix, &self.job.spec.submitter, tags)
            .await
            .map_err(|e| format!("the job's output was not (all) written to {prefix}: {e}"))?;
        tracing::info!(job = self.job.id, files = written.len(), %prefix, "job output written to the fabric");
        Ok(())
    }
}
