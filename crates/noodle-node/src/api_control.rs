//! API routes of the control plane: configuration, capability tokens, policies, audit log.
//! Each handler first names the right it needs ([`check`]).

use crate::api::{ApiResult, AppState, Refusal, check, parse_body};
use crate::control::{Actor, Caller, ControlPlane};
use axum::Extension;
use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use noodle_api::{
    AuditEntry, AuditPage, CapRequest as ApiCapRequest, CapResponse, ConfigEntry, ConfigList,
    ConfigValue, PolicyEntry, PolicyList, RevokeRequest,
};
use noodle_caps::{Policy, Quota, Request, Right, TokenSpec};
use noodle_control::{Command, ControlError, Response as Applied};
use std::time::Duration;

/// Longest capability-token lifetime the API mints.
const CAP_TTL_SECS_MAX: u64 = 365 * 24 * 3600;
/// Most audit entries one page returns.
const AUDIT_PAGE_MAX: u32 = 1000;

pub(crate) fn plane(shared: &AppState) -> Result<&std::sync::Arc<ControlPlane>, Refusal> {
    shared.control.get().ok_or_else(|| {
        Refusal::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "the control plane is starting; try again in a moment",
        )
    })
}

pub(crate) fn control_error(e: ControlError) -> Refusal {
    let status = match &e {
        ControlError::Rejected(_) => StatusCode::BAD_REQUEST,
        ControlError::NoLeader(_) | ControlError::Indeterminate(_) => {
            StatusCode::SERVICE_UNAVAILABLE
        }
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    Refusal::new(status, e.to_string())
}

pub(crate) fn bad_request(message: impl Into<String>) -> Refusal {
    Refusal::new(StatusCode::BAD_REQUEST, message)
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
    command.validate().map_err(bad_request)?;
    let applied = plane(shared)?
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

pub(crate) async fn config_list(
    State(shared): State<AppState>,
    Extension(caller): Extension<Caller>,
) -> ApiResult {
    check(
        &shared,
        &caller,
        Request::new("config", "read"),
        "config.list",
        "",
    )?;
    let entries = plane(&shared)?
        .control
        .read(|v| v.config_list())
        .await
        .map_err(control_error)?;
    Ok(Json(ConfigList {
        entries: entries
            .into_iter()
            .map(|(key, value)| ConfigEntry { key, value })
            .collect(),
    })
    .into_response())
}

pub(crate) async fn config_get(
    State(shared): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(key): Path<String>,
) -> ApiResult {
    let read = Request::new("config", "read").on(&key);
    check(&shared, &caller, read, "config.get", &key)?;
    let value = plane(&shared)?
        .control
        .read(|v| v.config_get(&key))
        .await
        .map_err(control_error)?
        .ok_or_else(|| {
            Refusal::new(
                StatusCode::NOT_FOUND,
                format!("config key {key:?} is not set"),
            )
        })?;
    Ok(Json(ConfigEntry { key, value }).into_response())
}

pub(crate) async fn config_set(
    State(shared): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(key): Path<String>,
    body: axum::body::Bytes,
) -> ApiResult {
    let write_key = Request::new("config", "write").on(&key);
    let actor = check(&shared, &caller, write_key, "config.set", &key)?;
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

pub(crate) async fn config_unset(
    State(shared): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(key): Path<String>,
) -> ApiResult {
    let write_key = Request::new("config", "write").on(&key);
    let actor = check(&shared, &caller, write_key, "config.unset", &key)?;
    let ok = ConfigEntry {
        key: key.clone(),
        value: String::new(),
    };
    let command = Command::ConfigUnset { key: key.clone() };
    write(&shared, &actor, "config.unset", &key, command, ok).await
}

pub(crate) async fn cap_create(
    State(shared): State<AppState>,
    Extension(caller): Extension<Caller>,
    body: axum::body::Bytes,
) -> ApiResult {
    let actor = check(
        &shared,
        &caller,
        Request::new("cap", "create"),
        "cap.create",
        "",
    )?;
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
        check(&shared, &caller, wanted, "cap.create", &r.to_string())?;
    }
    let root = plane(&shared)?
        .root_key()
        .map_err(|e| Refusal::new(StatusCode::SERVICE_UNAVAILABLE, e))?;
    let spec = TokenSpec {
        rights,
        quotas,
        ttl: Duration::from_secs(req.ttl_secs),
        holder: req.holder.clone(),
    };
    let token = noodle_caps::mint(&root, &spec).map_err(|e| bad_request(e.to_string()))?;
    let inspection = noodle_caps::inspect(&token)
        .map_err(|e| Refusal::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    let target = format!("{} {}", inspection.id, req.allow.join(","));
    let ok = CapResponse {
        token,
        id: inspection.id.clone(),
        expires_at_unix: inspection.expires_at.map_or(0, |t| t.max(0) as u64),
    };
    // Minting changes no state, but it is recorded.
    write(&shared, &actor, "cap.create", &target, Command::Nothing, ok).await
}

pub(crate) async fn cap_revoke(
    State(shared): State<AppState>,
    Extension(caller): Extension<Caller>,
    body: axum::body::Bytes,
) -> ApiResult {
    let req: RevokeRequest = parse_body(&body, "revocation request")?;
    let revoke = Request::new("cap", "revoke");
    let actor = check(&shared, &caller, revoke, "cap.revoke", &req.id)?;
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

pub(crate) async fn policy_list(
    State(shared): State<AppState>,
    Extension(caller): Extension<Caller>,
) -> ApiResult {
    check(
        &shared,
        &caller,
        Request::new("policy", "read"),
        "policy.list",
        "",
    )?;
    let list = plane(&shared)?
        .control
        .read(|v| v.policies())
        .await
        .map_err(control_error)?;
    Ok(Json(PolicyList {
        policies: list
            .into_iter()
            .map(|(name, source)| PolicyEntry { name, source })
            .collect(),
    })
    .into_response())
}

pub(crate) async fn policy_add(
    State(shared): State<AppState>,
    Extension(caller): Extension<Caller>,
    body: axum::body::Bytes,
) -> ApiResult {
    let entry: PolicyEntry = parse_body(&body, "policy request")?;
    let write_policy = Request::new("policy", "write");
    let actor = check(&shared, &caller, write_policy, "policy.add", &entry.name)?;
    Policy::parse(&entry.name, &entry.source).map_err(|e| bad_request(e.to_string()))?;
    let command = Command::PolicySet {
        name: entry.name.clone(),
        source: entry.source.clone(),
    };
    let target = entry.name.clone();
    write(&shared, &actor, "policy.add", &target, command, entry).await
}

pub(crate) async fn policy_remove(
    State(shared): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
) -> ApiResult {
    let write_policy = Request::new("policy", "write");
    let actor = check(&shared, &caller, write_policy, "policy.remove", &name)?;
    let ok = PolicyEntry {
        name: name.clone(),
        source: String::new(),
    };
    let command = Command::PolicyRemove { name: name.clone() };
    write(&shared, &actor, "policy.remove", &name, command, ok).await
}

#[derive(serde::Deserialize)]
pub(crate) struct AuditQuery {
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

pub(crate) async fn audit(
    State(shared): State<AppState>,
    Extension(caller): Extension<Caller>,
    Query(q): Query<AuditQuery>,
) -> ApiResult {
    check(
        &shared,
        &caller,
        Request::new("audit", "read"),
        "audit.read",
        "",
    )?;
    let limit = q.limit.unwrap_or(AUDIT_PAGE_MAX).min(AUDIT_PAGE_MAX) as usize;
    let from = q.from.max(1);
    let (entries, head_seq) = plane(&shared)?
        .control
        .read(|v| Ok((v.audit_entries(from, limit)?, v.audit_chain()?.head().0)))
        .await
        .map_err(control_error)?;
    Ok(Json(AuditPage {
        entries: entries.iter().map(entry_view).collect(),
        head_seq,
    })
    .into_response())
}

pub(crate) async fn audit_verify(
    State(shared): State<AppState>,
    Extension(caller): Extension<Caller>,
) -> ApiResult {
    check(
        &shared,
        &caller,
        Request::new("audit", "read"),
        "audit.verify",
        "",
    )?;
    let report = plane(&shared)?.verify_audit().map_err(control_error)?;
    Ok(Json(report).into_response())
}
