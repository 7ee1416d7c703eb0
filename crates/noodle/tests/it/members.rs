//! Threat model point 4, from a stolen member's data directory: what its certificate and keys
//! can still do to the other nodes, and `noodle node remove`.

use crate::support::{Node, cluster, eventually};
use bytes::Bytes;
use noodle_link::{
    JoinPeer, Link, LinkConfig, LinkEvent, Peer, RemoteError, Service, ServiceFuture, TlsMaterial,
};
use rustls::pki_types::CertificateDer;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// The attacker's side: answers nothing.
struct Mute;

impl Service for Mute {
    fn call(&self, _: Peer, _: &str, _: Bytes) -> ServiceFuture {
        Box::pin(async { Err(RemoteError::new(RemoteError::NOT_FOUND, "mute")) })
    }
    fn join(&self, _: JoinPeer, _: Bytes) -> ServiceFuture {
        Box::pin(async { Err(RemoteError::new(RemoteError::NOT_FOUND, "mute")) })
    }
    fn datagram(&self, _: &Peer, _: Bytes) {}
    fn event(&self, _: LinkEvent) {}
}

/// A link made from a node's data directory, as a thief who copied it would make one.
fn stolen_link(dir: &std::path::Path) -> Link {
    let read = |name: &str| std::fs::read(dir.join(name)).unwrap();
    let key =
        noodle_security::NodeKey::from_pem(&String::from_utf8(read("node.key")).unwrap()).unwrap();
    let tls = TlsMaterial {
        ca: CertificateDer::from(read("ca.crt")),
        cert: CertificateDer::from(read("node.crt")),
        key: key.private_key_der(),
    };
    Link::bind(
        LinkConfig::new("127.0.0.1:0".parse().unwrap()),
        &tls,
        Arc::new(Mute),
    )
    .unwrap()
}

/// Waits until the cluster has three voters and one learner; the learner's node id.
fn the_learner(nodes: &[Node]) -> String {
    eventually(
        Duration::from_secs(30),
        "three voters and a learner",
        || {
            let c = nodes[0].status()?.control?;
            (c.voters.len() == 3 && c.learners.len() == 1).then(|| c.learners[0].clone())
        },
    )
}

/// Forwards `proposal` to `to` over `link` as a member does (`control.propose`), with the
/// person's `credential`: the leader's answer.
fn forward(
    rt: &tokio::runtime::Runtime,
    link: &Link,
    to: &Node,
    proposal: noodle_control::Proposal,
    credential: Option<String>,
) -> Result<noodle_control::Response, noodle_control::WireError> {
    let body = postcard::to_stdvec(&noodle_control::Forwarded {
        proposal,
        credential,
    })
    .unwrap();
    let answer = rt
        .block_on(link.request(addr_of(to), "control.propose", &body))
        .expect("answered");
    postcard::from_bytes(&answer).unwrap()
}

fn addr_of(node: &Node) -> SocketAddr {
    let me = node
        .status()
        .unwrap()
        .nodes
        .into_iter()
        .find(|n| n.is_self)
        .unwrap();
    me.addr.parse().unwrap()
}

/// After `noodle node remove`, every other node refuses the removed node's links (checked with
/// its stolen certificate and key, which worked just before), forgets it, takes it out of the
/// control plane, and says so in its events. Removing a node that does not exist, or the node
/// one asks, is one clear error.
#[test]
fn a_removed_node_is_refused_by_every_other_node() {
    let nodes = cluster(4);
    // Four nodes: three voters and a learner; the learner's directory is the stolen one.
    let learner = the_learner(&nodes);
    let victim = nodes.iter().position(|n| n.node_id() == learner).unwrap();
    let victim_id = nodes[victim].node_id();
    let others: Vec<&Node> = nodes
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != victim)
        .map(|(_, n)| n)
        .collect();
    let addrs: Vec<SocketAddr> = others.iter().map(|n| addr_of(n)).collect();

    let rt = tokio::runtime::Runtime::new().unwrap();
    let thief = rt.block_on(async { stolen_link(&nodes[victim].dir) });
    let ping = |addr: SocketAddr| rt.block_on(thief.request(addr, "node.ping", b"hi"));
    for addr in &addrs {
        assert_eq!(&ping(*addr).unwrap()[..], b"hi", "before removal, {addr}");
    }

    // Bad input first: nothing is removed.
    let out = others[0].cli(&["node", "remove", "no-such-node"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no node `no-such-node`"));
    let own = others[0].node_id();
    let out = others[0].cli(&["node", "remove", &own]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot remove itself"));

    let out = others[0].cli(&["node", "remove", &victim_id, "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let removed: noodle_api::RemovedNode = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(removed.id, victim_id);

    for (node, addr) in others.iter().zip(&addrs) {
        eventually(
            Duration::from_secs(10),
            "the stolen identity refused",
            || ping(*addr).is_err().then_some(()),
        );
        eventually(
            Duration::from_secs(10),
            "the removed node forgotten",
            || {
                let s = node.status()?;
                let control = s.control?;
                let gone = s.nodes.iter().all(|n| n.id != victim_id)
                    && !control.voters.contains(&victim_id)
                    && !control.learners.contains(&victim_id);
                gone.then_some(())
            },
        );
        let events = node.cli(&["events", "--json"]);
        let events = String::from_utf8_lossy(&events.stdout).to_string();
        assert!(
            events
                .lines()
                .any(|l| l.contains("node_removed") && l.contains(&victim_id)),
            "{events}"
        );
    }
    // What the thief holds mints nothing: the learner never had the cluster's keys.
    for key in ["ca.key", "root.key"] {
        assert!(
            !nodes[victim].dir.join(key).exists(),
            "the removed node has {key}"
        );
    }
    // Refused for good: a fresh connection from the stolen directory gets nowhere either.
    for addr in &addrs {
        let err = ping(*addr).unwrap_err();
        assert!(
            matches!(
                err,
                noodle_link::LinkError::Connect { .. } | noodle_link::LinkError::Connection { .. }
            ),
            "{err}"
        );
    }
    // The audit log names who removed it.
    let audit = others[0].cli(&["audit", "--json"]);
    let audit = String::from_utf8_lossy(&audit.stdout).to_string();
    assert!(
        audit.contains("node.remove") && audit.contains(&victim_id),
        "{audit}"
    );
}

/// A member cannot speak for another node in gossip: an entry about another node, sent with a
/// stolen member's certificate, is not taken (whatever version it claims), and the real node's
/// entry stays what that node said.
#[test]
fn a_member_cannot_forge_another_nodes_gossip_entry() {
    let nodes = cluster(3);
    let (thief_dir, target, other) = (&nodes[2].dir, &nodes[0], &nodes[1]);
    let other_id = other.node_id();
    let real_name = |node: &Node| {
        node.status()
            .unwrap()
            .nodes
            .into_iter()
            .find(|n| n.id == other_id)
            .map(|n| n.name)
    };
    let before = real_name(target).expect("the other node is known");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let thief = rt.block_on(async { stolen_link(thief_dir) });
    let forged = noodle_discovery::NodeInfo {
        id: other_id.clone(),
        name: "pwned".into(),
        addr: "127.0.0.1:9".parse().unwrap(),
        version: u64::MAX - 1,
        software: "forged".into(),
        resources: Default::default(),
        labels: Default::default(),
        links: Vec::new(),
        control_incarnation: 0,
        job_slots: 1000,
        control_up: true,
        signature: vec![0; 64],
    };
    let msg = noodle_discovery::SyncMessage {
        entries: vec![forged],
    };
    let body = postcard::to_stdvec(&msg).unwrap();
    rt.block_on(thief.request(addr_of(target), "gossip.sync", &body))
        .expect("the gossip round is answered");
    // The real node keeps gossiping; its entry on the target stays its own.
    let newer_real = eventually(Duration::from_secs(10), "another real gossip round", || {
        let s = target.status()?;
        let n = s.nodes.into_iter().find(|n| n.id == other_id)?;
        (n.version != "forged").then_some(n)
    });
    assert_eq!(newer_real.name, before);
    assert_ne!(newer_real.slots, 1000);
    assert!(newer_real.updated_at_ms < u64::MAX - 1);
}

/// A member cannot report on another node's job: an "ended" report for a job running
/// elsewhere, forwarded to the leader with a stolen member certificate, is refused and the job
/// runs on. (Raft itself refuses the same member anything but forwarding: see
/// `noodle-control`'s tests.)
#[test]
fn a_member_cannot_report_on_another_nodes_job() {
    let nodes = cluster(3);
    let id = {
        let out = nodes[0].cli(&["run", "--detach", "--", "sleep", "600"]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    let job = eventually(Duration::from_secs(30), "the job running", || {
        let out = nodes[0].cli(&["jobs", "--json"]);
        let list: noodle_api::JobList = serde_json::from_slice(&out.stdout).ok()?;
        list.jobs
            .into_iter()
            .find(|j| j.id.to_string() == id && j.state == "running")
    });
    let runner = job.node.clone().expect("a node");
    let thief = nodes
        .iter()
        .find(|n| n.node_id() != runner)
        .expect("a node that does not run the job");
    let leader_id = nodes[0].status().unwrap().control.unwrap().leader.unwrap();
    let leader = nodes.iter().find(|n| n.node_id() == leader_id).unwrap();

    let report = noodle_jobs::JobCommand::Ended {
        id: job.id,
        epoch: job.epoch,
        exit_code: 0,
        at_ms: 1,
    };
    let proposal = noodle_control::Proposal::machine("jobs", noodle_jobs::machine::encode(&report));
    let rt = tokio::runtime::Runtime::new().unwrap();
    let link = rt.block_on(async { stolen_link(&thief.dir) });
    let err =
        forward(&rt, &link, leader, proposal, None).expect_err("the forged report was accepted");
    assert!(
        err.to_string()
            .contains(&format!("may not report on job {}", job.id)),
        "{err}"
    );
    let out = nodes[0].cli(&["jobs", "--json"]);
    let list: noodle_api::JobList = serde_json::from_slice(&out.stdout).unwrap();
    let now = list.jobs.into_iter().find(|j| j.id == job.id).unwrap();
    assert_eq!(now.state, "running");
    nodes[0].cli(&["cancel", &id]);
}

/// People are not nodes, and a node cannot act for a person: a node that is not a voter
/// forwards a person's write only with the person's token, which the leader authorises again.
/// Its local admin credential is that node's, not the cluster's; a stolen non-voter directory
/// forwards a write with no token, or with a token that does not grant it, and is refused.
#[test]
fn a_non_voter_forwards_a_write_only_with_a_token_that_grants_it() {
    use crate::control::{cap_create, with_token};
    let nodes = cluster(4);
    let learner_id = the_learner(&nodes);
    let learner = nodes.iter().find(|n| n.node_id() == learner_id).unwrap();
    let voter = nodes.iter().find(|n| n.node_id() != learner_id).unwrap();

    // The learner's local admin: refused by the leader, with what to do instead.
    let out = learner.cli(&["config", "set", "colour", "red"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("not a voter") && err.contains("--token"),
        "{err}"
    );
    let out = learner.cli(&["run", "--detach", "--", "true"]);
    assert!(
        !out.status.success(),
        "a job submitted as a non-voter's admin"
    );

    // A person's token works through the learner, and the audit log names its holder.
    let writer = cap_create(voter, &["--allow", "config:write", "--for", "alice"]);
    let out = with_token(learner, &writer.token, &["config", "set", "colour", "blue"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let audit = voter.cli(&["audit", "--json"]);
    let audit = String::from_utf8_lossy(&audit.stdout).to_string();
    let line = audit
        .lines()
        .find(|l| l.contains("\"config.set\"") && l.contains("colour"))
        .unwrap_or_else(|| panic!("{audit}"));
    assert!(line.contains("(alice)"), "{line}");

    // The stolen learner directory, straight to the leader: no token, a token without the
    // right, and a write dressed as the learner's own record.
    let leader_id = voter.status().unwrap().control.unwrap().leader.unwrap();
    let leader = nodes.iter().find(|n| n.node_id() == leader_id).unwrap();
    let reader = cap_create(voter, &["--allow", "config:read"]);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let link = rt.block_on(async { stolen_link(&learner.dir) });
    let set = noodle_control::Proposal::new(noodle_control::Command::ConfigSet {
        key: "colour".into(),
        value: "stolen".into(),
    });
    for (credential, why) in [
        (None, "not a voter"),
        (Some(reader.token.clone()), "does not allow config:write"),
    ] {
        let err = forward(&rt, &link, leader, set.clone(), credential)
            .expect_err("the forged write was accepted");
        assert!(err.to_string().contains(why), "{err}");
    }
    let out = voter.cli(&["config", "get", "colour"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "blue");

    // A token it was shown, replayed for a job bigger than the token's quota: refused too.
    let runner = cap_create(voter, &["--allow", "jobs:run", "--quota", "cpus=1"]);
    let submit = noodle_jobs::JobCommand::Submit {
        spec: noodle_jobs::JobSpec {
            command: vec!["true".into()],
            cpus: 4,
            mem_bytes: 0,
            gpus: 0,
            labels: Default::default(),
            submitter: "stolen".into(),
            retries: 0,
            origin: learner_id.clone(),
            files: Vec::new(),
            reads: Vec::new(),
            writes: Vec::new(),
            held: Vec::new(),
        },
        at_ms: 1,
    };
    let submit = noodle_control::Proposal::machine("jobs", noodle_jobs::machine::encode(&submit));
    let err = forward(&rt, &link, leader, submit, Some(runner.token.clone()))
        .expect_err("a job over the token's quota was accepted");
    assert!(
        err.to_string()
            .contains("asks for 4 cpus; the token allows 1"),
        "{err}"
    );

    // The learner's local admin manages the learner's own work: it cancels a job running on
    // the learner, not one running on a voter.
    let running_on = |on: &str| {
        let out = voter.cli(&["run", "--detach", "--on", on, "--", "sleep", "600"]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let id = String::from_utf8_lossy(&out.stdout).trim().to_string();
        eventually(Duration::from_secs(30), "the job running", || {
            (job_state(voter, &id)? == "running").then_some(())
        });
        id
    };
    let elsewhere = running_on(&voter.node_id());
    let out = learner.cli(&["cancel", &elsewhere]);
    assert!(!out.status.success(), "the learner cancelled a voter's job");
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a voter"));
    let here = running_on(&learner_id);
    let out = learner.cli(&["cancel", &here]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    eventually(
        Duration::from_secs(30),
        "the learner's job cancelled",
        || (job_state(voter, &here)? == "cancelled").then_some(()),
    );
    assert_eq!(job_state(voter, &elsewhere).as_deref(), Some("running"));
    voter.cli(&["cancel", &elsewhere]);

    // `noodle login` keeps a person's token in their own config directory; every command on
    // the learner then uses it, until `noodle logout`. A token of no cluster is not kept.
    let home = tempfile::tempdir().unwrap();
    let as_person = |args: &[&str]| {
        std::process::Command::new(crate::support::noodle_bin())
            .env("XDG_CONFIG_HOME", home.path())
            .env_remove("NOODLE_TOKEN")
            .arg("--data-dir")
            .arg(&learner.dir)
            .args(args)
            .output()
            .unwrap()
    };
    let out = as_person(&["login", "noodle-not-a-token"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("does not take this credential"));
    assert!(!home.path().join("noodle/token").exists());
    let out = as_person(&["login", &writer.token]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let kept = home.path().join("noodle/token");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&kept).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let out = as_person(&["config", "set", "colour", "green"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(as_person(&["logout"]).status.success());
    let out = as_person(&["config", "set", "colour", "grey"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a voter"));
    let out = voter.cli(&["config", "get", "colour"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "green");

    // The founder's owner token, kept in the founder's config directory (not its data
    // directory), is a person's credential on every node.
    let founder = &nodes[0];
    let cluster_id = founder.status().unwrap().cluster_id;
    let kept = founder
        .config_home()
        .join(format!("noodle/owner-{cluster_id}.token"));
    assert_eq!(
        std::fs::metadata(&kept).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let owner = std::fs::read_to_string(&kept).unwrap();
    let out = with_token(
        learner,
        owner.trim(),
        &["config", "set", "colour", "owner's"],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let said = founder.cli(&["cap", "inspect", owner.trim()]);
    let said = String::from_utf8_lossy(&said.stdout).to_string();
    assert!(
        said.contains("Token for owner") && said.contains("do anything with jobs"),
        "{said}"
    );
}

/// The state of job `id` as `node` lists it.
fn job_state(node: &Node, id: &str) -> Option<String> {
    let out = node.cli(&["jobs", "--json"]);
    let list: noodle_api::JobList = serde_json::from_slice(&out.stdout).ok()?;
    list.jobs
        .into_iter()
        .find(|j| j.id.to_string() == id)
        .map(|j| j.state)
}

/// Whether a node's data directory holds the cluster's two keys.
pub(crate) fn holds_keys(node: &Node) -> bool {
    node.dir.join("ca.key").exists() && node.dir.join("root.key").exists()
}

/// Every file under `dir`, with its bytes.
fn files_under(dir: &std::path::Path) -> Vec<(std::path::PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(files_under(&path));
        } else if let Ok(bytes) = std::fs::read(&path) {
            out.push((path, bytes));
        }
    }
    out
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Threat point 4: a non-voter's stolen data directory holds no key that mints anything. Only
/// voters hold the CA key and the capability root key; the replicated state (which every
/// member keeps, in its log and its database) has only the root key's public half. So the
/// learner's directory, searched byte for byte, holds neither key in any form, and a voter
/// refuses to hand the keys to the learner's certificate. A token minted with any other key is
/// refused by every node.
#[test]
fn a_non_voters_stolen_directory_holds_no_key_that_mints() {
    let nodes = cluster(4);
    let learner_id = the_learner(&nodes);
    let learner = nodes.iter().find(|n| n.node_id() == learner_id).unwrap();
    let voters: Vec<&Node> = nodes.iter().filter(|n| n.node_id() != learner_id).collect();
    // Voters that joined were handed the keys; the founder made them.
    for v in &voters {
        eventually(Duration::from_secs(20), "a voter holding the keys", || {
            holds_keys(v).then_some(())
        });
    }
    // Some writes, so that the log and the state have had time to carry anything they would.
    let writer = crate::control::cap_create(voters[0], &["--allow", "config:write"]);
    for i in 0..5 {
        let out = crate::control::with_token(
            learner,
            &writer.token,
            &["config", "set", &format!("k{i}"), "v"],
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    eventually(Duration::from_secs(10), "the writes on the learner", || {
        let out = learner.cli(&["config", "get", "k4"]);
        out.status.success().then_some(())
    });

    let founder = &nodes[0];
    let root = std::fs::read(founder.dir.join("root.key")).unwrap();
    let ca_pem = String::from_utf8(std::fs::read(founder.dir.join("ca.key")).unwrap()).unwrap();
    let ca_der = noodle_security::NodeKey::from_pem(&ca_pem)
        .unwrap()
        .private_key_der();
    let ca_body: String = ca_pem.lines().filter(|l| !l.starts_with("-----")).collect();
    let ca_lines: Vec<&str> = ca_pem
        .lines()
        .filter(|l| !l.starts_with("-----") && l.len() >= 32)
        .collect();
    for key in ["ca.key", "root.key"] {
        assert!(!learner.dir.join(key).exists(), "the learner has {key}");
    }
    let files = files_under(&learner.dir);
    assert!(files.iter().any(|(p, _)| p.ends_with("control.redb")));
    for (path, bytes) in &files {
        let mut found = Vec::new();
        if contains(bytes, &root) {
            found.push("the root key");
        }
        if contains(bytes, ca_der.secret_der()) || contains(bytes, ca_body.as_bytes()) {
            found.push("the CA key");
        }
        if ca_lines.iter().any(|l| contains(bytes, l.as_bytes())) {
            found.push("a line of the CA key");
        }
        assert!(found.is_empty(), "{} holds {found:?}", path.display());
    }
    // Nor does any voter's replicated state: the root key is in its own file only.
    for v in &voters {
        let db = std::fs::read(v.dir.join("control.redb")).unwrap();
        assert!(!contains(&db, &root), "{}", v.dir.display());
    }

    // The thief asks the voters for the keys with the learner's certificate: refused.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let thief = rt.block_on(async { stolen_link(&learner.dir) });
    for v in &voters {
        let err = rt
            .block_on(thief.request(addr_of(v), "node.keys", b""))
            .expect_err("a voter handed the keys to a learner");
        assert!(err.to_string().contains("voters only"), "{err}");
    }
    // A token the thief mints with a key of its own is refused everywhere.
    let forged = noodle_caps::mint(
        &noodle_caps::RootKey::generate(),
        &noodle_caps::TokenSpec {
            rights: vec!["config:write".parse().unwrap()],
            quotas: Vec::new(),
            ttl: Duration::from_secs(3600),
            holder: Some("thief".into()),
        },
    )
    .unwrap();
    for node in &nodes {
        let out = crate::control::with_token(node, &forged, &["config", "set", "colour", "x"]);
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("not signed by this cluster"), "{err}");
    }
    let out = voters[0].cli(&["config", "get", "colour"]);
    assert!(!String::from_utf8_lossy(&out.stdout).contains('x'));
}

/// Joins go through voters: a learner holds no CA key, so it hands a joiner's request to a
/// voter, which checks the token and issues the certificate; the joiner gets the CA
/// certificate and its own, never a key.
#[test]
fn a_joiner_is_admitted_through_a_learner_and_given_no_key() {
    let nodes = cluster(4);
    let learner_id = the_learner(&nodes);
    let learner = nodes.iter().find(|n| n.node_id() == learner_id).unwrap();
    // A token with no seeds: the joiner dials the learner only.
    let token = learner_token(&nodes[0]);
    let joiner = Node::start(
        "joiner",
        &["--join", &token, "--peer", &addr_of(learner).to_string()],
    );
    joiner.wait_ready(Duration::from_secs(20));
    assert!(!holds_keys(learner), "the learner holds the keys");
    let cert = std::fs::read(joiner.dir.join("node.crt")).unwrap();
    assert_eq!(
        noodle_security::node_id_of_cert(&cert),
        Some(joiner.node_id())
    );
    let events = learner.cli(&["events", "--json"]);
    let events = String::from_utf8_lossy(&events.stdout).to_string();
    assert!(
        events
            .lines()
            .any(|l| l.contains("join_admitted") && l.contains(&joiner.node_id())),
        "{events}"
    );
    // The same token again, through the learner: used up, refused by the voter, and said so.
    let again = Node::start(
        "again",
        &["--join", &token, "--peer", &addr_of(learner).to_string()],
    );
    let log = eventually(Duration::from_secs(20), "the second join refused", || {
        let log = again.logs();
        log.contains("used up").then_some(log)
    });
    assert!(log.contains("revoked"), "{log}");
}

/// A single-use join token with no seed addresses in it.
fn learner_token(voter: &Node) -> String {
    voter.token(&["--no-addresses"])
}

/// Certificates are short-lived and renewed: with `--cert-ttl 60s`, the voter renews its own
/// and the learner gets a new one from the voter once half the time has passed. After the
/// first certificates have expired, a restarted learner (which dials with the certificate it
/// stored, and checks the one the voter now presents) is a member as before.
#[test]
fn certificates_are_renewed_before_they_expire() {
    let mut nodes = crate::support::cluster_with(2, &["--cert-ttl", "60s"]);
    let first: Vec<Vec<u8>> = nodes
        .iter()
        .map(|n| std::fs::read(n.dir.join("node.crt")).unwrap())
        .collect();
    for (node, cert) in nodes.iter().zip(&first) {
        let renewed = eventually(Duration::from_secs(90), "a renewed certificate", || {
            let now = std::fs::read(node.dir.join("node.crt")).ok()?;
            (now != *cert).then_some(now)
        });
        let (_, until) = noodle_security::cert_validity(&renewed).unwrap();
        let (_, before) = noodle_security::cert_validity(cert).unwrap();
        assert!(until > before);
        assert_eq!(
            noodle_security::node_id_of_cert(&renewed),
            Some(node.node_id())
        );
        let events = node.cli(&["events", "--json"]);
        assert!(String::from_utf8_lossy(&events.stdout).contains("cert_renewed"));
    }
    // Wait out the first certificates.
    let (_, expired) = noodle_security::cert_validity(&first[1]).unwrap();
    while std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
        <= expired + 1
    {
        std::thread::sleep(Duration::from_millis(500));
    }
    nodes[1].kill9();
    nodes[1].spawn(&["--cert-ttl", "60s"]);
    crate::support::wait_all_alive(&nodes, Duration::from_secs(20));
    let out = nodes[1].cli(&["status", "--json"]);
    assert!(out.status.success());
}
