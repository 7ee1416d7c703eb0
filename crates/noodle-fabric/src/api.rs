//! The fabric's routes under `/v1/fabric`: uploading chunks for a path, making them a version
//! (replicated before it is acknowledged), reading a version's chunks (from this node, or
//! fetched from a replica and kept), listing, versions, removal and tag queries. Every handler
//! checks `fabric:read` or `fabric:write` on the path or prefix first; writes are audited.

use crate::machine::{self, Content, FabricCommand, FabricView, Version, VersionId};
use crate::path::{ObjectPath, Prefix};
use crate::replication::PutPlan;
use crate::subsystem::{FabricNode, OBJECT_WRITTEN, READ, WRITE, WRITE_CONFLICT, replicate_to};
use crate::{Hlc, chunks::StoreError};
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{get, post, put};
use axum::{Extension, Json};
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use noodle_api::ChunkIds;
use noodle_api::fabric::{FabricList, FabricObject, FabricPut};
use noodle_chunks::{ChunkError, ChunkId, Manifest};
use noodle_control::{DbError, Proposal, Response as Applied};
use noodle_host::api::{ApiResult, Refusal, Routes, bad_request, check, control_error, parse_body};
use noodle_host::{Actor, Caller, Permission};
use std::collections::BTreeMap;
use std::sync::Arc;

pub(crate) type AppState = Arc<FabricNode>;

/// Bytes a small object may have to be put or read in one request (`/v1/fabric/data`).
pub(crate) const INLINE_MAX: usize = noodle_api::fabric::INLINE_MAX;
/// Objects one list or query answers at most.
const LIST_MAX: usize = 1000;
/// Paths with the first tag a query looks at, at most (the other tags are checked on each).
const QUERY_SCAN_MAX: usize = 100_000;
/// How long a put waits for the details (free disk) of nodes that just joined.
const NODE_DETAILS_WAIT: std::time::Duration = std::time::Duration::from_secs(3);

pub(crate) fn routes(state: AppState) -> Routes {
    let chunk_limit = noodle_chunks::MAX_MANIFEST_BYTES.max(noodle_chunks::MAX_CHUNK_BYTES);
    Routes::new()
        .route("/v1/fabric/chunks/missing", post(chunks_missing))
        .route(
            "/v1/fabric/chunks/{id}",
            put(put_chunk)
                .get(get_chunk)
                .layer(axum::extract::DefaultBodyLimit::max(chunk_limit)),
        )
        .route(
            "/v1/fabric/objects/{*path}",
            get(get_object).put(put_object).delete(remove_object),
        )
        .route(
            "/v1/fabric/data/{*path}",
            get(get_data)
                .put(put_data)
                .layer(axum::extract::DefaultBodyLimit::max(INLINE_MAX)),
        )
        .route("/v1/fabric/versions/{*path}", get(versions))
        .route("/v1/fabric/list", get(list))
        .route("/v1/fabric/query", get(query))
        .route("/v1/fabric/vectors/{*path}", put(crate::near::set_vector))
        .route("/v1/fabric/near", post(crate::near::near))
        .route(
            "/v1/fabric/snapshots",
            post(crate::snapshots::create).get(crate::snapshots::list),
        )
        .route(
            "/v1/fabric/snapshots/{id}",
            axum::routing::delete(crate::snapshots::remove),
        )
        .with_state(state)
}

fn object_path(text: &str) -> Result<ObjectPath, Refusal> {
    ObjectPath::parse(text).map_err(|e| bad_request(format!("{text:?}: {e}")))
}

/// A route's wildcard path (without its leading `/`) as an object path.
pub(crate) fn routed_path(rest: &str) -> Result<ObjectPath, Refusal> {
    object_path(&format!("/{rest}"))
}

fn store_error(e: StoreError) -> Refusal {
    let status = StatusCode::from_u16(e.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    Refusal::new(status, e.to_string())
}

pub(crate) fn internal(e: impl std::fmt::Display) -> Refusal {
    Refusal::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
}

/// `WALL.LOGICAL.NODE`.
fn version_text(id: &VersionId) -> String {
    format!("{}.{}.{}", id.hlc.wall_ms, id.hlc.logical, id.node)
}

fn parse_version(text: &str) -> Result<VersionId, Refusal> {
    let bad = || bad_request(format!("{text:?} is not a version (see `noodle versions`)"));
    let mut parts = text.splitn(3, '.');
    let wall_ms = parts.next().and_then(|p| p.parse().ok()).ok_or_else(bad)?;
    let logical = parts.next().and_then(|p| p.parse().ok()).ok_or_else(bad)?;
    let node = parts.next().filter(|n| !n.is_empty()).ok_or_else(bad)?;
    Ok(VersionId {
        hlc: Hlc { wall_ms, logical },
        node: node.to_string(),
    })
}

pub(crate) fn object_info(path: &ObjectPath, v: &Version) -> FabricObject {
    let (exists, size, manifest, replicas) = match &v.content {
        Some(c) => (
            true,
            c.size,
            ChunkId(c.manifest).to_hex(),
            c.replicas.clone(),
        ),
        None => (false, 0, String::new(), Vec::new()),
    };
    FabricObject {
        path: path.to_string(),
        version: version_text(&v.id),
        exists,
        size,
        manifest,
        tags: v.tags.clone(),
        creator: v.creator.clone(),
        replicas,
        in_records: v.content.as_ref().is_some_and(|c| c.bytes.is_some()),
    }
}

impl FabricNode {
    /// Checks that `caller` holds `permission` on `target`, the path or prefix acted on.
    pub(crate) fn check(
        &self,
        caller: &Caller,
        permission: Permission,
        action: &str,
        target: &str,
    ) -> Result<Actor, Refusal> {
        check(
            &self.host.authz,
            caller,
            permission.on(target),
            action,
            target,
        )
    }

    /// `node`'s address; a node that just joined may not have heard of it yet, so an unknown
    /// one is waited for a moment ([`NODE_DETAILS_WAIT`]).
    pub(crate) async fn peer_addr_soon(&self, node: &str) -> Option<std::net::SocketAddr> {
        soon(|| self.host.cluster.peer_addr(node)).await
    }

    /// A read of this node's copy of the fabric's records, as far as it has applied them.
    pub(crate) fn read_now<T>(
        &self,
        f: impl FnOnce(&FabricView<'_>) -> Result<T, DbError>,
    ) -> Result<T, Refusal> {
        self.host
            .control
            .read_local(|v| f(&machine::view(v)))
            .map_err(control_error)
    }

    /// A linearizable read of the fabric's records: what any node acknowledged is seen.
    pub(crate) async fn read<T>(
        &self,
        f: impl FnOnce(&FabricView<'_>) -> Result<T, DbError>,
    ) -> Result<T, Refusal> {
        self.host
            .control
            .read(|v| f(&machine::view(v)))
            .await
            .map_err(control_error)
    }

    /// Proposes an authorised fabric command with its audit record.
    pub(crate) async fn write(
        &self,
        actor: &Actor,
        action: &str,
        target: &str,
        command: &FabricCommand,
    ) -> Result<Option<u64>, Refusal> {
        let mut proposal = Proposal::machine(machine::NAME, machine::encode(command));
        proposal.audit = Some(noodle_audit::Record::new(
            noodle_host::now_ms(),
            actor.name.clone(),
            action,
            target,
            actor.right.clone(),
            noodle_audit::Outcome::Allowed,
        ));
        match self
            .host
            .authz
            .propose(actor, proposal)
            .await
            .map_err(control_error)?
        {
            Applied::Done => Ok(None),
            Applied::Created { id } => Ok(Some(id)),
            Applied::Rejected(why) => Err(bad_request(why)),
            other => Err(internal(format!("unexpected answer {other:?}"))),
        }
    }

    /// The next version id of `path` on this node: later than the one the path shows.
    fn next_version(&self, head: Option<&Version>) -> VersionId {
        let mut clock = self.clock.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(h) = head {
            clock.observe(h.id.hlc);
        }
        VersionId {
            hlc: clock.tick(noodle_host::now_ms()),
            node: self.host.node_id.clone(),
        }
    }

    /// The version `path` shows, or `version` of it.
    async fn version_of(
        &self,
        path: &ObjectPath,
        version: Option<&str>,
    ) -> Result<Version, Refusal> {
        let found = match version {
            None => self.read(|v| v.head(path)).await?,
            Some(text) => {
                let id = parse_version(text)?;
                // A version never changes once written: one this node has applied is read
                // here, without asking the leader (a download asks for one per chunk).
                let here = self
                    .host
                    .control
                    .read_local(|v| machine::view(v).version(path, &id))
                    .ok()
                    .flatten();
                match here {
                    Some(version) => Some(version),
                    None => self.read(|v| v.version(path, &id)).await?,
                }
            }
        };
        found.ok_or_else(|| Refusal::new(StatusCode::NOT_FOUND, format!("there is no {path}")))
    }

    /// Blocking store work off the async threads.
    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&crate::chunks::ChunkStore) -> Result<T, Refusal> + Send + 'static,
    ) -> Result<T, Refusal> {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || f(&store))
            .await
            .map_err(internal)?
    }

    /// Chunk `id` of a version held by `replicas` (`len`: its length in the version's
    /// manifest; `None`: `id` is the manifest): from this node's store if it has a good copy,
    /// else from the replicas in turn (and then kept here, in the background).
    async fn chunk(
        &self,
        id: ChunkId,
        len: Option<u32>,
        replicas: &[String],
    ) -> Result<Bytes, Refusal> {
        let local = self
            .blocking(move |store| match store.get(&id) {
                Ok(bytes) => Ok(Some(bytes)),
                Err(ChunkError::NotFound(_)) => Ok(None),
                Err(e @ ChunkError::Corrupt { .. }) => {
                    // A bad copy is never served: dropped, and fetched again below.
                    tracing::warn!(error = %e, "removing a corrupt fabric chunk");
                    metrics::counter!("noodle_fabric_corrupt_chunks_total").increment(1);
                    store.remove(&id).map_err(internal)?;
                    Ok(None)
                }
                Err(e) => Err(internal(e)),
            })
            .await?;
        if let Some(bytes) = local {
            return Ok(Bytes::from(bytes));
        }
        let mut failures = Vec::new();
        for node in replicas.iter().filter(|n| **n != self.host.node_id) {
            let Some(addr) = self.peer_addr_soon(node).await else {
                failures.push(format!("{node}: address unknown"));
                continue;
            };
            match self
                .store
                .read_through(&self.host.link, addr, id, len)
                .await
            {
                Ok(bytes) => return Ok(bytes),
                Err(e) => failures.push(format!("{node}: {e}")),
            }
        }
        Err(Refusal::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "no replica could send chunk {id}: {}",
                if failures.is_empty() {
                    "none is known".to_string()
                } else {
                    failures.join("; ")
                }
            ),
        ))
    }

    async fn manifest(&self, id: ChunkId, replicas: &[String]) -> Result<Manifest, Refusal> {
        let bytes = self.chunk(id, None, replicas).await?;
        Manifest::decode(&bytes).map_err(internal)
    }
}

/// What `f` finds, asked again every 100 ms for at most [`NODE_DETAILS_WAIT`]: the details
/// of a node that just joined (or that this node just joined) arrive by gossip.
async fn soon<T>(f: impl Fn() -> Option<T>) -> Option<T> {
    let deadline = std::time::Instant::now() + NODE_DETAILS_WAIT;
    loop {
        if let Some(found) = f() {
            return Some(found);
        }
        if std::time::Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// A version's content; a removal is not found.
fn content_of<'v>(path: &ObjectPath, version: &'v Version) -> Result<&'v Content, Refusal> {
    version.content.as_ref().ok_or_else(|| {
        Refusal::new(
            StatusCode::NOT_FOUND,
            format!("{path} was removed at that version"),
        )
    })
}

#[derive(serde::Deserialize)]
struct ForPath {
    path: String,
    version: Option<String>,
}

/// `POST /v1/fabric/chunks/missing?path=P`: which of these chunks this node lacks.
async fn chunks_missing(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Query(q): Query<ForPath>,
    body: Bytes,
) -> ApiResult {
    let path = object_path(&q.path)?;
    state.check(&caller, WRITE, "fabric.upload", path.as_str())?;
    let req: ChunkIds = parse_body(&body, "chunk list")?;
    let ids = state
        .blocking(move |store| store.missing(&req.ids).map_err(store_error))
        .await?;
    Ok(Json(ChunkIds { ids }).into_response())
}

/// `PUT /v1/fabric/chunks/{id}?path=P`: one chunk (or manifest) of a file for `P`.
async fn put_chunk(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    Query(q): Query<ForPath>,
    body: Bytes,
) -> ApiResult {
    let path = object_path(&q.path)?;
    state.check(&caller, WRITE, "fabric.upload", path.as_str())?;
    state
        .blocking(move |store| store.put(&id, &body).map_err(store_error))
        .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `GET /v1/fabric/chunks/{id}?path=P[&version=V]`: a chunk of a version of `P`, and only of
/// it: a reader of one path cannot read another path's chunks by their ids.
async fn get_chunk(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    Query(q): Query<ForPath>,
) -> ApiResult {
    let path = object_path(&q.path)?;
    state.check(&caller, READ, "fabric.get", path.as_str())?;
    let id: ChunkId = id.parse().map_err(|e| bad_request(format!("{e}")))?;
    let version = state.version_of(&path, q.version.as_deref()).await?;
    let content = content_of(&path, &version)?;
    let not_part = || {
        Refusal::new(
            StatusCode::NOT_FOUND,
            format!("chunk {id} is not part of {path}"),
        )
    };
    if let Some(bytes) = &content.bytes {
        // Kept in the records: its manifest and its one chunk come from there.
        let manifest = machine::manifest_of(bytes);
        return if id == manifest.id() {
            Ok(manifest.encode().into_response())
        } else if manifest.chunk_ids().contains(&id) {
            Ok(bytes.clone().into_response())
        } else {
            Err(not_part())
        };
    }
    let manifest_id = ChunkId(content.manifest);
    let len = if id == manifest_id {
        None
    } else {
        let manifest = state.manifest(manifest_id, &content.replicas).await?;
        let Some((_, len)) = manifest.chunks().iter().find(|(c, _)| *c == id) else {
            return Err(not_part());
        };
        Some(*len)
    };
    let bytes = state.chunk(id, len, &content.replicas).await?;
    Ok(bytes.into_response())
}

#[derive(serde::Deserialize)]
struct VersionQuery {
    version: Option<String>,
    /// The version the path showed in this snapshot.
    snapshot: Option<u64>,
}

/// `GET /v1/fabric/objects/PATH[?version=V|?snapshot=S]`.
async fn get_object(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(rest): Path<String>,
    Query(q): Query<VersionQuery>,
) -> ApiResult {
    let path = routed_path(&rest)?;
    state.check(&caller, READ, "fabric.get", path.as_str())?;
    let version = match q.snapshot {
        Some(id) => crate::snapshots::version_in(&state, &path, id).await?,
        None => state.version_of(&path, q.version.as_deref()).await?,
    };
    Ok(Json(object_info(&path, &version)).into_response())
}

/// Checks tags given with a write.
fn checked_tags(tags: BTreeMap<String, String>) -> Result<BTreeMap<String, String>, Refusal> {
    if tags.len() > machine::limits::TAGS_MAX {
        return Err(bad_request(format!(
            "at most {} tags",
            machine::limits::TAGS_MAX
        )));
    }
    for (k, v) in &tags {
        machine::check_tag(k, v).map_err(bad_request)?;
    }
    Ok(tags)
}

/// `PUT /v1/fabric/data/PATH?tag=K=V`: a small object (at most [`INLINE_MAX`] bytes) in one
/// request: stored, replicated and committed as a put of an uploaded file is.
async fn put_data(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(rest): Path<String>,
    Query(pairs): Query<Vec<(String, String)>>,
    body: Bytes,
) -> ApiResult {
    let path = routed_path(&rest)?;
    let actor = state.check(&caller, WRITE, "fabric.put", path.as_str())?;
    let tags = checked_tags(
        pairs
            .iter()
            .filter(|(k, _)| k == "tag")
            .map(|(_, t)| match t.split_once('=') {
                Some((k, v)) => (k.to_string(), v.to_string()),
                None => (t.clone(), String::new()),
            })
            .collect(),
    )?;
    if state.keeps(body.len() as u64)? {
        let version = state.put_kept(&actor, &path, body.to_vec(), tags).await?;
        return Ok(Json(object_info(&path, &version)).into_response());
    }
    let label = std::path::PathBuf::from(path.as_str());
    let manifest = state
        .blocking(move |store| {
            let len = body.len() as u64;
            store
                .put_reader(&body[..], len, &label)
                .map_err(store_error)
        })
        .await?;
    let version = state
        .put_version(&actor, &path, manifest.id(), tags)
        .await?;
    Ok(Json(object_info(&path, &version)).into_response())
}

/// `GET /v1/fabric/data/PATH[?version=V]`: a small object's bytes in one request; the
/// version read is in the `x-noodle-version` header. A larger one is refused (read it by its
/// chunks).
async fn get_data(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(rest): Path<String>,
    Query(q): Query<VersionQuery>,
) -> ApiResult {
    let path = routed_path(&rest)?;
    state.check(&caller, READ, "fabric.get", path.as_str())?;
    let version = state.version_of(&path, q.version.as_deref()).await?;
    let content = content_of(&path, &version)?;
    if content.size > INLINE_MAX as u64 {
        return Err(Refusal::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "{path} is {} bytes, more than {INLINE_MAX}: read it by its chunks",
                content.size
            ),
        ));
    }
    let bytes = match &content.bytes {
        Some(kept) => kept.clone(),
        None => {
            let manifest = state
                .manifest(ChunkId(content.manifest), &content.replicas)
                .await?;
            let mut bytes = Vec::with_capacity(content.size as usize);
            for (id, len) in manifest.chunks() {
                let chunk = state.chunk(*id, Some(*len), &content.replicas).await?;
                bytes.extend_from_slice(&chunk);
            }
            bytes
        }
    };
    let mut response = bytes.into_response();
    if let Ok(v) = axum::http::HeaderValue::from_str(&version_text(&version.id)) {
        response.headers_mut().insert("x-noodle-version", v);
    }
    Ok(response)
}

/// `PUT /v1/fabric/objects/PATH`: the uploaded file becomes the path's new version once
/// [`crate::replication::ack_copies`] nodes hold it durably; the other copies complete in
/// the background.
async fn put_object(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(rest): Path<String>,
    body: Bytes,
) -> ApiResult {
    let path = routed_path(&rest)?;
    let actor = state.check(&caller, WRITE, "fabric.put", path.as_str())?;
    let req: FabricPut = parse_body(&body, "put request")?;
    let tags = checked_tags(req.tags)?;
    let manifest_id: ChunkId = req
        .manifest
        .parse()
        .map_err(|e| bad_request(format!("manifest: {e}")))?;
    let version = state.put_version(&actor, &path, manifest_id, tags).await?;
    Ok(Json(object_info(&path, &version)).into_response())
}

impl FabricNode {
    /// Makes the stored file `manifest_id` (manifest and every chunk on this node) the new
    /// version of `path`, written by `actor` (whose right was checked): replicated to the
    /// placed nodes, acknowledged once [`crate::replication::ack_copies`] of them hold it
    /// durably and the version is committed; the other copies complete in the background.
    pub(crate) async fn put_version(
        self: &Arc<Self>,
        actor: &Actor,
        path: &ObjectPath,
        manifest_id: ChunkId,
        tags: BTreeMap<String, String>,
    ) -> Result<Version, Refusal> {
        let manifest = self
            .blocking(move |store| {
                let bytes = store.get(&manifest_id).map_err(|e| match e {
                    ChunkError::NotFound(_) => bad_request(format!(
                        "manifest {manifest_id} is not on this node: upload the file first"
                    )),
                    e => internal(e),
                })?;
                let manifest = Manifest::decode(&bytes)
                    .map_err(|e| bad_request(format!("{manifest_id} is not a manifest: {e}")))?;
                let ids: Vec<String> = manifest.chunk_ids().iter().map(ChunkId::to_hex).collect();
                if !store.missing(&ids).map_err(store_error)?.is_empty() {
                    return Err(bad_request(format!(
                        "chunks of {manifest_id} are not on this node: upload the file first"
                    )));
                }
                // Chunks stored long ago (the same bytes uploaded before) are in use again.
                let mut used = manifest.chunk_ids();
                used.push(manifest_id);
                store.touch(&used).map_err(store_error)?;
                Ok(manifest)
            })
            .await?;
        // A node that just joined may not have told us its free disk yet: give its details a
        // moment to arrive, so that a new version is not placed on fewer nodes than there are.
        soon(|| self.host.cluster.every_alive_node_described().then_some(())).await;
        let plan = PutPlan::new(
            &manifest_id,
            &self.candidates(),
            self.cfg.replicas,
            Some(&self.host.node_id),
        )
        .ok_or_else(|| Refusal::new(StatusCode::INSUFFICIENT_STORAGE, "no node has room for it"))?;
        let replicas = replicate(self, &plan, manifest_id, path.as_str()).await?;
        let content = Content {
            manifest: manifest_id.0,
            size: manifest.size(),
            replicas: replicas.acknowledged.clone(),
            bytes: None,
        };
        let version = self.commit(actor, path, content, tags).await?;
        replicas.finish_later(Arc::clone(self), path.clone(), version.id.clone());
        Ok(version)
    }

    /// Makes `bytes` (at most [`machine::limits::KEPT_BYTES_MAX`]) the new version of `path`,
    /// kept in the records: durable once the write is committed, with no chunk files and no
    /// copies to make.
    pub(crate) async fn put_kept(
        &self,
        actor: &Actor,
        path: &ObjectPath,
        bytes: Vec<u8>,
        tags: BTreeMap<String, String>,
    ) -> Result<Version, Refusal> {
        let content = Content {
            manifest: machine::manifest_of(&bytes).id().0,
            size: bytes.len() as u64,
            replicas: Vec::new(),
            bytes: Some(bytes),
        };
        self.commit(actor, path, content, tags).await
    }

    /// Whether `len` bytes go into the records rather than into chunks: a small object while
    /// the records keep less than this node's budget ([`crate::FabricConfig::records_bytes`]).
    pub(crate) fn keeps(&self, len: u64) -> Result<bool, Refusal> {
        if len > machine::limits::KEPT_BYTES_MAX as u64 {
            return Ok(false);
        }
        let kept = self.read_now(|v| v.kept_bytes())?;
        let budget = self.cfg.records_bytes.min(machine::limits::KEPT_TOTAL_MAX);
        Ok(kept.saturating_add(len) <= budget)
    }

    /// Writes `content` as the new version of `path`, after the one it shows now.
    async fn commit(
        &self,
        actor: &Actor,
        path: &ObjectPath,
        content: Content,
        tags: BTreeMap<String, String>,
    ) -> Result<Version, Refusal> {
        let head = self.read(|v| v.head(path)).await?;
        let size = content.size;
        let version = Version {
            id: self.next_version(head.as_ref()),
            creator: actor.name.clone(),
            tags,
            content: Some(content),
        };
        let command = FabricCommand::Write {
            path: path.to_string(),
            version: version.clone(),
        };
        self.write(actor, "fabric.put", path.as_str(), &command)
            .await?;
        report_conflict(self, path, head.as_ref(), &version.id);
        self.host.events.emit(
            OBJECT_WRITTEN,
            path.as_str(),
            format!("{size} bytes, version {}", version_text(&version.id)),
        );
        Ok(version)
    }
}

/// Reports versions of `path` written at the same time as `ours` (after the version it
/// replaced, `before`): every one is kept, and the newest is what the path shows.
fn report_conflict(
    state: &FabricNode,
    path: &ObjectPath,
    before: Option<&Version>,
    ours: &VersionId,
) {
    let versions = state
        .host
        .control
        .read_local(|v| machine::view(v).versions(path, 16))
        .unwrap_or_default();
    let others: Vec<String> = versions
        .iter()
        .filter(|v| v.id != *ours && before.is_none_or(|b| v.id > b.id))
        .map(|v| version_text(&v.id))
        .collect();
    if others.is_empty() {
        return;
    }
    let shown = versions
        .first()
        .map(|v| version_text(&v.id))
        .unwrap_or_default();
    state.host.events.emit(
        WRITE_CONFLICT,
        path.as_str(),
        format!(
            "{} was written at the same time as {}: all are kept (noodle versions), {shown} is \
             what it shows",
            version_text(ours),
            others.join(", ")
        ),
    );
}

type Pending =
    FuturesUnordered<futures_util::future::BoxFuture<'static, (String, Result<(), String>)>>;

/// A write's copies: the nodes that hold it durably at acknowledgement, and the copies still
/// being made.
struct Replicas {
    acknowledged: Vec<String>,
    pending: Pending,
}

impl Replicas {
    /// Records the copies that complete after the acknowledgement.
    fn finish_later(self, state: AppState, path: ObjectPath, id: VersionId) {
        if self.pending.is_empty() {
            return;
        }
        let mut replicas = self.acknowledged;
        let mut pending = self.pending;
        tokio::spawn(async move {
            let before = replicas.len();
            while let Some((node, result)) = pending.next().await {
                match result {
                    Ok(()) => replicas.push(node),
                    Err(e) => {
                        tracing::warn!(%node, %path, error = %e, "a copy failed; repair will make it")
                    }
                }
            }
            if replicas.len() == before {
                return;
            }
            let command = FabricCommand::SetReplicas {
                path: path.to_string(),
                id,
                replicas,
            };
            let proposal = Proposal::machine(machine::NAME, machine::encode(&command));
            if let Err(e) = state.host.control.propose(proposal).await {
                tracing::warn!(%path, error = %e, "recording a version's later copies");
            }
        });
    }
}

/// Sends the version to the plan's targets and waits until enough hold it.
async fn replicate(
    state: &AppState,
    plan: &PutPlan,
    manifest: ChunkId,
    path: &str,
) -> Result<Replicas, Refusal> {
    let me = state.host.node_id.clone();
    let mut acknowledged = Vec::new();
    let mut failures = Vec::new();
    let pending: Pending = FuturesUnordered::new();
    for target in &plan.targets {
        if *target == me {
            // The upload stored every chunk here durably already.
            acknowledged.push(me.clone());
            continue;
        }
        let Some(addr) = state.host.cluster.peer_addr(target) else {
            failures.push(format!("{target}: address unknown"));
            continue;
        };
        let link = state.host.link.clone();
        let target = target.clone();
        pending.push(Box::pin(async move {
            let result = replicate_to(&link, addr, manifest, None).await;
            (target, result)
        }));
    }
    let mut pending = pending;
    while acknowledged.len() < plan.ack_after {
        match pending.next().await {
            Some((node, Ok(()))) => acknowledged.push(node),
            Some((node, Err(e))) => failures.push(format!("{node}: {e}")),
            None => break,
        }
    }
    if acknowledged.len() < plan.ack_after {
        return Err(Refusal::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "{path} is held by {} node(s), not the {} a write needs: {}",
                acknowledged.len(),
                plan.ack_after,
                failures.join("; ")
            ),
        ));
    }
    Ok(Replicas {
        acknowledged,
        pending,
    })
}

/// `DELETE /v1/fabric/objects/PATH`: a removal version; the old versions stay.
async fn remove_object(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(rest): Path<String>,
) -> ApiResult {
    let path = routed_path(&rest)?;
    let actor = state.check(&caller, WRITE, "fabric.rm", path.as_str())?;
    let Some(head) = state.read(|v| v.head(&path)).await? else {
        return Err(Refusal::new(
            StatusCode::NOT_FOUND,
            format!("there is no {path}"),
        ));
    };
    let version = Version {
        id: state.next_version(Some(&head)),
        creator: actor.name.clone(),
        tags: BTreeMap::new(),
        content: None,
    };
    let command = FabricCommand::Write {
        path: path.to_string(),
        version: version.clone(),
    };
    state
        .write(&actor, "fabric.rm", path.as_str(), &command)
        .await?;
    Ok(Json(object_info(&path, &version)).into_response())
}

/// `GET /v1/fabric/versions/PATH`: newest first, removals included.
async fn versions(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(rest): Path<String>,
) -> ApiResult {
    let path = routed_path(&rest)?;
    state.check(&caller, READ, "fabric.versions", path.as_str())?;
    let versions = state
        .read(|v| v.versions(&path, machine::limits::VERSIONS_LISTED_MAX))
        .await?;
    let objects = versions.iter().map(|v| object_info(&path, v)).collect();
    Ok(Json(FabricList { objects }).into_response())
}

#[derive(serde::Deserialize)]
struct ListQuery {
    #[serde(default = "root")]
    prefix: String,
    after: Option<String>,
    limit: Option<usize>,
}

fn root() -> String {
    "/".into()
}

pub(crate) fn prefix_of(text: &str) -> Result<Prefix, Refusal> {
    Prefix::parse(text).map_err(|e| bad_request(format!("prefix {text:?}: {e}")))
}

/// `GET /v1/fabric/list?prefix=P&after=A&limit=N`.
async fn list(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Query(q): Query<ListQuery>,
) -> ApiResult {
    let prefix = prefix_of(&q.prefix)?;
    state.check(&caller, READ, "fabric.list", prefix.as_str())?;
    let after = q.after.as_deref().map(object_path).transpose()?;
    let limit = q.limit.unwrap_or(LIST_MAX).clamp(1, LIST_MAX);
    let found = state
        .read(|v| v.list(&prefix, after.as_ref(), limit))
        .await?;
    let objects = found.iter().map(|(p, v)| object_info(p, v)).collect();
    Ok(Json(FabricList { objects }).into_response())
}

/// `GET /v1/fabric/query?tag=K=V&tag=K&prefix=P&limit=N`: objects whose current version has
/// every tag asked for.
async fn query(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Query(pairs): Query<Vec<(String, String)>>,
) -> ApiResult {
    let mut prefix = root();
    let mut tags: Vec<(String, Option<String>)> = Vec::new();
    let mut limit = LIST_MAX;
    let (mut since, mut until) = (0u64, u64::MAX);
    let millis = |v: &str| {
        v.parse::<u64>()
            .map_err(|_| bad_request("since and until are milliseconds since 1970"))
    };
    for (k, v) in pairs {
        match k.as_str() {
            "prefix" => prefix = v,
            "limit" => limit = v.parse().map_err(|_| bad_request("limit is a number"))?,
            "since" => since = millis(&v)?,
            "until" => until = millis(&v)?,
            "tag" => tags.push(match v.split_once('=') {
                Some((k, v)) => (k.to_string(), Some(v.to_string())),
                None => (v, None),
            }),
            other => return Err(bad_request(format!("unknown query parameter {other:?}"))),
        }
    }
    if tags.is_empty() && since == 0 && until == u64::MAX {
        return Err(bad_request(
            "query by at least one --tag K=V or K, or by time (--since, --until)",
        ));
    }
    let prefix = prefix_of(&prefix)?;
    state.check(&caller, READ, "fabric.query", prefix.as_str())?;
    let limit = limit.clamp(1, LIST_MAX);
    let found = state
        .read(|v| {
            // The first tag narrows by the index; the others, and the time the current
            // version was written, are checked on each object.
            let paths = match tags.first() {
                Some((key, value)) => v.tagged(key, value.as_deref(), &prefix, QUERY_SCAN_MAX)?,
                None => v
                    .list(&prefix, None, QUERY_SCAN_MAX)?
                    .into_iter()
                    .map(|(p, _)| p)
                    .collect(),
            };
            let mut out = Vec::new();
            for p in paths {
                let Some(version) = v.head(&p)? else { continue };
                if !(since..until).contains(&version.id.hlc.wall_ms) {
                    continue;
                }
                let all = tags
                    .iter()
                    .all(|(k, want)| match (version.tags.get(k), want) {
                        (Some(have), Some(want)) => have == want,
                        (Some(_), None) => true,
                        (None, _) => false,
                    });
                if all {
                    out.push((p, version));
                    if out.len() >= limit {
                        break;
                    }
                }
            }
            Ok(out)
        })
        .await?;
    let objects = found.iter().map(|(p, v)| object_info(p, v)).collect();
    Ok(Json(FabricList { objects }).into_response())
}
