//! The control-plane handle a node holds: propose, read, status, and membership upkeep.
//!
//! The Raft member runs under supervision: openraft stops its core for good on a storage error
//! (a full disk), so [`Control`] notices, reports the member failed ([`ControlStatus::error`],
//! [`Role::Failed`]), and starts it again from its durable state once the disk takes writes
//! again, without a process restart.

use crate::machine::{Machines, Rejection};
use crate::network::{self, Network, PROPOSE, READ_INDEX, Transport};
use crate::state::StateView;
use crate::store::{DbError, Store};
use crate::types::{Command, Member, Proposal, RaftId, Response, TypeConfig, raft_id};
use openraft::error::{CheckIsLeaderError, ClientWriteError, ForwardToLeader, RaftError};
use openraft::{ChangeMembers, Config, Raft, RaftMetrics, ServerState, SnapshotPolicy};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use tokio::sync::{Semaphore, mpsc, oneshot, watch};
use tokio::time::Instant;

/// What the node learns of the Raft member whenever it changes.
pub type Metrics = RaftMetrics<RaftId, Member>;

/// Commits one proposal, or several as one [`Command::Batch`] entry.
async fn submit(raft: &Raft<TypeConfig>, proposal: Proposal) -> Result<Response, WireError> {
    match raft.client_write(proposal).await {
        Ok(r) => Ok(r.data),
        Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => {
            Err(WireError::NotLeader {
                leader: forward_target(&f),
            })
        }
        Err(RaftError::APIError(e)) => Err(WireError::Rejected(e.to_string())),
        Err(RaftError::Fatal(e)) => Err(WireError::Failed(e.to_string())),
    }
}

/// Group commit: openraft writes (and fsyncs) every client write as its own append, so
/// proposals that arrive while earlier ones commit are gathered into one log entry.
async fn batcher(raft: Raft<TypeConfig>, mut queue: mpsc::Receiver<(Proposal, Reply)>) {
    let in_flight = Arc::new(Semaphore::new(BATCHES_IN_FLIGHT));
    while let Some(first) = queue.recv().await {
        let Ok(permit) = in_flight.clone().acquire_owned().await else {
            return;
        };
        // Gather what arrived while we waited for a slot.
        let mut bytes = first.0.approx_bytes();
        let mut batch = vec![first];
        while batch.len() < BATCH_MAX && bytes < BATCH_BYTES_MAX {
            match queue.try_recv() {
                Ok(p) => {
                    bytes += p.0.approx_bytes();
                    batch.push(p);
                }
                Err(_) => break,
            }
        }
        let raft = raft.clone();
        tokio::spawn(async move {
            let _permit = permit;
            if batch.len() == 1 {
                let (proposal, reply) = batch.remove(0);
                let _ = reply.send(submit(&raft, proposal).await);
                return;
            }
            let (proposals, replies): (Vec<Proposal>, Vec<Reply>) = batch.into_iter().unzip();
            match submit(&raft, Proposal::new(Command::Batch(proposals))).await {
                Ok(Response::Batch(answers)) if answers.len() == replies.len() => {
                    for (reply, answer) in replies.into_iter().zip(answers) {
                        let _ = reply.send(Ok(answer));
                    }
                }
                Ok(other) => {
                    let e = WireError::Failed(format!("unexpected answer to a batch: {other:?}"));
                    for reply in replies {
                        let _ = reply.send(Err(e.clone()));
                    }
                }
                Err(e) => {
                    for reply in replies {
                        let _ = reply.send(Err(e.clone()));
                    }
                }
            }
        });
    }
}

/// The log index a read must wait for, as the leader found it, or why there is none.
type ReadReply = oneshot::Sender<Result<u64, WireError>>;

/// Read batching: openraft confirms leadership for every read with a round of heartbeats to
/// the voters, so reads that arrive while one round is out share the next. That round starts
/// after each of them arrived, so it is as good as a round of its own for every one.
async fn read_checker(raft: Raft<TypeConfig>, mut queue: mpsc::Receiver<ReadReply>) {
    while let Some(first) = queue.recv().await {
        let mut waiting = vec![first];
        while let Ok(next) = queue.try_recv() {
            waiting.push(next);
        }
        let answer = match raft.get_read_log_id().await {
            Ok((read_log_id, _)) => Ok(read_log_id.map_or(0, |l| l.index)),
            Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(f))) => {
                Err(WireError::NotLeader {
                    leader: forward_target(&f),
                })
            }
            Err(e) => Err(WireError::Failed(e.to_string())),
        };
        for reply in waiting {
            let _ = reply.send(answer.clone());
        }
    }
}

/// Tunables. Defaults suit a LAN.
#[derive(Debug, Clone)]
pub struct ControlConfig {
    pub heartbeat: Duration,
    pub election_timeout_min: Duration,
    pub election_timeout_max: Duration,
    /// Build a snapshot (and then purge the log) after this many entries.
    pub snapshot_every: u64,
    /// Entries kept in the log behind the snapshot, so slow followers need no snapshot.
    pub keep_logs: u64,
    /// How long a proposal or read may wait for a leader and its answer.
    pub request_timeout: Duration,
    /// A voter dead this long is replaced by a healthy learner.
    pub replace_dead_after: Duration,
    /// The leader signs an audit checkpoint every this many entries.
    pub checkpoint_every: u64,
    /// The audit entries kept at least; older ones are pruned up to a signed checkpoint.
    pub audit_keep: u64,
}

impl Default for ControlConfig {
    fn default() -> Self {
        ControlConfig {
            heartbeat: Duration::from_millis(100),
            election_timeout_min: Duration::from_millis(500),
            election_timeout_max: Duration::from_millis(1000),
            snapshot_every: 5000,
            keep_logs: 1000,
            request_timeout: Duration::from_secs(5),
            replace_dead_after: Duration::from_secs(60),
            checkpoint_every: 64,
            audit_keep: 1_000_000,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("control-plane storage failed: {0}")]
    Storage(#[from] DbError),
    #[error(
        "no control-plane leader answered within {0:?}: the cluster may be electing one, or a majority of voters may be down"
    )]
    NoLeader(Duration),
    #[error(
        "the control-plane leader did not answer in time; the write may or may not have happened: {0}"
    )]
    Indeterminate(String),
    #[error("{0}")]
    Rejected(String),
    #[error("the control plane is shut down")]
    Shutdown,
    #[error(
        "this node's control-plane member stopped after a storage error ({0}); it starts again by itself once its disk takes writes"
    )]
    Failed(String),
    #[error("control plane: {0}")]
    Raft(String),
}

impl From<Rejection> for ControlError {
    fn from(r: Rejection) -> ControlError {
        ControlError::Rejected(r.0)
    }
}

/// Errors that cross the wire between control-plane members.
#[derive(Debug, Clone, Serialize, Deserialize, thiserror::Error)]
pub enum WireError {
    #[error("not the leader")]
    NotLeader { leader: Option<Member> },
    #[error("{0}")]
    Rejected(String),
    #[error("malformed request: {0}")]
    Malformed(String),
    #[error("{0}")]
    Failed(String),
}

/// What this member is in the control plane.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Role {
    Leader,
    Follower,
    Candidate,
    Learner,
    Shutdown,
    /// Stopped after a storage error; restarts once the disk takes writes.
    Failed,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Leader => "leader",
            Role::Follower => "follower",
            Role::Candidate => "candidate",
            Role::Learner => "learner",
            Role::Shutdown => "shutdown",
            Role::Failed => "failed",
        }
    }
}

/// What `noodle status` shows of the control plane.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ControlStatus {
    pub leader: Option<String>,
    pub voters: Vec<String>,
    pub learners: Vec<String>,
    pub term: u64,
    /// Index of the last applied entry (it trails the commit index only by entries in flight).
    pub commit_index: u64,
    pub role: Role,
    /// Why this member stopped, while it is [`Role::Failed`].
    pub error: Option<String>,
}

/// A member as the node's membership layer sees it.
#[derive(Debug, Clone)]
pub struct PeerHealth {
    pub member: Member,
    pub alive: bool,
}

/// A running control-plane member. Cheap to clone.
#[derive(Clone)]
pub struct Control {
    inner: Arc<Inner>,
}

/// Proposals waiting for the batcher, at most.
const QUEUE_MAX: usize = 4096;
/// Proposals in one batch, at most, and roughly how many bytes.
const BATCH_MAX: usize = 1024;
const BATCH_BYTES_MAX: usize = 1 << 20;
/// How long a reader waiting for an entry to be applied sleeps at most before it looks again.
const APPLIED_LOOK_AGAIN: Duration = Duration::from_millis(50);
/// Batches being committed at once. One: a batch's cost is mostly per commit (its log write
/// and fsync, its state-machine write), so what arrives meanwhile is better gathered into the
/// next one than committed beside it (measured: 16 writers of small fabric objects, 1 in
/// flight gave 1.6x the puts/s of 4 on two cores).
const BATCHES_IN_FLIGHT: usize = 1;
/// How often a failed member tries to start again.
const RESTART_PAUSE: Duration = Duration::from_secs(1);
/// How often the supervisor looks whether openraft stopped the member.
const SUPERVISE_PERIOD: Duration = Duration::from_millis(250);
/// How long a proposal waits between looks for a leader.
const LEADER_PAUSE: Duration = Duration::from_millis(50);

type Reply = oneshot::Sender<Result<Response, WireError>>;

struct Inner {
    running: RwLock<Arc<Running>>,
    store: Store,
    transport: Arc<dyn Transport>,
    config: Arc<Config>,
    me: Member,
    cfg: ControlConfig,
    /// Raised each time the member is started again after a storage error.
    generation: watch::Sender<u64>,
    /// Why the member stopped, while it is stopped after a storage error.
    failure: Mutex<Option<String>>,
    dead_since: Mutex<HashMap<RaftId, Instant>>,
    stop: watch::Sender<bool>,
    gate: std::sync::OnceLock<Arc<dyn crate::ForwardGate>>,
    /// The supervisor task: it holds the member (and so the database) until it ends.
    supervisor: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

/// One incarnation of the Raft member (a restart after a storage error makes a new one).
struct Running {
    raft: Raft<TypeConfig>,
    batches: mpsc::Sender<(Proposal, Reply)>,
    /// Reads waiting for the leader to confirm it leads ([`read_checker`]).
    reads: mpsc::Sender<ReadReply>,
    /// The last log index when this incarnation started: entries acknowledged before a crash
    /// are at most here (see [`Control::read_index_here`]).
    log_at_start: u64,
}

impl Running {
    async fn start(
        me: &Member,
        config: &Arc<Config>,
        store: &Store,
        transport: &Arc<dyn Transport>,
    ) -> Result<Running, ControlError> {
        let network = Network {
            transport: transport.clone(),
            me: me.node_id.clone(),
        };
        let log_at_start = store
            .last_log_id()
            .map_err(|e| ControlError::Raft(e.to_string()))?
            .map_or(0, |l| l.index);
        let raft = Raft::new(
            raft_id(&me.node_id),
            config.clone(),
            network,
            store.clone(),
            store.clone(),
        )
        .await
        .map_err(|e| ControlError::Raft(e.to_string()))?;
        let (batches, queue) = mpsc::channel(QUEUE_MAX);
        tokio::spawn(batcher(raft.clone(), queue));
        let (reads, queue) = mpsc::channel(QUEUE_MAX);
        tokio::spawn(read_checker(raft.clone(), queue));
        Ok(Running {
            raft,
            batches,
            reads,
            log_at_start,
        })
    }
}

/// The member's metrics (leader, membership, applied index), followed across restarts of the
/// member: a watcher never loses its channel when the member is started again.
pub struct MetricsWatch {
    control: Control,
    generation: u64,
    rx: watch::Receiver<Metrics>,
}

impl MetricsWatch {
    pub fn borrow(&self) -> watch::Ref<'_, Metrics> {
        self.rx.borrow()
    }

    pub fn borrow_and_update(&mut self) -> watch::Ref<'_, Metrics> {
        self.rx.borrow_and_update()
    }

    /// Waits for the metrics to change; an error once the control plane is shut down.
    pub async fn changed(&mut self) -> Result<(), watch::error::RecvError> {
        let Err(closed) = self.rx.changed().await else {
            return Ok(());
        };
        // This member stopped: for good, or to be started again after a storage error.
        let mut generation = self.control.inner.generation.subscribe();
        let mut stop = self.control.inner.stop.subscribe();
        loop {
            if *stop.borrow_and_update() {
                return Err(closed);
            }
            let now = *generation.borrow_and_update();
            if now != self.generation {
                self.generation = now;
                self.rx = self.control.raft().metrics();
                return Ok(());
            }
            tokio::select! {
                changed = generation.changed() => if changed.is_err() { return Err(closed) },
                changed = stop.changed() => if changed.is_err() { return Err(closed) },
            }
        }
    }
}

fn forward_target(f: &ForwardToLeader<RaftId, Member>) -> Option<Member> {
    f.leader_node.clone()
}

impl Control {
    /// Starts this node's Raft member on `store`, applying subsystem commands with `machines`.
    /// It does nothing until it is initialized (the founder) or added by a leader (everyone
    /// else).
    pub async fn start(
        me: Member,
        cfg: ControlConfig,
        store: Store,
        transport: Arc<dyn Transport>,
        machines: Machines,
    ) -> Result<Control, ControlError> {
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        let config = Config {
            cluster_name: "noodle".into(),
            heartbeat_interval: ms(cfg.heartbeat),
            election_timeout_min: ms(cfg.election_timeout_min),
            election_timeout_max: ms(cfg.election_timeout_max),
            snapshot_policy: SnapshotPolicy::LogsSinceLast(cfg.snapshot_every),
            max_in_snapshot_log_to_keep: cfg.keep_logs,
            // Snapshot chunks must fit one link request with room to spare.
            snapshot_max_chunk_size: 1 << 20,
            ..Default::default()
        }
        .validate()
        .map_err(|e| ControlError::Raft(e.to_string()))?;
        let config = Arc::new(config);
        let store = store.with_machines(machines);
        let running = Running::start(&me, &config, &store, &transport).await?;
        let control = Control {
            inner: Arc::new(Inner {
                running: RwLock::new(Arc::new(running)),
                store,
                transport,
                config,
                me,
                cfg,
                generation: watch::channel(0).0,
                failure: Mutex::default(),
                dead_since: Mutex::default(),
                stop: watch::channel(false).0,
                gate: std::sync::OnceLock::new(),
                supervisor: Mutex::default(),
            }),
        };
        // Subscribed before the task starts, so a shutdown right after start is not missed.
        let stop = control.inner.stop.subscribe();
        let supervisor = tokio::spawn(control.clone().supervise(stop));
        if let Ok(mut slot) = control.inner.supervisor.lock() {
            *slot = Some(supervisor);
        }
        Ok(control)
    }

    fn running(&self) -> Arc<Running> {
        self.inner
            .running
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Why this member is stopped, while it is stopped after a storage error.
    fn failure(&self) -> Option<String> {
        self.inner
            .failure
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn set_failure(&self, failure: Option<String>) {
        *self.inner.failure.lock().unwrap_or_else(|e| e.into_inner()) = failure;
    }

    /// Watches the member: when openraft stops it for good (a storage error: a full or failing
    /// disk), reports it failed and starts it again from the database once a durable write
    /// goes through, trying every [`RESTART_PAUSE`]. Looks every [`SUPERVISE_PERIOD`] rather
    /// than on every change of the metrics, which come thousands of times a second under load.
    async fn supervise(self, mut stop: watch::Receiver<bool>) {
        loop {
            tokio::select! {
                _ = stop.changed() => return,
                _ = tokio::time::sleep(SUPERVISE_PERIOD) => {}
            }
            let fatal = match &self.raft().metrics().borrow().running_state {
                Ok(()) | Err(openraft::error::Fatal::Stopped) => None,
                Err(e) => Some(e.to_string()),
            };
            let Some(error) = fatal else { continue };
            tracing::error!(%error, "control-plane member stopped; it restarts once the disk takes writes");
            self.set_failure(Some(error));
            let _ = self.raft().shutdown().await;
            loop {
                tokio::select! {
                    _ = stop.changed() => return,
                    _ = tokio::time::sleep(RESTART_PAUSE) => {}
                }
                match self.restart().await {
                    Ok(()) => break,
                    // The first error stays the reason shown; this one is why not yet.
                    Err(e) => tracing::debug!(error = %e, "control-plane member not restarted yet"),
                }
            }
            tracing::warn!("control-plane member restarted from its database");
            self.set_failure(None);
        }
    }

    /// Reopens the database, checks that it takes a durable write, and starts a new member on
    /// it.
    async fn restart(&self) -> Result<(), ControlError> {
        let i = &self.inner;
        i.store.reopen()?;
        i.store.probe_write()?;
        let running = Running::start(&i.me, &i.config, &i.store, &i.transport).await?;
        *i.running.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(running);
        i.generation.send_modify(|g| *g += 1);
        Ok(())
    }

    /// Makes this node the single voter of a new control plane. Only the node that founds the
    /// cluster calls this, once; calling it on an initialized member changes nothing.
    pub async fn initialize(&self) -> Result<(), ControlError> {
        let me = &self.inner.me;
        let members = std::collections::BTreeMap::from([(raft_id(&me.node_id), me.clone())]);
        match self.running().raft.initialize(members).await {
            Ok(()) => Ok(()),
            Err(RaftError::APIError(_)) => Ok(()),
            Err(e) => Err(ControlError::Raft(e.to_string())),
        }
    }

    pub(crate) fn raft(&self) -> Raft<TypeConfig> {
        self.running().raft.clone()
    }

    pub fn me(&self) -> &Member {
        &self.inner.me
    }

    /// Answers a control-plane request from a peer; `None` if `method` is not a control-plane
    /// method.
    /// `caller` is the node the transport authenticated (the node id in its certificate).
    pub async fn serve(&self, caller: &str, method: &str, body: &[u8]) -> Option<Vec<u8>> {
        network::serve(self, caller, method, body).await
    }

    /// True for the request methods [`Control::serve`] answers.
    pub fn is_control_method(method: &str) -> bool {
        method.starts_with("raft.") || method.starts_with("control.")
    }

    pub(crate) fn store(&self) -> &Store {
        &self.inner.store
    }

    /// Sets the leader's check of forwarded proposals (once; later calls are ignored).
    pub fn set_gate(&self, gate: Arc<dyn crate::ForwardGate>) {
        let _ = self.inner.gate.set(gate);
    }

    pub(crate) fn gate(&self) -> Option<&Arc<dyn crate::ForwardGate>> {
        self.inner.gate.get()
    }

    /// Whether a member of node `node` (any incarnation) is a voter here.
    pub fn is_voter_node(&self, node: &str) -> bool {
        let metrics = self.raft().metrics();
        let metrics = metrics.borrow();
        let membership = metrics.membership_config.membership();
        membership
            .voter_ids()
            .filter_map(|id| membership.get_node(&id))
            .any(|m| m.node() == node)
    }

    /// Checks a proposal's bounds, a subsystem command's with its own machine.
    fn validate(&self, proposal: &Proposal) -> Result<(), Rejection> {
        proposal.command.validate()?;
        if let Command::Machine { name, command } = &proposal.command {
            self.inner.store.machines().get(name)?.validate(command)?;
        }
        Ok(())
    }

    /// Proposes a write and waits until it is committed (durable on a majority) and applied.
    /// From a follower the proposal is forwarded to the leader. A copy that may have been lost
    /// (the connection broke, the leader died or stepped down) is sent again to whichever
    /// member leads next, until the request deadline: the state machine applies a proposal id
    /// once, so the write happens exactly once.
    pub async fn propose(&self, proposal: Proposal) -> Result<Response, ControlError> {
        self.propose_with(proposal, None).await
    }

    /// [`Control::propose`] for a write a person asked for with the capability token
    /// `credential`: forwarded with it, so the leader authorises it again.
    pub async fn propose_with(
        &self,
        proposal: Proposal,
        credential: Option<String>,
    ) -> Result<Response, ControlError> {
        self.validate(&proposal)?;
        let timeout = self.inner.cfg.request_timeout;
        let deadline = Instant::now() + timeout;
        let forwarded = crate::Forwarded {
            proposal: proposal.clone(),
            credential,
        };
        let body =
            postcard::to_allocvec(&forwarded).map_err(|e| ControlError::Raft(e.to_string()))?;
        // Whether a copy may have reached a leader: then running out of time is not "no leader".
        let mut sent = false;
        loop {
            if let Some(error) = self.failure() {
                return Err(ControlError::Failed(error));
            }
            let leader = match self.propose_here(proposal.clone()).await {
                Ok(r) => return Ok(r),
                Err(WireError::NotLeader { leader }) => leader,
                Err(WireError::Rejected(r)) => return Err(ControlError::Rejected(r)),
                Err(WireError::Malformed(e)) => return Err(ControlError::Raft(e)),
                // Stopped meanwhile (a storage error, a shutdown): the next round says which.
                Err(WireError::Failed(e)) => {
                    sent = true;
                    tracing::debug!(error = %e, "proposal failed here; trying again");
                    None
                }
            };
            if let Some(leader) = leader {
                sent = true;
                let left = deadline.saturating_duration_since(Instant::now());
                let call = self
                    .inner
                    .transport
                    .call(&leader, PROPOSE, body.clone(), left);
                tokio::select! {
                    answer = call => match answer {
                        Ok(answer) => {
                            let answer: Result<Response, WireError> = postcard::from_bytes(&answer)
                                .map_err(|e| ControlError::Indeterminate(e.to_string()))?;
                            match answer {
                                Ok(r) => return Ok(r),
                                Err(WireError::Rejected(r)) => return Err(ControlError::Rejected(r)),
                                Err(WireError::Malformed(e)) => return Err(ControlError::Raft(e)),
                                // Not the leader any more, or stopping: try the next one.
                                Err(WireError::NotLeader { .. } | WireError::Failed(_)) => {}
                            }
                        }
                        // Never reached it, or the answer was lost: the id makes a resend safe.
                        Err(e) => tracing::debug!(%leader, error = %e, "forwarded proposal lost; sending it again"),
                    },
                    // Another member leads now: the copy in flight may never be answered.
                    () = self.leader_other_than(raft_id(&leader.node_id)) => {}
                }
            }
            if Instant::now() + LEADER_PAUSE >= deadline {
                return Err(if sent {
                    ControlError::Indeterminate(format!("no answer within {timeout:?}"))
                } else {
                    ControlError::NoLeader(timeout)
                });
            }
            tokio::time::sleep(LEADER_PAUSE).await;
        }
    }

    /// Resolves once this member knows of a leader other than `leader`.
    async fn leader_other_than(&self, leader: RaftId) {
        let mut metrics = self.watch();
        loop {
            if metrics
                .borrow_and_update()
                .current_leader
                .is_some_and(|l| l != leader)
            {
                return;
            }
            if metrics.changed().await.is_err() {
                // Shut down: never resolve on a closed channel.
                std::future::pending::<()>().await;
            }
        }
    }

    /// Proposes on this node only: an error names the leader if this node is not it.
    /// Concurrent proposals are committed together as one log entry (group commit).
    pub(crate) async fn propose_here(&self, proposal: Proposal) -> Result<Response, WireError> {
        let (reply, answer) = oneshot::channel();
        let gone = || WireError::Failed("the control plane is shut down".into());
        self.running()
            .batches
            .send((proposal, reply))
            .await
            .map_err(|_| gone())?;
        answer.await.map_err(|_| gone())?
    }

    /// The index a linearizable read must see, if this node is the leader. Once this returns,
    /// this node has applied it. (openraft's `ensure_linearizable`, with the wait below.)
    pub(crate) async fn read_index_here(&self) -> Result<u64, WireError> {
        let (reply, answer) = oneshot::channel();
        let gone = || WireError::Failed("the control plane is shut down".into());
        self.running().reads.send(reply).await.map_err(|_| gone())?;
        let read_index = answer.await.map_err(|_| gone())??;
        // openraft 0.9 restarts a crashed leader as leader of the same term without an
        // election and reads at max(committed, first entry of its term); the committed index
        // is not synced, so after a crash it can be behind what was acknowledged (noodle-sim
        // found stale reads). Whatever was acknowledged before the restart is in the log the
        // member started with: read after it too. (Not after the whole log now: that would
        // make every read wait for the writes in flight.)
        let index = read_index.max(self.running().log_at_start);
        if !self
            .applied_at_least(index, self.inner.cfg.request_timeout)
            .await
        {
            return Err(WireError::Failed(format!(
                "entry {index} was not applied within {:?}",
                self.inner.cfg.request_timeout
            )));
        }
        Ok(index)
    }

    /// Waits until this node has applied entry `index`: woken by the store when it applies
    /// it. Neither openraft's `Raft::wait` nor a wait on the metrics channel: tokio wakes the
    /// tasks waiting on one `watch` channel in an order drawn from its own generator, which
    /// no seed controls (concurrent reads then finished in a different order in two runs of
    /// one noodle-sim seed); the store wakes its waiters in the order they came.
    async fn applied_at_least(&self, index: u64, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let store = &self.inner.store;
        let mut wake = store.applied_wake(index);
        loop {
            if store.applied_index() >= index {
                return true;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            // Looked at again now and then, whatever happens to the member meanwhile.
            let look = left.min(APPLIED_LOOK_AGAIN);
            match wake.as_mut() {
                Some(rx) => {
                    if let Ok(Err(_)) = tokio::time::timeout(look, rx).await {
                        // The store went away: wait anew (or look again later).
                        wake = store.applied_wake(index);
                    }
                }
                None => {
                    tokio::time::sleep(look).await;
                    wake = store.applied_wake(index);
                }
            }
        }
    }

    /// A linearizable read: sees every write acknowledged before it started. A follower asks
    /// the leader how far it must have applied, waits until it has, and reads locally.
    pub async fn read<T>(
        &self,
        f: impl FnOnce(&StateView) -> Result<T, DbError>,
    ) -> Result<T, ControlError> {
        let timeout = self.inner.cfg.request_timeout;
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(error) = self.failure() {
                return Err(ControlError::Failed(error));
            }
            let leader = match self.read_index_here().await {
                Ok(_) => return self.read_local(f),
                Err(WireError::NotLeader { leader }) => leader,
                Err(e) => return Err(ControlError::Raft(e.to_string())),
            };
            if let Some(leader) = leader {
                let left = deadline.saturating_duration_since(Instant::now());
                let call = self
                    .inner
                    .transport
                    .call(&leader, READ_INDEX, Vec::new(), left);
                // A leader that died is never answered: ask the next one as soon as it leads.
                let answer = tokio::select! {
                    answer = call => answer.ok(),
                    () = self.leader_other_than(raft_id(&leader.node_id)) => None,
                };
                if let Some(answer) = answer
                    && let Ok(Ok(index)) = postcard::from_bytes::<Result<u64, WireError>>(&answer)
                {
                    let left = deadline.saturating_duration_since(Instant::now());
                    if !self.applied_at_least(index, left).await {
                        return Err(ControlError::NoLeader(timeout));
                    }
                    return self.read_local(f);
                }
            }
            if Instant::now() + LEADER_PAUSE >= deadline {
                return Err(ControlError::NoLeader(timeout));
            }
            tokio::time::sleep(LEADER_PAUSE).await;
        }
    }

    /// Reads this node's applied state, which may trail the leader by a few entries.
    pub fn read_local<T>(
        &self,
        f: impl FnOnce(&StateView) -> Result<T, DbError>,
    ) -> Result<T, ControlError> {
        Ok(f(&self.inner.store.view()?)?)
    }

    pub fn status(&self) -> ControlStatus {
        let m = self.raft().metrics().borrow().clone();
        let membership = m.membership_config.membership();
        let name = |id: RaftId| {
            membership
                .get_node(&id)
                .map(|n| n.node_id.clone())
                .unwrap_or_else(|| format!("raft-{id:016x}"))
        };
        let mut voters: Vec<String> = membership.voter_ids().map(name).collect();
        voters.sort();
        let mut learners: Vec<String> = membership.learner_ids().map(name).collect();
        learners.sort();
        let error = self.failure();
        let role = match m.state {
            _ if error.is_some() => Role::Failed,
            ServerState::Leader => Role::Leader,
            ServerState::Follower => Role::Follower,
            ServerState::Candidate => Role::Candidate,
            ServerState::Learner => Role::Learner,
            ServerState::Shutdown => Role::Shutdown,
        };
        ControlStatus {
            leader: m.current_leader.map(name).filter(|_| error.is_none()),
            voters,
            learners,
            term: m.current_term,
            commit_index: m.last_applied.map(|l| l.index).unwrap_or(0),
            role,
            error,
        }
    }

    /// True while this member leads the control plane.
    pub fn is_leader(&self) -> bool {
        self.status().role == Role::Leader
    }

    /// The current member's own metrics channel: it closes if the member is started again
    /// (see [`Control::watch`] for one that follows).
    pub fn member_metrics(&self) -> watch::Receiver<Metrics> {
        self.raft().metrics()
    }

    /// A receiver that changes whenever the member's metrics do (leader, membership, applied
    /// index), across restarts of the member.
    pub fn watch(&self) -> MetricsWatch {
        MetricsWatch {
            control: self.clone(),
            generation: *self.inner.generation.borrow(),
            rx: self.raft().metrics(),
        }
    }

    /// Leader only, called about once a second with the membership layer's view, in this
    /// order: adopt a member's new address (and stop there); add new nodes as learners;
    /// promote caught-up learners until there are 3 voters (5 from 5 nodes on), replacing a
    /// voter dead longer than `replace_dead_after` or left behind by a newer incarnation of its
    /// node; finally drop left-behind identities that are no longer voters.
    pub async fn maintain_membership(&self, peers: &[PeerHealth]) -> Result<(), ControlError> {
        let raft = &self.raft();
        let m = raft.metrics().borrow().clone();
        if m.state != ServerState::Leader {
            self.inner.dead_since.lock().map(|mut d| d.clear()).ok();
            return Ok(());
        }
        let membership = m.membership_config.membership().clone();
        // Removed nodes (`noodle node remove`) are never added again and leave at once.
        let removed = self.read_local(|v| v.removed_nodes())?;
        let removed_ids: BTreeSet<RaftId> = membership
            .nodes()
            .filter(|(_, m)| removed.contains(m.node()))
            .map(|(id, _)| *id)
            .collect();
        // Ordered: learners are added in this order, and a simulation seed must replay it.
        let alive: BTreeMap<RaftId, &PeerHealth> = peers
            .iter()
            .filter(|p| !removed.contains(p.member.node()))
            .map(|p| (raft_id(&p.member.node_id), p))
            .collect();
        let my_id = raft_id(&self.inner.me.node_id);
        let is_alive = |id: RaftId| id == my_id || alive.get(&id).is_some_and(|p| p.alive);

        // A member that came back on another address (or this leader, restarted elsewhere):
        // the identity is the same, only where to reach it changed.
        let me = (my_id, &self.inner.me);
        let moved: BTreeMap<RaftId, Member> = alive
            .iter()
            .filter(|(_, p)| p.alive)
            .map(|(id, p)| (*id, &p.member))
            .chain(std::iter::once(me))
            .filter(|(id, m)| {
                membership
                    .get_node(id)
                    .is_some_and(|known| known.addr != m.addr)
            })
            .map(|(id, m)| (id, m.clone()))
            .collect();
        if !moved.is_empty() {
            tracing::info!(?moved, "updating control-plane member addresses");
            raft.change_membership(ChangeMembers::SetNodes(moved), true)
                .await
                .map_err(|e| ControlError::Raft(e.to_string()))?;
            return Ok(());
        }

        for (id, p) in &alive {
            if p.alive && membership.get_node(id).is_none() {
                raft.add_learner(*id, p.member.clone(), false)
                    .await
                    .map_err(|e| ControlError::Raft(e.to_string()))?;
            }
        }

        // Identities a node has left behind: it came back as a newer incarnation.
        let current: HashMap<&str, &str> = peers
            .iter()
            .filter(|p| p.alive)
            .map(|p| &p.member)
            .chain(std::iter::once(&self.inner.me))
            .map(|m| (m.node(), m.node_id.as_str()))
            .collect();
        let stale: BTreeSet<RaftId> = membership
            .nodes()
            .filter(|(_, m)| current.get(m.node()).is_some_and(|now| *now != m.node_id))
            .map(|(id, _)| *id)
            .chain(removed_ids.iter().copied())
            .collect();

        let now = Instant::now();
        let voters: BTreeSet<RaftId> = membership.voter_ids().collect();
        let long_dead: BTreeSet<RaftId> = {
            let mut dead_since =
                self.inner.dead_since.lock().map_err(|_| {
                    ControlError::Raft("membership bookkeeping lock poisoned".into())
                })?;
            dead_since.retain(|id, _| voters.contains(id) && !is_alive(*id));
            for id in voters.iter().filter(|id| !is_alive(**id)) {
                dead_since.entry(*id).or_insert(now);
            }
            dead_since
                .iter()
                .filter(|(_, since)| {
                    now.duration_since(**since) >= self.inner.cfg.replace_dead_after
                })
                .map(|(id, _)| *id)
                .chain(stale.intersection(&voters).copied())
                .collect()
        };

        // Learners that are alive and have caught up with the log.
        let last = m.last_log_index.unwrap_or(0);
        let replication = m.replication.clone().unwrap_or_default();
        let mut candidates: Vec<RaftId> = membership
            .learner_ids()
            .filter(|id| is_alive(*id))
            .filter(|id| {
                replication
                    .get(id)
                    .and_then(|l| l.as_ref())
                    .is_some_and(|l| l.index + 100 >= last)
            })
            .collect();
        candidates.sort();

        let nodes = membership
            .nodes()
            .filter(|(id, _)| !stale.contains(id))
            .count();
        let want: usize = match nodes {
            n if n >= 5 => 5,
            n if n >= 3 => 3,
            _ => 1,
        };
        let mut next: BTreeSet<RaftId> = voters.difference(&long_dead).copied().collect();
        next.extend(candidates.into_iter().take(want.saturating_sub(next.len())));
        // A dead voter leaves only when a replacement takes its place: never shrink.
        for id in long_dead.difference(&removed_ids) {
            if next.len() >= voters.len().min(want) {
                break;
            }
            next.insert(*id);
        }
        if next != voters {
            tracing::info!(?voters, ?next, "changing control-plane voters");
            raft.change_membership(ChangeMembers::ReplaceAllVoters(next), true)
                .await
                .map_err(|e| ControlError::Raft(e.to_string()))?;
            return Ok(());
        }
        let gone: BTreeSet<RaftId> = stale.difference(&voters).copied().collect();
        if !gone.is_empty() {
            tracing::info!(?gone, "removing identities nodes have left behind");
            raft.change_membership(ChangeMembers::RemoveNodes(gone), true)
                .await
                .map_err(|e| ControlError::Raft(e.to_string()))?;
        }
        Ok(())
    }

    /// Stops this member.
    pub async fn shutdown(&self) {
        self.inner.stop.send_replace(true);
        let _ = self.raft().shutdown().await;
        // The supervisor holds the member until it sees the stop: wait for it to let go.
        let supervisor = self.inner.supervisor.lock().ok().and_then(|mut s| s.take());
        if let Some(supervisor) = supervisor {
            let _ = supervisor.await;
        }
        // openraft's state-machine worker ends a moment after the core; wait until it has let
        // go of the database so that the same file can be opened again right away.
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.inner.store.holders() > 1 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}
