//! The web dashboard page served at `/`: one server-rendered HTML page showing the cluster as one
//! machine (totals, nodes, links, jobs, recent events), kept live by a little plain JavaScript that
//! listens on `/v1/dashboard/stream` (SSE: `event: status` carries a `StatusReport`, `event: jobs`
//! a [`JobsSnapshot`], `event: event` one `Event`).
//!
//! The page, its script and its stylesheet are compiled into the binary and the script and style are
//! inlined, so the page needs no other route and works offline. Apart from the two readers at the
//! end ([`jobs_panel`] and [`jobs_snapshot`], which read job records from the node's local copy of
//! the control-plane state), this module only formats data it is handed: it must never do I/O, read
//! the clock, or reach into node state. It must never turn off HTML escaping for node-provided data
//! (names, labels, addresses, event details, job commands all come from the network or from users),
//! and the script must never put such data into the page with `innerHTML`.

use crate::control::Caller;
use crate::node::Shared;
use askama::Template;
use noodle_api::format::{format_bytes, format_rtt_us};
use noodle_api::{Event, JobInfo, StatusReport};
use serde::Serialize;
use std::collections::{BTreeMap, HashMap, HashSet};

/// The page's script, inlined into a `<script>` element. It is our own constant, never data.
const DASHBOARD_JS: &str = include_str!("../templates/dashboard.js");
/// The page's stylesheet, inlined into a `<style>` element. It is our own constant, never data.
const DASHBOARD_CSS: &str = include_str!("../templates/dashboard.css");

/// The page shows at most this many events; the script keeps the same bound.
const EVENTS_SHOWN_MAX: usize = 50;
/// The jobs panel lists at most this many jobs that have not ended (placed and running first, then
/// queued in submission order); the counts above the table cover them all.
const JOBS_ACTIVE_SHOWN_MAX: usize = 100;
/// The jobs panel lists this many of the newest ended jobs, newest first.
const JOBS_ENDED_SHOWN: usize = 20;

/// The jobs panel's data: rendered into the page and sent as the `jobs` message of the dashboard
/// stream every second. Bounded whatever the queue holds.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct JobsSnapshot {
    /// Jobs waiting for a node.
    pub(crate) queued: u64,
    /// Jobs placed on a node or running there (both hold their slots).
    pub(crate) running: u64,
    /// CPU slots held per node id: the sum of `cpus` of the node's placed and running jobs.
    /// Nodes that hold none are absent.
    pub(crate) slots_used: BTreeMap<String, u64>,
    /// Jobs that have not ended but are not in `jobs` (past [`JOBS_ACTIVE_SHOWN_MAX`]).
    pub(crate) more: u64,
    /// Placed and running jobs by id, then queued jobs by id, then the newest ended jobs (newest
    /// first).
    pub(crate) jobs: Vec<JobInfo>,
}

/// What the jobs panel shows.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum JobsPanel {
    Jobs(JobsSnapshot),
    /// The control plane has not started yet, or its state could not be read.
    Unavailable,
    /// The caller may read the cluster but not jobs (`jobs:read`).
    NotAllowed,
}

/// Render the whole dashboard page for `report`, the node's recent `events` (any order; the page
/// shows the newest [`EVENTS_SHOWN_MAX`] first) and `jobs`.
pub(crate) fn render_dashboard(
    report: &StatusReport,
    events: &[Event],
    jobs: &JobsPanel,
) -> Result<String, askama::Error> {
    DashboardPage::new(report, events, jobs).render()
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
    jobs: JobsView<'a>,
    events: Vec<EventView<'a>>,
    css: &'static str,
    js: &'static str,
}

struct JobsView<'a> {
    /// Why no jobs are shown; empty when they are.
    note: &'static str,
    /// `shown`, `unavailable` or `denied`; the script renders jobs only into a panel that may
    /// show them.
    mode: &'static str,
    queued: u64,
    running: u64,
    more: u64,
    usage: Vec<UsageView<'a>>,
    rows: Vec<JobRowView<'a>>,
}

struct UsageView<'a> {
    node_id: &'a str,
    name: &'a str,
    /// The node's state, as in the nodes table; also the CSS class `state-<state>`.
    state: &'static str,
    /// `used/offered`, `—/offered` while the jobs are not known.
    slots: String,
}

struct JobRowView<'a> {
    id: u64,
    state: &'a str,
    /// `state` if it is one the stylesheet knows, else `other`.
    state_class: &'static str,
    node_id: &'a str,
    node_name: &'a str,
    exit: String,
    command: String,
    started: String,
    ended: String,
    /// The row's tooltip: when and by whom the job was submitted.
    title: String,
    /// Why the job failed before or instead of running; empty if it did not.
    error: &'a str,
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
    kind: &'static str,
    node_id: &'a str,
    node_name: &'a str,
    detail: &'a str,
}

impl<'a> DashboardPage<'a> {
    fn new(report: &'a StatusReport, events: &'a [Event], jobs: &'a JobsPanel) -> Self {
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
        let jobs = jobs_view(report, jobs, &name_of);
        DashboardPage {
            cluster_id: &report.cluster_id,
            self_id: &report.self_id,
            self_name: name_of(&report.self_id),
            totals,
            control,
            nodes,
            links,
            jobs,
            events,
            css: DASHBOARD_CSS,
            js: DASHBOARD_JS,
        }
    }
}

fn jobs_view<'a>(
    report: &'a StatusReport,
    panel: &'a JobsPanel,
    name_of: &dyn Fn(&'a str) -> &'a str,
) -> JobsView<'a> {
    let (snapshot, mode, note) = match panel {
        JobsPanel::Jobs(s) => (Some(s), "shown", ""),
        JobsPanel::Unavailable => (
            None,
            "unavailable",
            "Jobs are not available yet: the control plane is starting.",
        ),
        JobsPanel::NotAllowed => (
            None,
            "denied",
            "This credential may not see jobs (it needs the jobs:read right).",
        ),
    };
    let denied = matches!(panel, JobsPanel::NotAllowed);
    let used_of =
        |id: &str| -> Option<u64> { snapshot.map(|s| s.slots_used.get(id).copied().unwrap_or(0)) };
    let mut usage: Vec<UsageView<'a>> = if denied {
        Vec::new()
    } else {
        report
            .nodes
            .iter()
            .map(|n| UsageView {
                node_id: &n.id,
                name: &n.name,
                state: n.state.as_str(),
                slots: usage_text(used_of(&n.id), Some(n.slots)),
            })
            .collect()
    };
    // Slots held on a node that left the view.
    if let Some(s) = snapshot {
        let known: HashSet<&str> = report.nodes.iter().map(|n| n.id.as_str()).collect();
        for (id, used) in &s.slots_used {
            if !known.contains(id.as_str()) {
                usage.push(UsageView {
                    node_id: id,
                    name: name_of(id),
                    state: "unknown",
                    slots: usage_text(Some(*used), None),
                });
            }
        }
    }
    let rows = snapshot
        .map(|s| {
            s.jobs
                .iter()
                .map(|j| {
                    let node_id = j.node.as_deref().unwrap_or("");
                    JobRowView {
                        id: j.id,
                        state: &j.state,
                        state_class: job_state_class(&j.state),
                        node_id,
                        node_name: if node_id.is_empty() {
                            "—"
                        } else {
                            name_of(node_id)
                        },
                        exit: j
                            .exit_code
                            .map_or_else(|| "—".to_string(), |c| c.to_string()),
                        command: format_command(&j.command),
                        started: j
                            .started_at_ms
                            .map_or_else(|| "—".to_string(), format_utc_ms),
                        ended: j.ended_at_ms.map_or_else(|| "—".to_string(), format_utc_ms),
                        title: job_title(j),
                        error: j.error.as_deref().unwrap_or(""),
                    }
                })
                .collect()
        })
        .unwrap_or_default();
    JobsView {
        note,
        mode,
        queued: snapshot.map_or(0, |s| s.queued),
        running: snapshot.map_or(0, |s| s.running),
        more: snapshot.map_or(0, |s| s.more),
        usage,
        rows,
    }
}

/// `1/8`: slots used of those offered; `—` for what is not known (as `usageText` in the script).
fn usage_text(used: Option<u64>, offered: Option<u32>) -> String {
    let part = |v: Option<String>| v.unwrap_or_else(|| "—".to_string());
    format!(
        "{}/{}",
        part(used.map(|u| u.to_string())),
        part(offered.map(|o| o.to_string()))
    )
}

/// The job states the stylesheet colours; anything else is `other` (as `jobStateClass` in the
/// script).
fn job_state_class(state: &str) -> &'static str {
    match state {
        "queued" => "queued",
        "placed" => "placed",
        "running" => "running",
        "succeeded" => "succeeded",
        "failed" => "failed",
        "cancelled" => "cancelled",
        "lost" => "lost",
        _ => "other",
    }
}

/// A job row's tooltip (as `jobTitle` in the script).
fn job_title(j: &JobInfo) -> String {
    format!(
        "submitted {} by {} · {} CPU slot(s)",
        format_utc_ms(j.submitted_at_ms),
        j.submitter,
        j.cpus
    )
}

/// A command line as a shell would read it back: words of plain characters as they are, anything
/// else in single quotes (as `formatCommand` in the script). For display only.
pub(crate) fn format_command(words: &[String]) -> String {
    words
        .iter()
        .map(|w| {
            let plain = !w.is_empty()
                && w.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "_@%+=:,./-".contains(c));
            if plain {
                w.clone()
            } else {
                format!("'{}'", w.replace('\'', "'\\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Unix milliseconds as `2023-11-14 22:13:20 UTC`. UTC so that the server render does not depend on
/// the machine's time zone; the script formats new events the same way. The calendar arithmetic
/// is the audit log's ([`noodle_audit::format_utc_ms`], `2023-11-14T22:13:20.999Z`).
pub(crate) fn format_utc_ms(unix_ms: u64) -> String {
    let rfc3339 = noodle_audit::format_utc_ms(unix_ms);
    let seconds = rfc3339.split_once('.').map_or(rfc3339.as_str(), |(s, _)| s);
    format!("{} UTC", seconds.replacen('T', " ", 1))
}

/// The jobs panel from the jobs that have not ended (`active`, any order) and the newest jobs
/// (`recent`, any order; may hold active ones too): counts and slots over all active jobs, and a
/// bounded list to show.
pub(crate) fn jobs_panel(active: Vec<JobInfo>, recent: Vec<JobInfo>) -> JobsSnapshot {
    let holds_slots = |j: &JobInfo| matches!(j.state.as_str(), "placed" | "running");
    let mut queued = 0u64;
    let mut running = 0u64;
    let mut slots_used: BTreeMap<String, u64> = BTreeMap::new();
    for j in &active {
        if holds_slots(j) {
            running += 1;
            if let Some(node) = &j.node {
                *slots_used.entry(node.clone()).or_default() += u64::from(j.cpus);
            }
        } else if j.state == "queued" {
            queued += 1;
        }
    }
    let active_ids: HashSet<u64> = active.iter().map(|j| j.id).collect();
    let mut shown = active;
    shown.sort_by_key(|j| (!holds_slots(j), j.id));
    let more = shown.len().saturating_sub(JOBS_ACTIVE_SHOWN_MAX) as u64;
    shown.truncate(JOBS_ACTIVE_SHOWN_MAX);
    let mut ended: Vec<JobInfo> = recent
        .into_iter()
        .filter(|j| !active_ids.contains(&j.id) && j.is_done())
        .collect();
    ended.sort_by_key(|j| std::cmp::Reverse(j.id));
    ended.dedup_by_key(|j| j.id);
    ended.truncate(JOBS_ENDED_SHOWN);
    shown.extend(ended);
    JobsSnapshot {
        queued,
        running,
        slots_used,
        more,
        jobs: shown,
    }
}

/// The jobs panel from this node's local copy of the control-plane state (it may lag the leader
/// by a moment, which a dashboard can afford). `None` while the control plane is starting or when
/// its state cannot be read.
pub(crate) fn jobs_snapshot(shared: &Shared) -> Option<JobsSnapshot> {
    let plane = shared.control.get()?;
    let read = plane.control.read_local(|v| {
        let active = v.active_jobs()?;
        // The newest jobs may all be active ones: read past them to reach the ended ones.
        let recent =
            v.recent_jobs(JOBS_ENDED_SHOWN + active.len().min(JOBS_ACTIVE_SHOWN_MAX * 10))?;
        Ok((active, recent))
    });
    match read {
        Ok((active, recent)) => Some(jobs_panel(
            active.iter().map(crate::jobs::info).collect(),
            recent.iter().map(crate::jobs::info).collect(),
        )),
        Err(e) => {
            tracing::debug!(error = %e, "dashboard: reading jobs failed");
            None
        }
    }
}

/// Whether `caller` may see jobs (`jobs:read`, as `GET /v1/jobs` asks). Only decides whether the
/// dashboard shows its jobs panel, so a refusal is not a denied request and is not audited (the
/// page itself was allowed with `cluster:read`).
pub(crate) fn may_read_jobs(shared: &Shared, caller: &Caller) -> bool {
    match shared.control.get() {
        Some(plane) => plane
            .authorise(caller, &noodle_caps::Request::new("jobs", "read"))
            .is_ok(),
        None => matches!(caller, Caller::Admin),
    }
}

/// The jobs panel for `caller`.
pub(crate) fn jobs_panel_for(shared: &Shared, caller: &Caller) -> JobsPanel {
    if !may_read_jobs(shared, caller) {
        return JobsPanel::NotAllowed;
    }
    jobs_snapshot(shared).map_or(JobsPanel::Unavailable, JobsPanel::Jobs)
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
            event(1, EventKind::NodeJoined, "joined"),
            event(2, EventKind::NodeDead, "<b>gone</b>"),
        ];
        let html = render_dashboard(&report(), &events, &JobsPanel::Unavailable).unwrap();

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
            .map(|seq| event(seq, EventKind::LinkUp, "up"))
            .collect();
        let html = render_dashboard(&report(), &events, &JobsPanel::Unavailable).unwrap();
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
        let html = render_dashboard(&empty, &[], &JobsPanel::NotAllowed).unwrap();
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

    fn job(id: u64, state: &str, node: Option<&str>, command: &[&str]) -> JobInfo {
        let at = |ms: u64| noodle_audit::format_utc_ms(ms);
        let started = (state != "queued" && state != "placed").then_some(1_700_000_001_000);
        let ended = matches!(state, "succeeded" | "failed" | "cancelled" | "lost")
            .then_some(1_700_000_002_000);
        JobInfo {
            id,
            state: state.to_owned(),
            node: node.map(str::to_owned),
            exit_code: (state == "failed").then_some(3),
            command: command.iter().map(|w| (*w).to_owned()).collect(),
            submitted_at: at(1_700_000_000_000),
            started_at: started.map(at),
            ended_at: ended.map(at),
            submitted_at_ms: 1_700_000_000_000,
            started_at_ms: started,
            ended_at_ms: ended,
            cpus: 2,
            mem_bytes: 0,
            gpus: 0,
            labels: BTreeMap::new(),
            submitter: "admin@node-aaa".to_owned(),
            retries_left: 0,
            epoch: u64::from(node.is_some()),
            error: None,
        }
    }

    #[test]
    fn jobs_panel_counts_orders_and_bounds() {
        let active = vec![
            job(7, "queued", None, &["sleep", "1"]),
            job(5, "running", Some("node-aaa"), &["a"]),
            job(6, "placed", Some("node-aaa"), &["b"]),
            job(4, "running", Some("node-bbb"), &["c"]),
            job(8, "queued", None, &["d"]),
        ];
        // The newest jobs hold active ones too, and ended ones in any order.
        let recent = vec![
            job(8, "queued", None, &["d"]),
            job(2, "failed", Some("node-bbb"), &["e"]),
            job(7, "queued", None, &["sleep", "1"]),
            job(3, "succeeded", Some("node-aaa"), &["f"]),
            job(1, "cancelled", None, &["g"]),
        ];
        let s = jobs_panel(active, recent);
        assert_eq!((s.queued, s.running, s.more), (2, 3, 0));
        assert_eq!(
            s.slots_used,
            BTreeMap::from([("node-aaa".to_owned(), 4), ("node-bbb".to_owned(), 2)])
        );
        let ids: Vec<u64> = s.jobs.iter().map(|j| j.id).collect();
        assert_eq!(ids, [4, 5, 6, 7, 8, 3, 2, 1]);

        let many: Vec<JobInfo> = (1..=500)
            .map(|id| job(id, "queued", None, &["x"]))
            .collect();
        let ended: Vec<JobInfo> = (501..=600)
            .map(|id| job(id, "succeeded", Some("node-aaa"), &["x"]))
            .collect();
        let s = jobs_panel(many, ended);
        assert_eq!(s.queued, 500);
        assert_eq!(s.more, 500 - JOBS_ACTIVE_SHOWN_MAX as u64);
        assert_eq!(s.jobs.len(), JOBS_ACTIVE_SHOWN_MAX + JOBS_ENDED_SHOWN);
        assert_eq!(s.jobs[0].id, 1, "the oldest queued job first");
        assert_eq!(
            s.jobs[JOBS_ACTIVE_SHOWN_MAX].id, 600,
            "the newest ended job first"
        );
        assert!(s.slots_used.is_empty());
    }

    #[test]
    fn jobs_panel_renders_escaped_with_usage() {
        let hostile = "<script>alert(1)</script>";
        let mut failed = job(2, "failed", Some("node-bbb"), &["sh", "-c", "exit 3"]);
        failed.error = Some("<b>no such program</b>".to_owned());
        failed.submitter = "<i>mallory</i>".to_owned();
        let snapshot = jobs_panel(
            vec![
                job(3, "running", Some("node-aaa"), &["echo", hostile]),
                job(4, "queued", None, &["sleep", "30"]),
            ],
            vec![failed],
        );
        let html = render_dashboard(&report(), &[], &JobsPanel::Jobs(snapshot)).unwrap();

        assert!(html.contains("data-mode=\"shown\""));
        assert!(html.contains("<dd id=\"j-queued\">1</dd>"));
        assert!(html.contains("<dd id=\"j-running\">1</dd>"));
        for id in [2, 3, 4] {
            assert!(
                html.contains(&format!("<tr data-job-id=\"{id}\"")),
                "no row for job {id}"
            );
        }
        assert!(html.contains("data-job-id=\"3\" data-state=\"running\" data-node=\"node-aaa\""));
        assert!(html.contains("<code>sleep 30</code>"));
        assert!(html.contains("<span class=\"job-state job-state-failed\""));
        assert!(html.contains("<td class=\"num\">3</td>"), "the exit code");

        // Slots used / offered per node: 2 of alpha's 8 (the running job's cpus), none elsewhere.
        let usage = |id: &str| {
            let start = html.find(&format!("data-usage-node=\"{id}\"")).unwrap();
            let rest = &html[start..];
            let dd = rest.find("<dd class=\"slots\">").unwrap() + "<dd class=\"slots\">".len();
            rest[dd..dd + rest[dd..].find("</dd>").unwrap()].to_owned()
        };
        assert_eq!(usage("node-aaa"), "2/8");
        assert_eq!(usage("node-bbb"), "0/8");
        assert_eq!(usage("node-ccc"), "0/8");

        // User-provided text is escaped, never markup.
        assert!(!html.contains(hostile));
        assert!(
            html.contains("<code>echo &#39;&#60;script&#62;alert(1)&#60;/script&#62;&#39;</code>")
        );
        assert!(!html.contains("<b>no such program</b>"));
        assert!(html.contains("title=\"&#60;b&#62;no such program&#60;/b&#62;\""));
        assert!(!html.contains("<i>mallory</i>"));
        assert_eq!(
            html.matches("<script>").count(),
            1,
            "only the page's own script"
        );
    }

    #[test]
    fn jobs_panel_without_jobs() {
        let html = render_dashboard(&report(), &[], &JobsPanel::Unavailable).unwrap();
        assert!(html.contains("data-mode=\"unavailable\""));
        assert!(html.contains("<td colspan=\"7\">No jobs yet.</td>"));
        assert!(html.contains("<dd class=\"slots\">—/8</dd>"));
        assert!(html.contains("the control plane is starting"));

        // A credential without jobs:read sees no job data, not even slot usage.
        let html = render_dashboard(&report(), &[], &JobsPanel::NotAllowed).unwrap();
        assert!(html.contains("data-mode=\"denied\""));
        assert!(html.contains("jobs:read"));
        assert!(!html.contains("id=\"jobs-body\""));
        assert!(!html.contains("data-usage-node="));

        let empty = jobs_panel(Vec::new(), Vec::new());
        let html = render_dashboard(&report(), &[], &JobsPanel::Jobs(empty)).unwrap();
        assert!(html.contains("<td colspan=\"7\">No jobs yet.</td>"));
        assert!(html.contains("<dd class=\"slots\">0/8</dd>"));
        assert!(html.contains("<p id=\"jobs-note\" class=\"note\" hidden>"));
    }

    #[test]
    fn jobs_snapshot_serialises_for_the_script() {
        let s = jobs_panel(
            vec![job(1, "running", Some("node-aaa"), &["x"])],
            Vec::new(),
        );
        let v = serde_json::to_value(&s).unwrap();
        assert_eq!(v["queued"], 0);
        assert_eq!(v["running"], 1);
        assert_eq!(v["more"], 0);
        assert_eq!(v["slots_used"]["node-aaa"], 2);
        assert_eq!(v["jobs"][0]["id"], 1);
        assert_eq!(v["jobs"][0]["command"][0], "x");
        // The script names what it reads.
        for name in [
            "slots_used",
            "queued",
            "running",
            "more",
            "exit_code",
            "started_at_ms",
            "ended_at_ms",
            "submitted_at_ms",
            "'jobs'",
        ] {
            assert!(
                DASHBOARD_JS.contains(name),
                "the script does not read {name}"
            );
        }
    }

    #[test]
    fn formats_commands_like_a_shell() {
        let words = |ws: &[&str]| ws.iter().map(|w| (*w).to_owned()).collect::<Vec<_>>();
        assert_eq!(format_command(&words(&["sleep", "30"])), "sleep 30");
        assert_eq!(
            format_command(&words(&["sh", "-c", "echo it's <b>"])),
            "sh -c 'echo it'\\''s <b>'"
        );
        assert_eq!(format_command(&words(&["./a.out", ""])), "./a.out ''");
        assert_eq!(format_command(&[]), "");
    }

    #[test]
    fn formats_utc_time() {
        assert_eq!(format_utc_ms(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(format_utc_ms(1_700_000_000_999), "2023-11-14 22:13:20 UTC");
        assert_eq!(format_utc_ms(951_782_400_000), "2000-02-29 00:00:00 UTC");
    }
}
