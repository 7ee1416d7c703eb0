//! Bad input gets one clear error and changes nothing: tokens, peers, data directories, packets.

use crate::support::{Node, cli, eventually};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

/// Runs `noodle up` expecting it to fail; returns its stderr.
fn up_fails(dir: &Path, args: &[&str]) -> String {
    let mut full = crate::support::UP_ON_LOOPBACK.to_vec();
    full.extend_from_slice(args);
    let out = cli(dir, &full);
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(
        !out.status.success(),
        "noodle up should have failed; stderr:\n{stderr}"
    );
    let error_lines: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(error_lines.len(), 1, "expected one error line:\n{stderr}");
    stderr
}

fn assert_not_admitted(founder: &Node, joiner_dir: &Path) {
    assert!(
        !joiner_dir.join("cluster.json").exists(),
        "joiner stored cluster state"
    );
    assert!(
        !joiner_dir.join("node.crt").exists(),
        "joiner got a certificate"
    );
    let report = founder.status().unwrap();
    assert_eq!(
        report.nodes.len(),
        1,
        "founder admitted someone: {report:?}"
    );
}

#[test]
fn corrupt_tokens_are_refused_before_dialling() {
    let founder = Node::founder("a");
    founder.wait_ready(Duration::from_secs(10));
    let token = founder.token(&[]);
    let joiner = tempfile::tempdir().unwrap();
    let err = up_fails(joiner.path(), &["--join", "hello"]);
    assert!(err.contains("not a noodle join token"), "{err}");
    // Flip one character in the middle of a real token.
    let mut chars: Vec<char> = token.chars().collect();
    let mid = chars.len() / 2;
    chars[mid] = if chars[mid] == 'A' { 'B' } else { 'A' };
    let corrupt: String = chars.into_iter().collect();
    let err = up_fails(joiner.path(), &["--join", &corrupt]);
    assert!(err.contains("join token is corrupt"), "{err}");
    assert_not_admitted(&founder, joiner.path());
}

#[test]
fn expired_token_is_refused() {
    let founder = Node::founder("a");
    founder.wait_ready(Duration::from_secs(10));
    let token = founder.token(&["--ttl", "1s"]);
    std::thread::sleep(Duration::from_millis(2100));
    let joiner = tempfile::tempdir().unwrap();
    let err = up_fails(joiner.path(), &["--join", &token]);
    assert!(err.contains("expired"), "{err}");
    assert_not_admitted(&founder, joiner.path());
}

#[test]
fn foreign_cluster_token_is_refused_by_the_seed() {
    let ours = Node::founder("ours");
    let theirs = Node::founder("theirs");
    let ours_addr = ours.wait_ready(Duration::from_secs(10)).nodes[0]
        .addr
        .clone();
    theirs.wait_ready(Duration::from_secs(10));
    // A token of the other cluster, pointed at our node.
    let foreign = theirs.token(&["--no-addresses"]);
    let joiner = tempfile::tempdir().unwrap();
    let err = up_fails(joiner.path(), &["--join", &foreign, "--peer", &ours_addr]);
    assert!(
        err.contains("not a member of the cluster named in the join token"),
        "{err}"
    );
    assert_not_admitted(&ours, joiner.path());
    // A node that already belongs to one cluster refuses another cluster's token.
    let err = up_fails(&ours.dir.clone(), &["--join", &foreign]);
    assert!(
        err.contains("already running") || err.contains("already belongs to cluster"),
        "{err}"
    );
}

#[test]
fn unreachable_seed_gives_a_clear_error() {
    let founder = Node::founder("a");
    founder.wait_ready(Duration::from_secs(10));
    let token = founder.token(&["--no-addresses"]);
    let joiner = tempfile::tempdir().unwrap();
    // Nothing listens on UDP port 9 here.
    let err = up_fails(joiner.path(), &["--join", &token, "--peer", "127.0.0.1:9"]);
    assert!(err.contains("could not join cluster"), "{err}");
    assert!(err.contains("127.0.0.1:9"), "{err}");
    // No seed at all and no mDNS.
    let err = up_fails(joiner.path(), &["--join", &token]);
    assert!(err.contains("no seed address"), "{err}");
    assert_not_admitted(&founder, joiner.path());
}

#[test]
fn second_node_on_the_same_data_dir_is_refused() {
    let node = Node::founder("a");
    let before = node.wait_ready(Duration::from_secs(10));
    let err = up_fails(&node.dir, &[]);
    assert!(err.contains("already running on data directory"), "{err}");
    // The running node is unaffected.
    assert_eq!(node.status().unwrap().self_id, before.self_id);
}

#[test]
fn self_signed_quic_client_is_refused_and_the_node_keeps_working() {
    let node = Node::founder("a");
    let report = node.wait_ready(Duration::from_secs(10));
    let addr: std::net::SocketAddr = report.nodes[0].addr.parse().unwrap();
    let ca = rustls_pki_types_ca(&node.dir);
    let key = noodle_security::NodeKey::generate().unwrap();
    let cert = key
        .self_signed_cert(noodle_security::CLUSTER_SERVER_NAME)
        .unwrap();
    let client =
        noodle_link::client_config_with_cert(&ca, vec![cert], key.private_key_der()).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let result: anyhow::Result<Vec<u8>> = rt.block_on(async {
        let mut ep = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap())?;
        ep.set_default_client_config(client);
        let conn = ep
            .connect(addr, noodle_security::CLUSTER_SERVER_NAME)?
            .await?;
        let (mut send, mut recv) = conn.open_bi().await?;
        send.write_all(&noodle_link::frame::encode_request("node.ping", 1000, b"x"))
            .await?;
        send.finish()?;
        Ok(recv.read_to_end(1024).await?)
    });
    assert!(
        result.is_err(),
        "self-signed client got an answer: {result:?}"
    );
    let after = node.status().unwrap();
    assert_eq!(after.nodes.len(), 1);
}

fn rustls_pki_types_ca(dir: &Path) -> rustls::pki_types::CertificateDer<'static> {
    rustls::pki_types::CertificateDer::from(std::fs::read(dir.join("ca.crt")).unwrap())
}

#[test]
fn garbage_datagrams_are_dropped_and_the_cluster_survives() {
    let nodes = crate::support::cluster(2);
    let report = nodes[0].status().unwrap();
    let addr = report
        .nodes
        .iter()
        .find(|n| n.is_self)
        .unwrap()
        .addr
        .clone();
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for i in 0..2000usize {
        let len = 1 + (i * 37) % 1400;
        let packet: Vec<u8> = (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        let _ = socket.send_to(&packet, &addr);
    }
    std::thread::sleep(Duration::from_millis(300));
    crate::support::wait_all_alive(&nodes, Duration::from_secs(5));
    eventually(Duration::from_secs(5), "status still answers", || {
        nodes[0].status()
    });
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// Mounts a small tmpfs at `dir` with `opts`; unmounts on drop.
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, opts: &str) -> Tmpfs {
        std::fs::create_dir_all(dir).unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", opts, "tmpfs"])
            .arg(dir)
            .status()
            .unwrap()
            .success();
        assert!(ok, "mount tmpfs {opts} failed");
        Tmpfs(dir.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn read_only_or_full_data_dir_gives_one_clear_error() {
    assert!(
        is_root(),
        "this test mounts small file systems and must run as root (CI does)"
    );
    let tmp = tempfile::tempdir().unwrap();
    let ro = tmp.path().join("ro");
    let _ro = Tmpfs::mount(&ro, "ro,size=1m");
    let err = up_fails(&ro.join("data"), &[]);
    assert!(
        err.contains("is not usable") && err.contains("Read-only"),
        "{err}"
    );

    let full = tmp.path().join("full");
    let _full = Tmpfs::mount(&full, "size=64k");
    // Fill it to the last block.
    let mut filler = std::fs::File::create(full.join("filler")).unwrap();
    let block = vec![0u8; 4096];
    while std::io::Write::write_all(&mut filler, &block).is_ok() {}
    drop(filler);
    let err = up_fails(&full.join("data"), &[]);
    assert!(
        err.contains("No space left") || err.contains("disk full"),
        "{err}"
    );
}

/// A node whose disk fills up refuses writes with one clear error, reports its control plane
/// failed, and takes writes again soon after space is freed, without a restart; nothing it
/// acknowledged is lost.
#[test]
fn a_full_disk_refuses_writes_and_the_control_plane_recovers_without_a_restart() {
    assert!(
        is_root(),
        "this test mounts small file systems and must run as root (CI does)"
    );
    let tmp = tempfile::tempdir().unwrap();
    // The node's log goes beside the mount, not into it.
    let dir = tmp.path().join("data");
    let _disk = Tmpfs::mount(&dir, "size=48m");
    let node = Node::start_in(dir.clone(), "full");
    node.wait_ready(Duration::from_secs(10));
    let set = |key: &str, value: &str| node.cli(&["config", "set", key, value]);
    for i in 0..20 {
        let out = set(&format!("before/{i}"), "kept");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let pid = node.child.as_ref().map(std::process::Child::id);

    // Fill the disk to the last block.
    let filler_path = dir.join("filler");
    let mut filler = std::fs::File::create(&filler_path).unwrap();
    let block = vec![0u8; 64 << 10];
    while std::io::Write::write_all(&mut filler, &block).is_ok() {}
    let small = vec![0u8; 512];
    while std::io::Write::write_all(&mut filler, &small).is_ok() {}
    drop(filler);

    // Writes are refused with a clear error while it is full (the first may still fit in a
    // page redb had free: write until one is refused).
    let refused = eventually(Duration::from_secs(20), "a write refused", || {
        let out = set("during", "x");
        (!out.status.success()).then(|| String::from_utf8_lossy(&out.stderr).to_string())
    });
    assert!(
        refused.contains("No space left") && refused.lines().count() == 1,
        "{refused}"
    );
    let failed = eventually(
        Duration::from_secs(10),
        "the control plane shown failed",
        || {
            let c = node.status()?.control?;
            (c.role == "failed").then_some(c)
        },
    );
    assert!(
        failed
            .error
            .as_deref()
            .is_some_and(|e| e.contains("No space left")),
        "{failed:?}"
    );

    // Space comes back: writes are accepted again soon, by the same process.
    std::fs::remove_file(&filler_path).unwrap();
    let freed = Instant::now();
    eventually(Duration::from_secs(30), "a write accepted again", || {
        set("after", "ok").status.success().then_some(())
    });
    let took = freed.elapsed();
    assert!(
        took <= Duration::from_secs(10),
        "writes were accepted again only {took:?} after space was freed"
    );
    assert_eq!(node.child.as_ref().map(std::process::Child::id), pid);
    for i in 0..20 {
        let out = node.cli(&["config", "get", &format!("before/{i}")]);
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("kept"),
            "before/{i} lost: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let report = node.cli(&["audit", "verify", "--json"]);
    let report: noodle_api::AuditVerifyReport =
        serde_json::from_slice(&report.stdout).expect("audit verify --json");
    assert!(report.ok, "{report:?}");
    let events = node.cli(&["events", "--json"]);
    let events = String::from_utf8_lossy(&events.stdout);
    assert!(
        events.contains("control_failed") && events.contains("control_restarted"),
        "{events}"
    );
}

/// The parts of `noodle token create --json` a test needs.
fn token_json(node: &Node, extra: &[&str]) -> (String, String) {
    let mut args = vec!["token", "create", "--json"];
    args.extend_from_slice(extra);
    let out = node.cli(&args);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let resp: noodle_api::TokenResponse = serde_json::from_slice(&out.stdout).unwrap();
    (resp.token, resp.id)
}

fn join_tokens(node: &Node) -> Vec<noodle_api::JoinTokenInfo> {
    let out = node.cli(&["token", "ls", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice::<noodle_api::JoinTokenList>(&out.stdout)
        .unwrap()
        .tokens
}

/// A join token admits as many nodes as it was made for (one unless `--uses`), can be revoked,
/// and the cluster, not the joiner, names the node. A refused joiner's words reach the events
/// sanitised and cut short.
#[test]
fn join_tokens_are_single_use_revocable_and_the_cluster_names_the_node() {
    let founder = Node::founder("a");
    founder.wait_ready(Duration::from_secs(10));
    let (single, single_id) = token_json(&founder, &[]);
    let listed = join_tokens(&founder);
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(
        (listed[0].id.as_str(), listed[0].uses_left),
        (single_id.as_str(), 1)
    );

    // A hostile name is refused before the token is spent, and shows up sanitised.
    let evil = format!("evil\u{1b}[31m{}", "x".repeat(200));
    let hostile = tempfile::tempdir().unwrap();
    let err = up_fails(hostile.path(), &["--join", &single, "--name", &evil]);
    assert!(
        err.contains("node name must have 1 to 64 characters"),
        "{err}"
    );
    let out = founder.cli(&["events", "--json"]);
    let refused: noodle_api::Event = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<noodle_api::Event>(l).ok())
        .find(|e| e.kind == noodle_api::EventKind::JOIN_REFUSED)
        .expect("a join_refused event");
    let detail = &refused.detail;
    assert!(detail.contains("evil?[31mxxx"), "{detail}");
    assert!(
        !detail.contains(&"x".repeat(120)),
        "not cut short: {detail}"
    );
    assert!(!detail.contains('\u{1b}'), "{detail}");

    // The first joiner gets in, under a node id the cluster chose, even when it takes the
    // founder's name.
    let b = Node::start("a", &["--join", &single]);
    let nodes = [founder, b];
    crate::support::wait_all_alive(&nodes, Duration::from_secs(15));
    let [founder, b] = nodes;
    assert_ne!(b.node_id(), founder.node_id());
    assert!(b.node_id().starts_with("a-"), "{}", b.node_id());
    assert!(
        join_tokens(&founder).is_empty(),
        "a used-up token is listed"
    );

    // The second is refused by the member: the token was used.
    let late = tempfile::tempdir().unwrap();
    let err = up_fails(late.path(), &["--join", &single]);
    assert!(err.contains("used up or revoked"), "{err}");
    assert!(!late.path().join("cluster.json").exists());

    // A revoked token admits nobody.
    let (double, double_id) = token_json(&founder, &["--uses", "2"]);
    assert_eq!(join_tokens(&founder)[0].uses_left, 2);
    let out = founder.cli(&["token", "revoke", &double_id]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(join_tokens(&founder).is_empty());
    let err = up_fails(late.path(), &["--join", &double]);
    assert!(err.contains("used up or revoked"), "{err}");
    // Revoking it again, or something that is no token id, is one clear error.
    let again = founder.cli(&["token", "revoke", &double_id]);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("no join token"));
    let junk = founder.cli(&["token", "revoke", "zz"]);
    assert!(String::from_utf8_lossy(&junk.stderr).contains("not a join token id"));
    assert_eq!(founder.status().unwrap().nodes.len(), 2);

    // Bounds on --uses.
    for uses in ["0", "1001"] {
        let out = founder.cli(&["token", "create", "--uses", uses]);
        assert!(!out.status.success());
        assert!(String::from_utf8_lossy(&out.stderr).contains("--uses must be between 1 and 1000"));
    }
}

/// A node that is not a voter and whose certificate expired (away longer than `--cert-ttl`)
/// does not start as if nothing happened: one error says to join again.
#[test]
fn a_non_voter_with_an_expired_certificate_is_told_to_join_again() {
    let mut nodes = crate::support::cluster(2);
    let founder = &nodes[0];
    let read = |dir: &Path, name: &str| std::fs::read(dir.join(name)).unwrap();
    let ca = noodle_security::ClusterCa::load(
        &founder.status().unwrap().cluster_id,
        read(&founder.dir, "ca.crt").into(),
        &String::from_utf8(read(&founder.dir, "ca.key")).unwrap(),
    )
    .unwrap();
    let learner = nodes[1].dir.clone();
    let id = nodes[1].node_id();
    nodes[1].kill9();
    let key =
        noodle_security::NodeKey::from_pem(&String::from_utf8(read(&learner, "node.key")).unwrap())
            .unwrap();
    let expired = ca
        .issue_node_cert(&id, &key.public_key_raw(), Duration::ZERO)
        .unwrap();
    std::fs::write(learner.join("node.crt"), expired).unwrap();
    std::thread::sleep(Duration::from_millis(1100));
    let err = up_fails(&learner, &[]);
    assert!(
        err.contains("certificate expired") && err.contains("join"),
        "{err}"
    );
}
