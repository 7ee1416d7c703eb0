//! Jobs as a subsystem of the node: what it registers (the `jobs` state machine, the `job_*`
//! event kinds), what it answers (`jobs.output` streams and `chunks.get` from other members,
//! the `/v1/jobs` and `/v1/chunks` routes) and its dashboard panel.

use crate::machine::JobsMachine;
use crate::process::sandbox::SandboxConfig;
use crate::runtime::JobRuntime;
use crate::state::{JobRecord, JobState};
use bytes::Bytes;
use noodle_api::{EventKind, JobInfo, NodeState};
use noodle_control::StateMachine;
use noodle_host::{
    Caller, Host, Panel, Permission, RunningSubsystem, StartError, Subsystem, SubsystemFuture,
};
use noodle_link::Peer;
use noodle_link::{RecvStream, RemoteError, SendStream, ServiceFuture};
use std::sync::Arc;
use std::time::Duration;

/// Submitting and cancelling jobs.
pub const RUN: Permission = Permission::new("jobs", "run");
/// Seeing jobs and their output.
pub const READ: Permission = Permission::new("jobs", "read");

/// How a node runs jobs (`noodle run`).
#[derive(Debug, Clone)]
pub struct JobsConfig {
    /// How long a node may be unreachable before the jobs it holds are declared lost (and
    /// run again elsewhere if they have retries left). An executor that cannot reach the
    /// control plane for half this time stops its jobs, so a job never runs twice at once.
    pub lease: Duration,
    /// How long a cancelled job has after SIGTERM before it is killed.
    pub kill_grace: Duration,
    /// Output kept per job for `noodle logs` (beyond it, output is dropped and counted).
    pub output_max_bytes: u64,
    /// Memory bound of a job that did not ask for one (`noodle run --mem`).
    pub default_mem_bytes: u64,
    /// How jobs are confined.
    pub sandbox: SandboxConfig,
}

impl Default for JobsConfig {
    fn default() -> JobsConfig {
        JobsConfig {
            lease: Duration::from_secs(10),
            kill_grace: Duration::from_secs(5),
            output_max_bytes: 16 << 20,
            default_mem_bytes: 4 << 30,
            sandbox: SandboxConfig::default(),
        }
    }
}

/// The jobs subsystem, before it starts.
#[derive(Debug, Default)]
pub struct Jobs {
    cfg: JobsConfig,
    fabric: noodle_fabric::FabricHandle,
}

impl Jobs {
    pub fn new(cfg: JobsConfig) -> Jobs {
        Jobs {
            cfg,
            fabric: noodle_fabric::FabricHandle::default(),
        }
    }

    /// The node's fabric, which jobs read their `--read` inputs from and write their
    /// `--write` output to (without it, such jobs fail to start with a clear error).
    pub fn with_fabric(mut self, fabric: noodle_fabric::FabricHandle) -> Jobs {
        self.fabric = fabric;
        self
    }
}

impl Subsystem for Jobs {
    fn name(&self) -> &'static str {
        crate::machine::NAME
    }

    fn state_machine(&self) -> Option<Arc<dyn StateMachine>> {
        Some(Arc::new(JobsMachine))
    }

    fn event_kinds(&self) -> Vec<EventKind> {
        crate::events::EVENT_KINDS.to_vec()
    }

    fn start(
        self: Box<Self>,
        host: Host,
    ) -> SubsystemFuture<Result<Arc<dyn RunningSubsystem>, StartError>> {
        Box::pin(async move {
            let dir = host.data_dir.clone();
            let (cfg, fabric) = (self.cfg, self.fabric);
            // The shipped files of jobs that have not ended stay in the store.
            let control = host.control.clone();
            fabric.pin(Box::new(move || {
                control
                    .read_local(|v| crate::machine::view(v).active_jobs())
                    .unwrap_or_default()
                    .iter()
                    .flat_map(|j| j.spec.files.iter())
                    .filter_map(|f| f.manifest.parse().ok())
                    .collect()
            }));
            let runtime = tokio::task::spawn_blocking(move || JobRuntime::open(&dir, cfg, fabric))
                .await
                .map_err(|e| e.to_string())
                .and_then(|r| r.map_err(|e| e.to_string()))
                .map_err(|detail| StartError {
                    subsystem: crate::machine::NAME,
                    detail,
                })?;
            let runtime = Arc::new(runtime);
            tokio::spawn(crate::runtime::run(host.clone(), runtime.clone()));
            Ok(Arc::new(JobsService { host, runtime }) as Arc<dyn RunningSubsystem>)
        })
    }
}

/// The started jobs subsystem: what its handlers share.
pub(crate) struct JobsService {
    pub(crate) host: Host,
    pub(crate) runtime: Arc<JobRuntime>,
}

impl RunningSubsystem for JobsService {
    fn name(&self) -> &'static str {
        crate::machine::NAME
    }

    fn rpc_prefixes(&self) -> &'static [&'static str] {
        &["jobs.", "chunks."]
    }

    fn call(&self, _from: Peer, method: &str, _body: Bytes) -> ServiceFuture {
        noodle_host::not_found(method)
    }

    fn is_stream(&self, method: &str) -> bool {
        method == crate::output::METHOD || method == noodle_fabric::chunks::METHOD_GET
    }

    fn stream(
        &self,
        _from: Peer,
        method: &str,
        send: SendStream,
        recv: RecvStream,
    ) -> SubsystemFuture<()> {
        let runtime = self.runtime.clone();
        match method {
            crate::output::METHOD => Box::pin(async move {
                crate::output::serve(|id, epoch| runtime.output_log(id, epoch), send, recv).await;
            }),
            noodle_fabric::chunks::METHOD_GET => Box::pin(async move {
                runtime.shipping.serve_get(send, recv).await;
            }),
            _ => Box::pin(async move {
                let mut send = send;
                let e = RemoteError::new(RemoteError::NOT_FOUND, "unknown stream method");
                tracing::debug!(error = %e.message, "refused a stream");
                let _ = send.reset(0u32.into());
            }),
        }
    }

    fn routes(self: Arc<Self>) -> noodle_host::api::Routes {
        crate::api::routes(self)
    }

    fn panel(&self, caller: &Caller) -> Option<Panel> {
        // Only decides whether the page shows jobs, so a refusal is not a denied request and
        // is not audited (the page itself was allowed with `cluster:read`).
        let panel = if self.host.authz.authorise(caller, &READ.into()).is_ok() {
            crate::panel::snapshot(&self.host.control)
        } else {
            crate::panel::JobsPanel::NotAllowed
        };
        let mut nodes: Vec<crate::panel::NodeSlots> = self
            .host
            .cluster
            .nodes()
            .into_iter()
            .map(|(e, state)| crate::panel::NodeSlots {
                id: e.id,
                name: e.name,
                state,
                slots: e.job_slots,
            })
            .collect();
        let me = &self.host.node_id;
        nodes.sort_by(|a, b| {
            (&b.id == me)
                .cmp(&(&a.id == me))
                .then(a.name.cmp(&b.name))
                .then(a.id.cmp(&b.id))
        });
        match crate::panel::render(&nodes, &panel) {
            Ok(html) => Some(Panel {
                id: crate::machine::NAME,
                html,
            }),
            Err(e) => {
                tracing::error!(error = %e, "jobs panel render failed");
                None
            }
        }
    }

    fn panel_style(&self) -> &'static str {
        crate::panel::STYLE
    }
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

/// Whether `state` is a node the cluster can still reach.
pub(crate) fn reachable(state: Option<NodeState>) -> bool {
    !matches!(state, None | Some(NodeState::Dead))
}
