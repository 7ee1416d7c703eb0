//! Garbage collection. On the control plane's leader, the retention policy: old versions of
//! each path beyond the newest [`FabricConfig::keep_versions`] and older than
//! [`FabricConfig::keep_for`] are forgotten, never the one a path shows and never one a
//! snapshot shows (the state machine checks both again when it applies the forgetting). On
//! every node: chunks that no version refers to any more, and chunks of uploads that never
//! became a version, are removed once older than [`FabricConfig::upload_grace`], except what
//! another subsystem pinned (the shipped files of jobs that have not ended).
//!
//! [`FabricConfig::keep_versions`]: crate::FabricConfig::keep_versions
//! [`FabricConfig::keep_for`]: crate::FabricConfig::keep_for
//! [`FabricConfig::upload_grace`]: crate::FabricConfig::upload_grace

use crate::machine::{self, FabricCommand, limits};
use crate::path::Prefix;
use crate::subsystem::FabricNode;
use noodle_chunks::{ChunkId, Manifest};
use noodle_control::Proposal;
use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// How often the leader applies the retention policy to a page of paths.
const VERSIONS_ROUND: Duration = Duration::from_secs(1);
/// Paths looked at per round.
const PATHS_PER_ROUND: usize = 256;
/// Versions read per page when the live chunks are gathered.
const PAGE: usize = 1024;

/// The leader's retention rounds, for as long as the node runs.
pub(crate) async fn versions_loop(node: Arc<FabricNode>) {
    let mut after = None;
    let mut tick = tokio::time::interval(VERSIONS_ROUND);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if !node.host.control.is_leader() {
            continue;
        }
        match versions_round(&node, after.as_ref()).await {
            Ok(next) => after = next,
            Err(e) => tracing::debug!(error = %e, "fabric retention round"),
        }
    }
}

/// One page of paths after `after`: the path to go on from, `None` at the end.
async fn versions_round(
    node: &FabricNode,
    after: Option<&crate::ObjectPath>,
) -> Result<Option<crate::ObjectPath>, String> {
    let root = Prefix::root();
    let page = node
        .read_now(|v| v.list(&root, after, PATHS_PER_ROUND))
        .map_err(|r| r.message)?;
    let now_ms = noodle_host::now_ms();
    let keep_ms = u64::try_from(node.cfg.keep_for.as_millis()).unwrap_or(u64::MAX);
    for (path, _) in &page {
        let versions = node
            .read_now(|v| v.versions(path, limits::VERSIONS_LISTED_MAX))
            .map_err(|r| r.message)?;
        let old: Vec<_> = versions
            .into_iter()
            .skip(node.cfg.keep_versions.max(1))
            .filter(|v| now_ms.saturating_sub(v.id.hlc.wall_ms) >= keep_ms)
            .map(|v| v.id)
            .take(limits::FORGET_MAX)
            .collect();
        if old.is_empty() {
            continue;
        }
        let command = FabricCommand::Forget {
            path: path.to_string(),
            ids: old,
        };
        node.host
            .control
            .propose(Proposal::machine(machine::NAME, machine::encode(&command)))
            .await
            .map_err(|e| e.to_string())?;
    }
    Ok(match page.last() {
        Some((last, _)) if page.len() == PATHS_PER_ROUND => Some(last.clone()),
        _ => None,
    })
}

/// This node's chunk collection, every [`crate::FabricConfig::gc_every`].
pub(crate) async fn chunks_loop(node: Arc<FabricNode>) {
    let mut tick = tokio::time::interval(node.cfg.gc_every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        let worker = node.clone();
        match tokio::task::spawn_blocking(move || collect_chunks(&worker)).await {
            Ok(Ok(0)) => {}
            Ok(Ok(removed)) => {
                tracing::info!(removed, "fabric chunks no version refers to removed")
            }
            Ok(Err(e)) => tracing::warn!(error = %e, "fabric chunk collection"),
            Err(e) => tracing::warn!(error = %e, "fabric chunk collection"),
        }
    }
}

/// Removes the chunks of this node's store that no version refers to and that are older
/// than the grace. Returns how many. Blocking.
pub(crate) fn collect_chunks(node: &FabricNode) -> Result<usize, String> {
    // Listed first: a chunk stored after this is younger than the grace anyway.
    let stored = node.store.stored().map_err(|e| e.to_string())?;
    let mut live: HashSet<ChunkId> = HashSet::new();
    // What other subsystems still need (the files of jobs that have not ended).
    let pinned: Vec<ChunkId> = {
        let pins = node.pins.lock().unwrap_or_else(|e| e.into_inner());
        pins.iter().flat_map(|p| p()).collect()
    };
    for id in pinned {
        if live.insert(id)
            && let Ok(bytes) = node.store.get(&id)
            && let Ok(manifest) = Manifest::decode(&bytes)
        {
            live.extend(manifest.chunk_ids());
        }
    }
    let mut cursor = Vec::new();
    loop {
        let page = node
            .read_now(|v| v.all_versions(&cursor, PAGE))
            .map_err(|r| r.message)?;
        for (_, _, version) in &page {
            // Removals, and objects kept in the records, have no chunks.
            let Some(content) = version.content.as_ref().filter(|c| c.bytes.is_none()) else {
                continue;
            };
            let id = ChunkId(content.manifest);
            if !live.insert(id) {
                continue;
            }
            match node.store.get(&id) {
                Ok(bytes) => {
                    let manifest = Manifest::decode(&bytes).map_err(|e| e.to_string())?;
                    live.extend(manifest.chunk_ids());
                }
                // Its chunks here, if any, cannot be told apart: collect nothing this time.
                Err(_) if content.replicas.contains(&node.host.node_id) => {
                    return Err(format!(
                        "manifest {id} of a version held here is missing: nothing collected"
                    ));
                }
                Err(_) => {}
            }
        }
        match page.last() {
            Some((key, _, _)) if page.len() == PAGE => cursor = key.clone(),
            _ => break,
        }
    }
    let now = SystemTime::now();
    let mut removed = 0;
    for (id, written) in stored {
        let old = now
            .duration_since(written)
            .is_ok_and(|age| age >= node.cfg.upload_grace);
        // Looked at again: a new version may have refreshed it meanwhile.
        if old && !live.contains(&id) && node.store.remove_if_idle(&id, node.cfg.upload_grace) {
            removed += 1;
        }
    }
    metrics::counter!("noodle_fabric_collected_chunks_total").increment(removed as u64);
    Ok(removed)
}
