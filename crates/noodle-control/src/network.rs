//! Raft's messages over any request/response transport.
//!
//! The node carries them over NoodleLink (mutual TLS between members); the simulation over
//! turmoil's network. Both implement [`Transport`]; this module turns openraft's RPCs into
//! method names and postcard bodies, and answers them on the receiving side ([`serve`]).

use crate::control::WireError;
use crate::types::{Member, RaftId, TypeConfig, base_node_id, raft_id};
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
    /// This member's id (with its incarnation), which every Raft message names as its sender.
    pub(crate) me: String,
}

pub(crate) struct Peer {
    transport: Arc<dyn Transport>,
    target: RaftId,
    member: Member,
    me: String,
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = Peer;

    async fn new_client(&mut self, target: RaftId, node: &Member) -> Peer {
        Peer {
            transport: self.transport.clone(),
            target,
            member: node.clone(),
            me: self.me.clone(),
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
        // for the old member's. It names its sender too, which the receiver checks against the
        // node the transport authenticated.
        let body = postcard::to_allocvec(&(&self.member.node_id, &self.me, req))
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

/// Decodes a Raft request and checks who may send it:
///
/// - it is addressed to this member, not to another that used to have this address;
/// - its sender is a member of the node `caller` (the node the transport authenticated: the
///   name in its certificate), so no node speaks for another;
/// - the leader or candidate the request claims to come from (`claimed`) is that sender;
/// - the sender is a voter of this member's membership. Only a member that knows no membership
///   yet (a new node before its first entries) takes a leader's word for it.
fn raft_request<T: DeserializeOwned>(
    control: &crate::Control,
    caller: &str,
    body: &[u8],
    claimed: impl Fn(&T) -> Option<RaftId>,
) -> Result<T, WireError> {
    let me = control.me().node_id.as_str();
    let (target, sender, req): (String, String, T) = decode(body)?;
    if target != me {
        return Err(WireError::Rejected(format!(
            "this address now belongs to control-plane member {me}, not {target}"
        )));
    }
    let refuse = |why: String| {
        metrics::counter!("noodle_control_refused_messages_total").increment(1);
        tracing::debug!(%caller, %sender, %why, "refusing a Raft message");
        Err(WireError::Rejected(why))
    };
    if base_node_id(&sender) != caller {
        return refuse(format!("node {caller} may not speak for member {sender}"));
    }
    let sender_id = raft_id(&sender);
    if claimed(&req) != Some(sender_id) {
        return refuse(format!(
            "member {sender} sent a message in another member's name"
        ));
    }
    let may_lead = {
        let metrics = control.raft().metrics();
        let metrics = metrics.borrow();
        let membership = metrics.membership_config.membership();
        let knows_membership = membership.nodes().next().is_some();
        !knows_membership || membership.voter_ids().any(|id| id == sender_id)
    };
    if !may_lead {
        return refuse(format!("member {sender} is not a voter"));
    }
    Ok(req)
}

/// Refuses a proposal the node `caller` forwarded, counted and logged: a member trying what
/// it may not is worth an operator's look.
fn refused_proposal<T>(caller: &str, why: String) -> Result<T, WireError> {
    metrics::counter!("noodle_control_refused_messages_total").increment(1);
    tracing::warn!(%caller, %why, "refusing a forwarded proposal");
    Err(WireError::Rejected(why))
}

/// Checks a proposal the node `caller` forwards: what a node may propose for itself, then the
/// node's gate (the authoriser, with the credential it came with).
fn admit(
    control: &crate::Control,
    caller: &str,
    forwarded: crate::Forwarded,
) -> Result<crate::Proposal, WireError> {
    let mut proposal = forwarded.proposal;
    may_forward(control, caller, &proposal.command)?;
    if let Some(gate) = control.gate() {
        let voter = control.is_voter_node(caller);
        let mut needs = Vec::new();
        what_it_needs(control, caller, &proposal.command, &mut needs);
        if let Err(why) = gate.check(
            caller,
            voter,
            forwarded.credential.as_deref(),
            &needs,
            &mut proposal,
        ) {
            return refused_proposal(caller, why);
        }
    }
    Ok(proposal)
}

/// What the leader needs to take `command` from a member that is not a voter: the rights the
/// API asks of a person for the same write.
fn what_it_needs(
    control: &crate::Control,
    caller: &str,
    command: &crate::Command,
    out: &mut Vec<crate::Needs>,
) {
    use crate::{Command, Needs};
    let needs = match command {
        Command::Nothing | Command::RegisterNode { .. } | Command::Checkpoint(_) => Needs::Node,
        Command::ConfigSet { key, .. } | Command::ConfigUnset { key } => {
            Needs::right("config", "write", Some(key))
        }
        // A join token's record: made, and revoked, by a person. Its uses are spent by the
        // voter that admits a joiner (only voters hold the CA key), which needs no token.
        Command::Cas { key, .. } if key.starts_with("join-token/") => {
            Needs::right("cluster", "admit", None)
        }
        Command::Cas { .. }
        | Command::SetRootKey { .. }
        | Command::SetRootPublicKey { .. }
        | Command::PruneAudit { .. } => Needs::Voter,
        Command::Revoke { .. } => Needs::right("cap", "revoke", None),
        Command::PolicySet { .. } | Command::PolicyRemove { .. } => {
            Needs::right("policy", "write", None)
        }
        Command::RemoveNode { .. } => Needs::right("cluster", "remove", None),
        Command::Machine { name, command } => {
            let needs = match control.store().machines().get(name) {
                Ok(machine) => control
                    .read_local(|v| Ok(machine.forwarding(&v.machine(name), caller, command)))
                    .unwrap_or_else(|_| vec![Needs::Voter]),
                Err(_) => vec![Needs::Voter],
            };
            out.extend(needs);
            return;
        }
        Command::Batch(proposals) => {
            for p in proposals {
                what_it_needs(control, caller, &p.command, out);
            }
            return;
        }
    };
    out.push(needs);
}

/// Whether the node `caller` may forward `command`: what a node proposes on its own behalf
/// (its signing key, its checkpoints, a subsystem's reports) it may propose only for itself,
/// and the capability root key is set only by the leader itself.
fn may_forward(
    control: &crate::Control,
    caller: &str,
    command: &crate::Command,
) -> Result<(), WireError> {
    use crate::Command;
    let refuse = |why: String| refused_proposal(caller, why);
    match command {
        Command::RegisterNode { node_id, .. } if node_id != caller => refuse(format!(
            "node {caller} may not register a key for node {node_id}"
        )),
        Command::Checkpoint(cp) if cp.signer != caller => refuse(format!(
            "node {caller} may not sign a checkpoint as {}",
            cp.signer
        )),
        Command::SetRootKey { .. } | Command::SetRootPublicKey { .. } => {
            refuse(format!("node {caller} may not set the capability root key"))
        }
        Command::Batch(proposals) => proposals
            .iter()
            .try_for_each(|p| may_forward(control, caller, &p.command)),
        Command::Machine { name, command } => {
            let verdict = control
                .read_local(|v| {
                    Ok(control
                        .store()
                        .machines()
                        .get(name)
                        .and_then(|m| m.may_forward(&v.machine(name), caller, command)))
                })
                .map_err(|e| WireError::Failed(e.to_string()))?;
            match verdict {
                Ok(()) => Ok(()),
                Err(why) => refuse(why.0),
            }
        }
        _ => Ok(()),
    }
}

/// Answers one control-plane request from the node `caller` (authenticated by the transport).
/// `None` if `method` is not ours.
pub(crate) async fn serve(
    control: &crate::Control,
    caller: &str,
    method: &str,
    body: &[u8],
) -> Option<Vec<u8>> {
    let raft = control.raft();
    Some(match method {
        APPEND => {
            let leader = |r: &AppendEntriesRequest<TypeConfig>| r.vote.leader_id().voted_for();
            match raft_request(control, caller, body, leader) {
                Ok(req) => encode(&Ok::<_, WireError>(raft.append_entries(req).await)),
                Err(e) => encode(&Err::<(), _>(e)),
            }
        }
        VOTE => {
            let candidate = |r: &VoteRequest<RaftId>| r.vote.leader_id().voted_for();
            match raft_request(control, caller, body, candidate) {
                Ok(req) => encode(&Ok::<_, WireError>(raft.vote(req).await)),
                Err(e) => encode(&Err::<(), _>(e)),
            }
        }
        SNAPSHOT => {
            let leader = |r: &InstallSnapshotRequest<TypeConfig>| r.vote.leader_id().voted_for();
            match raft_request(control, caller, body, leader) {
                Ok(req) => encode(&Ok::<_, WireError>(raft.install_snapshot(req).await)),
                Err(e) => encode(&Err::<(), _>(e)),
            }
        }
        PROPOSE => match decode::<crate::Forwarded>(body).and_then(|f| admit(control, caller, f)) {
            Ok(p) => encode(&control.propose_here(p).await),
            Err(e) => encode(&Err::<crate::Response, _>(e)),
        },
        READ_INDEX => encode(&control.read_index_here().await),
        _ => return None,
    })
}
