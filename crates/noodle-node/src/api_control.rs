//! API routes of the control plane: configuration, capability tokens, policies, audit log.
//! Each handler first names the right it needs ([`check`]).

use crate::api::{AppState, check, error};
use crate::control::{Actor, Caller, ControlPlane};
use axum::Extension;
use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
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

fn plane(shared: &AppState) -> Result<&ControlPlane, Response> {
    shared.control.get().map(|p| p.as_ref()).ok_or_else(|| {
        error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the control plane is starting; try again in a moment",
        )
    })
}

fn control_error(e: ControlError) -> Response {
    let status = match &e {
        ControlError::Rejected(_) => StatusCode::BAD_REQUEST,
        ControlError::NoLeader(_) | ControlError::Indeterminate(_) => {
            StatusCode::SERVICE_UNAVAILABLE
        }
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    error(status, &e.to_string())
}

/// Runs an authorised write and answers `ok` if the state machine applied it.
async fn write<T: serde::Serialize>(
    shared: &AppState,
    actor: &Actor,
    action: &str,
    target: &str,
    command: Command,
    ok: T,
) -> Response {
    let plane = match plane(shared) {
        Ok(p) => p,
        Err(r) => return r,
    };
    match plane.write(actor, action, target, command).await {
        Ok(Applied::Done) => Json(ok).into_response(),
        Ok(Applied::Rejected(why)) => error(StatusCode::BAD_REQUEST, &why),
        Ok(Applied::CasFailed { .. }) => error(StatusCode::CONFLICT, "the value changed meanwhile"),
        Ok(Applied::Batch(_)) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "the control plane answered a single write with a batch",
        ),
        Err(e) => control_error(e),
    }
}

pub(crate) async fn config_list(
    State(shared): State<AppState>,
    Extension(caller): Extension<Caller>,
) -> Response {
    if let Err(denied) = check(
        &shared,
        &caller,
        Request::new("config", "read"),
        "config.list",
        "",
    ) {
        return denied;
    }
    let plane = match plane(&shared) {
        Ok(p) => p,
        Err(r) => return r,
    };
    match plane.control.read(|v| v.config_list()).await {
        Ok(entries) => Json(ConfigList {
            entries: entries
                .into_iter()
                .map(|(key, value)| ConfigEntry { key, value })
                .collect(),
        })
        .into_response(),
        Err(e) => control_error(e),
    }
}

pub(crate) async fn config_get(
    State(shared): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(key): Path<String>,
) -> Response {
    let req = Request::new("config", "read").on(&key);
    if let Err(denied) = check(&shared, &caller, req, "config.get", &key) {
        return denied;
    }
    let plane = match plane(&shared) {
        Ok(p) => p,
        Err(r) => return r,
    };
    match plane.control.read(|v| v.config_get(&key)).await {
        Ok(Some(value)) => Json(ConfigEntry { key, value }).into_response(),
        Ok(None) => error(
            StatusCode::NOT_FOUND,
            &format!("config key {key:?} is not set"),
        ),
        Err(e) => control_error(e),
    }
}

pub(crate) async fn config_set(
    State(shared): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(key): Path<String>,
    body: axum::body::Bytes,
) -> Response {
    let actor = match check(
        &shared,
        &caller,
        Request::new("config", "write").on(&key),
        "config.set",
        &key,
    ) {
        Ok(a) => a,
        Err(denied) => return denied,
    };
    let value: ConfigValue = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => return error(StatusCode::BAD_REQUEST, &format!("bad config value: {e}")),
    };
    let ok = ConfigEntry {
        key: key.clone(),
        value: value.value.clone(),
    };
    let command = Command::ConfigSet {
        key: key.clone(),
        value: value.value,
    };
    if let Err(why) = command.validate() {
        return error(StatusCode::BAD_REQUEST, &why);
    }
    write(&shared, &actor, "config.set", &key, command, ok).await
}

pub(crate) async fn config_unset(
    State(shared): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(key): Path<String>,
) -> Response {
    let actor = match check(
        &shared,
        &caller,
        Request::new("config", "write").on(&key),
        "config.unset",
        &key,
    ) {
        Ok(a) => a,
        Err(denied) => return denied,
    };
    let ok = ConfigEntry {
        key: key.clone(),
        value: String::new(),
    };
    let command = Command::ConfigUnset { key: key.clone() };
    if let Err(why) = command.validate() {
        return error(StatusCode::BAD_REQUEST, &why);
    }
    write(&shared, &actor, "config.unset", &key, command, ok).await
}

pub(crate) async fn cap_create(
    State(shared): State<AppState>,
    Extension(caller): Extension<Caller>,
    body: axum::body::Bytes,
) -> Response {
    let actor = match check(
        &shared,
        &caller,
        Request::new("cap", "create"),
        "cap.create",
        "",
    ) {
        Ok(a) => a,
        Err(denied) => return denied,
    };
    let req: ApiCapRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                &format!("bad capability request: {e}"),
            );
        }
    };
    if req.ttl_secs == 0 || req.ttl_secs > CAP_TTL_SECS_MAX {
        return error(
            StatusCode::BAD_REQUEST,
            &format!("ttl must be between 1 s and {CAP_TTL_SECS_MAX} s"),
        );
    }
    let mut rights = Vec::new();
    for a in &req.allow {
        match a.parse::<Right>() {
            Ok(r) => rights.push(r),
            Err(e) => return error(StatusCode::BAD_REQUEST, &format!("--allow {a}: {e}")),
        }
    }
    let mut quotas = Vec::new();
    for q in &req.quotas {
        match q.parse::<Quota>() {
            Ok(q) => quotas.push(q),
            Err(e) => return error(StatusCode::BAD_REQUEST, &format!("--quota {q}: {e}")),
        }
    }
    // A token holder may hand out only rights it holds itself.
    for r in &rights {
        let mut wanted = Request::new(&r.subsystem, &r.action);
        if let Some(p) = &r.prefix {
            wanted = wanted.on(p);
        }
        if let Err(denied) = check(&shared, &caller, wanted, "cap.create", &r.to_string()) {
            return denied;
        }
    }
    let plane = match plane(&shared) {
        Ok(p) => p,
        Err(r) => return r,
    };
    let root = match plane.root_key() {
        Ok(k) => k,
        Err(e) => return error(StatusCode::SERVICE_UNAVAILABLE, &e),
    };
    let spec = TokenSpec {
        rights,
        quotas,
        ttl: Duration::from_secs(req.ttl_secs),
        holder: req.holder.clone(),
    };
    let token = match noodle_caps::mint(&root, &spec) {
        Ok(t) => t,
        Err(e) => return error(StatusCode::BAD_REQUEST, &e.to_string()),
    };
    let inspection = match noodle_caps::inspect(&token) {
        Ok(i) => i,
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    };
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
) -> Response {
    let req: RevokeRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                &format!("bad revocation request: {e}"),
            );
        }
    };
    let actor = match check(
        &shared,
        &caller,
        Request::new("cap", "revoke"),
        "cap.revoke",
        &req.id,
    ) {
        Ok(a) => a,
        Err(denied) => return denied,
    };
    let id = req.id.trim().to_ascii_lowercase();
    if id.is_empty() || id.len() > 256 || !id.chars().all(|c| c.is_ascii_hexdigit()) {
        return error(
            StatusCode::BAD_REQUEST,
            "a revocation id is the hex `id` that `noodle cap inspect` prints",
        );
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
) -> Response {
    if let Err(denied) = check(
        &shared,
        &caller,
        Request::new("policy", "read"),
        "policy.list",
        "",
    ) {
        return denied;
    }
    let plane = match plane(&shared) {
        Ok(p) => p,
        Err(r) => return r,
    };
    match plane.control.read(|v| v.policies()).await {
        Ok(list) => Json(PolicyList {
            policies: list
                .into_iter()
                .map(|(name, source)| PolicyEntry { name, source })
                .collect(),
        })
        .into_response(),
        Err(e) => control_error(e),
    }
}

pub(crate) async fn policy_add(
    State(shared): State<AppState>,
    Extension(caller): Extension<Caller>,
    body: axum::body::Bytes,
) -> Response {
    let entry: PolicyEntry = match serde_json::from_slice(&body) {
        Ok(e) => e,
        Err(e) => return error(StatusCode::BAD_REQUEST, &format!("bad policy request: {e}")),
    };
    let actor = match check(
        &shared,
        &caller,
        Request::new("policy", "write"),
        "policy.add",
        &entry.name,
    ) {
        Ok(a) => a,
        Err(denied) => return denied,
    };
    if let Err(e) = Policy::parse(&entry.name, &entry.source) {
        return error(StatusCode::BAD_REQUEST, &e.to_string());
    }
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
) -> Response {
    let actor = match check(
        &shared,
        &caller,
        Request::new("policy", "write"),
        "policy.remove",
        &name,
    ) {
        Ok(a) => a,
        Err(denied) => return denied,
    };
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
) -> Response {
    if let Err(denied) = check(
        &shared,
        &caller,
        Request::new("audit", "read"),
        "audit.read",
        "",
    ) {
        return denied;
    }
    let plane = match plane(&shared) {
        Ok(p) => p,
        Err(r) => return r,
    };
    let limit = q.limit.unwrap_or(AUDIT_PAGE_MAX).min(AUDIT_PAGE_MAX) as usize;
    let from = q.from.max(1);
    match plane
        .control
        .read(|v| Ok((v.audit_entries(from, limit)?, v.audit_chain()?.head().0)))
        .await
    {
        Ok((entries, head_seq)) => Json(AuditPage {
            entries: entries.iter().map(entry_view).collect(),
            head_seq,
        })
        .into_response(),
        Err(e) => control_error(e),
    }
}

pub(crate) async fn audit_verify(
    State(shared): State<AppState>,
    Extension(caller): Extension<Caller>,
) -> Response {
    if let Err(denied) = check(
        &shared,
        &caller,
        Request::new("audit", "read"),
        "audit.verify",
        "",
    ) {
        return denied;
    }
    let plane = match plane(&shared) {
        Ok(p) => p,
        Err(r) => return r,
    };
    match plane.verify_audit() {
        Ok(report) => Json(report).into_response(),
        Err(e) => control_error(e),
    }
}
