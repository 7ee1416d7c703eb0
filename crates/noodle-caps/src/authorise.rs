//! The one authoriser every API call goes through: token + revocation list + cluster policies.
//!
//! Deny by default: a request is allowed only when an `allow` policy matches and every check of
//! every block and policy passes. Time, the revocation list and the policies are passed in per
//! call ([`Context`]), so the authoriser holds no clock and no cluster state, only the root public
//! key and a bounded cache of tokens whose signatures already verified.

use crate::clock;
use crate::datalog;
use crate::key::PublicKey;
use crate::policy::Policy;
use crate::right::{Quota, Request};
use crate::token::{TOKEN_BYTES_MAX, TokenView};
use biscuit_auth::error::{FailedCheck, Logic, MatchedPolicy, Token as BiscuitError};
use biscuit_auth::{AuthorizerBuilder, Biscuit, UnverifiedBiscuit};
use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::hash::BuildHasher;
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

/// How many verified tokens the authoriser remembers.
pub const VERIFIED_CACHE_ENTRIES_MAX: usize = 1024;

/// The rules that apply after the cluster's policies. Rights without a prefix cover every
/// resource of their subsystem and action; prefixed rights need a resource under the prefix,
/// segment by segment (the authoriser states `resource_under` for each ancestor of the
/// resource, see [`datalog::resource_under_facts`]).
const DEFAULT_POLICIES: &str = r#"
allow if operation($s, $a), right($s, $a);
allow if operation($s, $a), right($s, "*");
allow if operation($s, $a), resource_under($p), right($s, $a, $p);
allow if operation($s, $a), resource_under($p), right($s, "*", $p);
deny if true;
"#;

/// Bounds on one authorisation's Datalog run.
///
/// The work is bounded by what does not depend on the machine: the facts a run may derive,
/// the rounds it may take, and (checked when a policy is added and when a token is read) the
/// size of the Datalog itself: at most [`crate::POLICY_BYTES_MAX`] of policy source and
/// [`crate::TOKEN_BYTES_MAX`] of token, and a bounded number of operators per statement. The
/// same request is allowed or denied on a fast machine and a slow, busy one. `time_max` is
/// only a backstop against Datalog those bounds let through but that is still costly (joins
/// over many facts): generous enough that no bounded run reaches it on a loaded machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    pub facts_max: u64,
    pub iterations_max: u64,
    pub time_max: Duration,
}

/// The default wall-clock backstop of one authorisation (see [`Limits`]).
pub const TIME_BACKSTOP: Duration = Duration::from_secs(1);

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            facts_max: 1000,
            iterations_max: 100,
            time_max: TIME_BACKSTOP,
        }
    }
}

impl Limits {
    pub(crate) fn to_biscuit(&self) -> biscuit_auth::AuthorizerLimits {
        biscuit_auth::AuthorizerLimits {
            max_facts: self.facts_max,
            max_iterations: self.iterations_max,
            max_time: self.time_max,
        }
    }
}

/// Why a request was refused. One line each, safe to show the caller.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    #[error("token is {size} bytes, the limit is {limit}")]
    Oversized { size: usize, limit: usize },
    #[error("token is malformed: {0}")]
    Malformed(String),
    #[error("token is not signed by this cluster")]
    Forged,
    #[error("token was revoked")]
    Revoked {
        /// The revoked block's id (the token's own id or one of its ancestors').
        id: String,
    },
    #[error("token expired at {}", clock::rfc3339(*.expired_at_unix))]
    Expired { expired_at_unix: i64 },
    #[error("token does not allow {request}")]
    NotAllowed { request: String },
    #[error("policy '{policy}' denied {request}")]
    Policy { policy: String, request: String },
    #[error("authorisation ran past its limits ({0})")]
    LimitsExceeded(String),
    #[error("authorisation failed: {0}")]
    Evaluation(String),
}

impl Denied {
    /// Whether the token itself is no credential here (unreadable, not this cluster's, expired
    /// or revoked), as opposed to a valid token that does not allow the request.
    pub fn is_bad_credential(&self) -> bool {
        matches!(
            self,
            Denied::Oversized { .. }
                | Denied::Malformed(_)
                | Denied::Forged
                | Denied::Revoked { .. }
                | Denied::Expired { .. }
        )
    }
}

/// What an allowed request may go on with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// Hex revocation id of the token's last block (what `noodle cap revoke` takes).
    pub id: String,
    pub holder: Option<String>,
    /// Limits the caller must enforce.
    pub quotas: Vec<Quota>,
}

/// A set of revoked ids (hex revocation ids).
pub trait RevocationList {
    fn is_revoked(&self, id_hex: &str) -> bool;
}

impl<S: BuildHasher> RevocationList for HashSet<String, S> {
    fn is_revoked(&self, id_hex: &str) -> bool {
        self.contains(id_hex)
    }
}

impl RevocationList for BTreeSet<String> {
    fn is_revoked(&self, id_hex: &str) -> bool {
        self.contains(id_hex)
    }
}

impl<F: Fn(&str) -> bool> RevocationList for F {
    fn is_revoked(&self, id_hex: &str) -> bool {
        self(id_hex)
    }
}

/// The empty revocation list.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoneRevoked;

impl RevocationList for NoneRevoked {
    fn is_revoked(&self, _id_hex: &str) -> bool {
        false
    }
}

/// Everything one authorisation depends on besides the token and the request.
#[derive(Clone, Copy)]
pub struct Context<'a> {
    pub now: SystemTime,
    pub revoked: &'a dyn RevocationList,
    /// Cluster policies, run in this order before the defaults.
    pub policies: &'a [Policy],
}

impl Context<'static> {
    /// At `now`, nothing revoked, no cluster policies.
    pub fn new(now: SystemTime) -> Context<'static> {
        Context {
            now,
            revoked: &NoneRevoked,
            policies: &[],
        }
    }
}

impl<'a> Context<'a> {
    pub fn with_revoked<'b>(self, revoked: &'b dyn RevocationList) -> Context<'b>
    where
        'a: 'b,
    {
        Context {
            now: self.now,
            revoked,
            policies: self.policies,
        }
    }

    pub fn with_policies<'b>(self, policies: &'b [Policy]) -> Context<'b>
    where
        'a: 'b,
    {
        Context {
            now: self.now,
            revoked: self.revoked,
            policies,
        }
    }
}

/// A token whose signature verified, with what the hot path needs from it.
struct Verified {
    biscuit: Biscuit,
    ids: Vec<String>,
    holder: Option<String>,
    quotas: Vec<Quota>,
    expires_at: Option<u64>,
}

#[derive(Default)]
struct Cache {
    entries: HashMap<[u8; 32], Arc<Verified>>,
    /// Insertion order, for eviction (oldest first).
    order: VecDeque<[u8; 32]>,
}

/// Checks tokens against one cluster's root key. `Send + Sync`; share it behind an `Arc`.
pub struct Authoriser {
    root: biscuit_auth::PublicKey,
    limits: Limits,
    defaults: AuthorizerBuilder,
    cache: RwLock<Cache>,
}

impl std::fmt::Debug for Authoriser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authoriser")
            .field("root", &PublicKey(self.root))
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

impl Authoriser {
    /// An authoriser for tokens minted by `root`'s private half, with the default [`Limits`].
    pub fn new(root: PublicKey) -> Authoriser {
        Authoriser::with_limits(root, Limits::default())
    }

    pub fn with_limits(root: PublicKey, limits: Limits) -> Authoriser {
        let defaults = AuthorizerBuilder::new()
            .code(DEFAULT_POLICIES)
            .expect("the default policies are constant and parse (a unit test runs them)");
        Authoriser {
            root: root.0,
            limits,
            defaults,
            cache: RwLock::new(Cache::default()),
        }
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Decides one request. See the crate documentation for the order of the checks.
    pub fn authorise(
        &self,
        token: &str,
        req: &Request,
        ctx: &Context<'_>,
    ) -> Result<Grant, Denied> {
        let verified = self.valid(token, ctx)?;
        let now = clock::unix_secs(ctx.now);
        match self.run(&verified.biscuit, req, ctx, now) {
            Ok(()) => Ok(Grant {
                id: verified.ids.last().cloned().unwrap_or_default(),
                holder: verified.holder.clone(),
                quotas: verified.quotas.clone(),
            }),
            Err(BiscuitError::Format(e)) => Err(Denied::Malformed(e.to_string())),
            Err(e) => Err(explain_failure(e, req, ctx.policies)),
        }
    }

    /// Checks only that `token` is a credential here: readable, signed by this cluster, not
    /// revoked, not expired (what [`Authoriser::authorise`] checks first). Every error is one
    /// for which [`Denied::is_bad_credential`] holds.
    pub fn authenticate(&self, token: &str, ctx: &Context<'_>) -> Result<(), Denied> {
        self.valid(token, ctx).map(|_| ())
    }

    fn valid(&self, token: &str, ctx: &Context<'_>) -> Result<Arc<Verified>, Denied> {
        if token.len() > TOKEN_BYTES_MAX {
            return Err(Denied::Oversized {
                size: token.len(),
                limit: TOKEN_BYTES_MAX,
            });
        }
        let verified = self.verified(token.trim())?;
        if let Some(id) = verified.ids.iter().find(|id| ctx.revoked.is_revoked(id)) {
            return Err(Denied::Revoked { id: id.clone() });
        }
        let now = clock::unix_secs(ctx.now);
        if let Some(expiry) = verified.expires_at.filter(|&e| now > e) {
            return Err(Denied::Expired {
                expired_at_unix: i64::try_from(expiry).unwrap_or(i64::MAX),
            });
        }
        Ok(verified)
    }

    /// One Datalog run: the request's facts, the cluster policies, the defaults, the token.
    fn run(
        &self,
        token: &Biscuit,
        req: &Request,
        ctx: &Context<'_>,
        now: u64,
    ) -> Result<(), BiscuitError> {
        let mut builder = AuthorizerBuilder::new()
            .set_limits(self.limits.to_biscuit())
            .fact(datalog::time_fact(now))?
            .fact(datalog::operation_fact(&req.subsystem, &req.action))?;
        if let Some(resource) = &req.resource {
            builder = builder.fact(datalog::resource_fact(resource))?;
            for fact in datalog::resource_under_facts(resource) {
                builder = builder.fact(fact)?;
            }
        }
        for policy in ctx.policies {
            builder = builder.merge(policy.builder.clone());
        }
        let mut authorizer = builder.merge(self.defaults.clone()).build(token)?;
        authorizer.authorize().map(|_| ())
    }

    /// The verified token for `token`, from the cache or by checking its signature.
    fn verified(&self, token: &str) -> Result<Arc<Verified>, Denied> {
        let key = *blake3::hash(token.as_bytes()).as_bytes();
        if let Some(hit) = self
            .cache
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .entries
            .get(&key)
        {
            return Ok(Arc::clone(hit));
        }
        if token.is_empty() {
            return Err(Denied::Malformed("it is empty".to_string()));
        }
        let unverified =
            UnverifiedBiscuit::from_base64(token).map_err(|e| Denied::Malformed(e.to_string()))?;
        let biscuit = unverified.verify(self.root).map_err(|_| Denied::Forged)?;
        let view = TokenView::read_verified(&biscuit).map_err(|e| match e {
            crate::TokenError::Malformed(m) => Denied::Malformed(m),
            other => Denied::Malformed(other.to_string()),
        })?;
        let verified = Arc::new(Verified {
            ids: view.ids.clone(),
            holder: view.authority().holder.clone(),
            quotas: view.authority().quotas.clone(),
            expires_at: view.expires_at(),
            biscuit,
        });
        // The lock is poisoned only if a panic happened mid-update; every update below leaves
        // the map and the queue consistent at each step, so the data is still sound.
        let mut cache = self
            .cache
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if !cache.entries.contains_key(&key) {
            while cache.entries.len() >= VERIFIED_CACHE_ENTRIES_MAX {
                match cache.order.pop_front() {
                    Some(oldest) => {
                        cache.entries.remove(&oldest);
                    }
                    None => break,
                }
            }
            cache.entries.insert(key, Arc::clone(&verified));
            cache.order.push_back(key);
        }
        Ok(verified)
    }

    /// Number of verified tokens currently remembered.
    pub fn cached_tokens(&self) -> usize {
        self.cache
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .entries
            .len()
    }
}

/// Turns biscuit's verdict into one [`Denied`] that names the policy responsible, if any.
fn explain_failure(e: BiscuitError, req: &Request, policies: &[Policy]) -> Denied {
    let request = req.to_string();
    let (matched, checks) = match e {
        BiscuitError::RunLimit(limit) => return Denied::LimitsExceeded(limit.to_string()),
        BiscuitError::FailedLogic(Logic::Unauthorized { policy, checks }) => (Some(policy), checks),
        BiscuitError::FailedLogic(Logic::NoMatchingPolicy { checks }) => (None, checks),
        other => return Denied::Evaluation(other.to_string()),
    };
    // A cluster deny policy that matched speaks first, then a failed cluster check.
    if let Some(MatchedPolicy::Deny(index)) = matched
        && let Some(policy) = owner(policies, index, |p| p.policies)
    {
        return Denied::Policy { policy, request };
    }
    for check in &checks {
        if let FailedCheck::Authorizer(c) = check
            && let Some(policy) = owner(policies, c.check_id as usize, |p| p.checks)
        {
            return Denied::Policy { policy, request };
        }
    }
    Denied::NotAllowed { request }
}

/// Name of the policy that contributed the `index`-th statement of one kind.
fn owner(
    policies: &[Policy],
    mut index: usize,
    count: impl Fn(&Policy) -> usize,
) -> Option<String> {
    for policy in policies {
        let n = count(policy);
        if index < n {
            return Some(policy.name().to_string());
        }
        index -= n;
    }
    None
}
