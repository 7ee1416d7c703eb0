//! The node's side of the control plane: its Raft member over NoodleLink (opened from a
//! verified database, set aside when damaged), the upkeep loop, and the control-plane events.

use crate::cluster::ClusterState;
use crate::datadir::{DataDir, DataDirError};
use noodle_api::{ControlInfo, EventKind};
use noodle_audit::{AuditKey, Checkpoint};
use noodle_control::{
    AUDIT_PRUNE_ENTRIES_MAX, Command, Control, ControlConfig, ControlError, Machines, Member,
    PeerHealth, Proposal, Role, Store, Transport, TransportError, TransportFuture, base_node_id,
};
use noodle_host::{EventBus, now_ms};
use noodle_link::{Link, LinkError};
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

const DB_FILE: &str = "control.redb";
const CONTROL_FILE: &str = "control.json";
const AUDIT_KEY_FILE: &str = "audit.key";
const UPKEEP_PERIOD: Duration = Duration::from_secs(1);
/// How often the revocation list is compared for `token_revoked` events.
const REVOCATIONS_PERIOD: Duration = Duration::from_millis(250);

pub(crate) const LEADER_CHANGED: EventKind = EventKind::new("leader_changed");
pub(crate) const VOTERS_CHANGED: EventKind = EventKind::new("voters_changed");
pub(crate) const TOKEN_REVOKED: EventKind = EventKind::new("token_revoked");
pub(crate) const CONTROL_RECOVERED: EventKind = EventKind::new("control_recovered");
pub(crate) const CONTROL_FAILED: EventKind = EventKind::new("control_failed");
pub(crate) const CONTROL_RESTARTED: EventKind = EventKind::new("control_restarted");
/// The control plane's event kinds.
pub(crate) const EVENT_KINDS: [EventKind; 6] = [
    LEADER_CHANGED,
    VOTERS_CHANGED,
    TOKEN_REVOKED,
    CONTROL_RECOVERED,
    CONTROL_FAILED,
    CONTROL_RESTARTED,
];

/// Raft messages over the member links (mutual TLS, cluster certificates only).
pub struct LinkTransport {
    link: Link,
}

impl LinkTransport {
    pub fn new(link: Link) -> LinkTransport {
        LinkTransport { link }
    }
}

impl Transport for LinkTransport {
    fn call(
        &self,
        to: &Member,
        method: &'static str,
        body: Vec<u8>,
        timeout: Duration,
    ) -> TransportFuture {
        let link = self.link.clone();
        let addr = to.addr.parse::<SocketAddr>();
        Box::pin(async move {
            let addr =
                addr.map_err(|e| TransportError::Unreachable(format!("bad member address: {e}")))?;
            match tokio::time::timeout(timeout, link.request(addr, method, &body)).await {
                Ok(Ok(answer)) => Ok(answer.to_vec()),
                Ok(Err(e @ LinkError::Connect { .. })) => {
                    Err(TransportError::Unreachable(e.to_string()))
                }
                Ok(Err(e)) => Err(TransportError::Failed(e.to_string())),
                Err(_) => Err(TransportError::Failed(format!(
                    "{addr} did not answer {method} within {timeout:?}"
                ))),
            }
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ControlPlaneError {
    #[error(transparent)]
    DataDir(#[from] DataDirError),
    #[error("control-plane database {path}: {detail}")]
    Db { path: String, detail: String },
    #[error(transparent)]
    Control(#[from] ControlError),
}

/// The control-plane database, checked before the member starts.
pub(crate) struct LocalState {
    store: Store,
    pub(crate) incarnation: u64,
    /// What was wrong with the database, if it had to be set aside.
    pub(crate) recovered: Option<String>,
}

#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
struct ControlFile {
    incarnation: u64,
}

/// Opens the control-plane database and verifies its audit log. A database that cannot be
/// opened or whose log does not verify is never served: it is moved aside, and the node starts
/// empty as a new incarnation (a new Raft identity) that catches up from its peers.
pub(crate) fn open_local_state(dir: &DataDir) -> Result<LocalState, ControlPlaneError> {
    let mut file: ControlFile = if dir.exists(CONTROL_FILE) {
        dir.read_json(CONTROL_FILE)?
    } else {
        ControlFile::default()
    };
    let path = dir.path().join(DB_FILE);
    let db_error = |detail: String| ControlPlaneError::Db {
        path: path.display().to_string(),
        detail,
    };
    let problem = match Store::open(&path) {
        Ok(store) => {
            let checked = store
                .view()
                .and_then(|v| noodle_host::verify_audit(&v))
                .map_err(|e| e.to_string());
            match checked {
                Ok(r) if r.ok => {
                    return Ok(LocalState {
                        store,
                        incarnation: file.incarnation,
                        recovered: None,
                    });
                }
                Ok(r) => format!(
                    "its audit log does not verify: {}",
                    r.error.unwrap_or_default()
                ),
                Err(e) => format!("it cannot be read: {e}"),
            }
        }
        Err(e) => format!("it cannot be opened: {e}"),
    };
    let aside = dir.path().join(format!("{DB_FILE}.damaged-{}", now_ms()));
    std::fs::rename(&path, &aside)
        .map_err(|e| db_error(format!("cannot move the damaged database aside: {e}")))?;
    file.incarnation += 1;
    dir.write_json(CONTROL_FILE, &file, false)?;
    let store = Store::open(&path).map_err(|e| db_error(e.to_string()))?;
    let note = format!(
        "the control-plane database was damaged ({problem}); it was moved to {} and this node catches up from its peers",
        aside.display()
    );
    tracing::error!("{note}");
    Ok(LocalState {
        store,
        incarnation: file.incarnation,
        recovered: Some(note),
    })
}

/// The key this node signs audit checkpoints and its gossiped entry with, created on first
/// start.
pub(crate) fn audit_key(dir: &DataDir) -> Result<AuditKey, DataDirError> {
    if dir.exists(AUDIT_KEY_FILE) {
        let bytes = dir.read_file(AUDIT_KEY_FILE)?;
        let secret: [u8; 32] = bytes
            .as_slice()
            .try_into()
            .map_err(|_| DataDirError::Corrupt {
                path: dir.path().join(AUDIT_KEY_FILE),
                detail: format!("expected 32 bytes, found {}", bytes.len()),
            })?;
        Ok(AuditKey::from_bytes(secret))
    } else {
        let secret: [u8; 32] = rand::random();
        dir.write_file(AUDIT_KEY_FILE, &secret, true)?;
        Ok(AuditKey::from_bytes(secret))
    }
}

/// This node's control-plane member, started.
pub(crate) struct ControlPlane {
    pub(crate) control: Control,
    audit_key: AuditKey,
    node_id: String,
    checkpoint_every: u64,
    audit_keep: u64,
}

impl ControlPlane {
    /// Starts this node's Raft member on its database, applying subsystem commands with
    /// `machines`. The node that founds the cluster passes `found` and becomes the single
    /// voter of a new control plane.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn start(
        local: LocalState,
        node_id: &str,
        addr: String,
        link: Link,
        found: bool,
        cfg: ControlConfig,
        machines: Machines,
        audit_key: AuditKey,
    ) -> Result<ControlPlane, ControlPlaneError> {
        let me = Member::new(node_id, local.incarnation, addr);
        let (checkpoint_every, audit_keep) = (cfg.checkpoint_every, cfg.audit_keep);
        let transport = Arc::new(LinkTransport::new(link));
        let control = Control::start(me, cfg, local.store, transport, machines).await?;
        // Only the founder of a new cluster starts a control plane; a node that set a damaged
        // database aside waits to be added by the leader like any new member.
        if found && local.recovered.is_none() {
            control.initialize().await?;
        }
        Ok(ControlPlane {
            control,
            audit_key,
            node_id: node_id.to_string(),
            checkpoint_every,
            audit_keep,
        })
    }

    /// What `noodle status` shows of the control plane.
    pub(crate) fn info(&self) -> ControlInfo {
        let s = self.control.status();
        let nodes = |members: Vec<String>| -> Vec<String> {
            members
                .iter()
                .map(|m| base_node_id(m).to_string())
                .collect()
        };
        ControlInfo {
            leader: s.leader.as_deref().map(|l| base_node_id(l).to_string()),
            voters: nodes(s.voters),
            learners: nodes(s.learners),
            term: s.term,
            commit_index: s.commit_index,
            role: s.role.as_str().to_string(),
            error: s.error,
        }
    }

    /// One round of upkeep, about once a second: membership (leader), this node's audit key,
    /// and audit checkpoints (leader). The capability root key is [`crate::keys`]' business.
    async fn upkeep(&self, peers: &[PeerHealth]) -> Result<(), ControlError> {
        self.control.maintain_membership(peers).await?;
        let (my_key, chain, last_checkpoint) = self.control.read_local(|v| {
            let last = v.last_checkpoint()?.map_or(0, |c| c.upto_seq);
            Ok((
                v.node_keys()?.get(&self.node_id).copied(),
                v.audit_chain()?,
                last,
            ))
        })?;
        let leading = self.control.is_leader();
        let public = self.audit_key.public_key().to_bytes();
        if my_key != Some(public) {
            self.control
                .propose(Proposal::new(Command::RegisterNode {
                    node_id: self.node_id.clone(),
                    audit_key: public,
                }))
                .await?;
        }
        let (head, hash) = chain.head();
        if leading && head >= last_checkpoint + self.checkpoint_every {
            let cp = Checkpoint::sign(head, hash, self.node_id.clone(), now_ms(), &self.audit_key);
            self.control
                .propose(Proposal::new(Command::Checkpoint(cp)))
                .await?;
        }
        if leading && let Some(upto_seq) = self.prune_point(head)? {
            self.control
                .propose(Proposal::new(Command::PruneAudit { upto_seq }))
                .await?;
        }
        Ok(())
    }

    /// Where the leader prunes the audit log next: the newest checkpoint that leaves at least
    /// `audit_keep` entries after it, at most [`AUDIT_PRUNE_ENTRIES_MAX`] past the last prune.
    fn prune_point(&self, head: u64) -> Result<Option<u64>, ControlError> {
        let Some(limit) = head.checked_sub(self.audit_keep) else {
            return Ok(None);
        };
        let (pruned, checkpoints) = self
            .control
            .read_local(|v| Ok((v.audit_pruned()?, v.checkpoints()?)))?;
        let reach = limit.min(pruned.saturating_add(AUDIT_PRUNE_ENTRIES_MAX));
        Ok(checkpoints
            .iter()
            .map(|c| c.upto_seq)
            .filter(|seq| *seq > pruned && *seq <= reach)
            .max())
    }
}

/// Control-plane upkeep once a second, fed with the membership layer's view of who is alive.
/// A member whose own control plane is down (it says so in its gossiped entry) counts as down.
pub(crate) async fn upkeep_loop(cluster: Arc<ClusterState>, plane: Arc<ControlPlane>) {
    let mut tick = tokio::time::interval(UPKEEP_PERIOD);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let up = plane.control.status().role != Role::Failed;
        cluster.update_me_if(now_ms(), |me| me.control_up != up, |me| me.control_up = up);
        // A peer is known to the control plane once its gossiped entry (which carries its
        // control-plane incarnation) has arrived.
        let peers: Vec<PeerHealth> = cluster
            .member_health()
            .into_iter()
            .map(|(m, info, alive)| PeerHealth {
                member: Member::new(&m.node_id, info.control_incarnation, m.addr.to_string()),
                alive: alive && info.control_up,
            })
            .collect();
        if let Err(e) = plane.upkeep(&peers).await {
            tracing::debug!(error = %e, "control-plane upkeep");
        }
    }
}

/// Emits control-plane events as this node sees them: leader and voter changes, revocations,
/// and this member stopping after a storage error and starting again.
pub(crate) async fn watch_events(plane: Arc<ControlPlane>, events: EventBus, node_id: String) {
    let control = &plane.control;
    let mut metrics = control.watch();
    let mut last = control.status();
    let revoked = || -> BTreeSet<String> {
        control
            .read_local(|v| v.revoked())
            .map(|r| r.into_iter().collect())
            .unwrap_or_default()
    };
    let mut revoked_seen = revoked();
    let mut tick = tokio::time::interval(REVOCATIONS_PERIOD);
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
        let now = control.status();
        if now.leader != last.leader
            && let Some(leader) = &now.leader
        {
            events.emit(LEADER_CHANGED, leader, format!("term {}", now.term));
        }
        if now.voters != last.voters {
            events.emit(VOTERS_CHANGED, &node_id, now.voters.join(", "));
        }
        match (&last.error, &now.error) {
            (None, Some(error)) => {
                metrics::counter!("noodle_control_failures_total").increment(1);
                events.emit(CONTROL_FAILED, &node_id, error.clone());
            }
            (Some(_), None) => events.emit(
                CONTROL_RESTARTED,
                &node_id,
                "the control-plane member started again from its database",
            ),
            _ => {}
        }
        metrics::gauge!("noodle_control_up").set(if now.error.is_none() { 1.0 } else { 0.0 });
        last = now;
        if ticked {
            let now = revoked();
            for id in now.difference(&revoked_seen) {
                events.emit(TOKEN_REVOKED, &node_id, id.clone());
            }
            revoked_seen = now;
        }
    }
}
