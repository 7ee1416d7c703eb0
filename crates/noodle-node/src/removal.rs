//! Removing a node from the cluster (`noodle node remove`): the control plane records it
//! ([`Command::RemoveNode`]), its leader takes it out of the Raft membership, and every node,
//! as soon as it applies the record, refuses the removed node's links
//! ([`noodle_link::Link::refuse`]) and forgets its gossiped entry. The same follower hands the
//! node table the nodes' registered signing keys.

use crate::cluster::ClusterState;
use crate::control::ControlPlane;
use noodle_api::{EventKind, NodeStatus, RemovedNode};
use noodle_control::{Command, Response as Applied};
use noodle_host::{Actor, Authz, EventBus};
use noodle_link::Link;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub(crate) enum RemoveError {
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    NotFound(String),
    #[error(transparent)]
    Control(#[from] noodle_control::ControlError),
}

/// Removes the node named `node` (its id, or a name only one node has) on behalf of `actor`.
pub(crate) async fn remove(
    cluster: &ClusterState,
    authz: &Authz,
    actor: &Actor,
    node: &str,
) -> Result<RemovedNode, RemoveError> {
    let nodes = cluster.status(None).nodes;
    let by_id = nodes.iter().find(|n| n.id == node);
    let by_name: Vec<&NodeStatus> = nodes.iter().filter(|n| n.name == node).collect();
    let target: &NodeStatus = match (by_id, by_name.as_slice()) {
        (Some(n), _) | (None, &[n]) => n,
        (None, []) => {
            return Err(RemoveError::NotFound(format!(
                "no node `{}` in the cluster (see `noodle status`)",
                crate::join::sanitised(node, 128)
            )));
        }
        (None, _) => {
            return Err(RemoveError::Invalid(format!(
                "several nodes are named `{node}`; give the node id (see `noodle status`)"
            )));
        }
    };
    if target.id == cluster.node_id {
        return Err(RemoveError::Invalid(
            "a node cannot remove itself: run `noodle node remove` on another node".into(),
        ));
    }
    let command = Command::RemoveNode {
        node_id: target.id.clone(),
    };
    match authz
        .write(actor, "node.remove", &target.id, command)
        .await?
    {
        Applied::Done => Ok(RemovedNode {
            id: target.id.clone(),
            name: target.name.clone(),
        }),
        other => Err(RemoveError::Invalid(format!(
            "the control plane refused: {other:?}"
        ))),
    }
}

/// Applies the control plane's list of removed nodes to this node's link and cluster view
/// whenever it changes, as soon as this member has applied the change; and the nodes'
/// registered signing keys to the node table.
pub(crate) async fn enforce(
    plane: Arc<ControlPlane>,
    link: Link,
    cluster: Arc<ClusterState>,
    events: EventBus,
) {
    let control = &plane.control;
    let mut applied = control.watch();
    let mut removed_seen: BTreeSet<String> = BTreeSet::new();
    let mut keys_seen = BTreeMap::new();
    // The metrics change with every heartbeat; the state only when an entry is applied.
    let mut applied_seen = None;
    loop {
        let last_applied = applied.borrow_and_update().last_applied;
        if applied_seen.is_none() || last_applied != applied_seen {
            applied_seen = last_applied;
            match control.read_local(|v| Ok((v.node_keys()?, v.removed_nodes()?))) {
                Ok((keys, removed)) => {
                    if keys != keys_seen {
                        cluster.set_keys(&keys);
                        keys_seen = keys;
                    }
                    if removed != removed_seen {
                        apply_removed(&link, &cluster, &events, &removed, &removed_seen);
                        removed_seen = removed;
                    }
                }
                Err(e) => tracing::debug!(error = %e, "reading the node keys and removed nodes"),
            }
        }
        if applied.changed().await.is_err() {
            return;
        }
    }
}

/// Refuses the `removed` nodes' links and forgets them; says so for those not `seen` before.
fn apply_removed(
    link: &Link,
    cluster: &ClusterState,
    events: &EventBus,
    removed: &BTreeSet<String>,
    seen: &BTreeSet<String>,
) {
    link.refuse(removed.iter().cloned());
    cluster.set_removed(removed);
    for id in removed.difference(seen) {
        if *id == cluster.node_id {
            tracing::error!("this node was removed from the cluster");
        }
        events.emit(
            EventKind::NODE_REMOVED,
            id,
            "removed from the cluster: its links are refused",
        );
    }
}
