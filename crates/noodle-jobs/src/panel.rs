//! The jobs panel of the dashboard: queued and running counts, CPU slots used per node, the
//! jobs that have not ended and the newest ended ones. Server-rendered (askama, every job
//! command, error and name escaped) and sent again every second by the dashboard stream.
//! Bounded whatever the queue holds.

use crate::machine;
use crate::subsystem::info;
use askama::Template;
use noodle_api::format::format_command;
use noodle_api::{JobInfo, NodeState};
use noodle_host::format_utc_ms;
use std::collections::{BTreeMap, HashSet};

/// The jobs panel lists at most this many jobs that have not ended (placed and running first, then
/// queued in submission order); the counts above the table cover them all.
const JOBS_ACTIVE_SHOWN_MAX: usize = 100;
/// The jobs panel lists this many of the newest ended jobs, newest first.
const JOBS_ENDED_SHOWN: usize = 20;
/// The panel's stylesheet (our own constant, inlined into the page).
pub(crate) const STYLE: &str = include_str!("../templates/jobs_panel.css");

/// The jobs the panel shows.
#[derive(Debug, Clone, PartialEq)]
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
    /// The job records could not be read.
    Unavailable,
    /// The caller may read the cluster but not jobs (`jobs:read`).
    NotAllowed,
}

/// A node as the panel shows its slots.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct NodeSlots {
    pub(crate) id: String,
    pub(crate) name: String,
    pub(crate) state: NodeState,
    /// CPU slots it offers to jobs.
    pub(crate) slots: u32,
}

#[derive(Template)]
#[template(path = "jobs_panel.html")]
struct JobsView<'a> {
    /// Why no jobs are shown; empty when they are.
    note: &'static str,
    /// `shown`, `unavailable` or `denied`.
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

/// Renders the panel for `nodes` (in the order to show them) and what the caller may see.
pub(crate) fn render<'a>(
    nodes: &'a [NodeSlots],
    panel: &'a JobsPanel,
) -> Result<String, askama::Error> {
    let names: BTreeMap<&'a str, &'a str> = nodes
        .iter()
        .map(|n| (n.id.as_str(), n.name.as_str()))
        .collect();
    // Unknown ids (a node that left the view) are shown as themselves.
    let name_of = |id: &'a str| -> &'a str { names.get(id).copied().unwrap_or(id) };
    jobs_view(nodes, panel, &name_of).render()
}

fn jobs_view<'a>(
    nodes: &'a [NodeSlots],
    panel: &'a JobsPanel,
    name_of: &dyn Fn(&'a str) -> &'a str,
) -> JobsView<'a> {
    let (snapshot, mode, note) = match panel {
        JobsPanel::Jobs(s) => (Some(s), "shown", ""),
        JobsPanel::Unavailable => (
            None,
            "unavailable",
            "Jobs are not available: the job records could not be read.",
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
        nodes
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
        let known: HashSet<&str> = nodes.iter().map(|n| n.id.as_str()).collect();
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

/// The panel from this node's local copy of the control-plane state (it may lag the leader by a
/// moment, which a dashboard can afford).
pub(crate) fn snapshot(control: &noodle_control::Control) -> JobsPanel {
    let read = control.read_local(|v| {
        let jobs = machine::view(v);
        let active = jobs.active_jobs()?;
        // The newest jobs may all be active ones: read past them to reach the ended ones.
        let recent =
            jobs.recent_jobs(JOBS_ENDED_SHOWN + active.len().min(JOBS_ACTIVE_SHOWN_MAX * 10))?;
        Ok((active, recent))
    });
    match read {
        Ok((active, recent)) => JobsPanel::Jobs(jobs_panel(
            active.iter().map(info).collect(),
            recent.iter().map(info).collect(),
        )),
        Err(e) => {
            tracing::debug!(error = %e, "dashboard: reading jobs failed");
            JobsPanel::Unavailable
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn nodes() -> Vec<NodeSlots> {
        let node = |id: &str, name: &str, state| NodeSlots {
            id: id.to_owned(),
            name: name.to_owned(),
            state,
            slots: 8,
        };
        vec![
            node("node-aaa", "alpha", NodeState::Alive),
            node("node-bbb", "beta", NodeState::Alive),
            node("node-ccc", "gamma", NodeState::Dead),
        ]
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
        let html = render(&nodes(), &JobsPanel::Jobs(snapshot)).unwrap();

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
        assert_eq!(html.matches("<script").count(), 0, "no script");
    }

    #[test]
    fn jobs_panel_without_jobs() {
        let html = render(&nodes(), &JobsPanel::Unavailable).unwrap();
        assert!(html.contains("data-mode=\"unavailable\""));
        assert!(html.contains("<td colspan=\"7\">No jobs yet.</td>"));
        assert!(html.contains("<dd class=\"slots\">—/8</dd>"));
        assert!(html.contains("could not be read"));

        // A credential without jobs:read sees no job data, not even slot usage.
        let html = render(&nodes(), &JobsPanel::NotAllowed).unwrap();
        assert!(html.contains("data-mode=\"denied\""));
        assert!(html.contains("jobs:read"));
        assert!(!html.contains("id=\"jobs-body\""));
        assert!(!html.contains("data-usage-node="));

        let empty = jobs_panel(Vec::new(), Vec::new());
        let html = render(&nodes(), &JobsPanel::Jobs(empty)).unwrap();
        assert!(html.contains("<td colspan=\"7\">No jobs yet.</td>"));
        assert!(html.contains("<dd class=\"slots\">0/8</dd>"));
        assert!(html.contains("<p id=\"jobs-note\" class=\"note\" hidden>"));
    }
}
