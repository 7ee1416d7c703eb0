//! The web dashboard page served at `/`: one server-rendered HTML page showing the cluster as one
//! machine (totals, nodes, links, recent events, and each subsystem's panel), kept live by a
//! little plain JavaScript that listens on `/v1/dashboard/stream` (SSE: `event: status` carries a
//! `StatusReport`, `event: panel` a subsystem's [`Panel`] re-rendered, `event: event` one
//! `Event`).
//!
//! The page, its script and its stylesheet are compiled into the binary and the script and style are
//! inlined, so the page needs no other route and works offline. This module only formats data it
//! is handed: it must never do I/O, read the clock, or reach into node state. It must never turn
//! off HTML escaping for node-provided data (names, labels, addresses, event details all come from
//! the network or from users); a panel's HTML is the subsystem's own render, escaped there, and
//! the script puts it in place only after dropping scripts and event-handler attributes.

use askama::Template;
use noodle_api::format::{format_bytes, format_rtt_us};
use noodle_api::{Event, StatusReport};
use noodle_host::{Panel, format_utc_ms};
use std::collections::HashMap;

/// The page's script, inlined into a `<script>` element. It is our own constant, never data.
const DASHBOARD_JS: &str = include_str!("../templates/dashboard.js");
/// The page's stylesheet, inlined into a `<style>` element. It is our own constant, never data.
const DASHBOARD_CSS: &str = include_str!("../templates/dashboard.css");

/// The page shows at most this many events; the script keeps the same bound.
const EVENTS_SHOWN_MAX: usize = 50;
/// Render the whole dashboard page for `report`, the node's recent `events` (any order; the page
/// shows the newest [`EVENTS_SHOWN_MAX`] first) and the subsystems' `panels`.
pub(crate) fn render_dashboard(
    report: &StatusReport,
    events: &[Event],
    panels: &[Panel],
    styles: &[&'static str],
) -> Result<String, askama::Error> {
    DashboardPage::new(report, events, panels, styles).render()
}

#[derive(Template)]
#[template(path = "dashboard.html")]
struct DashboardPage<'a> {
    cluster_id: &'a str,
    self_id: &'a str,
    /// Name of the node that served the page, or its id when it is not in the node list.
    self_name: &'a str,
    totals: TotalsView,
    /// The control plane in one line.
    control: String,
    nodes: Vec<NodeView<'a>>,
    links: Vec<LinkView<'a>>,
    panels: &'a [Panel],
    /// The subsystems' stylesheets, inlined after the page's own.
    styles: &'a [&'static str],
    events: Vec<EventView<'a>>,
    css: &'static str,
    js: &'static str,
}

struct TotalsView {
    nodes_alive: u32,
    nodes_suspect: u32,
    nodes_dead: u32,
    cpus: u32,
    mem_total: String,
    mem_available: String,
    gpus: u32,
}

struct NodeView<'a> {
    id: &'a str,
    name: &'a str,
    /// `alive`, `suspect` or `dead`; also the CSS class `state-<state>`.
    state: &'static str,
    is_self: bool,
    addr: &'a str,
    version: &'a str,
    updated_at: String,
    cpus: u32,
    mem_total: String,
    mem_available: String,
    load: String,
    disk_free: String,
    disk_total: String,
    gpus: u32,
    /// One line per GPU, shown as the GPU cell's tooltip.
    gpu_detail: String,
    labels: Vec<(&'a str, &'a str)>,
}

struct LinkView<'a> {
    from_id: &'a str,
    from_name: &'a str,
    peer_id: &'a str,
    peer_name: &'a str,
    rtt: String,
    kx_group: &'a str,
}

struct EventView<'a> {
    seq: u64,
    at_ms: u64,
    at: String,
    kind: &'a str,
    node_id: &'a str,
    node_name: &'a str,
    detail: &'a str,
}

impl<'a> DashboardPage<'a> {
    fn new(
        report: &'a StatusReport,
        events: &'a [Event],
        panels: &'a [Panel],
        styles: &'a [&'static str],
    ) -> Self {
        let names: HashMap<&str, &str> = report
            .nodes
            .iter()
            .map(|n| (n.id.as_str(), n.name.as_str()))
            .collect();
        // Unknown ids (a node that left the view) are shown as themselves.
        let name_of = |id: &'a str| -> &'a str { names.get(id).copied().unwrap_or(id) };

        let t = &report.totals;
        let totals = TotalsView {
            nodes_alive: t.nodes_alive,
            nodes_suspect: t.nodes_suspect,
            nodes_dead: t.nodes_dead,
            cpus: t.cpus,
            mem_total: format_bytes(t.mem_total_bytes),
            mem_available: format_bytes(t.mem_available_bytes),
            gpus: t.gpus,
        };

        let nodes = report
            .nodes
            .iter()
            .map(|n| NodeView {
                id: &n.id,
                name: &n.name,
                state: n.state.as_str(),
                is_self: n.is_self || n.id == report.self_id,
                addr: &n.addr,
                version: &n.version,
                updated_at: format_utc_ms(n.updated_at_ms),
                cpus: n.cpus,
                mem_total: format_bytes(n.mem_total_bytes),
                mem_available: format_bytes(n.mem_available_bytes),
                load: format!("{:.2}", n.load_1m),
                disk_free: format_bytes(n.disk_free_bytes),
                disk_total: format_bytes(n.disk_total_bytes),
                gpus: n.gpus,
                gpu_detail: n
                    .gpu_list
                    .iter()
                    .map(|g| {
                        format!(
                            "{}: {} ({})",
                            g.index,
                            g.name,
                            format_bytes(g.mem_total_bytes)
                        )
                    })
                    .collect::<Vec<_>>()
                    .join("\n"),
                labels: n
                    .labels
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_str()))
                    .collect(),
            })
            .collect();

        let links = report
            .links
            .iter()
            .map(|l| LinkView {
                from_id: &l.from,
                from_name: name_of(&l.from),
                peer_id: &l.peer,
                peer_name: name_of(&l.peer),
                rtt: format_rtt_us(l.rtt_us),
                kx_group: &l.kx_group,
            })
            .collect();

        let mut newest: Vec<&Event> = events.iter().collect();
        newest.sort_by_key(|e| std::cmp::Reverse((e.at_ms, e.seq)));
        newest.truncate(EVENTS_SHOWN_MAX);
        let events = newest
            .into_iter()
            .map(|e| EventView {
                seq: e.seq,
                at_ms: e.at_ms,
                at: format_utc_ms(e.at_ms),
                kind: e.kind.as_str(),
                node_id: &e.node,
                node_name: name_of(&e.node),
                detail: &e.detail,
            })
            .collect();

        let control = match &report.control {
            None => "starting".to_string(),
            Some(c) => {
                let voters: Vec<&str> = c.voters.iter().map(|v| name_of(v)).collect();
                format!(
                    "leader {} · voters {} · commit index {} · term {}",
                    c.leader.as_deref().map_or("none (electing)", name_of),
                    voters.join(", "),
                    c.commit_index,
                    c.term
                )
            }
        };
        DashboardPage {
            cluster_id: &report.cluster_id,
            self_id: &report.self_id,
            self_name: name_of(&report.self_id),
            totals,
            control,
            nodes,
            links,
            panels,
            styles,
            events,
            css: DASHBOARD_CSS,
            js: DASHBOARD_JS,
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use noodle_api::{EventKind, GpuInfo, LinkStatus, NodeState, NodeStatus, Totals};
    use std::collections::BTreeMap;

    const GIB: u64 = 1 << 30;

    fn node(id: &str, name: &str, state: NodeState, is_self: bool) -> NodeStatus {
        NodeStatus {
            id: id.to_owned(),
            name: name.to_owned(),
            addr: "192.168.1.10:7070".to_owned(),
            state,
            is_self,
            cpus: 8,
            slots: 8,
            mem_total_bytes: 32 * GIB,
            mem_available_bytes: 20 * GIB,
            load_1m: 0.5,
            disk_total_bytes: 512 * GIB,
            disk_free_bytes: 100 * GIB,
            gpus: 0,
            gpu_list: Vec::new(),
            labels: BTreeMap::new(),
            version: "0.1.0".to_owned(),
            updated_at_ms: 1_700_000_000_000,
        }
    }

    fn report() -> StatusReport {
        let mut a = node("node-aaa", "alpha", NodeState::Alive, true);
        a.gpus = 1;
        a.gpu_list = vec![GpuInfo {
            index: 0,
            name: "NVIDIA H100".to_owned(),
            mem_total_bytes: 80 * GIB,
            vendor: "nvidia".to_owned(),
        }];
        let mut b = node("node-bbb", "beta", NodeState::Alive, false);
        b.labels
            .insert("role".to_owned(), "<script>alert(1)</script>".to_owned());
        let c = node("node-ccc", "gamma", NodeState::Dead, false);
        StatusReport {
            cluster_id: "cluster-123".to_owned(),
            self_id: "node-aaa".to_owned(),
            totals: Totals {
                nodes_alive: 2,
                nodes_suspect: 0,
                nodes_dead: 1,
                cpus: 16,
                mem_total_bytes: 64 * GIB,
                mem_available_bytes: 40 * GIB,
                gpus: 1,
            },
            nodes: vec![a, b, c],
            links: vec![LinkStatus {
                from: "node-aaa".to_owned(),
                peer: "node-bbb".to_owned(),
                rtt_us: 850,
                kx_group: "X25519MLKEM768".to_owned(),
            }],
            control: Some(noodle_api::ControlInfo {
                leader: Some("node-aaa".to_owned()),
                voters: vec!["node-aaa".to_owned(), "node-bbb".to_owned()],
                learners: Vec::new(),
                term: 2,
                commit_index: 42,
                role: "leader".to_owned(),
                error: None,
            }),
        }
    }

    fn event(seq: u64, kind: EventKind, detail: &str) -> Event {
        Event {
            seq,
            at_ms: 1_700_000_000_000 + seq * 1000,
            kind,
            node: "node-ccc".to_owned(),
            detail: detail.to_owned(),
        }
    }

    fn name_in_fixture(id: &str) -> String {
        report()
            .nodes
            .into_iter()
            .find(|n| n.id == id)
            .map(|n| n.name)
            .unwrap_or_default()
    }

    #[test]
    fn page_shows_every_node_escaped() {
        let events = [
            event(1, EventKind::NODE_JOINED, "joined"),
            event(2, EventKind::NODE_DEAD, "<b>gone</b>"),
        ];
        let html = render_dashboard(&report(), &events, &[], &[]).unwrap();

        for id in ["node-aaa", "node-bbb", "node-ccc"] {
            assert!(
                html.contains(&format!("<tr data-node-id=\"{id}\"")),
                "no row for {id}"
            );
        }
        assert!(html.contains("cluster-123"));
        assert!(html.contains("<span class=\"state state-dead\">dead</span>"));
        assert!(html.contains("<span class=\"state state-alive\">alive</span>"));
        assert!(html.contains("32.0 GiB"));
        assert!(html.contains("850 µs"));
        assert!(html.contains("X25519MLKEM768"));
        assert!(html.contains("NVIDIA H100 (80.0 GiB)"));
        assert_eq!(html.matches("class=\"self-marker\"").count(), 1);
        let a = name_in_fixture("node-aaa");
        let b = name_in_fixture("node-bbb");
        assert!(
            html.contains(&format!(
                "leader {a} · voters {a}, {b} · commit index 42 · term 2"
            )),
            "control-plane line missing"
        );

        // Node-provided text is escaped, never markup.
        assert!(!html.contains("<script>alert(1)"));
        assert!(html.contains("&#60;script&#62;alert(1)&#60;/script&#62;"));
        assert!(!html.contains("<b>gone</b>"));

        // Newest event first.
        let newest = html.find("data-seq=\"2\"").unwrap();
        let oldest = html.find("data-seq=\"1\"").unwrap();
        assert!(newest < oldest);
    }

    #[test]
    fn page_keeps_only_the_newest_events() {
        let events: Vec<Event> = (1..=80)
            .map(|seq| event(seq, EventKind::LINK_UP, "up"))
            .collect();
        let html = render_dashboard(&report(), &events, &[], &[]).unwrap();
        assert_eq!(html.matches("data-seq=").count(), EVENTS_SHOWN_MAX);
        assert!(html.contains("data-seq=\"80\""));
        assert!(!html.contains("data-seq=\"30\""));
    }

    #[test]
    fn empty_report_renders() {
        let empty = StatusReport {
            cluster_id: "c".to_owned(),
            self_id: "n".to_owned(),
            totals: Totals::default(),
            nodes: Vec::new(),
            links: Vec::new(),
            control: None,
        };
        let html = render_dashboard(&empty, &[], &[], &[]).unwrap();
        // The script holds the same texts; look for the server-rendered rows.
        assert!(html.contains("<td colspan=\"10\">No nodes known yet.</td>"));
        assert!(html.contains("<td colspan=\"5\">No links measured yet.</td>"));
        assert!(html.contains("<td colspan=\"4\">No events yet.</td>"));
        assert!(!html.contains("<tr data-node-id="));
    }

    #[test]
    fn inlined_assets_cannot_close_their_element() {
        // The script and style are inlined unescaped; they must not end their element early.
        assert!(!DASHBOARD_JS.to_ascii_lowercase().contains("</script"));
        assert!(!DASHBOARD_CSS.to_ascii_lowercase().contains("</style"));
        assert!(DASHBOARD_JS.contains("/v1/dashboard/stream"));
    }

    #[test]
    fn panels_go_in_the_page_as_rendered() {
        let panels = [Panel {
            id: "ping",
            html: "<section class=\"panel\" data-panel=\"ping\">pong &#60;b&#62;</section>"
                .to_owned(),
        }];
        let html = render_dashboard(&report(), &[], &panels, &[".ping { color: red; }"]).unwrap();
        assert!(html.contains(&panels[0].html));
        assert!(
            html.contains(".ping { color: red; }"),
            "the panel's style is inlined"
        );
        let nodes = html.find("id=\"nodes-panel\"").unwrap();
        let links = html.find("id=\"links-panel\"").unwrap();
        let panel = html.find("data-panel=\"ping\"").unwrap();
        assert!(
            nodes < panel && panel < links,
            "panels come after the nodes"
        );
    }
}
