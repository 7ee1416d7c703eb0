//! Background repair, on the control plane's leader: walks every version a page per round and,
//! where fewer than R of its recorded replicas are alive, asks live nodes to copy it from one
//! that holds it ([`crate::replication::plan_repair`]), then records where its copies are. A
//! bounded number of copies per round, so repair never starves foreground reads and writes.

use crate::machine::{self, FabricCommand};
use crate::replication::plan_repair;
use crate::subsystem::{FabricNode, replicate_to};
use noodle_chunks::ChunkId;
use noodle_control::Proposal;
use std::sync::Arc;
use std::time::Duration;

/// How often the leader looks.
const ROUND: Duration = Duration::from_secs(1);
/// Versions looked at per round.
const VERSIONS_PER_ROUND: usize = 256;
/// Copies made per round at most.
const COPIES_PER_ROUND: usize = 8;

/// Runs for as long as the node does.
pub(crate) async fn repair_loop(node: Arc<FabricNode>) {
    let mut cursor: Vec<u8> = Vec::new();
    let mut tick = tokio::time::interval(ROUND);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if !node.host.control.is_leader() {
            continue;
        }
        match round(&node, &cursor).await {
            Ok(Some(next)) => cursor = next,
            Ok(None) => cursor.clear(),
            Err(e) => tracing::debug!(error = %e, "fabric repair round"),
        }
    }
}

/// One round from `cursor`: the cursor to go on from, `None` at the end of the versions.
async fn round(node: &FabricNode, cursor: &[u8]) -> Result<Option<Vec<u8>>, String> {
    let page = node
        .host
        .control
        .read_local(|v| machine::view(v).all_versions(cursor, VERSIONS_PER_ROUND))
        .map_err(|e| e.to_string())?;
    let Some((last, _, _)) = page.last() else {
        return Ok(None);
    };
    let next = last.clone();
    let live = node.live_nodes();
    let candidates = node.candidates();
    let r = node.cfg.replicas.min(candidates.len().max(1));
    let mut copies_left = COPIES_PER_ROUND;
    for (_, path, version) in page {
        // Removals, and objects kept in the records (on every node), need no copies.
        let Some(content) = version.content.as_ref().filter(|c| c.bytes.is_none()) else {
            continue;
        };
        let good: Vec<String> = content
            .replicas
            .iter()
            .filter(|n| live.contains(*n))
            .cloned()
            .collect();
        if good.len() >= r || good.is_empty() || copies_left == 0 {
            continue;
        }
        let manifest = ChunkId(content.manifest);
        let plan = plan_repair(&manifest, &good, &candidates, r);
        let mut replicas = good.clone();
        for copy in plan.copies.into_iter().take(copies_left) {
            copies_left -= 1;
            let result = if copy.to == node.host.node_id {
                match node.host.cluster.peer_addr(&copy.from) {
                    Some(addr) => node
                        .store
                        .fetch(&node.host.link, addr, manifest)
                        .await
                        .map(|_| ())
                        .map_err(|e| e.to_string()),
                    None => Err(format!("no address for {}", copy.from)),
                }
            } else {
                match node.host.cluster.peer_addr(&copy.to) {
                    Some(addr) => {
                        replicate_to(&node.host.link, addr, manifest, Some(copy.from.clone())).await
                    }
                    None => Err(format!("no address for {}", copy.to)),
                }
            };
            match result {
                Ok(()) => {
                    metrics::counter!("noodle_fabric_repaired_copies_total").increment(1);
                    replicas.push(copy.to);
                }
                Err(e) => tracing::warn!(%path, to = %copy.to, error = %e, "a repair copy failed"),
            }
        }
        if replicas.len() > good.len() {
            let command = FabricCommand::SetReplicas {
                path: path.to_string(),
                id: version.id.clone(),
                replicas,
            };
            let proposal = Proposal::machine(machine::NAME, machine::encode(&command));
            node.host
                .control
                .propose(proposal)
                .await
                .map_err(|e| e.to_string())?;
        }
    }
    Ok(Some(next))
}
