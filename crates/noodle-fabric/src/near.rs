//! Embeddings: `PUT /v1/fabric/vectors/PATH` attaches one to an object (`noodle put FILE PATH
//! --vector`), `POST /v1/fabric/near` finds the objects nearest to a query vector (`noodle
//! query --near-vector`). The embeddings are in the replicated records; each node keeps its
//! own approximate-nearest-neighbour index of them ([`crate::vector`]), built from the records
//! when it is first asked after a start and then brought up to date from the records' list of
//! recent changes before each query.

use crate::api::{AppState, internal, object_info, prefix_of, routed_path};
use crate::machine::FabricCommand;
use crate::path::ObjectPath;
use crate::subsystem::{FabricNode, READ, WRITE};
use crate::vector::{K_MAX, VectorIndexes};
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::{Extension, Json};
use noodle_api::fabric::{FabricHit, FabricHits, FabricNear, FabricVector};
use noodle_host::Caller;
use noodle_host::api::{ApiResult, Refusal, bad_request, parse_body};

/// Changes, or embeddings, read from the records at a time.
const PAGE: usize = 1024;

/// A node's index of the embeddings, and the last change of the records it holds.
#[derive(Debug, Default)]
pub(crate) struct VectorCache {
    seen: u64,
    /// `None` until built (after a start, or when it fell too far behind).
    indexes: Option<VectorIndexes>,
}

impl FabricNode {
    /// Brings this node's index up to date with its copy of the records. Blocking.
    fn sync_vectors(&self) -> Result<(), Refusal> {
        let mut cache = self.vectors.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            let seen = cache.seen;
            let changes = match &cache.indexes {
                None => None,
                Some(_) => self.read_now(|v| v.vector_changes_after(seen, PAGE))?,
            };
            let Some(changes) = changes else {
                // Built again from every embedding; the changes made meanwhile follow.
                let last = self.read_now(|v| v.vector_changes())?;
                let mut indexes = VectorIndexes::new();
                let mut after = String::new();
                loop {
                    let page = self.read_now(|v| v.vectors(&after, PAGE))?;
                    for (path, vector) in &page {
                        insert(&mut indexes, path, Some(vector));
                    }
                    match page.last() {
                        Some((p, _)) if page.len() == PAGE => after = p.clone(),
                        _ => break,
                    }
                }
                cache.indexes = Some(indexes);
                cache.seen = last;
                continue;
            };
            if changes.is_empty() {
                return Ok(());
            }
            let indexes = cache.indexes.get_or_insert_with(VectorIndexes::new);
            let mut last = seen;
            for (n, path) in changes {
                let vector = self.read_now(|v| v.vector(&path))?;
                insert(indexes, &path, vector.as_ref());
                last = n;
            }
            cache.seen = last;
        }
    }
}

/// Sets (or, with `None`, removes) `path`'s vector in the index.
fn insert(indexes: &mut VectorIndexes, path: &str, vector: Option<&Vec<f32>>) {
    let Ok(path) = ObjectPath::parse(path) else {
        return;
    };
    match vector {
        None => indexes.remove(&path),
        Some(v) => {
            if let Err(e) = indexes.insert(&path, v) {
                tracing::warn!(%path, error = %e, "an embedding left out of the index");
            }
        }
    }
}

/// `PUT /v1/fabric/vectors/PATH`: attaches an embedding to the object.
pub(crate) async fn set_vector(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(rest): Path<String>,
    body: Bytes,
) -> ApiResult {
    let path = routed_path(&rest)?;
    let actor = state.check(&caller, WRITE, "fabric.vector", path.as_str())?;
    let req: FabricVector = parse_body(&body, "vector")?;
    crate::vector::check(&req.vector).map_err(|e| bad_request(e.to_string()))?;
    let command = FabricCommand::SetVector {
        path: path.to_string(),
        vector: req.vector,
    };
    state
        .write(&actor, "fabric.vector", path.as_str(), &command)
        .await?;
    let head = state.read(|v| v.head(&path)).await?.ok_or_else(|| {
        Refusal::new(
            StatusCode::NOT_FOUND,
            format!("{path} was removed meanwhile"),
        )
    })?;
    Ok(Json(object_info(&path, &head)).into_response())
}

/// `POST /v1/fabric/near`: the objects under a prefix nearest to a vector.
pub(crate) async fn near(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    body: Bytes,
) -> ApiResult {
    let req: FabricNear = parse_body(&body, "query")?;
    let prefix = prefix_of(&req.prefix)?;
    state.check(&caller, READ, "fabric.query", prefix.as_str())?;
    crate::vector::check(&req.vector).map_err(|e| bad_request(e.to_string()))?;
    let k = req.k as usize;
    if k == 0 || k > K_MAX {
        return Err(bad_request(format!("k is 1 to {K_MAX}")));
    }
    // Everything acknowledged anywhere is in this node's copy once this read returns.
    state.read(|v| v.vector_changes()).await?;
    let node = state.clone();
    let search_prefix = prefix.clone();
    let hits = tokio::task::spawn_blocking(move || {
        node.sync_vectors()?;
        let cache = node.vectors.lock().unwrap_or_else(|e| e.into_inner());
        match &cache.indexes {
            Some(indexes) => indexes
                .search(&search_prefix, &req.vector, k)
                .map_err(|e| bad_request(e.to_string())),
            None => Ok(Vec::new()),
        }
    })
    .await
    .map_err(internal)??;
    let mut out = Vec::with_capacity(hits.len());
    for hit in hits {
        let Ok(path) = ObjectPath::parse(&hit.key) else {
            continue;
        };
        // An object removed after the index saw it is left out.
        if let Some(head) = state.read_now(|v| v.head(&path))? {
            out.push(FabricHit {
                score: hit.score,
                object: object_info(&path, &head),
            });
        }
    }
    Ok(Json(FabricHits { hits: out }).into_response())
}
