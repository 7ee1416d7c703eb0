//! What a subsystem is to the node: how it is registered, started, reached and shown.

use crate::authz::{Authz, Caller};
use crate::cluster::{Clock, ClusterView};
use crate::events::EventBus;
use bytes::Bytes;
use noodle_api::EventKind;
use noodle_control::{Control, StateMachine};
use noodle_link::Peer;
use noodle_link::{Link, RecvStream, RemoteError, SendStream, ServiceFuture};
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;

/// The handles a subsystem is started with.
#[derive(Clone)]
pub struct Host {
    pub node_id: String,
    pub node_name: String,
    /// The subsystem's own directory inside the node's data directory (created for it).
    pub data_dir: PathBuf,
    pub link: Link,
    pub control: Control,
    pub authz: Arc<Authz>,
    pub events: EventBus,
    pub cluster: Arc<dyn ClusterView>,
    pub clock: Arc<dyn Clock>,
}

/// Why a subsystem did not start.
#[derive(Debug, thiserror::Error)]
#[error("{subsystem}: {detail}")]
pub struct StartError {
    pub subsystem: &'static str,
    pub detail: String,
}

pub type SubsystemFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// A subsystem as the node lists it, before it runs.
pub trait Subsystem: Send + 'static {
    /// Its name: its data directory, its state machine's name, its panel's id.
    fn name(&self) -> &'static str;
    /// The state machine that keeps its replicated records, if it has any. Asked once, before
    /// the control plane starts.
    fn state_machine(&self) -> Option<Arc<dyn StateMachine>> {
        None
    }
    /// The kinds of event it emits.
    fn event_kinds(&self) -> Vec<EventKind> {
        Vec::new()
    }
    /// Starts it. Long work (scanning a store) belongs in here, before the node serves.
    fn start(
        self: Box<Self>,
        host: Host,
    ) -> SubsystemFuture<Result<Arc<dyn RunningSubsystem>, StartError>>;
}

/// A dashboard panel: an HTML fragment the subsystem renders (escaping what it shows), put
/// in the page and replaced live (every second) by the dashboard.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Panel {
    /// Unique on the page: the subsystem's name.
    pub id: &'static str,
    pub html: String,
}

/// A started subsystem.
pub trait RunningSubsystem: Send + Sync + 'static {
    fn name(&self) -> &'static str;
    /// Prefixes of the cluster RPC methods it answers (`jobs.` answers `jobs.output`). Two
    /// subsystems never share a prefix; the node checks.
    fn rpc_prefixes(&self) -> &'static [&'static str] {
        &[]
    }
    /// Answers one request from a member (the certificate proved it is one).
    fn call(&self, _from: Peer, method: &str, _body: Bytes) -> ServiceFuture {
        not_found(method)
    }
    /// Whether `method` takes its body as a raw stream ([`RunningSubsystem::stream`]).
    fn is_stream(&self, _method: &str) -> bool {
        false
    }
    /// Serves a streaming method: the header has been read, the rest of `recv` is the body.
    fn stream(
        &self,
        _from: Peer,
        _method: &str,
        _send: SendStream,
        _recv: RecvStream,
    ) -> SubsystemFuture<()> {
        Box::pin(async {})
    }
    /// Its HTTP routes. Every handler names the right it needs before it does anything
    /// ([`crate::api::check`]); the node has already told who calls (`Extension<Caller>`).
    fn routes(self: Arc<Self>) -> crate::api::Routes {
        crate::api::Routes::new()
    }
    /// Its dashboard panel for `caller`, if it has one and the caller may see it.
    fn panel(&self, _caller: &Caller) -> Option<Panel> {
        None
    }
    /// The stylesheet of its panel, inlined into the dashboard page (our own constant).
    fn panel_style(&self) -> &'static str {
        ""
    }
}

/// The answer to a method nobody serves.
pub fn not_found(method: &str) -> ServiceFuture {
    let e = RemoteError::new(RemoteError::NOT_FOUND, format!("unknown method `{method}`"));
    Box::pin(async move { Err(e) })
}
