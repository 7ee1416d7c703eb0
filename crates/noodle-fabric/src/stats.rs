//! What the fabric holds, as every node counts it from its copy of the records in the
//! background: objects and their bytes, versions, versions with fewer live copies than they
//! should have (the repair backlog), and what each node holds. Shown on the dashboard's
//! storage panel and exported as Prometheus gauges. One pass reads the records a page at a
//! time, at most [`VERSIONS_COUNTED_MAX`] versions.

use crate::subsystem::FabricNode;
use askama::Template;
use noodle_api::NodeState;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

/// How often a pass starts.
const PASS_EVERY: Duration = Duration::from_secs(5);
/// Versions read per page.
const PAGE: usize = 4096;
/// Versions one pass counts at most.
pub(crate) const VERSIONS_COUNTED_MAX: u64 = 10_000_000;
/// The panel's stylesheet.
pub(crate) const STYLE: &str = include_str!("../templates/fabric_panel.css");

/// The counts of one pass.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct StorageStats {
    /// Paths whose newest version is an object (not a removal), and their bytes.
    pub(crate) objects: u64,
    pub(crate) bytes: u64,
    /// Versions kept, removals included.
    pub(crate) versions: u64,
    /// Versions kept in the records (every node holds them), and their bytes.
    pub(crate) kept: u64,
    pub(crate) kept_bytes: u64,
    /// Versions with content held by fewer live nodes than the copies they should have.
    pub(crate) under_replicated: u64,
    /// Per node id: versions and bytes it holds copies of.
    pub(crate) held: BTreeMap<String, (u64, u64)>,
    /// Whether a pass has finished (before that the panel says it is counting).
    pub(crate) counted: bool,
    /// Whether the pass stopped at [`VERSIONS_COUNTED_MAX`].
    pub(crate) truncated: bool,
}

/// Counts, for as long as the node runs.
pub(crate) async fn stats_loop(node: Arc<FabricNode>) {
    let mut tick = tokio::time::interval(PASS_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let worker = node.clone();
        match tokio::task::spawn_blocking(move || count(&worker)).await {
            Ok(Ok(stats)) => {
                metrics::gauge!("noodle_fabric_objects").set(stats.objects as f64);
                metrics::gauge!("noodle_fabric_object_bytes").set(stats.bytes as f64);
                metrics::gauge!("noodle_fabric_versions").set(stats.versions as f64);
                metrics::gauge!("noodle_fabric_under_replicated_versions")
                    .set(stats.under_replicated as f64);
                metrics::gauge!("noodle_fabric_store_bytes").set(node.store.total_bytes() as f64);
                *node.stats.lock().unwrap_or_else(|e| e.into_inner()) = stats;
            }
            Ok(Err(e)) => tracing::debug!(error = %e, "fabric counts"),
            Err(e) => tracing::debug!(error = %e, "fabric counts"),
        }
    }
}

/// One pass over the records. Blocking.
fn count(node: &FabricNode) -> Result<StorageStats, String> {
    let live = node.live_nodes();
    let r = node.cfg.replicas.min(live.len().max(1));
    let mut stats = StorageStats {
        counted: true,
        ..StorageStats::default()
    };
    let mut cursor = Vec::new();
    // The newest version of the path being read (versions come in path order, oldest first).
    let mut last: Option<(String, Option<u64>)> = None;
    let finish = |stats: &mut StorageStats, last: Option<(String, Option<u64>)>| {
        if let Some((_, Some(size))) = last {
            stats.objects += 1;
            stats.bytes += size;
        }
    };
    loop {
        let page = node
            .read_now(|v| v.all_versions(&cursor, PAGE))
            .map_err(|r| r.message)?;
        for (_, path, version) in &page {
            if last.as_ref().is_some_and(|(p, _)| p != path.as_str()) {
                finish(&mut stats, last.take());
            }
            stats.versions += 1;
            let size = version.content.as_ref().map(|c| c.size);
            if let Some(content) = &version.content
                && content.bytes.is_some()
            {
                stats.kept += 1;
                stats.kept_bytes += content.size;
            } else if let Some(content) = &version.content {
                let alive = content
                    .replicas
                    .iter()
                    .filter(|n| live.contains(*n))
                    .count();
                if alive < r {
                    stats.under_replicated += 1;
                }
                for n in &content.replicas {
                    let held = stats.held.entry(n.clone()).or_default();
                    held.0 += 1;
                    held.1 += content.size;
                }
            }
            last = Some((path.to_string(), size));
        }
        if stats.versions >= VERSIONS_COUNTED_MAX {
            stats.truncated = true;
            break;
        }
        match page.last() {
            Some((key, _, _)) if page.len() == PAGE => cursor = key.clone(),
            _ => break,
        }
    }
    finish(&mut stats, last);
    Ok(stats)
}

/// A node's line on the panel.
pub(crate) struct NodeUsage {
    pub(crate) name: String,
    pub(crate) id: String,
    pub(crate) state: &'static str,
    pub(crate) versions: u64,
    pub(crate) held: String,
    pub(crate) free: String,
}

#[derive(Template)]
#[template(path = "fabric_panel.html")]
struct FabricPanelView<'a> {
    stats: &'a StorageStats,
    bytes: String,
    kept_bytes: String,
    nodes: &'a [NodeUsage],
    denied: bool,
}

/// The storage panel's HTML (every value escaped by the template).
pub(crate) fn render(
    stats: &StorageStats,
    nodes: &[NodeUsage],
    denied: bool,
) -> Result<String, askama::Error> {
    FabricPanelView {
        stats,
        bytes: noodle_api::format::format_bytes(stats.bytes),
        kept_bytes: noodle_api::format::format_bytes(stats.kept_bytes),
        nodes,
        denied,
    }
    .render()
}

impl FabricNode {
    /// The panel for the nodes this node knows.
    pub(crate) fn panel_html(&self, denied: bool) -> Result<String, askama::Error> {
        let stats = self.stats.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let mut nodes: Vec<NodeUsage> = self
            .host
            .cluster
            .nodes()
            .into_iter()
            .map(|(info, state)| {
                let (versions, bytes) = stats.held.get(&info.id).copied().unwrap_or_default();
                NodeUsage {
                    state: match state {
                        NodeState::Alive => "alive",
                        NodeState::Suspect => "suspect",
                        _ => "dead",
                    },
                    versions,
                    held: noodle_api::format::format_bytes(bytes),
                    free: noodle_api::format::format_bytes(info.resources.disk_free_bytes),
                    name: info.name,
                    id: info.id,
                }
            })
            .collect();
        nodes.sort_by(|a, b| a.name.cmp(&b.name).then(a.id.cmp(&b.id)));
        render(&stats, &nodes, denied)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_panel_shows_the_counts_and_escapes_names() {
        let stats = StorageStats {
            objects: 3,
            bytes: 3 << 20,
            versions: 5,
            kept: 2,
            kept_bytes: 2048,
            under_replicated: 1,
            held: BTreeMap::new(),
            counted: true,
            truncated: false,
        };
        let nodes = [NodeUsage {
            name: "<b>x</b>".into(),
            id: "n1".into(),
            state: "alive",
            versions: 5,
            held: "3.0 MiB".into(),
            free: "1.0 GiB".into(),
        }];
        let html = render(&stats, &nodes, false).unwrap_or_default();
        for part in [
            "id=\"f-objects\">3<",
            "id=\"f-versions\">5<",
            "id=\"f-under\">1<",
            "id=\"f-kept\">2, 2.0 KiB<",
            "&#60;b&#62;x&#60;/b&#62;",
        ] {
            assert!(html.contains(part), "{part} in {html}");
        }
        assert!(!html.contains("<b>x"));
        let denied = render(&stats, &nodes, true).unwrap_or_default();
        assert!(!denied.contains("f-objects") && denied.contains("fabric:read"));
    }
}
