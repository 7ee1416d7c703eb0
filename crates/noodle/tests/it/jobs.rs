//! `noodle run` end to end: real nodes, real processes, real files.

use crate::control::{cap_create, with_token};
use crate::support::{
    Node, cluster_with, eventually, job_shared_dir, noodle_bin, patient, process_alive,
    wait_all_alive,
};
use noodle_api::{JobInfo, JobList};
use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn jobs(node: &Node) -> Vec<JobInfo> {
    let out = node.cli(&["jobs", "--all", "--json"]);
    assert!(out.status.success(), "noodle jobs: {}", stderr(&out));
    let list: JobList = serde_json::from_slice(&out.stdout).expect("jobs --json");
    list.jobs
}

fn job(node: &Node, id: u64) -> JobInfo {
    jobs(node)
        .into_iter()
        .find(|j| j.id == id)
        .unwrap_or_else(|| panic!("job {id} is not listed"))
}

/// `noodle run` in `cwd` against `node`.
fn run_in(node: &Node, cwd: &Path, args: &[&str]) -> Output {
    Command::new(noodle_bin())
        .arg("--data-dir")
        .arg(&node.dir)
        .arg("run")
        .args(args)
        .current_dir(cwd)
        .stdin(Stdio::null())
        .output()
        .expect("noodle run")
}

fn detach(node: &Node, args: &[&str]) -> u64 {
    let mut all = vec!["run", "--detach"];
    all.extend_from_slice(args);
    let out = node.cli(&all);
    assert!(
        out.status.success(),
        "noodle run --detach: {}",
        stderr(&out)
    );
    stdout(&out).trim().parse().expect("a job id")
}

/// The pid a job prints first on the stdout of `noodle run` (read on a thread, so that a
/// job that never prints fails the test instead of hanging it).
fn first_line_pid(out: std::process::ChildStdout) -> u32 {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut out = std::io::BufReader::new(out);
        let mut line = String::new();
        let _ = std::io::BufRead::read_line(&mut out, &mut line);
        let _ = tx.send(line);
        // Keep reading: `noodle run` must not meet a closed pipe.
        let _ = std::io::copy(&mut out, &mut std::io::sink());
    });
    let line = rx
        .recv_timeout(patient(Duration::from_secs(15)))
        .expect("the job printed its pid");
    line.trim().parse().expect("a pid")
}

fn host_name() -> String {
    let out = Command::new("hostname").output().expect("hostname");
    stdout(&out).trim().to_string()
}

/// Waits until `node` knows the job slots of every node of `nodes` (gossip follows membership).
fn wait_slots(node: &Node, nodes: &[Node], slots: u32) {
    let ids: Vec<String> = nodes.iter().map(Node::node_id).collect();
    eventually(Duration::from_secs(15), "every node's slots", || {
        let s = node.status()?;
        ids.iter()
            .all(|id| s.nodes.iter().any(|n| &n.id == id && n.slots == slots))
            .then_some(())
    });
}

#[test]
fn run_prints_output_returns_exit_codes_and_ctrl_c_cancels_the_remote_process() {
    let nodes = cluster_with(3, &["--slots", "2", "--kill-grace", "1s"]);
    wait_slots(&nodes[0], &nodes, 2);
    let tmp = tempfile::tempdir().unwrap();
    let a = &nodes[0];

    // The output streams back and the exit code is the job's.
    let out = run_in(a, tmp.path(), &["--", "hostname"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(stdout(&out).trim(), host_name());
    let first = jobs(a).into_iter().next().expect("the job is listed");
    assert_eq!(first.state, "succeeded", "{first:?}");
    assert_eq!(first.exit_code, Some(0));
    assert!(
        first.node.is_some() && first.started_at.is_some() && first.ended_at.is_some(),
        "{first:?}\n{}",
        nodes
            .iter()
            .map(|n| n.logs())
            .collect::<Vec<_>>()
            .join("\n=====\n")
    );

    // `--on NODE` picks the node.
    // A job that asked for no GPU sees none.
    let script = "echo \"$NOODLE_NODE gpus=[${CUDA_VISIBLE_DEVICES-unset}]\"";
    let on = ["--on", "node-2", "--", "sh", "-c", script];
    let out = run_in(a, tmp.path(), &on);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(
        stdout(&out).trim(),
        format!("{} gpus=[]", nodes[2].node_id())
    );

    let out = run_in(
        a,
        tmp.path(),
        &["--", "sh", "-c", "echo to-err >&2; exit 3"],
    );
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(stderr(&out).contains("to-err"), "{}", stderr(&out));

    // A program the node does not have: a clear error naming the node.
    let out = run_in(a, tmp.path(), &["--", "definitely-not-a-program-7"]);
    assert_eq!(out.status.code(), Some(127), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("definitely-not-a-program-7") && err.contains("node"),
        "{err}"
    );

    // A job no node can ever run is refused at once and queues nothing.
    let before = jobs(a).len();
    let out = run_in(a, tmp.path(), &["--cpus", "64", "--", "true"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("no node can run this job"),
        "{}",
        stderr(&out)
    );
    assert_eq!(jobs(a).len(), before, "a refused job was queued");

    // A local program and a data file are shipped to the executing node.
    let prog = tmp.path().join("my_program");
    std::fs::write(&prog, "#!/bin/sh\necho \"shipped $1\"\ncat data.csv\n").unwrap();
    let mut perm = std::fs::metadata(&prog).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perm, 0o755);
    std::fs::set_permissions(&prog, perm).unwrap();
    std::fs::write(tmp.path().join("data.csv"), "a,b\n1,2\n").unwrap();
    for _ in 0..2 {
        let out = run_in(
            a,
            tmp.path(),
            &["--file", "data.csv", "--", "./my_program", "data.csv"],
        );
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        assert_eq!(stdout(&out), "shipped data.csv\na,b\n1,2\n");
    }

    // Ctrl-C cancels the remote process.
    let mut child = Command::new(noodle_bin())
        .arg("--data-dir")
        .arg(&a.dir)
        .args(["run", "--", "sh", "-c", "echo $$; exec sleep 100"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = first_line_pid(child.stdout.take().unwrap());
    assert!(process_alive(pid));
    let status = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let exited = eventually(Duration::from_secs(15), "noodle run to exit", || {
        child.try_wait().unwrap()
    });
    assert_eq!(exited.code(), Some(130));
    eventually(
        Duration::from_secs(10),
        "the remote process to be gone",
        || (!process_alive(pid)).then_some(()),
    );
    let cancelled = jobs(a).into_iter().last().unwrap();
    assert_eq!(cancelled.state, "cancelled", "{cancelled:?}");

    // A job that has to wait for a slot says so, then runs.
    let busy = detach(a, &["--on", "node-1", "--cpus", "2", "--", "sleep", "3"]);
    let out = run_in(a, tmp.path(), &["--on", "node-1", "--", "echo", "after"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(stdout(&out), "after\n");
    assert!(stderr(&out).contains("is queued"), "{}", stderr(&out));
    let busy = job(a, busy);
    assert_eq!(busy.state, "succeeded", "{busy:?}");

    // A job that floods its output: what is kept is bounded, and the drop is said.
    let out = run_in(a, tmp.path(), &["--", "sh", "-c", "yes | head -c 40000000"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        out.stdout.len() <= 16 << 20,
        "{} bytes kept",
        out.stdout.len()
    );
    assert!(
        out.stdout.len() >= 8 << 20,
        "{} bytes kept",
        out.stdout.len()
    );
    assert!(stderr(&out).contains("dropped"), "{}", stderr(&out));

    // A job that ignores SIGTERM is killed after the grace period.
    let id = detach(a, &["--", "sh", "-c", "trap '' TERM; echo $$; sleep 100"]);
    let pid: u32 = eventually(Duration::from_secs(15), "the stubborn job to start", || {
        stdout(&a.cli(&["logs", &id.to_string()]))
            .trim()
            .parse()
            .ok()
    });
    let out = a.cli(&["cancel", &id.to_string()]);
    assert!(out.status.success(), "{}", stderr(&out));
    eventually(
        Duration::from_secs(10),
        "the stubborn job to be killed",
        || (!process_alive(pid)).then_some(()),
    );
    assert_eq!(job(a, id).state, "cancelled");

    // A submitter that goes away does not take the job along; `noodle logs` reattaches.
    let mut child = Command::new(noodle_bin())
        .arg("--data-dir")
        .arg(&a.dir)
        .args(["run", "--", "sh", "-c", "echo one; sleep 2; echo two"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let id = eventually(Duration::from_secs(15), "the job to run", || {
        jobs(a)
            .into_iter()
            .find(|j| j.state == "running" && j.command.iter().any(|c| c.contains("echo one")))
            .map(|j| j.id)
    });
    child.kill().unwrap();
    let _ = child.wait();
    let out = a.cli(&["logs", &id.to_string(), "--follow"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), "one\ntwo\n");
    let out = a.cli(&["wait", &id.to_string()]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));

    // Tokens: `jobs:run` is needed, and the token's quotas hold.
    let reader = cap_create(a, &["--allow", "jobs:read", "--ttl", "1h"]).token;
    let runner = cap_create(
        a,
        &[
            "--allow",
            "jobs:run",
            "--allow",
            "jobs:read",
            "--quota",
            "cpus=1",
            "--ttl",
            "1h",
        ],
    )
    .token;
    let before = jobs(a).len();
    let out = with_token(a, &reader, &["run", "--", "true"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("denied"), "{}", stderr(&out));
    let out = with_token(a, &runner, &["run", "--cpus", "2", "--", "true"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("the token allows 1"),
        "{}",
        stderr(&out)
    );
    assert_eq!(jobs(a).len(), before, "a refused job was queued");
    let out = with_token(a, &runner, &["run", "--", "echo", "with a token"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(stdout(&out), "with a token\n");

    // Submissions, cancellations, outcomes and denials are in the audit log; job transitions
    // are events on every node.
    let out = a.cli(&["audit", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let audit = stdout(&out);
    for action in ["\"job.submit\"", "\"job.cancel\"", "\"job.end\""] {
        assert!(audit.contains(action), "no {action} in the audit log");
    }
    assert!(
        audit
            .lines()
            .any(|l| l.contains("job.submit") && l.contains("denied")),
        "the denied submission is not in the audit log"
    );
    // Every node reports every job's start and end, short jobs included.
    let all = jobs(a);
    for n in &nodes {
        let events = eventually(Duration::from_secs(10), "job events on every node", || {
            let out = n.cli(&["events", "--json"]);
            let events: Vec<noodle_api::Event> = stdout(&out)
                .lines()
                .filter_map(|l| serde_json::from_str(l).ok())
                .collect();
            let has = |kind: &str, id: u64| {
                events
                    .iter()
                    .any(|e| e.kind.as_str() == kind && e.detail.starts_with(&format!("job {id} ")))
            };
            all.iter()
                .all(|j| {
                    has("job_submitted", j.id)
                        && (j.started_at.is_none() || has("job_started", j.id))
                        && (!j.is_done() || has("job_ended", j.id))
                })
                .then_some(events)
        });
        assert!(!events.is_empty());
    }
}

/// Largest number of `(start, end)` intervals that overlap at one instant.
fn max_overlap(intervals: &[(u64, u64)]) -> usize {
    let mut edges: Vec<(u64, i32)> = Vec::new();
    for (s, e) in intervals {
        edges.push((*s, 1));
        edges.push((*e, -1));
    }
    // Ends before starts at the same instant: a slot freed and taken in the same millisecond.
    edges.sort();
    let (mut now, mut most) = (0i32, 0i32);
    for (_, d) in edges {
        now += d;
        most = most.max(now);
    }
    most as usize
}

#[test]
fn three_hundred_jobs_on_two_slots_per_node_never_run_more_than_two_per_node() {
    let nodes = cluster_with(3, &["--slots", "2"]);
    wait_slots(&nodes[0], &nodes, 2);
    let a = &nodes[0];
    let ids: Vec<u64> = (0..300).map(|_| detach(a, &["--", "sleep", "1"])).collect();
    assert_eq!(ids.len(), 300);
    let done = eventually(Duration::from_secs(240), "300 jobs to end", || {
        let all = jobs(a);
        (all.iter().filter(|j| j.is_done()).count() == 300).then_some(all)
    });
    let mut per_node: BTreeMap<String, Vec<(u64, u64)>> = BTreeMap::new();
    for j in &done {
        assert_eq!(j.state, "succeeded", "{j:?}");
        per_node
            .entry(j.node.clone().expect("a node"))
            .or_default()
            .push((
                j.started_at_ms.expect("started"),
                j.ended_at_ms.expect("ended"),
            ));
    }
    assert_eq!(
        per_node.len(),
        3,
        "every node ran jobs: {:?}",
        per_node.keys()
    );
    for (node, intervals) in &per_node {
        let most = max_overlap(intervals);
        assert!(most <= 2, "{node} ran {most} jobs at once");
    }
}

#[test]
fn a_killed_executor_loses_its_jobs_and_a_job_with_retries_runs_elsewhere_once_at_a_time() {
    let lease = ["--job-lease", "3s"];
    let shared = job_shared_dir(&["a", "b"]);
    let shared = shared.path();
    let shared_arg = shared.to_str().unwrap();
    let first = Node::start("node-0", &["--slots", "0", lease[0], lease[1]]);
    first.wait_ready(Duration::from_secs(10));
    let token = first.token(&["--uses", "2"]);
    let victim = Node::start(
        "node-1",
        &[
            "--join", &token, "--slots", "2", lease[0], lease[1], "--job-rw", shared_arg,
        ],
    );
    let mut nodes = vec![first, victim];
    wait_all_alive(&nodes, Duration::from_secs(15));
    let victim_id = nodes[1].node_id();
    wait_slots(&nodes[0], &nodes[1..], 2);
    let trace = |name: &str| shared.join(name);
    let script = |file: &Path| {
        format!(
            "echo \"$NOODLE_NODE $NOODLE_JOB_EPOCH start $$ $(date +%s%N)\" >> {f}; sleep 8; echo \"$NOODLE_NODE $NOODLE_JOB_EPOCH end\" >> {f}",
            f = file.display()
        )
    };
    let retried = detach(
        &nodes[0],
        &["--retries", "1", "--", "sh", "-c", &script(&trace("a"))],
    );
    let lost = detach(&nodes[0], &["--", "sh", "-c", &script(&trace("b"))]);
    let started = |file: &Path| -> Option<Vec<String>> {
        let text = std::fs::read_to_string(file).ok()?;
        let lines: Vec<String> = text.lines().map(str::to_string).collect();
        (!lines.is_empty()).then_some(lines)
    };
    let first_a = eventually(
        Duration::from_secs(20),
        "both jobs to start on node-1",
        || {
            let a = started(&trace("a"))?;
            started(&trace("b"))?;
            Some(a)
        },
    );
    let fields: Vec<&str> = first_a[0].split_whitespace().collect();
    assert_eq!(
        &fields[..3],
        &[victim_id.as_str(), "1", "start"],
        "{first_a:?}"
    );
    let first_pid: u32 = fields[3].parse().unwrap();

    // A third node joins, then node-1 dies with its jobs.
    nodes.push(Node::start(
        "node-2",
        &[
            "--join", &token, "--slots", "2", lease[0], lease[1], "--job-rw", shared_arg,
        ],
    ));
    wait_all_alive(&nodes, Duration::from_secs(15));
    let other = nodes[2].node_id();
    nodes[1].kill9();
    let killed_at = Instant::now();
    eventually(
        Duration::from_secs(5),
        "node-1's job to die with it",
        || (!process_alive(first_pid)).then_some(()),
    );
    let gone_ns = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();

    let out = nodes[0].cli(&["wait", &retried.to_string(), "--timeout", "60s"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let a = job(&nodes[0], retried);
    assert_eq!(
        (a.state.as_str(), a.node.as_deref(), a.epoch),
        ("succeeded", Some(other.as_str()), 2),
        "{a:?}"
    );
    assert!(
        killed_at.elapsed() >= Duration::from_secs(3),
        "before the lease ran out"
    );
    let b = eventually(
        Duration::from_secs(20),
        "the job without retries to end",
        || {
            let b = job(&nodes[0], lost);
            b.is_done().then_some(b)
        },
    );
    assert_eq!(b.state, "lost", "{b:?}");
    // Its output died with node-1: one clear error, not an empty success.
    let out = nodes[0].cli(&["logs", &lost.to_string()]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("dead or gone"), "{}", stderr(&out));

    // Fencing: attempt 1 never ended (it was killed with node-1), attempt 2 started only
    // after attempt 1's process was gone, and it ran once.
    let lines = started(&trace("a")).unwrap();
    let attempts: Vec<(&str, &str, &str)> = lines
        .iter()
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f[0], f[1], f[2])
        })
        .collect();
    assert_eq!(
        attempts,
        vec![
            (victim_id.as_str(), "1", "start"),
            (other.as_str(), "2", "start"),
            (other.as_str(), "2", "end"),
        ],
        "{lines:?}"
    );
    let second_start_ns: u128 = lines[1].split_whitespace().nth(4).unwrap().parse().unwrap();
    assert!(
        second_start_ns > gone_ns,
        "attempt 2 started before attempt 1's process was seen gone"
    );
    let b_lines = started(&trace("b")).unwrap();
    assert_eq!(b_lines.len(), 1, "the lost job ran again: {b_lines:?}");
}
