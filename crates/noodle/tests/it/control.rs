//! The control plane end to end: leader election and voter upkeep, leader crashes under
//! writes, capability tokens and policies, and the tamper-evident audit log.

use crate::support::{Node, cli, cluster_with, eventually, private_loopback_ip, wait_all_alive};
use noodle_api::{AuditEntry, AuditVerifyReport, CapResponse, ConfigList, ControlInfo, PolicyList};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Output;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Runs a client command that must succeed; returns its stdout.
fn ok(node: &Node, args: &[&str]) -> String {
    let out = node.cli(args);
    assert!(
        out.status.success(),
        "`noodle {}` on {} failed:\n{}",
        args.join(" "),
        node.name,
        text(&out.stderr)
    );
    text(&out.stdout)
}

/// Checks that a client command failed with exactly one `error:` line; returns that line.
fn refused(out: &Output, what: &str) -> String {
    let stderr = text(&out.stderr);
    assert!(
        !out.status.success(),
        "{what}: should have been refused; stdout:\n{}\nstderr:\n{stderr}",
        text(&out.stdout)
    );
    let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(
        errors.len(),
        1,
        "{what}: expected exactly one error line:\n{stderr}"
    );
    errors[0].to_string()
}

fn control(node: &Node) -> Option<ControlInfo> {
    node.status()?.control
}

/// Waits until every node names the same leader and the same voters, that leader calls itself
/// the leader, every node has applied something, and `also` holds on every node's view.
fn agreed(nodes: &[&Node], what: &str, also: impl Fn(&ControlInfo) -> bool) -> ControlInfo {
    eventually(Duration::from_secs(30), what, || {
        let views: Vec<ControlInfo> = nodes.iter().map(|n| control(n)).collect::<Option<_>>()?;
        let first = &views[0];
        let leader = first.leader.as_ref()?;
        let same = views
            .iter()
            .all(|v| v.leader.as_ref() == Some(leader) && v.voters == first.voters);
        let leader_says_so = nodes
            .iter()
            .zip(&views)
            .any(|(n, v)| &n.node_id() == leader && v.role == "leader");
        let applied = views.iter().all(|v| v.commit_index > 0);
        (same && leader_says_so && applied && views.iter().all(&also)).then(|| first.clone())
    })
}

/// `noodle cap create --json ARGS`, retried only while the new cluster's capability root key
/// is still being created.
pub(crate) fn cap_create(node: &Node, args: &[&str]) -> CapResponse {
    let mut full = vec!["cap", "create", "--json"];
    full.extend_from_slice(args);
    eventually(Duration::from_secs(15), "the capability root key", || {
        let out = node.cli(&full);
        if out.status.success() {
            return Some(serde_json::from_slice(&out.stdout).expect("cap create --json"));
        }
        let err = text(&out.stderr);
        assert!(
            err.contains("no capability root key yet"),
            "cap create failed: {err}"
        );
        None
    })
}

/// `noodle --token TOKEN ARGS`.
pub(crate) fn with_token(node: &Node, token: &str, args: &[&str]) -> Output {
    let mut full = vec!["--token", token];
    full.extend_from_slice(args);
    node.cli(&full)
}

fn audit_log(node: &Node) -> Vec<AuditEntry> {
    ok(node, &["audit", "--json"])
        .lines()
        .map(|l| serde_json::from_str(l).expect("audit --json line"))
        .collect()
}

/// `noodle audit verify --json`: its exit status and report.
fn verify(node: &Node) -> (bool, AuditVerifyReport) {
    let out = node.cli(&["audit", "verify", "--json"]);
    let report = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "audit verify --json on {} answered no report ({e}):\n{}",
            node.name,
            text(&out.stderr)
        )
    });
    (out.status.success(), report)
}

fn config_list(node: &Node) -> BTreeMap<String, String> {
    let list: ConfigList =
        serde_json::from_str(&ok(node, &["config", "ls", "--json"])).expect("config ls --json");
    list.entries.into_iter().map(|e| (e.key, e.value)).collect()
}

/// A cluster of `n` nodes, each on its own loopback address with its cluster port pinned, so
/// that a node restarts where the other members' Raft membership says it is.
fn pinned_cluster(n: usize, extra: &[&str]) -> Vec<Node> {
    let start = |name: String, args: &[&str]| {
        let mut node = Node::start_listening(&name, &format!("{}:0", private_loopback_ip()), args);
        node.pin_listen_addr();
        node
    };
    let first = start("node-0".into(), extra);
    let uses = n.saturating_sub(1).max(1).to_string();
    let token = first.token(&["--uses", &uses]);
    let mut nodes = vec![first];
    for i in 1..n {
        let mut args = vec!["--join", token.as_str()];
        args.extend_from_slice(extra);
        nodes.push(start(format!("node-{i}"), &args));
    }
    wait_all_alive(&nodes, Duration::from_secs(15));
    nodes
}

#[test]
fn three_nodes_elect_a_leader_then_five_voters_and_a_dead_voter_is_replaced() {
    const UP: &[&str] = &["--voter-replace-after", "2s"];
    let mut nodes = cluster_with(3, UP);
    let mut ids: Vec<String> = nodes.iter().map(Node::node_id).collect();
    ids.sort();
    let three = agreed(
        &nodes.iter().collect::<Vec<_>>(),
        "one leader and 3 voters on every node",
        |c| c.voters.len() == 3,
    );
    assert_eq!(three.voters, ids, "{three:?}");
    assert!(three.term > 0, "{three:?}");

    // Two more nodes: five voters.
    let token = nodes[0].token(&["--uses", "3"]);
    for i in 3..5 {
        let mut args = vec!["--join", token.as_str()];
        args.extend_from_slice(UP);
        nodes.push(Node::start(&format!("node-{i}"), &args));
    }
    wait_all_alive(&nodes, Duration::from_secs(15));
    let mut ids: Vec<String> = nodes.iter().map(Node::node_id).collect();
    ids.sort();
    let five = agreed(
        &nodes.iter().collect::<Vec<_>>(),
        "5 voters on every node",
        |c| c.voters.len() == 5,
    );
    assert_eq!(five.voters, ids, "{five:?}");
    // Every voter holds the cluster's keys: the founder made them, the others were handed them.
    for node in &nodes {
        eventually(
            Duration::from_secs(20),
            "every voter holding the keys",
            || crate::members::holds_keys(node).then_some(()),
        );
    }

    // A sixth node stays a learner: five voters is the most.
    let mut args = vec!["--join", token.as_str()];
    args.extend_from_slice(UP);
    nodes.push(Node::start("node-5", &args));
    wait_all_alive(&nodes, Duration::from_secs(15));
    let sixth = nodes[5].node_id();
    let six = agreed(
        &nodes.iter().collect::<Vec<_>>(),
        "the sixth node a learner on every node",
        |c| c.learners.contains(&sixth),
    );
    assert_eq!(six.voters, five.voters, "{six:?}");
    assert_eq!(six.learners, vec![sixth.clone()], "{six:?}");
    eventually(Duration::from_secs(10), "the sixth node's role", || {
        (control(&nodes[5])?.role == "learner").then_some(())
    });
    assert!(
        !crate::members::holds_keys(&nodes[5]),
        "a learner holds the keys"
    );

    // SIGKILL a voter that is not the leader: the learner takes its place once it has been
    // dead for 2 s.
    let leader = six.leader.clone().expect("a leader");
    let victim = nodes
        .iter()
        .position(|n| n.node_id() != leader && n.node_id() != sixth)
        .expect("a follower voter");
    let victim_id = nodes[victim].node_id();
    nodes[victim].kill9();
    let killed_at = Instant::now();
    let survivors: Vec<&Node> = nodes
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != victim)
        .map(|(_, n)| n)
        .collect();
    let replaced = agreed(&survivors, "the learner replacing the dead voter", |c| {
        c.voters.contains(&sixth) && !c.voters.contains(&victim_id)
    });
    let took = killed_at.elapsed();
    assert_eq!(replaced.voters.len(), 5, "{replaced:?}");
    assert!(
        took >= Duration::from_secs(2),
        "replaced after {took:?}, before --voter-replace-after 2s"
    );
    eprintln!("dead voter replaced {took:?} after SIGKILL");

    // The promoted learner is handed the keys; the dead voter, back as a learner, deletes its
    // copies.
    eventually(
        Duration::from_secs(20),
        "the new voter holding the keys",
        || crate::members::holds_keys(&nodes[5]).then_some(()),
    );
    assert!(crate::members::holds_keys(&nodes[victim]));
    nodes[victim].spawn(UP);
    eventually(
        Duration::from_secs(30),
        "the demoted node without keys",
        || (!crate::members::holds_keys(&nodes[victim])).then_some(()),
    );
    let events = nodes[victim].cli(&["events", "--json"]);
    assert!(String::from_utf8_lossy(&events.stdout).contains("keys_discarded"));
}

#[test]
fn chaos_kill_the_leader_repeatedly_loses_no_acknowledged_write() {
    const ROUNDS: usize = 4;
    /// Writes acknowledged under each leader before it is killed.
    const WRITES_PER_ROUND: usize = 10;
    let mut nodes = pinned_cluster(3, &[]);
    let ids: Vec<String> = nodes.iter().map(Node::node_id).collect();
    agreed(
        &nodes.iter().collect::<Vec<_>>(),
        "3 voters and a leader",
        |c| c.voters.len() == 3,
    );

    // A client writes through a random live node until told to stop.
    let dirs: Vec<PathBuf> = nodes.iter().map(|n| n.dir.clone()).collect();
    let up = Arc::new(Mutex::new(vec![true; nodes.len()]));
    let stop = Arc::new(AtomicBool::new(false));
    let acked_count = Arc::new(AtomicUsize::new(0));
    let _stop_on_panic = StopOnDrop(stop.clone());
    let writer = std::thread::spawn({
        let (up, stop, acked_count) = (up.clone(), stop.clone(), acked_count.clone());
        move || {
            let mut rng = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.subsec_nanos() as u64)
                .unwrap_or(0)
                | 1;
            let mut acked = Vec::new();
            let mut attempted = 0usize;
            while !stop.load(Ordering::SeqCst) {
                // xorshift64
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                let i = (rng % dirs.len() as u64) as usize;
                if !up.lock().unwrap()[i] {
                    continue;
                }
                attempted += 1;
                let key = format!("chaos/k{attempted:04}");
                let value = format!("v{attempted:04}");
                if cli(&dirs[i], &["config", "set", &key, &value])
                    .status
                    .success()
                {
                    acked.push((key, value));
                    acked_count.fetch_add(1, Ordering::SeqCst);
                }
            }
            (acked, attempted)
        }
    });

    let mut leaders = Vec::new();
    for _ in 0..ROUNDS {
        let before = acked_count.load(Ordering::SeqCst);
        eventually(
            Duration::from_secs(30),
            "writes acknowledged under the current leader",
            || (acked_count.load(Ordering::SeqCst) >= before + WRITES_PER_ROUND).then_some(()),
        );
        let current = agreed(&nodes.iter().collect::<Vec<_>>(), "one leader", |_| true);
        let leader = current.leader.clone().expect("a leader");
        let li = ids
            .iter()
            .position(|id| *id == leader)
            .expect("leader is a node");
        up.lock().unwrap()[li] = false;
        nodes[li].kill9();
        // The other two elect a new leader in a later term.
        let others: Vec<&Node> = nodes
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != li)
            .map(|(_, n)| n)
            .collect();
        let next = eventually(Duration::from_secs(20), "a new leader", || {
            let views: Vec<ControlInfo> =
                others.iter().map(|n| control(n)).collect::<Option<_>>()?;
            let l = views[0].leader.clone()?;
            (l != leader
                && views
                    .iter()
                    .all(|v| v.leader.as_ref() == Some(&l) && v.term > current.term))
            .then_some(l)
        });
        leaders.push((leader, next));
        // Restart the old leader on the same data directory and cluster address.
        nodes[li].spawn(&[]);
        nodes[li].wait_ready(Duration::from_secs(10));
        up.lock().unwrap()[li] = true;
    }
    stop.store(true, Ordering::SeqCst);
    let (acked, attempted) = writer.join().expect("writer thread");
    eprintln!(
        "{} of {attempted} writes acknowledged across {} leader changes: {leaders:?}",
        acked.len(),
        leaders.len()
    );
    assert!(!acked.is_empty(), "no write was acknowledged");
    // Each round waited for a different leader in a later term.
    assert_eq!(leaders.len(), ROUNDS, "{leaders:?}");

    wait_all_alive(&nodes, Duration::from_secs(15));
    agreed(
        &nodes.iter().collect::<Vec<_>>(),
        "every node up and agreeing on the leader",
        |c| c.voters.len() == 3,
    );
    let lists: Vec<BTreeMap<String, String>> = nodes.iter().map(config_list).collect();
    for (node, list) in nodes.iter().zip(&lists) {
        for (key, value) in &acked {
            assert_eq!(
                list.get(key),
                Some(value),
                "acknowledged write {key}={value} missing on {}",
                node.name
            );
        }
        // An unacknowledged write may or may not have happened, but never with another value.
        for (key, value) in list {
            let n = key.strip_prefix("chaos/k").expect("only chaos keys");
            assert_eq!(value, &format!("v{n}"), "{key} on {}", node.name);
        }
        assert_eq!(
            list, &lists[0],
            "{} disagrees with {}",
            node.name, nodes[0].name
        );
        let (verified, report) = verify(node);
        assert!(verified && report.ok, "{}: {report:?}", node.name);
    }
    // Every acknowledged write is in the audit log as allowed.
    let log = audit_log(&nodes[0]);
    for (key, _) in &acked {
        assert!(
            log.iter()
                .any(|e| e.action == "config.set" && &e.target == key && e.outcome == "allowed"),
            "no allowed config.set {key} in the audit log"
        );
    }
}

/// Stops the chaos writer when the test ends, also by a failed assertion.
struct StopOnDrop(Arc<AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// One bad token and the reason it must be refused with.
struct BadToken {
    what: &'static str,
    token: String,
    reason: &'static str,
}

#[test]
fn bad_tokens_are_refused_with_one_clear_error_and_audited() {
    let ours = Node::founder("ours");
    let theirs = Node::founder("theirs");
    ours.wait_ready(Duration::from_secs(10));
    theirs.wait_ready(Duration::from_secs(10));
    ok(&ours, &["config", "set", "retries", "3"]);
    let offline = tempfile::tempdir().unwrap();

    // A valid token does what it allows.
    let reader = cap_create(&ours, &["--allow", "config:read", "--for", "reader"]);
    let out = with_token(&ours, &reader.token, &["config", "get", "retries"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout).trim(), "3");
    let inspected: serde_json::Value =
        serde_json::from_str(&ok(&ours, &["cap", "inspect", &reader.token, "--json"])).unwrap();
    assert_eq!(inspected["id"], reader.id.as_str(), "{inspected}");
    let rw = ["--allow", "config:read", "--allow", "config:write"];
    let writer = cap_create(&ours, &rw);
    let out = with_token(&ours, &writer.token, &["config", "set", "other", "1"]);
    assert!(out.status.success(), "{}", text(&out.stderr));

    // Narrowing happens offline: no node runs on this data directory.
    let narrowed = cli(
        offline.path(),
        &["cap", "attenuate", &writer.token, "--allow", "config:read"],
    );
    assert!(narrowed.status.success(), "{}", text(&narrowed.stderr));
    let narrowed = text(&narrowed.stdout).trim().to_string();
    let out = with_token(&ours, &narrowed, &["config", "get", "retries"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let widen = cli(
        offline.path(),
        &["cap", "attenuate", &reader.token, "--allow", "policy:write"],
    );
    let err = refused(&widen, "attenuating to a right the token lacks");
    assert!(err.contains("does not allow policy:write"), "{err}");

    let forged = cap_create(&theirs, &rw);
    let revoked = cap_create(&ours, &rw);
    ok(&ours, &["cap", "revoke", &revoked.id]);
    let expired = cap_create(&ours, &["--allow", "config:write", "--ttl", "1s"]);
    eventually(Duration::from_secs(5), "the token's expiry to pass", || {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        (now > expired.expires_at_unix).then_some(())
    });
    let cases = [
        BadToken {
            what: "malformed",
            token: "not-a-token".into(),
            reason: "token is malformed: ",
        },
        BadToken {
            what: "oversized",
            token: "A".repeat(9000),
            reason: "token is 9000 bytes, the limit is 8192",
        },
        BadToken {
            what: "forged",
            token: forged.token,
            reason: "token is not signed by this cluster",
        },
        BadToken {
            what: "expired",
            token: expired.token,
            reason: "token expired at ",
        },
        BadToken {
            what: "revoked",
            token: revoked.token,
            reason: "token was revoked",
        },
        BadToken {
            what: "insufficient",
            token: reader.token.clone(),
            reason: "token does not allow config:write on retries",
        },
        BadToken {
            what: "attenuated",
            token: narrowed,
            reason: "token does not allow config:write on retries",
        },
    ];
    for case in &cases {
        let last_seq = audit_log(&ours).last().map_or(0, |e| e.seq);
        let out = with_token(&ours, &case.token, &["config", "set", "retries", "99"]);
        let err = refused(&out, case.what);
        assert!(
            (err.starts_with("error: the node refused the request: denied: ")
                || err.starts_with("error: the node does not take this credential: denied: "))
                && err.contains(case.reason),
            "{}: {err}",
            case.what
        );
        assert_eq!(
            ok(&ours, &["config", "get", "retries"]).trim(),
            "3",
            "{}: the value changed",
            case.what
        );
        let entry = eventually(
            Duration::from_secs(10),
            "the denial in the audit log",
            || audit_log(&ours).into_iter().find(|e| e.seq > last_seq),
        );
        // A token that is no credential here is refused (401) before the request is read; a
        // valid one that lacks the right is refused by the route (403).
        let expected = if case.reason.contains("does not allow") {
            ("denied", "config.set", "retries")
        } else {
            ("denied", "authenticate", "/v1/config/retries")
        };
        assert_eq!(
            (
                entry.outcome.as_str(),
                entry.action.as_str(),
                entry.target.as_str()
            ),
            expected,
            "{}: {entry:?}",
            case.what
        );
        // What a token that is no credential here says of its holder is not believed.
        if expected.1 == "authenticate" {
            assert!(
                entry.actor.starts_with("unverified token "),
                "{}: {entry:?}",
                case.what
            );
        }
        let reason = entry.reason.clone().unwrap_or_default();
        assert!(
            reason.contains(case.reason),
            "{}: audited reason {reason:?}",
            case.what
        );
    }
    // The only allowed write of the key is the admin's first one.
    let allowed: Vec<AuditEntry> = audit_log(&ours)
        .into_iter()
        .filter(|e| e.action == "config.set" && e.target == "retries" && e.outcome == "allowed")
        .collect();
    assert_eq!(allowed.len(), 1, "{allowed:?}");
    assert!(allowed[0].actor.starts_with("admin@"), "{allowed:?}");
}

#[test]
fn policy_applies_on_every_node_and_bad_datalog_is_refused() {
    let nodes = cluster_with(3, &[]);
    // Every node a voter: each one's admin may then write (a non-voter's may not).
    agreed(&nodes.iter().collect::<Vec<_>>(), "three voters", |c| {
        c.voters.len() == 3
    });
    ok(&nodes[0], &["config", "set", "greeting", "hello"]);
    let reader = cap_create(&nodes[0], &["--allow", "config:read"]);
    let read_on = |node: &Node| with_token(node, &reader.token, &["config", "get", "greeting"]);
    // The token works everywhere once the root key has replicated.
    for node in &nodes {
        eventually(Duration::from_secs(10), "the token accepted", || {
            let out = read_on(node);
            (out.status.success() && text(&out.stdout).trim() == "hello").then_some(())
        });
    }

    let files = tempfile::tempdir().unwrap();
    let policy = files.path().join("policy.datalog");
    std::fs::write(&policy, "deny if operation(\"config\", \"read\");\n").unwrap();
    ok(
        &nodes[0],
        &[
            "policy",
            "add",
            policy.to_str().unwrap(),
            "--name",
            "no-config-reads",
        ],
    );
    for node in nodes.iter().rev() {
        let err = eventually(Duration::from_secs(10), "the policy applied", || {
            let out = read_on(node);
            (!out.status.success()).then(|| refused(&out, "a read under the policy"))
        });
        assert!(
            err.contains("denied: policy 'no-config-reads' denied config:read on greeting"),
            "{}: {err}",
            node.name
        );
        // The admin credential is not subject to policies.
        assert_eq!(ok(node, &["config", "get", "greeting"]).trim(), "hello");
    }
    let denial = eventually(Duration::from_secs(10), "the policy denial audited", || {
        audit_log(&nodes[0]).into_iter().find(|e| {
            e.outcome == "denied"
                && e.reason
                    .as_deref()
                    .is_some_and(|r| r.contains("policy 'no-config-reads' denied"))
        })
    });
    assert_eq!(denial.action, "config.get", "{denial:?}");

    // Datalog that does not parse is refused and changes nothing.
    let listed = |node: &Node| -> PolicyList {
        serde_json::from_str(&ok(node, &["policy", "ls", "--json"])).unwrap()
    };
    let before = listed(&nodes[1]);
    assert_eq!(before.policies.len(), 1, "{before:?}");
    assert_eq!(before.policies[0].name, "no-config-reads");
    let bad = files.path().join("bad.datalog");
    std::fs::write(&bad, "deny if operation(\"config\", ;\n").unwrap();
    let out = nodes[1].cli(&["policy", "add", bad.to_str().unwrap(), "--name", "broken"]);
    let err = refused(&out, "a policy that does not parse");
    assert!(err.contains("does not parse"), "{err}");
    for node in &nodes {
        assert_eq!(listed(node), before, "{}", node.name);
    }

    // Removing the policy restores access on every node.
    ok(&nodes[2], &["policy", "rm", "no-config-reads"]);
    for node in &nodes {
        eventually(Duration::from_secs(10), "access restored", || {
            let out = read_on(node);
            (out.status.success() && text(&out.stdout).trim() == "hello").then_some(())
        });
        assert!(listed(node).policies.is_empty(), "{}", node.name);
    }

    // A token revoked through one node is refused by every other node (how fast: `noodle
    // bench`'s `revocation_everywhere`).
    ok(&nodes[1], &["cap", "revoke", &reader.id]);
    for node in &nodes {
        let err = eventually(Duration::from_secs(10), "the revocation applied", || {
            let out = read_on(node);
            (!out.status.success()).then(|| refused(&out, "a revoked token"))
        });
        assert!(err.contains("token was revoked"), "{}: {err}", node.name);
    }
}

#[test]
fn a_tampered_audit_entry_is_named_and_the_node_catches_up() {
    let mut nodes = pinned_cluster(3, &[]);
    agreed(
        &nodes.iter().collect::<Vec<_>>(),
        "3 voters and a leader",
        |c| c.voters.len() == 3,
    );
    for i in 1..=6 {
        ok(
            &nodes[0],
            &["config", "set", &format!("k{i}"), &format!("v{i}")],
        );
    }
    // The victim is a follower (no election needed) that has applied every write.
    let leader = control(&nodes[0]).and_then(|c| c.leader).expect("a leader");
    let victim = nodes
        .iter()
        .position(|n| n.node_id() != leader)
        .expect("a follower");
    let head = eventually(Duration::from_secs(10), "the victim's log complete", || {
        let (verified, report) = verify(&nodes[victim]);
        (verified && report.ok && report.head_seq >= 6).then_some(report.head_seq)
    });
    let log = audit_log(&nodes[victim]);
    assert_eq!(log[1].seq, 2);
    assert!(
        log.iter()
            .any(|e| (e.action.as_str(), e.target.as_str()) == ("config.set", "k2")),
        "{log:?}"
    );

    nodes[victim].kill9();
    let db = nodes[victim].dir.join("control.redb");
    tamper_with_audit_entry(&db, 2);

    // Offline, on the stopped node's database: the first bad entry is named.
    let db_arg = db.to_str().expect("utf-8 path");
    let out = nodes[victim].cli(&["audit", "verify", "--db", db_arg]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let said = text(&out.stdout);
    assert!(
        said.contains("does NOT verify") && said.contains("#2"),
        "{said}"
    );
    let out = nodes[victim].cli(&["audit", "verify", "--db", db_arg, "--json"]);
    let report: AuditVerifyReport = serde_json::from_slice(&out.stdout).expect("verify --json");
    assert!(!report.ok, "{report:?}");
    // (Entries applied after the last fsync may be missing on disk; the log replays them.)
    assert_eq!(report.bad_seq, Some(2), "{report:?}");

    // Started again, the node does not serve the damaged state: it sets the database aside
    // and catches up from its peers under a new control-plane identity.
    nodes[victim].spawn(&[]);
    nodes[victim].wait_ready(Duration::from_secs(10));
    let events = ok(&nodes[victim], &["events", "--json"]);
    assert!(
        events
            .lines()
            .any(|l| l.contains("control_recovered") && l.contains("#2")),
        "{events}"
    );
    let kept_aside = std::fs::read_dir(&nodes[victim].dir)
        .expect("data dir")
        .filter_map(Result::ok)
        .any(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("control.redb.damaged-")
        });
    assert!(kept_aside, "the damaged database is kept for inspection");
    eventually(Duration::from_secs(30), "the victim caught up", || {
        let (verified, report) = verify(&nodes[victim]);
        let value = nodes[victim].cli(&["config", "get", "k2"]);
        (verified && report.ok && report.head_seq >= head && text(&value.stdout).trim() == "v2")
            .then_some(())
    });
    let victim_id = nodes[victim].node_id().to_string();
    agreed(
        &nodes.iter().collect::<Vec<_>>(),
        "the victim a voter again",
        |c| c.voters.len() == 3 && c.voters.contains(&victim_id),
    );
    for (i, node) in nodes.iter().enumerate() {
        let (verified, report) = verify(node);
        assert!(verified && report.ok, "node {i}: {report:?}");
        assert!(report.head_seq >= head, "node {i}: {report:?}");
    }
}

#[test]
fn an_unreadable_control_database_is_set_aside_and_the_node_catches_up() {
    let mut nodes = pinned_cluster(3, &[]);
    agreed(
        &nodes.iter().collect::<Vec<_>>(),
        "3 voters and a leader",
        |c| c.voters.len() == 3,
    );
    ok(&nodes[0], &["config", "set", "kept", "yes"]);
    let leader = control(&nodes[0]).and_then(|c| c.leader).expect("a leader");
    let victim = nodes
        .iter()
        .position(|n| n.node_id() != leader)
        .expect("a follower");
    nodes[victim].kill9();
    // Zero the file's header: redb can no longer open it.
    let db = nodes[victim].dir.join("control.redb");
    let mut bytes = std::fs::read(&db).expect("read control.redb");
    bytes[..512].fill(0);
    std::fs::write(&db, &bytes).expect("write control.redb");

    nodes[victim].spawn(&[]);
    nodes[victim].wait_ready(Duration::from_secs(10));
    let events = ok(&nodes[victim], &["events", "--json"]);
    assert!(
        events
            .lines()
            .any(|l| l.contains("control_recovered") && l.contains("cannot be opened")),
        "{events}"
    );
    eventually(Duration::from_secs(30), "the node caught up", || {
        let out = nodes[victim].cli(&["config", "get", "kept"]);
        (out.status.success() && text(&out.stdout).trim() == "yes").then_some(())
    });
}

/// Flips one bit in the middle of audit entry `seq` in a stopped node's database (the state
/// table layout is in `noodle_control::state`).
fn tamper_with_audit_entry(db: &std::path::Path, seq: u64) {
    use redb::ReadableTable as _;
    const STATE: redb::TableDefinition<&[u8], &[u8]> = redb::TableDefinition::new("state");
    let db = redb::Database::open(db).expect("open control.redb");
    let txn = db.begin_write().unwrap();
    {
        let mut table = txn.open_table(STATE).unwrap();
        let key = [b"a/".as_slice(), &seq.to_be_bytes()].concat();
        let mut value = table
            .get(key.as_slice())
            .unwrap()
            .map(|v| v.value().to_vec())
            .unwrap_or_else(|| panic!("audit entry {seq} is not in the database"));
        let middle = value.len() / 2;
        value[middle] ^= 0x01;
        table.insert(key.as_slice(), value.as_slice()).unwrap();
    }
    txn.commit().unwrap();
}

#[test]
fn checkpoints_are_signed_and_verified() {
    let nodes = cluster_with(2, &["--audit-checkpoint-every", "4"]);
    for i in 0..10 {
        ok(&nodes[0], &["config", "set", &format!("k{i}"), "v"]);
    }
    // The leader signs; both the leader and the other node check its signature.
    for node in &nodes {
        let report = eventually(Duration::from_secs(15), "a signed checkpoint", || {
            let (verified, report) = verify(node);
            assert!(verified && report.ok, "{}: {report:?}", node.name);
            (report.checkpoints >= 1 && report.last_checkpoint_seq.is_some_and(|s| s >= 4))
                .then_some(report)
        });
        assert!(report.entries >= 10, "{}: {report:?}", node.name);
        let text = ok(node, &["audit", "verify"]);
        assert!(
            text.contains("audit log verifies") && text.contains("signed checkpoints up to #"),
            "{text}"
        );
    }
}

/// A client writes through a follower in a loop while the leader is killed: every write it
/// started is acknowledged (the follower sends a write whose leader died to the next one),
/// none is applied twice (each is in the audit log once), and the first write after the kill
/// is acknowledged within 3 s of it.
#[test]
fn writes_through_a_follower_survive_the_leader_dying_and_apply_once() {
    let mut nodes = pinned_cluster(3, &[]);
    let ids: Vec<String> = nodes.iter().map(Node::node_id).collect();
    let current = agreed(
        &nodes.iter().collect::<Vec<_>>(),
        "3 voters and a leader",
        |c| c.voters.len() == 3 && c.leader.is_some(),
    );
    let leader = current.leader.clone().expect("a leader");
    let li = ids
        .iter()
        .position(|id| *id == leader)
        .expect("leader is a node");
    let fi = (li + 1) % nodes.len();
    let follower = nodes[fi].dir.clone();

    /// One write: its key, when it started and ended, and what the CLI said.
    struct Write {
        key: String,
        started: Instant,
        ended: Instant,
        ok: bool,
        stderr: String,
    }
    let stop = Arc::new(AtomicBool::new(false));
    let _stop_on_panic = StopOnDrop(stop.clone());
    let acked = Arc::new(AtomicUsize::new(0));
    let writer = std::thread::spawn({
        let (stop, acked) = (stop.clone(), acked.clone());
        move || {
            let mut writes = Vec::new();
            let mut n = 0usize;
            while !stop.load(Ordering::SeqCst) {
                n += 1;
                let key = format!("loop/k{n:05}");
                let started = Instant::now();
                let out = cli(&follower, &["config", "set", &key, "v"]);
                let ok = out.status.success();
                if ok {
                    acked.fetch_add(1, Ordering::SeqCst);
                }
                writes.push(Write {
                    key,
                    started,
                    ended: Instant::now(),
                    ok,
                    stderr: String::from_utf8_lossy(&out.stderr).to_string(),
                });
            }
            writes
        }
    });
    eventually(Duration::from_secs(30), "writes before the kill", || {
        (acked.load(Ordering::SeqCst) >= 10).then_some(())
    });
    nodes[li].kill9();
    let killed = Instant::now();
    let before = acked.load(Ordering::SeqCst);
    eventually(Duration::from_secs(60), "writes after the kill", || {
        (acked.load(Ordering::SeqCst) >= before + 10).then_some(())
    });
    stop.store(true, Ordering::SeqCst);
    let writes = writer.join().expect("writer thread");

    let failed: Vec<String> = writes
        .iter()
        .filter(|w| !w.ok)
        .map(|w| format!("{}: {}", w.key, w.stderr.trim()))
        .collect();
    assert!(failed.is_empty(), "writes failed: {failed:#?}");
    let first_after = writes
        .iter()
        .find(|w| w.ended > killed)
        .expect("a write ended after the kill");
    let took = first_after.ended - killed;
    eprintln!(
        "{} writes; the first after the kill ({}, started {:?} before it) was acknowledged {took:?} after it",
        writes.len(),
        first_after.key,
        killed.saturating_duration_since(first_after.started)
    );
    assert!(
        took <= Duration::from_secs(3),
        "the first write after the kill took {took:?}"
    );
    // Applied once: every write is in the audit log exactly once, as allowed.
    let survivors: Vec<&Node> = nodes
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != li)
        .map(|(_, n)| n)
        .collect();
    let log = audit_log(survivors[0]);
    for w in &writes {
        let entries = log
            .iter()
            .filter(|e| e.action == "config.set" && e.target == w.key)
            .count();
        assert_eq!(entries, 1, "{} is in the audit log {entries} times", w.key);
    }
    for node in survivors {
        let (verified, report) = verify(node);
        assert!(verified && report.ok, "{}: {report:?}", node.name);
    }
}

/// A token holder's `cap create` hands on a narrowing of its own token: the child cannot
/// outlive it, out-quota it, hold a right it lacks, or survive its revocation.
#[test]
fn a_token_hands_on_only_a_narrowing_of_itself() {
    let node = Node::founder("delegation");
    node.wait_ready(Duration::from_secs(10));
    let parent = cap_create(
        &node,
        &[
            "--allow",
            "cap:create",
            "--allow",
            "config:read",
            "--allow",
            "config:write",
            "--quota",
            "cpus=2",
            "--ttl",
            "1h",
            "--for",
            "alice",
        ],
    );
    let created = with_token(
        &node,
        &parent.token,
        &[
            "cap",
            "create",
            "--json",
            "--allow",
            "config:read",
            "--ttl",
            "10h",
            "--for",
            "bob",
        ],
    );
    assert!(created.status.success(), "{}", text(&created.stderr));
    let child: CapResponse = serde_json::from_slice(&created.stdout).expect("cap create --json");
    assert!(
        child.expires_at_unix <= parent.expires_at_unix,
        "the child outlives its parent: {} > {}",
        child.expires_at_unix,
        parent.expires_at_unix
    );
    let inspected: serde_json::Value =
        serde_json::from_str(&ok(&node, &["cap", "inspect", "--json", &child.token]))
            .expect("cap inspect --json");
    assert_eq!(inspected["quotas"][0]["name"], "cpus", "{inspected}");
    assert_eq!(inspected["quotas"][0]["value"], 2, "{inspected}");
    assert_eq!(inspected["holder"], "alice", "{inspected}");
    assert!(
        inspected["revocation_ids"]
            .as_array()
            .is_some_and(|ids| ids.iter().any(|id| id == &serde_json::json!(parent.id)))
    );
    // It reads, and it cannot write although its parent can.
    ok(&node, &["config", "set", "colour", "blue"]);
    let read = with_token(&node, &child.token, &["config", "get", "colour"]);
    assert!(read.status.success(), "{}", text(&read.stderr));
    let write = with_token(&node, &child.token, &["config", "set", "colour", "red"]);
    refused(&write, "a write with a read-only child");
    // No quota of its own, and no right its parent lacks.
    let quota = with_token(
        &node,
        &parent.token,
        &[
            "cap",
            "create",
            "--allow",
            "config:read",
            "--quota",
            "cpus=8",
        ],
    );
    assert!(
        refused(&quota, "a child with more cpus").contains("keeps its parent's quotas"),
        "{}",
        text(&quota.stderr)
    );
    let wider = with_token(
        &node,
        &parent.token,
        &["cap", "create", "--allow", "policy:write"],
    );
    refused(&wider, "a child with a right its parent lacks");
    // Revoking the parent revokes the child.
    ok(&node, &["cap", "revoke", &parent.id]);
    let after = eventually(Duration::from_secs(10), "the child refused", || {
        let out = with_token(&node, &child.token, &["config", "get", "colour"]);
        (!out.status.success()).then_some(out)
    });
    assert!(
        text(&after.stderr).contains("revoked"),
        "{}",
        text(&after.stderr)
    );
}

/// A stream answered to a token (here `noodle events --follow`) ends once the token is revoked
/// or expires: an open connection does not outlive the right it was opened with.
#[test]
fn streams_end_when_their_token_is_revoked_or_expires() {
    use std::io::BufRead;
    let node = Node::founder("streams");
    node.wait_ready(Duration::from_secs(10));
    let follow = |token: &str| {
        let mut child = std::process::Command::new(crate::support::noodle_bin())
            .arg("--data-dir")
            .arg(&node.dir)
            .args(["--token", token, "events", "--follow"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("noodle events --follow");
        // The node's history comes first: the stream is open and the token was accepted.
        let mut line = String::new();
        let stdout = child.stdout.take().expect("stdout");
        let mut reader = std::io::BufReader::new(stdout);
        reader.read_line(&mut line).expect("read an event");
        assert!(!line.is_empty(), "the follower got no event");
        // Keep draining so that the follower never blocks on a full pipe.
        std::thread::spawn(move || for _ in reader.lines() {});
        child
    };
    let revoked = cap_create(&node, &["--allow", "cluster:read"]);
    // Expires long after the follower is up even on a slow machine, and is then refused.
    let expiring = cap_create(&node, &["--allow", "cluster:read", "--ttl", "30s"]);
    let kept = cap_create(&node, &["--allow", "cluster:read"]);
    let mut a = follow(&revoked.token);
    let mut b = follow(&expiring.token);
    let mut c = follow(&kept.token);
    ok(&node, &["cap", "revoke", &revoked.id]);
    for (what, child) in [("revoked", &mut a), ("expired", &mut b)] {
        let status = eventually(Duration::from_secs(60), what, || child.try_wait().unwrap());
        assert!(
            !status.success(),
            "{what}: the follower ended without an error"
        );
    }
    // A token that still holds its right keeps its stream.
    assert!(
        c.try_wait().unwrap().is_none(),
        "a valid token's stream ended"
    );
    let _ = c.kill();
    let _ = c.wait();
}

/// A caller cannot grow the audit log at will: the same denial, repeated, is recorded once
/// (its repeats are counted into one more record when the window ends: `noodle-host`'s
/// `denials` tests).
#[test]
fn repeated_denials_are_recorded_once() {
    let node = Node::founder("a");
    node.wait_ready(Duration::from_secs(10));
    let before = audit_log(&node).len();
    for _ in 0..30 {
        let out = with_token(&node, "not-a-token", &["config", "get", "retries"]);
        assert!(!out.status.success());
    }
    // The denials are proposed without waiting; a write after them, and the first denial,
    // both in the log show it has caught up.
    ok(&node, &["config", "set", "marker", "1"]);
    let log = eventually(Duration::from_secs(10), "the marker and a denial", || {
        let log = audit_log(&node);
        let marker = log.iter().any(|e| e.target == "marker");
        let denied = log[before..].iter().any(|e| e.outcome == "denied");
        (marker && denied).then_some(log)
    });
    let denials: Vec<_> = log[before..]
        .iter()
        .filter(|e| e.outcome == "denied")
        .collect();
    assert_eq!(denials.len(), 1, "{denials:?}");
}

/// The audit log keeps what `--audit-keep` says and prunes older entries behind a signed
/// checkpoint: the rest still verifies from that checkpoint, and tampering with a kept entry
/// is still found and named.
#[test]
fn the_audit_log_is_pruned_behind_a_signed_checkpoint_and_still_verifies() {
    let mut node = Node::start(
        "a",
        &["--audit-checkpoint-every", "4", "--audit-keep", "10"],
    );
    node.wait_ready(Duration::from_secs(10));
    let write = |range: std::ops::Range<u32>| {
        for i in range {
            ok(&node, &["config", "set", &format!("k{i}"), "v"]);
        }
    };
    // The leader signs a checkpoint at the head (once 4 entries came since the last one) and
    // prunes up to the newest checkpoint that leaves at least 10 entries after it.
    write(0..20);
    eventually(Duration::from_secs(30), "a checkpoint at #20", || {
        let (_, report) = verify(&node);
        (report.last_checkpoint_seq >= Some(20)).then_some(())
    });
    write(20..40);
    let log = eventually(Duration::from_secs(30), "old entries pruned", || {
        let log = audit_log(&node);
        (log.first()?.seq > 1).then_some(log)
    });
    let first_kept = log[0].seq;
    assert!(
        log.len() >= 10,
        "fewer entries kept than --audit-keep: {log:?}"
    );
    assert_eq!(
        log.len() as u64,
        log.last().unwrap().seq - first_kept + 1,
        "no gaps"
    );
    let (verified, report) = verify(&node);
    assert!(verified && report.ok, "{report:?}");
    assert!(
        report.head_seq >= 40 && report.entries < report.head_seq,
        "{report:?}"
    );

    node.kill9();
    let db = node.dir.join("control.redb");
    tamper_with_audit_entry(&db, first_kept + 1);
    let db_arg = db.to_str().expect("utf-8 path");
    let out = node.cli(&["audit", "verify", "--db", db_arg, "--json"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let report: AuditVerifyReport = serde_json::from_slice(&out.stdout).expect("verify --json");
    assert_eq!(report.bad_seq, Some(first_kept + 1), "{report:?}");
}
