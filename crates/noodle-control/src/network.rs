//! Raft's messages over any request/response transport.
//!
//! The node carries them over NoodleLink (mutual TLS between members); the simulation over
//! turmoil's network. Both implement [`Transport`]; this module turns openraft's RPCs into
//! method names and postcard bodies, and answers them on the receiving side ([`serve`]).

use crate::control::WireError;
use crate::types::{Member, RaftId, TypeConfig};
use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

pub(crate) const APPEND: &str = "raft.append";
pub(crate) const VOTE: &str = "raft.vote";
pub(crate) const SNAPSHOT: &str = "raft.snapshot";
pub(crate) const PROPOSE: &str = "control.propose";
pub(crate) const READ_INDEX: &str = "control.read_index";

/// A failure to get an answer from a peer at all.
#[derive(Debug, Clone, thiserror::Error)]
pub enum TransportError {
    /// Could not reach the peer (connection refused, no route, handshake failed).
    #[error("unreachable: {0}")]
    Unreachable(String),
    /// Reached it, but no answer in time or the connection broke mid-call.
    #[error("{0}")]
    Failed(String),
}

pub type TransportFuture = Pin<Box<dyn Future<Output = Result<Vec<u8>, TransportError>> + Send>>;

/// Sends one request to a member and returns its answer.
pub trait Transport: Send + Sync + 'static {
    fn call(
        &self,
        to: &Member,
        method: &'static str,
        body: Vec<u8>,
        timeout: Duration,
    ) -> TransportFuture;
}

pub(crate) struct Network {
    pub(crate) transport: Arc<dyn Transport>,
}

pub(crate) struct Peer {
    transport: Arc<dyn Transport>,
    target: RaftId,
    member: Member,
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = Peer;

    async fn new_client(&mut self, target: RaftId, node: &Member) -> Peer {
        Peer {
            transport: self.transport.clone(),
            target,
            member: node.clone(),
        }
    }
}

type RpcResult<T, E> = Result<T, RPCError<RaftId, Member, RaftError<RaftId, E>>>;

impl Peer {
    async fn rpc<Req, Resp, E>(
        &self,
        method: &'static str,
        req: &Req,
        option: &RPCOption,
    ) -> RpcResult<Resp, E>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        // The request names the member it is for: an address can come to belong to another
        // node, or to a new incarnation of the same one, and Raft must never take that answer
        // for the old member's.
        let body = postcard::to_allocvec(&(&self.member.node_id, req))
            .map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        let answer = self
            .transport
            .call(&self.member, method, body, option.hard_ttl())
            .await
            .map_err(|e| match e {
                TransportError::Unreachable(_) => RPCError::Unreachable(Unreachable::new(&e)),
                TransportError::Failed(_) => RPCError::Network(NetworkError::new(&e)),
            })?;
        let result: Result<Result<Resp, RaftError<RaftId, E>>, WireError> =
            postcard::from_bytes(&answer).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        let result = result.map_err(|e| RPCError::Unreachable(Unreachable::new(&e)))?;
        result.map_err(|e| {
            RPCError::RemoteError(RemoteError::new_with_node(
                self.target,
                self.member.clone(),
                e,
            ))
        })
    }
}

impl RaftNetwork<TypeConfig> for Peer {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<AppendEntriesResponse<RaftId>, openraft::error::Infallible> {
        self.rpc(APPEND, &rpc, &option).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<InstallSnapshotResponse<RaftId>, InstallSnapshotError> {
        self.rpc(SNAPSHOT, &rpc, &option).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<RaftId>,
        option: RPCOption,
    ) -> RpcResult<VoteResponse<RaftId>, openraft::error::Infallible> {
        self.rpc(VOTE, &rpc, &option).await
    }
}

fn decode<T: DeserializeOwned>(body: &[u8]) -> Result<T, WireError> {
    postcard::from_bytes(body).map_err(|e| WireError::Malformed(e.to_string()))
}

pub(crate) fn encode<T: Serialize>(v: &T) -> Vec<u8> {
    // Encoding our own in-memory types into a Vec cannot fail.
    postcard::to_allocvec(v).unwrap_or_default()
}

/// Decodes a Raft request and checks that it is addressed to `me`, not to another member that
/// used to have this address.
fn raft_request<T: DeserializeOwned>(me: &str, body: &[u8]) -> Result<T, WireError> {
    let (target, req): (String, T) = decode(body)?;
    if target != me {
        return Err(WireError::Rejected(format!(
            "this address now belongs to control-plane member {me}, not {target}"
        )));
    }
    Ok(req)
}

/// Answers one control-plane request from a peer. `None` if `method` is not ours.
pub(crate) async fn serve(control: &crate::Control, method: &str, body: &[u8]) -> Option<Vec<u8>> {
    let raft = control.raft();
    let me = control.me().node_id.as_str();
    Some(match method {
        APPEND => match raft_request::<AppendEntriesRequest<TypeConfig>>(me, body) {
            Ok(req) => encode(&Ok::<_, WireError>(raft.append_entries(req).await)),
            Err(e) => encode(&Err::<(), _>(e)),
        },
        VOTE => match raft_request::<VoteRequest<RaftId>>(me, body) {
            Ok(req) => encode(&Ok::<_, WireError>(raft.vote(req).await)),
            Err(e) => encode(&Err::<(), _>(e)),
        },
        SNAPSHOT => match raft_request::<InstallSnapshotRequest<TypeConfig>>(me, body) {
            Ok(req) => encode(&Ok::<_, WireError>(raft.install_snapshot(req).await)),
            Err(e) => encode(&Err::<(), _>(e)),
        },
        PROPOSE => match decode::<crate::Proposal>(body) {
            Ok(p) => encode(&control.propose_here(p).await),
            Err(e) => encode(&Err::<crate::Response, _>(e)),
        },
        READ_INDEX => encode(&control.read_index_here().await),
        _ => return None,
    })
}
