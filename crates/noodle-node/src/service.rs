//! What the node plugs into its link: requests from members go to the subsystem that registered
//! the method's prefix (the node keeps `gossip.*` and `node.*`), datagrams to the membership
//! loop, a joiner's request to admission, and link events to the event bus.

use crate::cluster::ClusterState;
use crate::membership::{GOSSIP_SYNC, MembershipInput};
use bytes::Bytes;
use noodle_api::EventKind;
use noodle_host::{EventBus, RunningSubsystem};
use noodle_link::Peer;
use noodle_link::{
    JoinPeer, LinkEvent, RecvStream, RemoteError, SendStream, Service, ServiceFuture,
};
use std::sync::{Arc, OnceLock};
use tokio::sync::mpsc;

/// Method prefixes the node itself answers; no subsystem may claim them.
pub(crate) const NODE_PREFIXES: [&str; 2] = ["gossip.", "node."];
const NODE_PING: &str = "node.ping";

/// Everything requests are dispatched to, set once the node has started it all.
pub(crate) struct Dispatch {
    pub(crate) cluster: Arc<ClusterState>,
    pub(crate) admitter: Arc<crate::join::Admitter>,
    pub(crate) events: EventBus,
    pub(crate) membership: mpsc::Sender<MembershipInput>,
    pub(crate) subsystems: Vec<Arc<dyn RunningSubsystem>>,
}

impl Dispatch {
    fn owner(&self, method: &str) -> Option<&Arc<dyn RunningSubsystem>> {
        self.subsystems
            .iter()
            .find(|s| s.rpc_prefixes().iter().any(|p| method.starts_with(p)))
    }
}

/// Checks that no two subsystems (or a subsystem and the node) claim one method prefix.
pub(crate) fn check_prefixes(subsystems: &[Arc<dyn RunningSubsystem>]) -> Result<(), String> {
    let mut claimed: Vec<(&str, &str)> = NODE_PREFIXES.iter().map(|p| (*p, "the node")).collect();
    for s in subsystems {
        for p in s.rpc_prefixes() {
            if let Some((_, by)) = claimed
                .iter()
                .find(|(q, _)| p.starts_with(q) || q.starts_with(p))
            {
                return Err(format!(
                    "subsystem {} claims the RPC prefix {p:?}, which {by} has",
                    s.name()
                ));
            }
            claimed.push((p, s.name()));
        }
    }
    Ok(())
}

#[derive(Default)]
pub(crate) struct NodeService {
    pub(crate) dispatch: OnceLock<Arc<Dispatch>>,
}

fn starting() -> RemoteError {
    RemoteError::new(RemoteError::UNAVAILABLE, "node is starting")
}

impl Service for NodeService {
    fn call(&self, from: Peer, method: &str, body: Bytes) -> ServiceFuture {
        let Some(d) = self.dispatch.get() else {
            return Box::pin(async { Err(starting()) });
        };
        match method {
            GOSSIP_SYNC => {
                let answer = crate::membership::answer_sync(&d.cluster, &from.node_id, &body)
                    .ok_or_else(|| {
                        metrics::counter!("noodle_gossip_bad_messages_total").increment(1);
                        RemoteError::new(RemoteError::BAD_REQUEST, "unreadable gossip")
                    });
                Box::pin(async move { answer })
            }
            NODE_PING => Box::pin(async move { Ok(body.to_vec()) }),
            crate::join::NODE_ADMIT => {
                let admitter = d.admitter.clone();
                Box::pin(async move { admitter.handle_forwarded(&body).await })
            }
            crate::keys::NODE_KEYS => {
                let a = &d.admitter;
                let answer = a.keys.answer_handover(&a.control, &d.events, &from.node_id);
                Box::pin(async move { answer })
            }
            crate::keys::NODE_RENEW => {
                let answer = d.admitter.keys.answer_renew(&from.node_id, &body);
                Box::pin(async move { answer })
            }
            _ => match d.owner(method) {
                Some(s) => s.call(from, method, body),
                None => noodle_host::not_found(method),
            },
        }
    }

    fn join(&self, peer: JoinPeer, body: Bytes) -> ServiceFuture {
        let Some(d) = self.dispatch.get() else {
            return Box::pin(async { Err(starting()) });
        };
        let admitter = d.admitter.clone();
        Box::pin(async move { admitter.handle(&peer, &body).await })
    }

    fn datagram(&self, _from: &Peer, data: Bytes) {
        if let Some(d) = self.dispatch.get()
            && d.membership
                .try_send(MembershipInput::Datagram(data))
                .is_err()
        {
            metrics::counter!("noodle_gossip_dropped_total").increment(1);
        }
    }

    fn event(&self, event: LinkEvent) {
        let Some(d) = self.dispatch.get() else {
            return;
        };
        match event {
            LinkEvent::Up {
                addr,
                peer_id,
                kx_group,
            } => {
                let who = peer_id.unwrap_or_else(|| addr.to_string());
                d.events
                    .emit(EventKind::LINK_UP, &who, format!("{addr} {kx_group}"));
            }
            LinkEvent::Down {
                addr,
                peer_id,
                reason,
            } => {
                let who = peer_id.unwrap_or_else(|| addr.to_string());
                d.events
                    .emit(EventKind::LINK_DOWN, &who, format!("{addr}: {reason}"));
            }
        }
    }

    fn is_stream(&self, method: &str) -> bool {
        self.dispatch
            .get()
            .and_then(|d| d.owner(method))
            .is_some_and(|s| s.is_stream(method))
    }

    fn stream(
        &self,
        from: Peer,
        method: &str,
        send: SendStream,
        recv: RecvStream,
    ) -> futures_util::future::BoxFuture<'static, ()> {
        match self.dispatch.get().and_then(|d| d.owner(method)) {
            Some(s) => s.stream(from, method, send, recv),
            None => Box::pin(async {}),
        }
    }
}
