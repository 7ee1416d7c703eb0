//! The join protocol: a node with a token asks a member for a certificate.
//!
//! The joiner dials a seed (from the token, `--peer`, or mDNS) on the join ALPN, pinning the CA
//! fingerprint from its token, and sends a [`JoinRequest`]. Only a voter holds the CA key, so a
//! member that is not one hands the request to a voter (`node.admit`). The voter checks the
//! token ([`noodle_security::JoinToken::verify`]) and the control plane's record of it (a join
//! token is recorded there, by the hash of its secret, when it is created; single-use unless
//! `--uses` says otherwise, and revocable), spends one of its uses, assigns the joiner its node
//! id, and only then issues anything: the joiner's certificate, the CA certificate and the
//! members it knows. Never a key of the cluster's. Join attempts are limited per source
//! address ([`JoinLimiter`]); refused ones become events with sanitised, bounded fields.

use crate::cluster::ClusterState;
use crate::keys::Keys;
use noodle_api::{EventKind, JoinTokenInfo, TokenRequest, TokenResponse};
use noodle_audit::{Outcome, Record};
use noodle_control::{Command, Control, ControlError, Proposal, Response as Applied};
use noodle_host::{Actor, EventBus};
use noodle_link::Link;
use noodle_link::{JoinPeer, RemoteError};
use noodle_security::{JoinToken, NodeKey};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

/// Seeds a join token carries besides this node, at most.
const TOKEN_SEEDS_MAX: usize = 7;
/// Register prefix under which the control plane records the join tokens it accepts.
const TOKEN_REGISTER: &str = "join-token/";
/// Most unexpired join tokens the cluster holds at once.
pub(crate) const JOIN_TOKENS_MAX: usize = 1000;
/// Most nodes one join token may admit.
pub(crate) const TOKEN_USES_MAX: u32 = 1000;
/// Tries at spending a use when other joins change the same token meanwhile.
const SPEND_TRIES: usize = 16;
/// Longest node name a joiner may give (characters).
const NAME_CHARS_MAX: usize = 64;
/// Longest text of a joiner's that goes into an event.
const EVENT_FIELD_CHARS_MAX: usize = 96;

/// What a joiner sends.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct JoinRequest {
    pub token: String,
    /// The name the joiner goes by (its host name unless `--name`); the cluster derives its
    /// node id from it.
    pub name: String,
    /// Raw P-256 public key to certify.
    pub public_key: Vec<u8>,
}

/// What an admitted joiner receives.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct JoinResponse {
    pub cluster_id: String,
    /// The node id the cluster assigned; the certificate names it.
    pub node_id: String,
    pub ca_cert: Vec<u8>,
    pub node_cert: Vec<u8>,
    /// The joiner's address as the member saw it: tells a node bound to 0.0.0.0 its own IP.
    pub observed_addr: SocketAddr,
    /// Members the admitting node knows: (node id, cluster address).
    pub members: Vec<(String, SocketAddr)>,
}

/// Everything a newly admitted node stores.
pub(crate) struct Admission {
    pub response: JoinResponse,
    pub via: SocketAddr,
}

#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    #[error(transparent)]
    Token(#[from] noodle_security::TokenError),
    #[error(
        "no seed address to join through: the token has none and mDNS found no node of cluster {0} (pass --peer ADDR)"
    )]
    NoSeeds(String),
    #[error("could not join cluster {cluster}: {attempts}")]
    Failed { cluster: String, attempts: String },
    #[error("the cluster's answer to the join does not check out: {0}")]
    BadAnswer(String),
}

/// A member hands a joiner's request to a voter.
pub(crate) const NODE_ADMIT: &str = "node.admit";

/// What a member that is not a voter sends a voter for a joiner.
#[derive(Debug, Serialize, Deserialize)]
struct ForwardedJoin {
    request: JoinRequest,
    /// The joiner's address as the member saw it.
    joiner: SocketAddr,
}

/// The joiner's check of what it was given: the CA its token pins, and a certificate from
/// that CA naming the node id it was assigned.
pub(crate) fn check_admission(
    r: &JoinResponse,
    token: &JoinToken,
    node_id: &str,
) -> Result<(), JoinError> {
    let bad = |why: &str| Err(JoinError::BadAnswer(why.to_string()));
    if noodle_security::fingerprint(&r.ca_cert) != token.ca_fingerprint() {
        return bad("the CA certificate is not the one the token pins");
    }
    if noodle_security::node_id_of_cert(&r.node_cert).as_deref() != Some(node_id) {
        return bad("the certificate names another node");
    }
    Ok(())
}

/// What the control plane keeps of a join token (never the token itself).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct TokenRecord {
    /// [`JoinToken::secret_hash`]: the token is checked against it, and cannot be rebuilt
    /// from it.
    secret_hash: [u8; 32],
    uses_left: u32,
    expires_at_unix: u64,
    created_at_ms: u64,
    created_by: String,
}

impl TokenRecord {
    /// What `noodle token ls` shows of the token `id`.
    fn info(self, id: String) -> JoinTokenInfo {
        JoinTokenInfo {
            id,
            uses_left: self.uses_left,
            expires_at_unix: self.expires_at_unix,
            created_at_ms: self.created_at_ms,
            created_by: self.created_by,
        }
    }
}

fn register_key(id: &str) -> String {
    format!("{TOKEN_REGISTER}{id}")
}

/// `text` with every control or non-ASCII character replaced and cut to `max` characters: what
/// a joiner's own words may look like in an event or a log line.
pub(crate) fn sanitised(text: &str, max: usize) -> String {
    let mut out: String = text
        .chars()
        .take(max)
        .map(|c| {
            if c.is_ascii_graphic() || c == ' ' {
                c
            } else {
                '?'
            }
        })
        .collect();
    if text.chars().nth(max).is_some() {
        out.push('…');
    }
    out
}

/// Join attempts allowed per source address and in all per window: a fixed window, so the
/// cost of an attacker who reaches the cluster port is bounded whatever it sends. Sans-IO: the
/// caller passes the time.
#[derive(Debug)]
pub(crate) struct JoinLimiter {
    window_start_ms: u64,
    total: u32,
    per_source: HashMap<IpAddr, u32>,
}

impl JoinLimiter {
    pub(crate) const WINDOW_MS: u64 = 60_000;
    pub(crate) const PER_SOURCE_MAX: u32 = 30;
    pub(crate) const TOTAL_MAX: u32 = 600;
    /// Distinct sources tracked per window (the map's bound).
    pub(crate) const SOURCES_MAX: usize = 4096;

    pub(crate) fn new() -> JoinLimiter {
        JoinLimiter {
            window_start_ms: 0,
            total: 0,
            per_source: HashMap::new(),
        }
    }

    /// Counts an attempt from `source` at `now_ms`; false when it is over a limit.
    pub(crate) fn allow(&mut self, source: IpAddr, now_ms: u64) -> bool {
        if now_ms.saturating_sub(self.window_start_ms) >= Self::WINDOW_MS {
            self.window_start_ms = now_ms;
            self.total = 0;
            self.per_source.clear();
        }
        if self.total >= Self::TOTAL_MAX {
            return false;
        }
        if !self.per_source.contains_key(&source) && self.per_source.len() >= Self::SOURCES_MAX {
            return false;
        }
        let count = self.per_source.entry(source).or_insert(0);
        if *count >= Self::PER_SOURCE_MAX {
            return false;
        }
        *count += 1;
        self.total += 1;
        true
    }
}

/// Admission check on the member side, before anything is spent: the token is meant for this
/// cluster and unexpired, and the joiner's name is usable.
fn check_request(keys: &Keys, req: &JoinRequest, now_unix: u64) -> Result<JoinToken, String> {
    let token = JoinToken::decode(&req.token).map_err(|e| e.to_string())?;
    token
        .verify(keys.cluster_id(), keys.ca_fingerprint(), now_unix)
        .map_err(|e| e.to_string())?;
    if req.name.trim().is_empty() || req.name.chars().count() > NAME_CHARS_MAX {
        return Err(format!(
            "the node name must have 1 to {NAME_CHARS_MAX} characters"
        ));
    }
    Ok(token)
}

/// Spends one use of `token` in the control plane (deleting its record with the last one); the
/// audit log records the admission under the token's id.
async fn spend_use(
    control: &Control,
    token: &JoinToken,
    joiner: &str,
    now_ms: u64,
) -> Result<(), String> {
    let id = token.id_hex();
    let key = register_key(&id);
    for _ in 0..SPEND_TRIES {
        let current = control
            .read(|v| v.register(&key))
            .await
            .map_err(|e| format!("cannot check the join token now: {e}"))?;
        let Some(bytes) = current else {
            return Err(format!(
                "join token {id} was used up or revoked, or this cluster never made it"
            ));
        };
        let mut record: TokenRecord = postcard::from_bytes(&bytes)
            .map_err(|_| format!("join token {id} has an unreadable record"))?;
        if !token.matches(&record.secret_hash) {
            return Err(format!("join token {id} was not made by this cluster"));
        }
        if record.expires_at_unix <= now_ms / 1000 {
            return Err(format!("join token {id} has expired"));
        }
        let new = if record.uses_left <= 1 {
            None
        } else {
            record.uses_left -= 1;
            Some(postcard::to_stdvec(&record).unwrap_or_default())
        };
        let audit = Record::new(
            now_ms,
            format!("join-token:{id}"),
            "join.admit",
            joiner,
            "",
            Outcome::Allowed,
        );
        let command = Command::Cas {
            key: key.clone(),
            expected: Some(bytes),
            new,
        };
        match control.propose(Proposal::audited(command, audit)).await {
            Ok(Applied::Done) => return Ok(()),
            Ok(Applied::CasFailed { .. }) => continue,
            Ok(other) => return Err(format!("the control plane answered {other:?}")),
            Err(e) => return Err(format!("cannot spend the join token now: {e}")),
        }
    }
    Err(format!(
        "join token {id} is being used by many joiners at once; try again"
    ))
}

/// Tries each seed in turn until one admits us.
pub(crate) async fn join(
    token: &JoinToken,
    token_text: &str,
    seeds: &[SocketAddr],
    name: &str,
    key: &NodeKey,
) -> Result<Admission, JoinError> {
    let request = JoinRequest {
        token: token_text.trim().to_string(),
        name: name.to_string(),
        public_key: key.public_key_raw(),
    };
    let body = postcard::to_stdvec(&request).unwrap_or_default();
    let mut failures = Vec::new();
    for &seed in seeds {
        match noodle_link::join_call(seed, token.ca_fingerprint(), &body, Duration::from_secs(5))
            .await
        {
            Ok(answer) => match postcard::from_bytes::<JoinResponse>(&answer) {
                Ok(response) if response.cluster_id == token.cluster_id() => {
                    return Ok(Admission {
                        response,
                        via: seed,
                    });
                }
                Ok(_) => failures.push(format!("{seed}: answered for another cluster")),
                Err(e) => failures.push(format!("{seed}: unreadable answer ({e})")),
            },
            // A token that was used up, revoked or refused is refused by every member alike.
            Err(noodle_link::LinkError::Remote { addr, source })
                if source.code == RemoteError::FORBIDDEN =>
            {
                return Err(JoinError::Failed {
                    cluster: token.cluster_id().to_string(),
                    attempts: format!("{addr} refused: {}", source.message),
                });
            }
            Err(e) => failures.push(e.to_string()),
        }
    }
    Err(JoinError::Failed {
        cluster: token.cluster_id().to_string(),
        attempts: failures.join("; "),
    })
}

fn now_unix() -> u64 {
    noodle_host::now_ms() / 1000
}

/// Why a join-token request is refused.
#[derive(Debug, thiserror::Error)]
pub(crate) enum TokenRequestError {
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Control(#[from] ControlError),
    #[error("{0}")]
    Conflict(String),
}

/// The join tokens in the control plane, expired ones included, as (id, record).
async fn token_records(control: &Control) -> Result<Vec<(String, TokenRecord)>, ControlError> {
    let raw = control.read(|v| v.registers(TOKEN_REGISTER)).await?;
    Ok(raw
        .into_iter()
        .filter_map(|(id, bytes)| Some((id, postcard::from_bytes(&bytes).ok()?)))
        .collect())
}

/// Mints a join token and records it in the control plane; seeds are the alive members'
/// cluster addresses unless left out. Expired records are removed on the way.
pub(crate) async fn create_token(
    keys: &Keys,
    cluster: &ClusterState,
    control: &Control,
    authz: &noodle_host::Authz,
    actor: &Actor,
    req: &TokenRequest,
) -> Result<TokenResponse, TokenRequestError> {
    if req.uses == 0 || req.uses > TOKEN_USES_MAX {
        return Err(TokenRequestError::Invalid(format!(
            "--uses must be between 1 and {TOKEN_USES_MAX}"
        )));
    }
    let now = now_unix();
    let records = token_records(control).await?;
    let (expired, live): (Vec<_>, Vec<_>) = records
        .into_iter()
        .partition(|(_, r)| r.expires_at_unix <= now);
    if live.len() >= JOIN_TOKENS_MAX {
        return Err(TokenRequestError::Invalid(format!(
            "the cluster already holds {JOIN_TOKENS_MAX} unexpired join tokens; revoke some with `noodle token revoke`"
        )));
    }
    if !expired.is_empty() {
        let sweep = expired
            .into_iter()
            .map(|(id, r)| {
                Proposal::new(Command::Cas {
                    key: register_key(&id),
                    expected: Some(postcard::to_stdvec(&r).unwrap_or_default()),
                    new: None,
                })
            })
            .collect();
        let sweep = Proposal::new(Command::Batch(sweep));
        if let Err(e) = authz.propose(actor, sweep).await {
            tracing::debug!(error = %e, "removing expired join tokens");
        }
    }
    let seeds: Vec<SocketAddr> = if req.no_addresses {
        Vec::new()
    } else {
        let mut seeds = vec![cluster.advertise];
        seeds.extend(
            cluster
                .members_where(|s| s == noodle_api::NodeState::Alive)
                .into_iter()
                .map(|(_, addr)| addr)
                .take(TOKEN_SEEDS_MAX),
        );
        seeds
    };
    let expires = now.saturating_add(req.ttl_secs);
    let token = JoinToken::mint(
        keys.cluster_id(),
        keys.ca_fingerprint(),
        expires,
        seeds.clone(),
    );
    let id = token.id_hex();
    let record = TokenRecord {
        secret_hash: token.secret_hash(),
        uses_left: req.uses,
        expires_at_unix: expires,
        created_at_ms: noodle_host::now_ms(),
        created_by: actor.name.clone(),
    };
    let command = Command::Cas {
        key: register_key(&id),
        expected: None,
        new: Some(postcard::to_stdvec(&record).unwrap_or_default()),
    };
    match authz.write(actor, "token.create", &id, command).await? {
        Applied::Done => Ok(TokenResponse {
            token: token.encode(),
            id,
            uses: req.uses,
            expires_at_unix: expires,
            seeds: seeds.iter().map(ToString::to_string).collect(),
        }),
        other => Err(TokenRequestError::Conflict(format!(
            "could not record the join token: {other:?}"
        ))),
    }
}

/// The unexpired join tokens, oldest first.
pub(crate) async fn list_tokens(control: &Control) -> Result<Vec<JoinTokenInfo>, ControlError> {
    let now = now_unix();
    let mut tokens: Vec<JoinTokenInfo> = token_records(control)
        .await?
        .into_iter()
        .filter(|(_, r)| r.expires_at_unix > now)
        .map(|(id, r)| r.info(id))
        .collect();
    tokens.sort_by_key(|t| t.created_at_ms);
    Ok(tokens)
}

/// Revokes the join token `id`: no node admits anyone with it from then on.
pub(crate) async fn revoke_token(
    control: &Control,
    authz: &noodle_host::Authz,
    actor: &Actor,
    id: &str,
) -> Result<Option<JoinTokenInfo>, TokenRequestError> {
    if id.is_empty() || id.len() > 32 || !id.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(TokenRequestError::Invalid(format!(
            "`{}` is not a join token id (see `noodle token ls`)",
            sanitised(id, 40)
        )));
    }
    let key = register_key(id);
    for _ in 0..SPEND_TRIES {
        let Some(bytes) = control.read(|v| v.register(&key)).await? else {
            return Ok(None);
        };
        let Ok(record) = postcard::from_bytes::<TokenRecord>(&bytes) else {
            return Err(TokenRequestError::Conflict(format!(
                "join token {id} has an unreadable record"
            )));
        };
        let command = Command::Cas {
            key: key.clone(),
            expected: Some(bytes),
            new: None,
        };
        match authz.write(actor, "token.revoke", id, command).await? {
            Applied::Done => {
                return Ok(Some(record.info(id.to_string())));
            }
            Applied::CasFailed { .. } => continue,
            other => {
                return Err(TokenRequestError::Conflict(format!(
                    "could not revoke the join token: {other:?}"
                )));
            }
        }
    }
    Err(TokenRequestError::Conflict(format!(
        "join token {id} kept changing; try again"
    )))
}

/// What the member side of a join needs.
pub(crate) struct Admitter {
    pub(crate) keys: std::sync::Arc<Keys>,
    pub(crate) link: Link,
    pub(crate) cluster: std::sync::Arc<ClusterState>,
    pub(crate) control: Control,
    pub(crate) events: EventBus,
    pub(crate) limiter: std::sync::Mutex<JoinLimiter>,
}

impl Admitter {
    fn allowed(&self, source: IpAddr, now_ms: u64) -> Result<(), RemoteError> {
        let allowed = self
            .limiter
            .lock()
            .map(|mut l| l.allow(source, now_ms))
            .unwrap_or(false);
        if allowed {
            return Ok(());
        }
        // No event: a flood of attempts must not become a flood of events.
        metrics::counter!("noodle_join_limited_total").increment(1);
        Err(RemoteError::new(
            RemoteError::UNAVAILABLE,
            "too many join attempts from this address; wait a minute",
        ))
    }

    /// Answers a joiner: admits it here on a voter, through a voter otherwise.
    pub(crate) async fn handle(
        &self,
        peer: &JoinPeer,
        body: &[u8],
    ) -> Result<Vec<u8>, RemoteError> {
        let now = noodle_host::now_ms();
        self.allowed(peer.remote.ip(), now)?;
        let req: Option<JoinRequest> = postcard::from_bytes(body).ok();
        match self.admit(req.as_ref(), peer.remote, now).await {
            Ok(response) => {
                self.events.emit(
                    EventKind::JOIN_ADMITTED,
                    &response.node_id,
                    format!(
                        "{} ({}) from {}",
                        sanitised(req.as_ref().map_or("", |r| &r.name), NAME_CHARS_MAX),
                        response.node_id,
                        peer.remote
                    ),
                );
                Ok(postcard::to_stdvec(&response).unwrap_or_default())
            }
            Err(reason) => {
                metrics::counter!("noodle_join_refused_total").increment(1);
                let name = req
                    .as_ref()
                    .map_or(String::new(), |r| sanitised(&r.name, EVENT_FIELD_CHARS_MAX));
                self.events.emit(
                    EventKind::JOIN_REFUSED,
                    &peer.remote.to_string(),
                    format!(
                        "{name} from {}: {}",
                        peer.remote,
                        sanitised(&reason, 2 * EVENT_FIELD_CHARS_MAX)
                    ),
                );
                Err(RemoteError::new(RemoteError::FORBIDDEN, reason))
            }
        }
    }

    /// `node.admit`: a member hands this voter a joiner's request.
    pub(crate) async fn handle_forwarded(&self, body: &[u8]) -> Result<Vec<u8>, RemoteError> {
        let now = noodle_host::now_ms();
        let Ok(fwd) = postcard::from_bytes::<ForwardedJoin>(body) else {
            return Err(RemoteError::new(
                RemoteError::BAD_REQUEST,
                "unreadable forwarded join request",
            ));
        };
        self.allowed(fwd.joiner.ip(), now)?;
        if self.keys.ca().is_none() {
            return Err(RemoteError::new(
                RemoteError::UNAVAILABLE,
                "this node holds no CA key (only voters do)",
            ));
        }
        match self.admit(Some(&fwd.request), fwd.joiner, now).await {
            Ok(response) => Ok(postcard::to_stdvec(&response).unwrap_or_default()),
            Err(reason) => Err(RemoteError::new(RemoteError::FORBIDDEN, reason)),
        }
    }

    async fn admit(
        &self,
        req: Option<&JoinRequest>,
        joiner: SocketAddr,
        now_ms: u64,
    ) -> Result<JoinResponse, String> {
        let req = req.ok_or("unreadable join request")?;
        let token = check_request(&self.keys, req, now_ms / 1000)?;
        if self.keys.ca().is_none() {
            return self.through_a_voter(req, joiner).await;
        }
        let node_id = noodle_security::node_id_for_host(&req.name);
        spend_use(
            &self.control,
            &token,
            &format!("{node_id} from {joiner}"),
            now_ms,
        )
        .await?;
        let node_cert = self.keys.issue(&node_id, &req.public_key)?;
        let cluster = &self.cluster;
        let mut members = vec![(cluster.node_id.clone(), cluster.advertise)];
        members.extend(cluster.live_members());
        Ok(JoinResponse {
            cluster_id: cluster.cluster_id.clone(),
            node_id,
            ca_cert: self.keys.ca_cert().to_vec(),
            node_cert,
            observed_addr: joiner,
            members,
        })
    }

    /// Hands the request to the voters, the leader first, until one answers; a refusal is the
    /// answer.
    async fn through_a_voter(
        &self,
        req: &JoinRequest,
        joiner: SocketAddr,
    ) -> Result<JoinResponse, String> {
        let body = postcard::to_stdvec(&ForwardedJoin {
            request: req.clone(),
            joiner,
        })
        .unwrap_or_default();
        let mut failures = Vec::new();
        for (id, addr) in crate::keys::reachable_voters(&self.control, &self.cluster) {
            match self.link.request(addr, NODE_ADMIT, &body).await {
                Ok(answer) => {
                    return postcard::from_bytes(&answer)
                        .map_err(|_| format!("voter {id} answered unreadably"));
                }
                Err(noodle_link::LinkError::Remote { source, .. })
                    if source.code == RemoteError::FORBIDDEN =>
                {
                    return Err(source.message);
                }
                Err(e) => failures.push(format!("{id}: {e}")),
            }
        }
        Err(format!(
            "no voter could admit the joiner now: {}",
            if failures.is_empty() {
                "none is reachable".to_string()
            } else {
                failures.join("; ")
            }
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_source_gets_a_bounded_number_of_attempts_per_window() {
        let mut l = JoinLimiter::new();
        let a: IpAddr = [10, 0, 0, 1].into();
        let b: IpAddr = [10, 0, 0, 2].into();
        let t0 = 5_000_000;
        for _ in 0..JoinLimiter::PER_SOURCE_MAX {
            assert!(l.allow(a, t0));
        }
        assert!(!l.allow(a, t0 + 1), "over the per-source limit");
        assert!(l.allow(b, t0 + 1), "another source is not punished");
        assert!(
            !l.allow(a, t0 + JoinLimiter::WINDOW_MS - 1),
            "still the same window"
        );
        assert!(l.allow(a, t0 + JoinLimiter::WINDOW_MS), "a new window");
    }

    #[test]
    fn all_sources_together_are_bounded_and_so_is_the_map() {
        let mut l = JoinLimiter::new();
        let t0 = 1;
        let mut allowed = 0u32;
        for i in 0..(JoinLimiter::SOURCES_MAX as u32 + 1000) {
            if l.allow(IpAddr::from(i.to_be_bytes()), t0) {
                allowed += 1;
            }
        }
        assert_eq!(allowed, JoinLimiter::TOTAL_MAX);
        assert!(l.per_source.len() <= JoinLimiter::SOURCES_MAX);
    }

    #[test]
    fn a_joiners_words_are_sanitised_and_bounded() {
        assert_eq!(sanitised("host-1", 10), "host-1");
        assert_eq!(sanitised("a\u{1b}[31mb\nc", 20), "a?[31mb?c");
        assert_eq!(sanitised(&"x".repeat(100), 8), "xxxxxxxx…");
        assert_eq!(sanitised("ünï", 8), "?n?");
    }
}
