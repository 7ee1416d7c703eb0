//! The control plane as a subsystem of the node: its members' RPC methods (`raft.*`,
//! `control.*`) and its API routes: configuration, capability tokens, policies, audit log.
//! Each handler first names the right it needs ([`check`]).

use crate::control::ControlPlane;
use axum::Extension;
use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{delete, get, post};
use bytes::Bytes;
use noodle_api::{
    AuditEntry, AuditPage, CapRequest as ApiCapRequest, CapResponse, ConfigEntry, ConfigList,
    ConfigValue, PolicyEntry, PolicyList, RevokeRequest,
};
use noodle_caps::{Policy, Quota, Request, Right, TokenSpec};
use noodle_control::{Command, Response as Applied};
use noodle_host::api::{ApiResult, Refusal, Routes, bad_request, check, control_error, parse_body};
use noodle_host::{Actor, Authz, Caller, Permission, RunningSubsystem};
use noodle_link::Peer;
use noodle_link::{RemoteError, ServiceFuture};
use std::sync::Arc;
use std::time::Duration;

/// Longest capability-token lifetime the API mints.
const CAP_TTL_SECS_MAX: u64 = 365 * 24 * 3600;
/// Most audit entries one page returns.
const AUDIT_PAGE_MAX: u32 = 1000;

/// The control plane's part of the node: what its handlers share.
pub(crate) struct ControlApi {
    pub(crate) plane: Arc<ControlPlane>,
    pub(crate) authz: Arc<Authz>,
    /// The root key, which this node holds while it is a voter.
    pub(crate) keys: Arc<crate::keys::Keys>,
}

type AppState = Arc<ControlApi>;

impl RunningSubsystem for ControlApi {
    fn name(&self) -> &'static str {
        "control"
    }

    fn rpc_prefixes(&self) -> &'static [&'static str] {
        &["raft.", "control."]
    }

    fn call(&self, from: Peer, method: &str, body: Bytes) -> ServiceFuture {
        let control = self.plane.control.clone();
        let method = method.to_string();
        Box::pin(async move {
            control
                .serve(&from.node_id, &method, &body)
                .await
                .ok_or_else(|| {
                    RemoteError::new(RemoteError::NOT_FOUND, format!("unknown method `{method}`"))
                })
        })
    }

    fn routes(self: Arc<Self>) -> Routes {
        Routes::new()
            .route("/v1/config", get(config_list))
            .route(
                "/v1/config/{*key}",
                get(config_get).put(config_set).delete(config_unset),
            )
            .route("/v1/caps", post(cap_create))
            .route("/v1/caps/revoke", post(cap_revoke))
            .route("/v1/policies", get(policy_list).post(policy_add))
            .route("/v1/policies/{name}", delete(policy_remove))
            .route("/v1/audit", get(audit))
            .route("/v1/audit/verify", get(audit_verify))
            .with_state(self)
    }
}

impl ControlApi {
    /// Checks that `caller` may make `request` (see [`check`]).
    fn check(
        &self,
        caller: &Caller,
        request: impl Into<Request>,
        action: &str,
        target: &str,
    ) -> Result<Actor, Refusal> {
        check(&self.authz, caller, request, action, target)
    }

    /// A linearizable read of the replicated state.
    async fn read<T>(
        &self,
        f: impl FnOnce(&noodle_control::StateView) -> Result<T, noodle_control::DbError>,
    ) -> Result<T, Refusal> {
        self.plane.control.read(f).await.map_err(control_error)
    }
}

/// Runs an authorised, audited write and answers `ok` once the state machine applied it.
async fn write<T: serde::Serialize>(
    shared: &AppState,
    actor: &Actor,
    action: &str,
    target: &str,
    command: Command,
    ok: T,
) -> ApiResult {
    command.validate().map_err(|e| bad_request(e.0))?;
    let applied = shared
        .authz
        .write(actor, action, target, command)
        .await
        .map_err(control_error)?;
    match applied {
        Applied::Done => Ok(Json(ok).into_response()),
        Applied::Rejected(why) => Err(bad_request(why)),
        Applied::CasFailed { .. } => Err(Refusal::new(
            StatusCode::CONFLICT,
            "the value changed meanwhile",
        )),
        Applied::Batch(_) | Applied::Created { .. } => Err(Refusal::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "the control plane gave an answer this request cannot have",
        )),
    }
}

async fn config_list(
    State(shared): State<AppState>,
    Extension(caller): Extension<Caller>,
) -> ApiResult {
    shared.check(&caller, Permission::CONFIG_READ, "config.list", "")?;
    let entries = shared.read(|v| v.config_list()).await?;
    let entries = entries
        .into_iter()
        .map(|(key, value)| ConfigEntry { key, value });
    Ok(Json(ConfigList {
        entries: entries.collect(),
    })
    .into_response())
}

async fn config_get(
    State(shared): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(key): Path<String>,
) -> ApiResult {
    let read = Permission::CONFIG_READ.on(&key);
    shared.check(&caller, read, "config.get", &key)?;
    let value = shared.read(|v| v.config_get(&key)).await?.ok_or_else(|| {
        Refusal::new(
            StatusCode::NOT_FOUND,
            format!("config key {key:?} is not set"),
        )
    })?;
    Ok(Json(ConfigEntry { key, value }).into_response())
}

async fn config_set(
    State(shared): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(key): Path<String>,
    body: axum::body::Bytes,
) -> ApiResult {
    let write_key = Permission::CONFIG_WRITE.on(&key);
    let actor = shared.check(&caller, write_key, "config.set", &key)?;
    let value: ConfigValue = parse_body(&body, "config value")?;
    let ok = ConfigEntry {
        key: key.clone(),
        value: value.value.clone(),
    };
    let command = Command::ConfigSet {
        key: key.clone(),
        value: value.value,
    };
    write(&shared, &actor, "config.set", &key, command, ok).await
}

async fn config_unset(
    State(shared): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(key): Path<String>,
) -> ApiResult {
    let write_key = Permission::CONFIG_WRITE.on(&key);
    let actor = shared.check(&caller, write_key, "config.unset", &key)?;
    let ok = ConfigEntry {
        key: key.clone(),
        value: String::new(),
    };
    let command = Command::ConfigUnset { key: key.clone() };
    write(&shared, &actor, "config.unset", &key, command, ok).await
}

async fn cap_create(
    State(shared): State<AppState>,
    Extension(caller): Extension<Caller>,
    body: axum::body::Bytes,
) -> ApiResult {
    let actor = shared.check(&caller, Permission::CAP_CREATE, "cap.create", "")?;
    let req: ApiCapRequest = parse_body(&body, "capability request")?;
    if req.ttl_secs == 0 || req.ttl_secs > CAP_TTL_SECS_MAX {
        return Err(bad_request(format!(
            "ttl must be between 1 s and {CAP_TTL_SECS_MAX} s"
        )));
    }
    let rights = req
        .allow
        .iter()
        .map(|a| {
            a.parse::<Right>()
                .map_err(|e| bad_request(format!("--allow {a}: {e}")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let quotas = req
        .quotas
        .iter()
        .map(|q| {
            q.parse::<Quota>()
                .map_err(|e| bad_request(format!("--quota {q}: {e}")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    // A token holder may hand out only rights it holds itself.
    for r in &rights {
        let mut wanted = Request::new(&r.subsystem, &r.action);
        if let Some(p) = &r.prefix {
            wanted = wanted.on(p);
        }
        shared.check(&caller, wanted, "cap.create", &r.to_string())?;
    }
    let ttl = Duration::from_secs(req.ttl_secs);
    let token = match &caller {
        // The admin mints with the cluster's root key.
        Caller::Admin => {
            let root = shared.keys.root().ok_or_else(|| {
                Refusal::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "this node holds no capability root key yet (only voters do, and a new \
                     voter receives it within seconds): mint on a voter",
                )
            })?;
            let spec = TokenSpec {
                rights,
                quotas,
                ttl,
                holder: req.holder.clone(),
            };
            noodle_caps::mint(&root, &spec).map_err(|e| bad_request(e.to_string()))?
        }
        // A token holder hands on a narrowing of its own token: the child keeps the parent's
        // quotas and holder, expires no later, and is revoked with it. Nothing about it can
        // be wider than the token that asked for it.
        Caller::Token(parent) => {
            if !quotas.is_empty() {
                return Err(bad_request(
                    "a token handed on keeps its parent's quotas: --quota is for tokens the admin mints",
                ));
            }
            noodle_caps::attenuate(parent, &rights, Some(ttl))
                .map_err(|e| bad_request(e.to_string()))?
        }
    };
    let inspection = noodle_caps::inspect(&token)
        .map_err(|e| Refusal::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    let mut target = format!("{} {}", inspection.id, req.allow.join(","));
    if let (Caller::Token(_), Some(holder)) = (&caller, &req.holder) {
        target.push_str(&format!(" for {holder}"));
    }
    let ok = CapResponse {
        token,
        id: inspection.id.clone(),
        expires_at_unix: inspection.expires_at.map_or(0, |t| t.max(0) as u64),
    };
    // Minting changes no state, but it is recorded.
    write(&shared, &actor, "cap.create", &target, Command::Nothing, ok).await
}

async fn cap_revoke(
    State(shared): State<AppState>,
    Extension(caller): Extension<Caller>,
    body: axum::body::Bytes,
) -> ApiResult {
    let req: RevokeRequest = parse_body(&body, "revocation request")?;
    let revoke = Permission::CAP_REVOKE;
    let actor = shared.check(&caller, revoke, "cap.revoke", &req.id)?;
    let id = req.id.trim().to_ascii_lowercase();
    if id.is_empty() || id.len() > 256 || !id.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(bad_request(
            "a revocation id is the hex `id` that `noodle cap inspect` prints",
        ));
    }
    let command = Command::Revoke { id: id.clone() };
    write(
        &shared,
        &actor,
        "cap.revoke",
        &id,
        command,
        RevokeRequest { id: id.clone() },
    )
    .await
}

async fn policy_list(
    State(shared): State<AppState>,
    Extension(caller): Extension<Caller>,
) -> ApiResult {
    shared.check(&caller, Permission::POLICY_READ, "policy.list", "")?;
    let list = shared.read(|v| v.policies()).await?;
    Ok(Json(PolicyList {
        policies: list
            .into_iter()
            .map(|(name, source)| PolicyEntry { name, source })
            .collect(),
    })
    .into_response())
}

async fn policy_add(
    State(shared): State<AppState>,
    Extension(caller): Extension<Caller>,
    body: axum::body::Bytes,
) -> ApiResult {
    let entry: PolicyEntry = parse_body(&body, "policy request")?;
    let write_policy = Permission::POLICY_WRITE;
    let actor = shared.check(&caller, write_policy, "policy.add", &entry.name)?;
    Policy::parse(&entry.name, &entry.source).map_err(|e| bad_request(e.to_string()))?;
    let command = Command::PolicySet {
        name: entry.name.clone(),
        source: entry.source.clone(),
    };
    let target = entry.name.clone();
    write(&shared, &actor, "policy.add", &target, command, entry).await
}

async fn policy_remove(
    State(shared): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
) -> ApiResult {
    let write_policy = Permission::POLICY_WRITE;
    let actor = shared.check(&caller, write_policy, "policy.remove", &name)?;
    let ok = PolicyEntry {
        name: name.clone(),
        source: String::new(),
    };
    let command = Command::PolicyRemove { name: name.clone() };
    write(&shared, &actor, "policy.remove", &name, command, ok).await
}

#[derive(serde::Deserialize)]
struct AuditQuery {
    #[serde(default)]
    from: u64,
    limit: Option<u32>,
}

fn entry_view(e: &noodle_audit::Entry) -> AuditEntry {
    let (outcome, reason) = match &e.record.outcome {
        noodle_audit::Outcome::Allowed => ("allowed", None),
        noodle_audit::Outcome::Denied { reason } => ("denied", Some(reason.clone())),
        noodle_audit::Outcome::Failed { reason } => ("failed", Some(reason.clone())),
    };
    AuditEntry {
        seq: e.seq,
        at_ms: e.record.at_ms,
        actor: e.record.actor.clone(),
        action: e.record.action.clone(),
        target: e.record.target.clone(),
        right: e.record.right.clone(),
        outcome: outcome.into(),
        reason,
        hash: hex::encode(e.hash),
    }
}

async fn audit(
    State(shared): State<AppState>,
    Extension(caller): Extension<Caller>,
    Query(q): Query<AuditQuery>,
) -> ApiResult {
    shared.check(&caller, Permission::AUDIT_READ, "audit.read", "")?;
    let limit = q.limit.unwrap_or(AUDIT_PAGE_MAX).min(AUDIT_PAGE_MAX) as usize;
    let from = q.from.max(1);
    let (entries, head_seq) = shared
        .read(|v| Ok((v.audit_entries(from, limit)?, v.audit_chain()?.head().0)))
        .await?;
    Ok(Json(AuditPage {
        entries: entries.iter().map(entry_view).collect(),
        head_seq,
    })
    .into_response())
}

async fn audit_verify(
    State(shared): State<AppState>,
    Extension(caller): Extension<Caller>,
) -> ApiResult {
    shared.check(&caller, Permission::AUDIT_READ, "audit.verify", "")?;
    let report = shared
        .plane
        .control
        .read_local(noodle_host::verify_audit)
        .map_err(control_error)?;
    Ok(Json(report).into_response())
}
