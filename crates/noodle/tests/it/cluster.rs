//! Forming a cluster, failure detection, restart, status, events.

use crate::support::{Node, cluster, eventually, wait_all_alive};
use noodle_api::NodeState;
use std::time::{Duration, Instant};

/// How fast a node starts is a benchmark's business, not a test's: the test checks that it
/// answers, and prints how long that took.
#[test]
fn fresh_node_answers_status_alive() {
    let started = Instant::now();
    let node = Node::founder("solo");
    let report = eventually(Duration::from_secs(10), "status answers", || node.status());
    eprintln!(
        "a fresh node answered status {:?} after spawn",
        started.elapsed()
    );
    assert_eq!(report.nodes.len(), 1);
    let me = &report.nodes[0];
    assert_eq!(me.id, report.self_id);
    assert_eq!(me.name, "solo");
    assert_eq!(me.state, NodeState::Alive);
    assert!(me.is_self);
    assert!(me.cpus >= 1 && me.mem_total_bytes > 0, "{me:?}");
    assert_eq!(report.totals.nodes_alive, 1);
    // The JSON field names are a contract.
    let raw = node.cli(&["status", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&raw.stdout).unwrap();
    for key in ["cluster_id", "self", "nodes", "links"] {
        assert!(v.get(key).is_some(), "missing {key} in {v}");
    }
    for key in [
        "id",
        "name",
        "addr",
        "state",
        "cpus",
        "mem_total_bytes",
        "gpus",
        "labels",
    ] {
        assert!(
            v["nodes"][0].get(key).is_some(),
            "missing nodes[].{key} in {v}"
        );
    }
}

#[test]
fn three_nodes_join_and_all_links_are_post_quantum() {
    let first = Node::start("node-0", &["--label", "zone=a"]);
    first.wait_ready(Duration::from_secs(10));
    let token = first.token(&["--uses", "2"]);
    let joined_at = Instant::now();
    let nodes = vec![
        first,
        Node::start("node-1", &["--join", &token, "--label", "gpu=none"]),
        Node::start("node-2", &["--join", &token]),
    ];
    wait_all_alive(&nodes, Duration::from_secs(15));
    eprintln!(
        "all alive on every node {:?} after the joiners were spawned",
        joined_at.elapsed()
    );
    let ids: Vec<String> = nodes.iter().map(|n| n.node_id()).collect();
    // Every node eventually reports every directed link, all with the PQ hybrid group.
    for n in &nodes {
        let report = eventually(Duration::from_secs(10), "all 6 links reported", || {
            let r = n.status()?;
            (r.links.len() == 6).then_some(r)
        });
        for l in &report.links {
            assert_eq!(l.kx_group, "X25519MLKEM768", "{l:?}");
            assert!(ids.contains(&l.from) && ids.contains(&l.peer), "{l:?}");
            assert!(l.rtt_us > 0, "{l:?}");
        }
        assert_eq!(report.totals.nodes_alive, 3);
        let zone = report.nodes.iter().find(|x| x.id == ids[0]).unwrap();
        assert_eq!(zone.labels.get("zone").map(String::as_str), Some("a"));
        assert_eq!(report.cluster_id, nodes[0].status().unwrap().cluster_id);
    }
    // Link events name the peer by the node id in its certificate.
    let out = nodes[0].cli(&["events", "--json"]);
    let events: Vec<noodle_api::Event> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    for peer in &ids[1..] {
        assert!(
            events
                .iter()
                .any(|e| e.kind == noodle_api::EventKind::LINK_UP && &e.node == peer),
            "no link_up naming {peer}: {events:?}"
        );
    }
    // Human output names every node.
    let text = String::from_utf8_lossy(&nodes[2].cli(&["status"]).stdout).to_string();
    for name in ["node-0", "node-1", "node-2", "X25519MLKEM768", "zone=a"] {
        assert!(text.contains(name), "{name} missing from:\n{text}");
    }
}

/// The failure detector's timing (dead within about 3 s) is checked in virtual time by
/// `noodle-discovery`'s `members_join_and_a_crash_is_detected_within_5s`; here, with real
/// processes, the test checks that the death is seen and prints when.
#[test]
fn killed_node_is_dead_and_restart_keeps_its_id() {
    let mut nodes = cluster(3);
    let victim_id = nodes[2].node_id();
    nodes[2].kill9();
    let killed_at = Instant::now();
    for n in &nodes[..2] {
        eventually(Duration::from_secs(10), "victim reported dead", || {
            let r = n.status()?;
            r.nodes
                .iter()
                .any(|x| x.id == victim_id && x.state == NodeState::Dead)
                .then_some(())
        });
    }
    eprintln!(
        "dead on every survivor {:?} after SIGKILL",
        killed_at.elapsed()
    );
    // Restart on the same data directory: same id, alive again everywhere.
    nodes[2].spawn(&[]);
    nodes[2].wait_ready(Duration::from_secs(10));
    assert_eq!(nodes[2].node_id(), victim_id);
    wait_all_alive(&nodes, Duration::from_secs(10));
    let r = nodes[0].status().unwrap();
    assert_eq!(
        r.nodes.iter().filter(|x| x.id == victim_id).count(),
        1,
        "one entry per node id: {r:?}"
    );
    let events = String::from_utf8_lossy(&nodes[0].cli(&["events", "--json"]).stdout).to_string();
    for kind in [
        "node_joined",
        "node_dead",
        "node_rejoined",
        "link_up",
        "link_down",
    ] {
        assert!(
            events.contains(kind),
            "{kind} missing from events:\n{events}"
        );
    }
}

#[test]
fn events_follow_streams_membership_changes() {
    let first = Node::founder("watch");
    first.wait_ready(Duration::from_secs(10));
    let mut follower = std::process::Command::new(crate::support::noodle_bin())
        .arg("--data-dir")
        .arg(&first.dir)
        .args(["events", "--follow", "--json"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let token = first.token(&[]);
    let second = Node::start("joiner", &["--join", &token]);
    let second_id = eventually(Duration::from_secs(10), "joiner id", || {
        second
            .dir
            .join("node.json")
            .exists()
            .then(|| second.node_id())
    });
    let stdout = follower.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut seen = Vec::new();
    while Instant::now() < deadline {
        if let Ok(line) = rx.recv_timeout(Duration::from_millis(200)) {
            let e: noodle_api::Event = serde_json::from_str(&line).unwrap();
            let done = e.kind == noodle_api::EventKind::NODE_JOINED && e.node == second_id;
            seen.push(e);
            if done {
                break;
            }
        }
    }
    let _ = follower.kill();
    let _ = follower.wait();
    assert!(
        seen.iter()
            .any(|e| e.kind == noodle_api::EventKind::NODE_JOINED && e.node == second_id),
        "no node_joined for {second_id} in {seen:?}"
    );
    assert!(
        seen.iter()
            .any(|e| e.kind == noodle_api::EventKind::NODE_STARTED)
    );
}
