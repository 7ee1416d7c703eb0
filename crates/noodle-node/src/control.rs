//! The node's side of the control plane: its Raft member over NoodleLink, the upkeep loop, and
//! the one authoriser every API call goes through.

use crate::datadir::{DataDir, DataDirError};
use crate::now_ms;
use noodle_api::{AuditVerifyReport, ControlInfo, EventKind};
use noodle_audit::{AuditKey, Checkpoint, Outcome, Record};
use noodle_caps::{Authoriser, Context, Denied, Policy, Request, RootKey};
use noodle_control::{
    Command, Control, ControlConfig, ControlError, DbError, Member, PeerHealth, Proposal, Response,
    Store, Transport, TransportError, TransportFuture, base_node_id,
};
use noodle_link::{Link, LinkError, RemoteError};
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

const DB_FILE: &str = "control.redb";
const CONTROL_FILE: &str = "control.json";
const AUDIT_KEY_FILE: &str = "audit.key";
/// Denials recorded in the audit log per second at most; the rest are counted.
const DENIALS_PER_SEC_MAX: u32 = 50;

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

/// Answers a control-plane request from a member (`raft.*`, `control.*`) for `control`, which
/// is `None` while it starts.
pub async fn serve_control(
    control: Option<&Control>,
    method: &str,
    body: &[u8],
) -> Result<Vec<u8>, RemoteError> {
    let Some(control) = control else {
        return Err(RemoteError::new(
            RemoteError::UNAVAILABLE,
            "control plane is starting",
        ));
    };
    control.serve(method, body).await.ok_or_else(|| {
        RemoteError::new(RemoteError::NOT_FOUND, format!("unknown method `{method}`"))
    })
}

/// Who is calling the API.
#[derive(Debug, Clone)]
pub(crate) enum Caller {
    /// The local admin credential: allowed everything.
    Admin,
    /// A capability token.
    Token(String),
}

/// A caller the authoriser let through, named for the audit log.
#[derive(Debug, Clone)]
pub(crate) struct Actor {
    pub(crate) name: String,
    pub(crate) right: String,
    /// Limits from the token (none for the admin credential).
    pub(crate) quotas: Vec<noodle_caps::Quota>,
}

impl Actor {
    /// The token's limit named `name`, if it has one.
    pub(crate) fn quota(&self, name: &str) -> Option<i64> {
        self.quotas.iter().find(|q| q.name == name).map(|q| q.value)
    }
}

#[derive(Default)]
struct DenialBudget {
    second: u64,
    used: u32,
    suppressed: u64,
}

/// Policy sources as last read from the state, and what they parsed to.
type ParsedPolicies = (Vec<(String, String)>, Arc<Vec<Policy>>);

struct Cached {
    root: Vec<u8>,
    authoriser: Arc<Authoriser>,
}

pub(crate) struct ControlPlane {
    pub(crate) control: Control,
    audit_key: AuditKey,
    node_id: String,
    node_name: String,
    checkpoint_every: u64,
    authoriser: Mutex<Option<Cached>>,
    policies: Mutex<ParsedPolicies>,
    denials: Mutex<DenialBudget>,
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
                .and_then(|v| verify_view(&v))
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

impl ControlPlane {
    /// Opens this node's control-plane database and starts its Raft member. The node that
    /// founds the cluster passes `found` and becomes the single voter of a new control plane.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn start(
        dir: &DataDir,
        local: LocalState,
        node_id: &str,
        addr: String,
        node_name: String,
        link: Link,
        found: bool,
        cfg: ControlConfig,
    ) -> Result<ControlPlane, ControlPlaneError> {
        let me = Member::new(node_id, local.incarnation, addr);
        let store = local.store;
        let audit_key = if dir.exists(AUDIT_KEY_FILE) {
            let bytes = dir.read_file(AUDIT_KEY_FILE)?;
            let secret: [u8; 32] =
                bytes
                    .as_slice()
                    .try_into()
                    .map_err(|_| DataDirError::Corrupt {
                        path: dir.path().join(AUDIT_KEY_FILE),
                        detail: format!("expected 32 bytes, found {}", bytes.len()),
                    })?;
            AuditKey::from_bytes(secret)
        } else {
            let secret: [u8; 32] = rand::random();
            dir.write_file(AUDIT_KEY_FILE, &secret, true)?;
            AuditKey::from_bytes(secret)
        };
        let checkpoint_every = cfg.checkpoint_every;
        let control =
            Control::start(me.clone(), cfg, store, Arc::new(LinkTransport::new(link))).await?;
        // Only the founder of a new cluster starts a control plane; a node that set a damaged
        // database aside waits to be added by the leader like any new member.
        if found && local.recovered.is_none() {
            control.initialize().await?;
            // The cluster's capability root key exists from the first moment, so tokens can
            // be minted as soon as `noodle up` returns (upkeep would add it a second later).
            control
                .propose(Proposal::new(Command::SetRootKey {
                    key: RootKey::generate().to_bytes(),
                }))
                .await?;
        }
        Ok(ControlPlane {
            control,
            audit_key,
            node_id: node_id.to_string(),
            node_name,
            checkpoint_every,
            authoriser: Mutex::default(),
            policies: Mutex::new((Vec::new(), Arc::default())),
            denials: Mutex::default(),
        })
    }

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
            role: s.role,
        }
    }

    /// One round of upkeep, about once a second: membership (leader), the capability root key
    /// (leader, once), this node's audit key, and audit checkpoints (leader).
    pub(crate) async fn upkeep(&self, peers: &[PeerHealth]) -> Result<(), ControlError> {
        self.control.maintain_membership(peers).await?;
        let (root, my_key, chain, last_checkpoint) = self.control.read_local(|v| {
            let last = v.last_checkpoint()?.map_or(0, |c| c.upto_seq);
            Ok((
                v.root_key()?,
                v.node_keys()?.get(&self.node_id).copied(),
                v.audit_chain()?,
                last,
            ))
        })?;
        let leading = self.control.status().role == "leader";
        if leading && root.is_none() {
            let key = RootKey::generate();
            self.control
                .propose(Proposal::new(Command::SetRootKey {
                    key: key.to_bytes(),
                }))
                .await?;
        }
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
        Ok(())
    }

    /// The cluster's capability root key as stored in the replicated state.
    fn root_bytes(&self) -> Result<Vec<u8>, String> {
        self.control
            .read_local(|v| v.root_key())
            .map_err(|e| e.to_string())?
            .ok_or_else(|| "the cluster has no capability root key yet".to_string())
    }

    /// The cluster's capability root key (for minting tokens).
    pub(crate) fn root_key(&self) -> Result<RootKey, String> {
        RootKey::from_bytes(&self.root_bytes()?).map_err(|e| e.to_string())
    }

    /// The authoriser for the current root key (built once per key: it caches verified tokens).
    fn authoriser(&self) -> Result<Arc<Authoriser>, Denied> {
        let root = self.root_bytes().map_err(Denied::Evaluation)?;
        let mut cached = self.authoriser.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = cached.as_ref()
            && c.root == root
        {
            return Ok(c.authoriser.clone());
        }
        let key = RootKey::from_bytes(&root).map_err(|e| Denied::Evaluation(e.to_string()))?;
        let authoriser = Arc::new(Authoriser::new(key.public()));
        *cached = Some(Cached {
            root,
            authoriser: authoriser.clone(),
        });
        Ok(authoriser)
    }

    fn admin_actor(&self) -> String {
        format!("admin@{}", self.node_name)
    }

    /// Parsed cluster policies, re-parsed only when they change.
    fn policies(&self, sources: Vec<(String, String)>) -> Arc<Vec<Policy>> {
        let mut cached = self.policies.lock().unwrap_or_else(|e| e.into_inner());
        if cached.0 != sources {
            // Policies were checked when they were added; one that no longer parses (a newer
            // node's syntax) is skipped here and logged rather than failing every call.
            let parsed = sources
                .iter()
                .filter_map(|(name, src)| match Policy::parse(name, src) {
                    Ok(p) => Some(p),
                    Err(e) => {
                        tracing::warn!(policy = %name, error = %e, "skipping a policy that does not parse");
                        None
                    }
                })
                .collect();
            *cached = (sources, Arc::new(parsed));
        }
        cached.1.clone()
    }

    /// Checks `caller` against `request`: the admin credential is allowed everything; a token
    /// must be signed by this cluster, unrevoked, unexpired, grant the right, and pass every
    /// cluster policy.
    pub(crate) fn authorise(&self, caller: &Caller, request: &Request) -> Result<Actor, Denied> {
        let right = describe(request);
        let token = match caller {
            Caller::Admin => {
                return Ok(Actor {
                    name: self.admin_actor(),
                    right,
                    quotas: Vec::new(),
                });
            }
            Caller::Token(t) => t,
        };
        let authoriser = self.authoriser()?;
        let grant = self
            .control
            .read_local(|v| {
                let revoked = |id: &str| v.is_revoked(id).unwrap_or(true);
                let policies = self.policies(v.policies()?);
                let ctx = Context::new(SystemTime::now())
                    .with_revoked(&revoked)
                    .with_policies(&policies);
                Ok(authoriser.authorise(token, request, &ctx))
            })
            .map_err(|e| Denied::Evaluation(e.to_string()))??;
        Ok(Actor {
            name: token_actor(&grant.id, grant.holder.as_deref()),
            right,
            quotas: grant.quotas,
        })
    }

    /// Records a denial in the audit log (at most [`DENIALS_PER_SEC_MAX`] a second; the rest
    /// are counted in the next one recorded). Does not wait for the write.
    pub(crate) fn record_denial(
        self: &Arc<Self>,
        caller: &Caller,
        action: &str,
        target: &str,
        request: &Request,
        reason: &dyn std::fmt::Display,
    ) {
        let suppressed = {
            let mut b = self.denials.lock().unwrap_or_else(|e| e.into_inner());
            let second = now_ms() / 1000;
            if b.second != second {
                b.second = second;
                b.used = 0;
            }
            if b.used >= DENIALS_PER_SEC_MAX {
                b.suppressed += 1;
                metrics::counter!("noodle_audit_denials_suppressed_total").increment(1);
                return;
            }
            b.used += 1;
            std::mem::take(&mut b.suppressed)
        };
        let actor = match caller {
            Caller::Admin => self.admin_actor(),
            Caller::Token(t) => match noodle_caps::inspect(t) {
                Ok(i) => token_actor(&i.id, i.holder.as_deref()),
                Err(_) => "unreadable token".into(),
            },
        };
        let mut why = reason.to_string();
        if suppressed > 0 {
            why.push_str(&format!(" ({suppressed} earlier denials not recorded)"));
        }
        let record = Record::new(
            now_ms(),
            actor,
            action,
            target,
            describe(request),
            Outcome::denied(why),
        );
        let me = self.clone();
        tokio::spawn(async move {
            if let Err(e) = me
                .control
                .propose(Proposal::audited(Command::Nothing, record))
                .await
            {
                tracing::warn!(error = %e, "could not record a denial in the audit log");
            }
        });
    }

    /// Proposes an authorised write with its audit record.
    pub(crate) async fn write(
        &self,
        actor: &Actor,
        action: &str,
        target: &str,
        command: Command,
    ) -> Result<Response, ControlError> {
        let record = Record::new(
            now_ms(),
            actor.name.clone(),
            action,
            target,
            actor.right.clone(),
            Outcome::Allowed,
        );
        self.control
            .propose(Proposal::audited(command, record))
            .await
    }

    /// Recomputes this node's audit chain and checks every checkpoint signature, naming the
    /// first entry or checkpoint that does not verify.
    pub(crate) fn verify_audit(&self) -> Result<AuditVerifyReport, ControlError> {
        self.control.read_local(verify_view)
    }
}

/// Verifies the audit log of a control-plane database file of a stopped node (or a copy).
pub fn verify_audit_file(path: &std::path::Path) -> Result<AuditVerifyReport, String> {
    let store = Store::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let view = store.view().map_err(|e| e.to_string())?;
    verify_view(&view).map_err(|e| e.to_string())
}

/// Recomputes the audit chain of `v` and checks every checkpoint signature.
fn verify_view(v: &noodle_control::StateView) -> Result<AuditVerifyReport, DbError> {
    let keys = v.node_keys()?;
    let checkpoints = v.checkpoints()?;
    let key_of = |signer: &str| {
        keys.get(signer)
            .and_then(|k| noodle_audit::AuditPublicKey::from_bytes(*k).ok())
    };
    // Streams the log in pages so a long one is never held in memory whole.
    let mut from = 1;
    let pages = std::iter::from_fn(|| {
        let page = v.audit_raw(from, 1024).ok()?;
        from = page.last()?.0 + 1;
        Some(page)
    });
    let result = noodle_audit::verify_encoded(pages.flatten(), &checkpoints, key_of);
    Ok(match result {
        Ok(s) => AuditVerifyReport {
            ok: true,
            entries: s.entries,
            checkpoints: s.checkpoints,
            head_seq: s.head_seq,
            head_hash: s.head_hash,
            last_checkpoint_seq: s.last_checkpoint_seq,
            error: None,
            bad_seq: None,
        },
        Err(e) => {
            let (head_seq, head_hash) = v.audit_chain()?.head();
            let bad_seq = match &e {
                noodle_audit::VerifyError::Entry { seq, .. } => Some(*seq),
                _ => None,
            };
            AuditVerifyReport {
                ok: false,
                entries: head_seq,
                checkpoints: checkpoints.len() as u64,
                head_seq,
                head_hash: hex::encode(head_hash),
                last_checkpoint_seq: checkpoints.last().map(|c| c.upto_seq),
                error: Some(e.to_string()),
                bad_seq,
            }
        }
    })
}

/// `token:1d323c47 (alice)`: how the audit log names a token's holder.
fn token_actor(id: &str, holder: Option<&str>) -> String {
    let short = id.get(..8).unwrap_or(id);
    match holder {
        Some(h) => format!("token:{short} ({h})"),
        None => format!("token:{short}"),
    }
}

/// `config:write:retries`-style name of what a request needs.
fn describe(r: &Request) -> String {
    match &r.resource {
        Some(res) => format!("{}:{}:{}", r.subsystem, r.action, res),
        None => format!("{}:{}", r.subsystem, r.action),
    }
}

/// Emits control-plane events (leader and voter changes, revocations) as this node sees them.
pub(crate) async fn watch_events(
    plane: Arc<ControlPlane>,
    emit: impl Fn(EventKind, &str, String),
    node_id: String,
) {
    let mut metrics = plane.control.watch();
    let mut last = plane.control.status();
    let revoked = || -> BTreeSet<String> {
        plane
            .control
            .read_local(|v| v.revoked())
            .map(|r| r.into_iter().collect())
            .unwrap_or_default()
    };
    let mut revoked_seen = revoked();
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    let mut last_tick = Instant::now();
    loop {
        tokio::select! {
            changed = metrics.changed() => if changed.is_err() { return },
            _ = tick.tick() => {},
        }
        let now = plane.control.status();
        if now.leader != last.leader
            && let Some(leader) = &now.leader
        {
            emit(
                EventKind::LeaderChanged,
                leader,
                format!("term {}", now.term),
            );
        }
        if now.voters != last.voters {
            emit(EventKind::VotersChanged, &node_id, now.voters.join(", "));
        }
        last = now;
        if last_tick.elapsed() >= Duration::from_millis(250) {
            last_tick = Instant::now();
            let now = revoked();
            for id in now.difference(&revoked_seen) {
                emit(EventKind::TokenRevoked, &node_id, id.clone());
            }
            revoked_seen = now;
        }
    }
}
