//! The fabric as a subsystem of the node: what it registers (the `fabric` state machine) and
//! what it answers: `fabric.replicate` (fetch a version's chunks from the caller and keep them
//! durably), `fabric.chunks` streams (chunks for other members), and the `/v1/fabric` routes.

use crate::chunks::ChunkStore;
use crate::hlc::HlcClock;
use crate::machine::FabricMachine;
use crate::placement::Candidate;
use bytes::Bytes;
use noodle_api::{EventKind, NodeState};
use noodle_chunks::ChunkId;
use noodle_control::StateMachine;
use noodle_host::{Host, Permission, RunningSubsystem, StartError, Subsystem, SubsystemFuture};
use noodle_link::{
    Peer, RecvStream, RemoteError, SendStream, ServiceFuture, recv_message, send_message,
};
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Reading objects under a prefix (`fabric:read:/datasets/`).
pub const READ: Permission = Permission::new("fabric", "read");
/// Writing and removing objects under a prefix.
pub const WRITE: Permission = Permission::new("fabric", "write");

/// The raw-stream method members fetch fabric chunks with.
pub(crate) const METHOD_CHUNKS: &str = "fabric.chunks";
/// The raw-stream method that asks a node to fetch a version's chunks from the caller and keep
/// them.
pub(crate) const METHOD_REPLICATE: &str = "fabric.replicate";

/// A new version's write was acknowledged (event kind).
pub(crate) const OBJECT_WRITTEN: EventKind = EventKind::new("fabric_written");
/// Versions of one path were written at once; all are kept, the newest is what it shows.
pub(crate) const WRITE_CONFLICT: EventKind = EventKind::new("fabric_conflict");

/// How a node takes part in the fabric.
#[derive(Debug, Clone)]
pub struct FabricConfig {
    /// Copies of each version (fewer on a smaller cluster).
    pub replicas: usize,
    /// Bytes of chunks this node keeps at most.
    pub store_cap_bytes: u64,
    /// The node label that names a failure domain; copies spread over its values.
    pub domain_label: String,
    /// Retention: the newest versions of each path that are always kept.
    pub keep_versions: usize,
    /// Retention: versions younger than this are always kept.
    pub keep_for: Duration,
    /// How often this node collects chunks no version refers to.
    pub gc_every: Duration,
    /// A chunk no version refers to is collected only once it is this old (an upload may
    /// still be on its way to becoming a version).
    pub upload_grace: Duration,
    /// Bytes of small objects (at most [`crate::machine::limits::KEPT_BYTES_MAX`] each) this
    /// node keeps in the replicated records rather than in chunks, while the records hold
    /// less (never more than [`crate::machine::limits::KEPT_TOTAL_MAX`]); 0: none.
    pub records_bytes: u64,
}

impl Default for FabricConfig {
    fn default() -> FabricConfig {
        FabricConfig {
            replicas: crate::replication::REPLICAS_DEFAULT,
            store_cap_bytes: 64 << 30,
            domain_label: "zone".into(),
            keep_versions: 10,
            keep_for: Duration::from_secs(7 * 24 * 3600),
            gc_every: Duration::from_secs(600),
            upload_grace: Duration::from_secs(3600),
            records_bytes: crate::machine::limits::KEPT_TOTAL_MAX,
        }
    }
}

/// The fabric subsystem, before it starts.
#[derive(Debug, Default)]
pub struct Fabric {
    cfg: FabricConfig,
    handle: crate::FabricHandle,
}

impl Fabric {
    pub fn new(cfg: FabricConfig) -> Fabric {
        Fabric {
            cfg,
            handle: crate::FabricHandle::default(),
        }
    }

    /// The fabric for the node's other subsystems, usable once it has started.
    pub fn handle(&self) -> crate::FabricHandle {
        self.handle.clone()
    }
}

impl Subsystem for Fabric {
    fn name(&self) -> &'static str {
        crate::machine::NAME
    }

    fn state_machine(&self) -> Option<Arc<dyn StateMachine>> {
        Some(Arc::new(FabricMachine))
    }

    fn event_kinds(&self) -> Vec<EventKind> {
        vec![OBJECT_WRITTEN, WRITE_CONFLICT]
    }

    fn start(
        self: Box<Self>,
        host: Host,
    ) -> SubsystemFuture<Result<Arc<dyn RunningSubsystem>, StartError>> {
        Box::pin(async move {
            // Where a client beside the node finds the chunk files too.
            let dir = noodle_api::fabric::store_dir(&host.data_dir);
            let cap = self.cfg.store_cap_bytes;
            let store =
                tokio::task::spawn_blocking(move || ChunkStore::open(&dir, cap, METHOD_CHUNKS))
                    .await
                    .map_err(|e| e.to_string())
                    .and_then(|r| r.map_err(|e| e.to_string()))
                    .map_err(|detail| StartError {
                        subsystem: crate::machine::NAME,
                        detail,
                    })?;
            let node = Arc::new(FabricNode {
                host,
                store,
                cfg: self.cfg,
                clock: Mutex::new(HlcClock::default()),
                vectors: Mutex::default(),
                stats: Mutex::default(),
                pins: self.handle.1.clone(),
            });
            self.handle.set(node.clone());
            tokio::spawn(crate::repair::repair_loop(node.clone()));
            tokio::spawn(crate::gc::versions_loop(node.clone()));
            tokio::spawn(crate::gc::chunks_loop(node.clone()));
            tokio::spawn(crate::stats::stats_loop(node.clone()));
            Ok(node as Arc<dyn RunningSubsystem>)
        })
    }
}

/// The started fabric: what its handlers share.
pub(crate) struct FabricNode {
    pub(crate) host: Host,
    pub(crate) store: ChunkStore,
    pub(crate) cfg: FabricConfig,
    pub(crate) clock: Mutex<HlcClock>,
    /// This node's index of the embeddings ([`crate::near`]).
    pub(crate) vectors: Mutex<crate::near::VectorCache>,
    /// The counts of the last pass of [`crate::stats`].
    pub(crate) stats: Mutex<crate::stats::StorageStats>,
    /// What other subsystems need kept in the store ([`crate::FabricHandle::pin`]).
    pub(crate) pins: crate::handle::PinList,
}

/// `fabric.replicate`: the manifest whose chunks the caller holds.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Replicate {
    pub(crate) manifest: [u8; 32],
    /// The node to fetch from; `None`: the caller (a new version's writer). Repair names
    /// another replica.
    pub(crate) source: Option<String>,
}

impl FabricNode {
    /// The nodes whose copies count: alive, or suspected (a suspect may come back).
    pub(crate) fn live_nodes(&self) -> std::collections::BTreeSet<String> {
        self.host
            .cluster
            .nodes()
            .into_iter()
            .filter(|(_, s)| matches!(s, NodeState::Alive | NodeState::Suspect))
            .map(|(info, _)| info.id)
            .collect()
    }

    /// The nodes that may take copies now: alive, with free disk, and their failure domain.
    pub(crate) fn candidates(&self) -> Vec<Candidate> {
        self.host
            .cluster
            .nodes()
            .into_iter()
            .filter(|(_, state)| *state == NodeState::Alive)
            .map(|(info, _)| Candidate {
                domain: info.labels.get(&self.cfg.domain_label).cloned(),
                free_bytes: info.resources.disk_free_bytes,
                node: info.id,
            })
            .collect()
    }
}

/// The answer on a `fabric.replicate` stream: done, or why not (code, message).
pub(crate) type ReplicateAnswer = Result<(), (u16, String)>;

/// Serves a `fabric.replicate` stream: one request (the manifest whose chunks the calling
/// member holds), then, once this node holds them all durably (fetched from the caller and
/// verified), one answer. A stream, not a request: a large version takes longer than a
/// request's deadline.
async fn serve_replicate(
    host: Host,
    store: ChunkStore,
    from: Peer,
    mut send: SendStream,
    mut recv: RecvStream,
) {
    let answer: ReplicateAnswer = async {
        let body = recv_message(&mut recv, 256)
            .await
            .map_err(|e| (RemoteError::BAD_REQUEST, e.to_string()))?
            .ok_or((RemoteError::BAD_REQUEST, "no replicate request".to_string()))?;
        let req: Replicate = postcard::from_bytes(&body).map_err(|e| {
            (
                RemoteError::BAD_REQUEST,
                format!("unreadable replicate request: {e}"),
            )
        })?;
        let origin = match &req.source {
            None => host.cluster.peer_addr(&from.node_id).unwrap_or(from.addr),
            Some(node) => host.cluster.peer_addr(node).ok_or((
                RemoteError::NOT_FOUND,
                format!("the address of node {node} is not known here"),
            ))?,
        };
        let (manifest, fetched) = store
            .fetch(&host.link, origin, ChunkId(req.manifest))
            .await
            .map_err(|e| (e.http_status(), e.to_string()))?;
        metrics::counter!("noodle_fabric_replicated_bytes_total").increment(fetched);
        // Chunks it held already (unreferenced, maybe old) are in use again: not collected.
        let mut used = manifest.chunk_ids();
        used.push(ChunkId(req.manifest));
        let touched = store.clone();
        tokio::task::spawn_blocking(move || touched.touch(&used))
            .await
            .map_err(|e| (RemoteError::INTERNAL, e.to_string()))?
            .map_err(|e| (e.http_status(), e.to_string()))?;
        Ok(())
    }
    .await;
    if let Ok(bytes) = postcard::to_allocvec(&answer) {
        let _ = send_message(&mut send, &bytes).await;
    }
    let _ = send.finish();
}

/// Asks the node at `addr` to fetch the chunks of `manifest` from this node and keep them;
/// returns once it holds them durably.
pub(crate) async fn replicate_to(
    link: &noodle_link::Link,
    addr: SocketAddr,
    manifest: ChunkId,
    source: Option<String>,
) -> Result<(), String> {
    let (mut send, mut recv) = link
        .open_stream(addr, METHOD_REPLICATE)
        .await
        .map_err(|e| e.to_string())?;
    let req = postcard::to_allocvec(&Replicate {
        manifest: manifest.0,
        source,
    })
    .unwrap_or_default();
    send_message(&mut send, &req)
        .await
        .map_err(|e| e.to_string())?;
    let _ = send.finish();
    let answer = recv_message(&mut recv, 4096)
        .await
        .map_err(|e| e.to_string())?
        .ok_or("the stream ended without an answer")?;
    let answer: ReplicateAnswer =
        postcard::from_bytes(&answer).map_err(|e| format!("unreadable answer: {e}"))?;
    answer.map_err(|(_, message)| message)
}

impl RunningSubsystem for FabricNode {
    fn name(&self) -> &'static str {
        crate::machine::NAME
    }

    fn rpc_prefixes(&self) -> &'static [&'static str] {
        &["fabric."]
    }

    fn call(&self, _from: Peer, method: &str, _body: Bytes) -> ServiceFuture {
        noodle_host::not_found(method)
    }

    fn is_stream(&self, method: &str) -> bool {
        method == METHOD_CHUNKS || method == METHOD_REPLICATE
    }

    fn stream(
        &self,
        from: Peer,
        method: &str,
        send: SendStream,
        recv: RecvStream,
    ) -> SubsystemFuture<()> {
        let store = self.store.clone();
        if method == METHOD_REPLICATE {
            return Box::pin(serve_replicate(self.host.clone(), store, from, send, recv));
        }
        Box::pin(async move { store.serve_get(send, recv).await })
    }

    fn routes(self: Arc<Self>) -> noodle_host::api::Routes {
        crate::api::routes(self)
    }

    fn panel(&self, caller: &noodle_host::Caller) -> Option<noodle_host::Panel> {
        // Only decides what the page shows (the page was allowed): not audited.
        let denied = self
            .host
            .authz
            .authorise(caller, &READ.on(&crate::path::Prefix::root().to_string()))
            .is_err();
        match self.panel_html(denied) {
            Ok(html) => Some(noodle_host::Panel {
                id: crate::machine::NAME,
                html,
            }),
            Err(e) => {
                tracing::error!(error = %e, "storage panel render failed");
                None
            }
        }
    }

    fn panel_style(&self) -> &'static str {
        crate::stats::STYLE
    }
}
