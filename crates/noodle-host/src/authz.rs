//! The one authoriser every subsystem asks: given a caller and a right, allow or deny, and
//! record denials and authorised writes in the audit log.
//!
//! Deny by default: the admin credential (checked by the API before it gets here, and only from
//! this machine) is allowed everything; anything else must be a capability token signed by the
//! cluster's root key, not revoked, not expired, granting the right, and passing every cluster
//! policy. Rights are typed ([`Permission`]): each subsystem declares its own as constants.

use crate::denials::{DenialBook, DenialKey, Ended, Note};
use noodle_api::AuditVerifyReport;
use noodle_audit::{Outcome, Record};
use noodle_caps::{Authoriser, Context, Denied, Policy, PublicKey, Request, RootKey};
use noodle_control::{Command, Control, ControlError, DbError, Proposal, Response, StateView};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

/// A right a request needs: `SUBSYSTEM:ACTION`, optionally on a resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Permission {
    pub subsystem: &'static str,
    pub action: &'static str,
}

impl Permission {
    /// Status, events, the dashboard and metrics.
    pub const CLUSTER_READ: Permission = Permission::new("cluster", "read");
    /// Minting join tokens.
    pub const CLUSTER_ADMIT: Permission = Permission::new("cluster", "admit");
    /// Removing a node from the cluster.
    pub const CLUSTER_REMOVE: Permission = Permission::new("cluster", "remove");
    pub const CONFIG_READ: Permission = Permission::new("config", "read");
    pub const CONFIG_WRITE: Permission = Permission::new("config", "write");
    pub const CAP_CREATE: Permission = Permission::new("cap", "create");
    pub const CAP_REVOKE: Permission = Permission::new("cap", "revoke");
    pub const POLICY_READ: Permission = Permission::new("policy", "read");
    pub const POLICY_WRITE: Permission = Permission::new("policy", "write");
    pub const AUDIT_READ: Permission = Permission::new("audit", "read");

    pub const fn new(subsystem: &'static str, action: &'static str) -> Permission {
        Permission { subsystem, action }
    }

    /// The request for this right on `resource`.
    pub fn on(self, resource: &str) -> Request {
        Request::new(self.subsystem, self.action).on(resource)
    }
}

impl From<Permission> for Request {
    fn from(p: Permission) -> Request {
        Request::new(p.subsystem, p.action)
    }
}

/// Who is calling the API.
#[derive(Debug, Clone)]
pub enum Caller {
    /// The local admin credential: allowed everything.
    Admin,
    /// A capability token.
    Token(String),
}

/// A caller the authoriser let through, named for the audit log.
#[derive(Debug, Clone)]
pub struct Actor {
    pub name: String,
    pub right: String,
    /// Limits from the token (none for the admin credential).
    pub quotas: Vec<noodle_caps::Quota>,
    /// The token it presented (none for the admin credential): a write it makes is forwarded
    /// with it, and the leader authorises it again.
    pub token: Option<String>,
}

impl Actor {
    /// The token's limit named `name`, if it has one.
    pub fn quota(&self, name: &str) -> Option<i64> {
        self.quotas.iter().find(|q| q.name == name).map(|q| q.value)
    }
}

/// Policy sources as last read from the state, and what they parsed to.
type ParsedPolicies = (Vec<(String, String)>, Arc<Vec<Policy>>);

struct Cached {
    root: Vec<u8>,
    authoriser: Arc<Authoriser>,
}

/// The authoriser of one node, over the replicated root key, revocations and policies.
pub struct Authz {
    control: Control,
    node_name: String,
    authoriser: Mutex<Option<Cached>>,
    policies: Mutex<ParsedPolicies>,
    denials: Mutex<DenialBook>,
}

impl Authz {
    pub fn new(control: Control, node_name: String) -> Authz {
        Authz {
            control,
            node_name,
            authoriser: Mutex::default(),
            policies: Mutex::new((Vec::new(), Arc::default())),
            denials: Mutex::default(),
        }
    }

    /// The public half of the cluster's capability root key, from the replicated state (or
    /// from the private key a cluster made by an older version still keeps there).
    fn root_public(&self) -> Result<Vec<u8>, Denied> {
        let evaluation = |e: String| Denied::Evaluation(e);
        let (public, legacy) = self
            .control
            .read_local(|v| Ok((v.root_public_key()?, v.legacy_root_key()?)))
            .map_err(|e| evaluation(e.to_string()))?;
        match (public, legacy) {
            (Some(public), _) => Ok(public),
            (None, Some(private)) => Ok(RootKey::from_bytes(&private)
                .map_err(|e| evaluation(e.to_string()))?
                .public()
                .to_bytes()),
            (None, None) => Err(evaluation(
                "the cluster has no capability root key yet".to_string(),
            )),
        }
    }

    /// The authoriser for the current root key (built once per key: it caches verified tokens).
    fn authoriser(&self) -> Result<Arc<Authoriser>, Denied> {
        let root = self.root_public()?;
        let mut cached = self.authoriser.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = cached.as_ref()
            && c.root == root
        {
            return Ok(c.authoriser.clone());
        }
        let key = PublicKey::from_bytes(&root).map_err(|e| Denied::Evaluation(e.to_string()))?;
        let authoriser = Arc::new(Authoriser::new(key));
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

    /// Checks that `caller` presents a credential of this cluster at all (a token that is
    /// readable, signed by this cluster, not revoked, not expired), without recording anything.
    pub fn authenticate(&self, caller: &Caller) -> Result<(), Denied> {
        let Caller::Token(token) = caller else {
            return Ok(());
        };
        let authoriser = self.authoriser()?;
        self.control
            .read_local(|v| {
                let revoked = |id: &str| v.is_revoked(id).unwrap_or(true);
                let ctx = Context::new(SystemTime::now()).with_revoked(&revoked);
                Ok(authoriser.authenticate(token, &ctx))
            })
            .map_err(|e| Denied::Evaluation(e.to_string()))?
    }

    /// Checks `caller` against `request`, without recording anything.
    pub fn authorise(&self, caller: &Caller, request: &Request) -> Result<Actor, Denied> {
        let right = describe(request);
        let token = match caller {
            Caller::Admin => {
                return Ok(Actor {
                    name: self.admin_actor(),
                    right,
                    quotas: Vec::new(),
                    token: None,
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
            token: Some(token.clone()),
        })
    }

    /// Checks `caller` against `request`; a denial is recorded in the audit log under `action`
    /// and `target`.
    pub fn check(
        &self,
        caller: &Caller,
        request: impl Into<Request>,
        action: &str,
        target: &str,
    ) -> Result<Actor, Denied> {
        let request = request.into();
        self.authorise(caller, &request).inspect_err(|denied| {
            metrics::counter!("noodle_api_denied_total").increment(1);
            self.record_denial(caller, action, target, &request, denied);
        })
    }

    /// Records a denial in the audit log: the first of its kind (actor, action, right, reason)
    /// in a window at once, its repeats as one record with their count when the window ends
    /// (see [`DenialBook`]). Does not wait for the write.
    pub fn record_denial(
        &self,
        caller: &Caller,
        action: &str,
        target: &str,
        request: &Request,
        reason: &dyn std::fmt::Display,
    ) {
        let key = DenialKey {
            actor: self.denial_actor(caller),
            action: action.to_string(),
            right: describe(request),
            reason: reason.to_string(),
        };
        let target = bounded(target, AUDIT_TARGET_CHARS_MAX);
        let (note, ended) = self.denials.lock().unwrap_or_else(|e| e.into_inner()).note(
            key.clone(),
            &target,
            crate::now_ms(),
        );
        self.record_ended(ended);
        match note {
            Note::Record => self.propose_denial(&key, &target, key.reason.clone()),
            Note::Counted => {
                metrics::counter!("noodle_audit_denials_aggregated_total").increment(1);
            }
        }
    }

    /// Records what each denial window left once it is over (every second), so a burst of
    /// denials is recorded even when nothing follows it. Runs until the task is dropped.
    pub async fn flush_denials_forever(self: Arc<Self>) {
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            self.flush_denials();
        }
    }

    /// Records what the denial window left (repeats with their counts), if it is over.
    fn flush_denials(&self) {
        let ended = self
            .denials
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .roll(crate::now_ms());
        self.record_ended(ended);
    }

    fn record_ended(&self, ended: Ended) {
        let window_s = DenialBook::WINDOW_MS / 1000;
        for (key, target, repeats) in ended.repeats {
            let why = format!(
                "{} (denied {repeats} more times within {window_s} s)",
                key.reason
            );
            self.propose_denial(&key, &target, why);
        }
        if ended.untracked > 0 {
            let key = DenialKey {
                actor: format!("{} other callers", ended.untracked),
                action: "denied".into(),
                right: String::new(),
                reason: String::new(),
            };
            let why = format!(
                "{} more denials within {window_s} s, beyond the {} kinds recorded one by one",
                ended.untracked,
                DenialBook::KEYS_MAX
            );
            self.propose_denial(&key, "", why);
        }
    }

    /// How the audit log names the caller of a denied request.
    fn denial_actor(&self, caller: &Caller) -> String {
        match caller {
            Caller::Admin => self.admin_actor(),
            // Only a token of this cluster names its holder: what an unverified one claims is
            // the caller's own words, so it is named by a hash of it instead.
            Caller::Token(t) => match noodle_caps::inspect(t) {
                Ok(i) if self.authenticate(caller).is_ok() => {
                    token_actor(&i.id, i.holder.as_deref())
                }
                _ => format!(
                    "unverified token {}",
                    &blake3::hash(t.as_bytes()).to_hex()[..8]
                ),
            },
        }
    }

    fn propose_denial(&self, key: &DenialKey, target: &str, why: String) {
        let record = Record::new(
            crate::now_ms(),
            key.actor.clone(),
            key.action.clone(),
            target,
            key.right.clone(),
            Outcome::denied(why),
        );
        let control = self.control.clone();
        tokio::spawn(async move {
            if let Err(e) = control
                .propose(Proposal::audited(Command::Nothing, record))
                .await
            {
                tracing::warn!(error = %e, "could not record a denial in the audit log");
            }
        });
    }

    /// Proposes an authorised write with its audit record.
    pub async fn write(
        &self,
        actor: &Actor,
        action: &str,
        target: &str,
        command: Command,
    ) -> Result<Response, ControlError> {
        let record = Record::new(
            crate::now_ms(),
            actor.name.clone(),
            action,
            target,
            actor.right.clone(),
            Outcome::Allowed,
        );
        self.propose(actor, Proposal::audited(command, record))
            .await
    }

    /// Proposes a write `actor` was authorised for, with the token it presented, so that the
    /// leader authorises it again when this node is not a voter.
    pub async fn propose(
        &self,
        actor: &Actor,
        proposal: Proposal,
    ) -> Result<Response, ControlError> {
        self.control
            .propose_with(proposal, actor.token.clone())
            .await
    }
}

/// The leader's check of what a member that is not a voter forwards (voters hold the cluster's
/// keys, so they are trusted with the writes they forward). A person's write must come with a
/// capability token that grants it here too: the node's local admin credential is that node's,
/// not the cluster's. The audit record then names the token's holder as verified here, and a
/// node's own record says which node sent it.
impl noodle_control::ForwardGate for Authz {
    fn check(
        &self,
        caller: &str,
        caller_is_voter: bool,
        credential: Option<&str>,
        needs: &[noodle_control::Needs],
        proposal: &mut Proposal,
    ) -> Result<(), String> {
        use noodle_control::Needs;
        if caller_is_voter {
            return Ok(());
        }
        let mut verified = None;
        for need in needs {
            match need {
                Needs::Node => {}
                Needs::Voter => {
                    return Err(format!(
                        "node {caller} is not a voter: only a voter may propose this"
                    ));
                }
                Needs::Right {
                    subsystem,
                    action,
                    resource,
                    amounts,
                } => {
                    let Some(token) = credential else {
                        return Err(format!(
                            "node {caller} is not a voter, so its local admin is not the cluster's: act with a capability token (--token)"
                        ));
                    };
                    let mut request = Request::new(subsystem, action);
                    if let Some(r) = resource {
                        request = request.on(r);
                    }
                    let actor = self
                        .authorise(&Caller::Token(token.to_string()), &request)
                        .map_err(|denied| format!("the leader refuses the write: {denied}"))?;
                    for (name, asked) in amounts {
                        if let Some(limit) = actor.quota(name)
                            && *asked > limit
                        {
                            return Err(format!(
                                "the leader refuses the write: it asks for {asked} {name}; the token allows {limit}"
                            ));
                        }
                    }
                    verified = Some(actor.name);
                }
            }
        }
        if let Some(record) = proposal.audit.as_mut() {
            let own = format!("node:{caller}");
            record.actor = match verified {
                Some(name) => name,
                None if record.actor == own => own,
                None => format!("{} (as node {caller} says)", record.actor),
            };
            *record = record.clone().bounded();
        }
        Ok(())
    }
}

/// How often a long-lived answer (an event stream, a job's output) looks again whether its
/// caller may still have it.
pub const STREAM_RECHECK: std::time::Duration = std::time::Duration::from_secs(1);

/// Ends `stream` once `caller` may no longer make `request` (its token was revoked, expired,
/// or a policy now denies it), looking every [`STREAM_RECHECK`]. The admin's streams run on.
pub fn while_allowed<S: futures_util::Stream + Send + 'static>(
    stream: S,
    authz: Arc<Authz>,
    caller: Caller,
    request: impl Into<Request>,
) -> impl futures_util::Stream<Item = S::Item> + Send + 'static {
    let request = request.into();
    let denied = async move {
        loop {
            tokio::time::sleep(STREAM_RECHECK).await;
            if authz.authorise(&caller, &request).is_err() {
                return;
            }
        }
    };
    futures_util::StreamExt::take_until(stream, Box::pin(denied))
}

/// `token:1d323c47 (alice)`: how the audit log names a token's holder.
/// Longest target kept in a denial's audit record (a request path may be long).
const AUDIT_TARGET_CHARS_MAX: usize = 256;

/// `text` cut to `max` characters, with a mark where it was cut.
fn bounded(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((end, _)) => format!("{}…", &text[..end]),
        None => text.to_string(),
    }
}

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

/// Recomputes the audit chain of `v` and checks every checkpoint signature, naming the first
/// entry or checkpoint that does not verify.
pub fn verify_audit(v: &StateView) -> Result<AuditVerifyReport, DbError> {
    let keys = v.node_keys()?;
    let checkpoints = v.checkpoints()?;
    // A pruned log verifies from the checkpoint it was pruned at.
    let pruned = v.audit_pruned()?;
    let anchor = checkpoints.iter().find(|c| c.upto_seq == pruned);
    let key_of = |signer: &str| {
        keys.get(signer)
            .and_then(|k| noodle_audit::AuditPublicKey::from_bytes(*k).ok())
    };
    // Streams the log in pages so a long one is never held in memory whole.
    let mut from = pruned + 1;
    let pages = std::iter::from_fn(|| {
        let page = v.audit_raw(from, 1024).ok()?;
        from = page.last()?.0 + 1;
        Some(page)
    });
    let result = if pruned > 0 && anchor.is_none() {
        Err(noodle_audit::VerifyError::Checkpoint {
            upto_seq: pruned,
            signer: String::new(),
            problem: noodle_audit::CheckpointProblem::PrunedWithoutCheckpoint,
        })
    } else {
        noodle_audit::verify_encoded_from(anchor, pages.flatten(), &checkpoints, key_of)
    };
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
