//! Snapshots of a prefix (`noodle snapshot create|ls|rm`, `noodle get PATH --snapshot S`):
//! a record in the fabric's replicated state of the moment it was taken; each path under the
//! prefix reads as the version it showed then ([`crate::machine::FabricView::version_at`]).
//! Creating or removing one needs `fabric:write` on its prefix, listing needs `fabric:read`.

use crate::api::{AppState, prefix_of};
use crate::machine::{FabricCommand, Snapshot, Version};
use crate::path::ObjectPath;
use crate::subsystem::{FabricNode, READ, WRITE};
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::{Extension, Json};
use noodle_api::fabric::{FabricSnapshot, FabricSnapshotCreate, FabricSnapshots};
use noodle_host::Caller;
use noodle_host::api::{ApiResult, Refusal, parse_body};

/// Snapshots one list answers at most.
const LISTED_MAX: usize = 10_000;

fn info(s: &Snapshot) -> FabricSnapshot {
    FabricSnapshot {
        id: s.id,
        prefix: s.prefix.clone(),
        creator: s.creator.clone(),
        created_at_ms: s.at_ms,
    }
}

async fn snapshot(state: &FabricNode, id: u64) -> Result<Snapshot, Refusal> {
    state
        .read(move |v| v.snapshot(id))
        .await?
        .ok_or_else(|| Refusal::new(StatusCode::NOT_FOUND, format!("there is no snapshot {id}")))
}

/// The version `path` showed in snapshot `id`.
pub(crate) async fn version_in(
    state: &FabricNode,
    path: &ObjectPath,
    id: u64,
) -> Result<Version, Refusal> {
    let snap = snapshot(state, id).await?;
    let not_in = || {
        Refusal::new(
            StatusCode::NOT_FOUND,
            format!("{path} is not in snapshot {id} (of {})", snap.prefix),
        )
    };
    if !path.as_str().starts_with(&snap.prefix) {
        return Err(not_in());
    }
    let found = state.read(|v| v.version_at(path, &snap)).await?;
    found.filter(|v| v.content.is_some()).ok_or_else(not_in)
}

/// `POST /v1/fabric/snapshots`.
pub(crate) async fn create(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    body: Bytes,
) -> ApiResult {
    let req: FabricSnapshotCreate = parse_body(&body, "snapshot")?;
    let prefix = prefix_of(&req.prefix)?;
    let actor = state.check(&caller, WRITE, "fabric.snapshot", prefix.as_str())?;
    let command = FabricCommand::Snapshot {
        prefix: prefix.to_string(),
        creator: actor.name.clone(),
        at_ms: noodle_host::now_ms(),
    };
    let id = state
        .write(&actor, "fabric.snapshot", prefix.as_str(), &command)
        .await?
        .ok_or_else(|| crate::api::internal("a snapshot without an id"))?;
    let snap = snapshot(&state, id).await?;
    Ok((StatusCode::CREATED, Json(info(&snap))).into_response())
}

#[derive(serde::Deserialize)]
pub(crate) struct ListQuery {
    prefix: Option<String>,
}

/// `GET /v1/fabric/snapshots?prefix=P`: the snapshots of prefixes under `P`.
pub(crate) async fn list(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Query(q): Query<ListQuery>,
) -> ApiResult {
    let prefix = prefix_of(q.prefix.as_deref().unwrap_or("/"))?;
    state.check(&caller, READ, "fabric.snapshots", prefix.as_str())?;
    let all = state.read(|v| v.snapshots(LISTED_MAX)).await?;
    let snapshots = all
        .iter()
        .filter(|s| s.prefix.starts_with(prefix.as_str()))
        .map(info)
        .collect();
    Ok(Json(FabricSnapshots { snapshots }).into_response())
}

/// `DELETE /v1/fabric/snapshots/{id}`.
pub(crate) async fn remove(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<u64>,
) -> ApiResult {
    let snap = snapshot(&state, id).await?;
    let actor = state.check(&caller, WRITE, "fabric.snapshot.rm", &snap.prefix)?;
    let command = FabricCommand::RemoveSnapshot { id };
    state
        .write(&actor, "fabric.snapshot.rm", &snap.prefix, &command)
        .await?;
    Ok(Json(info(&snap)).into_response())
}
