//! LAN discovery for real: three network namespaces on one bridge, one `noodle up` in each, and
//! the joiners hold nothing but a token without seed addresses — they must find the cluster
//! through mDNS multicast across the bridge.
//!
//! Needs root (network namespaces, veth, bridge) and `ip` from iproute2. Without them the test
//! fails and says what is missing: a skipped test would look like a passing one.
//!
//! Topology, all of it inside namespaces this test creates (the root namespace, the host's
//! interfaces and routes are never touched, so a crashed run cannot break the host's network):
//!
//! ```text
//!   ns <tag>-n1 eth0 10.213.0.1/24 ─┐
//!   ns <tag>-n2 eth0 10.213.0.2/24 ─┼─ p1,p2,p3 ─ br0   (in ns <tag>-br)
//!   ns <tag>-n3 eth0 10.213.0.3/24 ─┘
//! ```
//!
//! The bridge lives in a fourth namespace instead of the root one for the same reason; interface
//! names can then be fixed (`eth0`, `br0`, `pN`) because each namespace has its own, and only
//! the namespace names carry the pid, so parallel runs do not collide.

use crate::support::noodle_bin;
use noodle_api::{NodeState, StatusReport};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

const NODES: usize = 3;
/// Behaviour, not speed: generous, but bounded.
const FORM_WITHIN: Duration = Duration::from_secs(30);
const READY_WITHIN: Duration = Duration::from_secs(15);
const PQ_GROUP: &str = "X25519MLKEM768";

#[test]
fn token_only_joiners_find_the_cluster_by_mdns_across_namespaces() {
    require_root_and_ip();
    let mut lab = Lab::new();
    lab.build_network();

    // Node 1 founds the cluster.
    lab.spawn_node(0, None);
    let founder = lab.wait_ready(0);
    assert_eq!(
        founder.nodes.len(),
        1,
        "fresh founder should know only itself\n{}",
        lab.diagnostics()
    );
    lab.check_pid_is_noodle(0);

    // The token carries no seed address: the joiners can only find the cluster through mDNS.
    let token = lab.token_without_addresses();
    let decoded = noodle_security::JoinToken::decode(&token).expect("token decodes");
    assert!(
        decoded.seeds().is_empty(),
        "`token create --no-addresses` put seeds in the token: {:?}",
        decoded.seeds()
    );
    assert_eq!(decoded.cluster_id(), founder.cluster_id);

    // Nodes 2 and 3 join with `--join TOKEN` only (mDNS on, no --peer).
    let joined_at = Instant::now();
    for i in 1..NODES {
        lab.spawn_node(i, Some(&token));
    }
    let ids = lab.wait_self_ids();
    for i in 1..NODES {
        lab.check_pid_is_noodle(i);
    }

    // One cluster: every node sees all three alive, at their namespace addresses.
    let reports = lab.eventually(FORM_WITHIN, "all three nodes alive on every node", |lab| {
        let reports: Vec<StatusReport> =
            (0..NODES).map(|i| lab.status(i)).collect::<Option<_>>()?;
        reports
            .iter()
            .all(|r| {
                ids.iter().all(|id| {
                    r.nodes
                        .iter()
                        .any(|n| &n.id == id && n.state == NodeState::Alive)
                })
            })
            .then_some(reports)
    });
    let formed_in = joined_at.elapsed();
    for (i, r) in reports.iter().enumerate() {
        assert_eq!(
            r.self_id,
            ids[i],
            "node {} self id\n{}",
            i + 1,
            lab.diagnostics()
        );
        assert_eq!(
            r.cluster_id,
            founder.cluster_id,
            "node {} is in another cluster\n{}",
            i + 1,
            lab.diagnostics()
        );
        for (j, id) in ids.iter().enumerate() {
            let n = r.nodes.iter().find(|n| &n.id == id).expect("checked above");
            assert_eq!(
                n.addr,
                format!("{}:7070", node_ip(j)),
                "node {} reports node {} at an unexpected address\n{}",
                i + 1,
                j + 1,
                lab.diagnostics()
            );
        }
    }

    // The founder has a post-quantum link to both joiners.
    let links = lab.eventually(
        FORM_WITHIN,
        "founder reports links to both joiners",
        |lab| {
            let r = lab.status(0)?;
            ids[1..]
                .iter()
                .all(|peer| r.links.iter().any(|l| l.from == ids[0] && &l.peer == peer))
                .then_some(r.links)
        },
    );
    for l in &links {
        assert_eq!(
            l.kx_group,
            PQ_GROUP,
            "link {l:?} is not post-quantum\n{}",
            lab.diagnostics()
        );
    }
    eprintln!("netns: cluster of {NODES} formed through mDNS in {formed_in:?}");
}

/// Fails (never skips) when the test cannot build its network.
/// With `--api 0.0.0.0:PORT` the API is reachable from other machines, but only with a
/// capability token: the admin credential works from the node's own machine only.
#[test]
fn a_remote_api_caller_needs_a_token_not_the_admin_credential() {
    require_root_and_ip();
    let mut lab = Lab::new();
    lab.build_network();
    lab.spawn_node_with_api(0, None, "0.0.0.0:7071");
    lab.wait_ready(0);
    let local = |args: &[&str]| {
        let out = lab.cli(0, args);
        assert!(
            out.status.success(),
            "`noodle {}` on the node failed: {}\n{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr),
            lab.diagnostics()
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    // On the node's own machine the admin credential works (over loopback).
    local(&["config", "set", "greeting", "hello"]);
    let token = local(&["cap", "create", "--allow", "config:read", "--for", "remote"]);

    // A client on another machine: it knows where the API is and even holds the credential.
    let remote = lab.tmp.path().join("remote");
    std::fs::create_dir_all(&remote).expect("remote client dir");
    let api = serde_json::json!({"url": format!("http://{}:7071", node_ip(0)), "pid": 0, "node_id": "n1"});
    std::fs::write(remote.join("api.json"), api.to_string()).expect("api.json");
    std::fs::copy(
        lab.nodes[0].dir.join("admin.credential"),
        remote.join("admin.credential"),
    )
    .expect("copy the credential");
    let other_ns = lab.node_ns(1);
    let out = lab.cli_in(&other_ns, &remote, &["config", "get", "greeting"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "the admin credential worked remotely"
    );
    assert!(
        err.contains("accepted only from this machine") && err.contains("capability token"),
        "{err}"
    );

    let with_token = |args: &[&str]| {
        let mut all = vec!["--token", token.as_str()];
        all.extend_from_slice(args);
        lab.cli_in(&other_ns, &remote, &all)
    };
    let out = with_token(&["config", "get", "greeting"]);
    assert!(
        out.status.success(),
        "a remote token holder could not read: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "hello");
    let out = with_token(&["config", "set", "greeting", "bye"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("does not allow config:write"),
        "{err}"
    );
    assert_eq!(local(&["config", "get", "greeting"]), "hello");
}

/// A node cut off from the others (its bridge port down) cannot keep running a job: it stops
/// the job itself after half the lease, the leader gives the job to another node after the
/// lease, and the cut-off node's late report is refused once the network heals.
#[test]
fn a_partitioned_executor_stops_its_job_and_the_job_runs_once_elsewhere() {
    require_root_and_ip();
    let mut lab = Lab::new();
    lab.build_network();
    lab.spawn_job_node(0, None, 0, "4s");
    let token = lab.cli_ok(0, &["token", "create", "--uses", "2"]);
    let n2 = lab.spawn_job_node(1, Some(&token), 1, "4s");
    let trace = lab.shared.path().join("trace");
    let script = format!(
        "echo \"$NOODLE_NODE $NOODLE_JOB_EPOCH start $$ $(date +%s%N)\" >> {f}; sleep 12; \
         echo \"$NOODLE_NODE $NOODLE_JOB_EPOCH end\" >> {f}",
        f = trace.display()
    );
    let id = lab.cli_ok(
        0,
        &[
            "run",
            "--detach",
            "--retries",
            "1",
            "--",
            "sh",
            "-c",
            &script,
        ],
    );
    let lines = || -> Vec<String> {
        std::fs::read_to_string(&trace)
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    };
    let first = lab.eventually(FORM_WITHIN, "the job to start on node 2", |_| {
        lines().first().cloned()
    });
    let f: Vec<&str> = first.split_whitespace().collect();
    assert_eq!(&f[..3], &[n2.as_str(), "1", "start"], "{first}");
    let first_pid: u32 = f[3].parse().expect("pid");

    // A third node with a free slot, then node 2 is cut off.
    let n3 = lab.spawn_job_node(2, Some(&token), 1, "4s");
    ip(&["-n", &lab.bridge_ns(), "link", "set", "p2", "down"]);
    let gone_ns = lab.eventually(FORM_WITHIN, "node 2 to stop its job", |_| {
        (!crate::support::process_alive(first_pid)).then(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0)
        })
    });
    let second = lab.eventually(FORM_WITHIN, "the job to run again on node 3", |_| {
        lines().get(1).cloned()
    });
    let f: Vec<&str> = second.split_whitespace().collect();
    assert_eq!(&f[..3], &[n3.as_str(), "2", "start"], "{second}");
    let second_start: u128 = f[4].parse().expect("start time");
    assert!(
        second_start > gone_ns,
        "the job ran on node 3 while node 2 still ran it"
    );

    // Heal: node 2 comes back; its report on the old attempt must change nothing.
    ip(&["-n", &lab.bridge_ns(), "link", "set", "p2", "up"]);
    let out = lab.cli(0, &["wait", &id, "--timeout", "60s", "--json"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let job: noodle_api::JobInfo = serde_json::from_slice(&out.stdout).expect("job json");
    assert_eq!(
        (job.node.as_deref(), job.epoch),
        (Some(n3.as_str()), 2),
        "{job:?}"
    );
    lab.eventually(FORM_WITHIN, "node 2 back", |lab| {
        lab.status(0)?
            .nodes
            .iter()
            .any(|n| n.id == n2 && n.state == NodeState::Alive)
            .then_some(())
    });
    std::thread::sleep(Duration::from_secs(2));
    let out = lab.cli(0, &["jobs", "--all", "--json"]);
    let list: noodle_api::JobList = serde_json::from_slice(&out.stdout).expect("jobs json");
    let again = list
        .jobs
        .iter()
        .find(|j| j.id.to_string() == id)
        .expect("the job");
    assert_eq!(
        (again.state.as_str(), again.epoch, again.node.as_deref()),
        ("succeeded", 2, Some(n3.as_str())),
        "a stale report changed the job: {again:?}"
    );
    assert_eq!(
        lines().iter().filter(|l| l.contains(" end")).count(),
        1,
        "{:?}",
        lines()
    );
}

/// A job that ends while its node is briefly cut off (for less than half the lease) is not
/// stuck `running`: the node's end report gets through once the network heals.
#[test]
fn a_job_that_ends_during_a_short_partition_is_reported_when_it_heals() {
    require_root_and_ip();
    let mut lab = Lab::new();
    lab.build_network();
    lab.spawn_job_node(0, None, 0, "20s");
    let token = lab.cli_ok(0, &["token", "create"]);
    let n2 = lab.spawn_job_node(1, Some(&token), 1, "20s");
    let id = lab.cli_ok(
        0,
        &["run", "--detach", "--", "sh", "-c", "sleep 1; echo done"],
    );
    lab.eventually(FORM_WITHIN, "the job to run on node 2", |lab| {
        let out = lab.cli(0, &["jobs", "--json"]);
        let list: noodle_api::JobList = serde_json::from_slice(&out.stdout).ok()?;
        list.jobs
            .iter()
            .any(|j| j.id.to_string() == id && j.state == "running")
            .then_some(())
    });
    // Cut node 2 off while the job ends, longer than one request's deadline (5 s), so its end
    // report fails and must be sent again; heal within half the lease (no self-fencing).
    ip(&["-n", &lab.bridge_ns(), "link", "set", "p2", "down"]);
    std::thread::sleep(Duration::from_secs(8));
    ip(&["-n", &lab.bridge_ns(), "link", "set", "p2", "up"]);
    let out = lab.cli(0, &["wait", &id, "--timeout", "60s", "--json"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        lab.diagnostics()
    );
    let job: noodle_api::JobInfo = serde_json::from_slice(&out.stdout).expect("job json");
    assert_eq!(
        (job.state.as_str(), job.node.as_deref(), job.epoch),
        ("succeeded", Some(n2.as_str()), 1),
        "{job:?}"
    );
    lab.eventually(FORM_WITHIN, "node 2 alive again", |lab| {
        lab.status(0)?
            .nodes
            .iter()
            .any(|n| n.id == n2 && n.state == NodeState::Alive)
            .then_some(())
    });
    let out = lab.cli(0, &["logs", &id]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "done\n",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn require_root_and_ip() {
    let status = std::fs::read_to_string("/proc/self/status").expect("read /proc/self/status");
    let euid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .expect("Uid line in /proc/self/status");
    assert!(
        euid == "0",
        "this test must run as root: it creates network namespaces, veth pairs and a bridge \
         (effective uid is {euid}); run the tests as root, as CI does"
    );
    match Command::new("ip").arg("-V").output() {
        Ok(out) => assert!(
            out.status.success(),
            "`ip -V` failed; this test needs a working `ip` from iproute2: {}",
            String::from_utf8_lossy(&out.stderr)
        ),
        Err(e) => {
            panic!("this test needs `ip` from iproute2 on PATH (apt-get install iproute2): {e}")
        }
    }
}

fn node_ip(i: usize) -> String {
    format!("10.213.0.{}", i + 1)
}

/// One `noodle up` inside a namespace.
struct LabNode {
    netns: String,
    dir: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

/// The namespaces, links and processes of one test; all removed on drop, pass or fail.
struct Lab {
    tag: String,
    /// Namespaces that exist, in creation order.
    namespaces: Vec<String>,
    nodes: Vec<LabNode>,
    tmp: tempfile::TempDir,
    /// Where the nodes' jobs may write (`--job-rw`): traces the test reads.
    shared: tempfile::TempDir,
}

impl Lab {
    fn new() -> Lab {
        static SEQ: AtomicU32 = AtomicU32::new(0);
        let tmp = tempfile::tempdir().expect("tempdir");
        let shared = crate::support::job_shared_dir(&["trace"]);
        Lab {
            tag: format!(
                "ndl{}-{}",
                std::process::id(),
                SEQ.fetch_add(1, Ordering::Relaxed)
            ),
            namespaces: Vec::new(),
            nodes: Vec::new(),
            tmp,
            shared,
        }
    }

    fn bridge_ns(&self) -> String {
        format!("{}-br", self.tag)
    }

    fn node_ns(&self, i: usize) -> String {
        format!("{}-n{}", self.tag, i + 1)
    }

    fn add_netns(&mut self, name: &str) {
        ip(&["netns", "add", name]);
        self.namespaces.push(name.to_string());
    }

    fn build_network(&mut self) {
        let br = self.bridge_ns();
        self.add_netns(&br);
        ip(&["-n", &br, "link", "set", "lo", "up"]);
        // No snooping: the bridge floods multicast to every port, whatever IGMP says.
        ip(&[
            "-n",
            &br,
            "link",
            "add",
            "br0",
            "type",
            "bridge",
            "mcast_snooping",
            "0",
        ]);
        ip(&["-n", &br, "link", "set", "br0", "up"]);
        for i in 0..NODES {
            let ns = self.node_ns(i);
            let port = format!("p{}", i + 1);
            self.add_netns(&ns);
            // Both ends are created directly in their namespaces: nothing appears in the root one.
            ip(&[
                "link", "add", "eth0", "netns", &ns, "type", "veth", "peer", "name", &port,
                "netns", &br,
            ]);
            ip(&["-n", &br, "link", "set", &port, "master", "br0"]);
            ip(&["-n", &br, "link", "set", &port, "up"]);
            ip(&["-n", &ns, "link", "set", "lo", "up"]);
            ip(&[
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{}/24", node_ip(i)),
                "dev",
                "eth0",
            ]);
            ip(&["-n", &ns, "link", "set", "eth0", "up"]);
            // The mDNS group join can fail with ENODEV in a namespace without a route that
            // covers 224.0.0.251 (DEPENDENCIES.md); a LAN host has one through its default route.
            ip(&["-n", &ns, "route", "add", "224.0.0.0/4", "dev", "eth0"]);
        }
    }

    fn spawn_node(&mut self, i: usize, join: Option<&str>) {
        self.spawn_node_with_api(i, join, "127.0.0.1:7071");
    }

    fn spawn_node_with_api(&mut self, i: usize, join: Option<&str>, api: &str) {
        self.spawn_node_with(i, join, api, &[]);
    }

    /// Starts node `i` with extra `noodle up` arguments.
    fn spawn_node_with(&mut self, i: usize, join: Option<&str>, api: &str, extra: &[&str]) {
        assert_eq!(self.nodes.len(), i, "nodes are started in order");
        let netns = self.node_ns(i);
        let dir = self.tmp.path().join(format!("n{}", i + 1));
        let log = self.tmp.path().join(format!("n{}.log", i + 1));
        let stderr = std::fs::File::create(&log).expect("create node log");
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &netns, noodle_bin(), "--data-dir"])
            .arg(&dir)
            .args(["up", "--listen", "0.0.0.0:7070", "--api", api, "--name"])
            .arg(format!("n{}", i + 1));
        if let Some(token) = join {
            cmd.args(["--join", token]);
        }
        cmd.args(extra);
        let child = cmd
            .env("NOODLE_LOG", "info,mdns_sd=debug")
            .env("XDG_CONFIG_HOME", self.tmp.path().join("config"))
            .env_remove("NOODLE_JOIN")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("spawn `ip netns exec ... noodle up`");
        self.nodes.push(LabNode {
            netns,
            dir,
            log,
            child: Some(child),
        });
    }

    /// `ip netns exec` execs the command, so the child we hold is noodle itself and killing it
    /// stops the node. The node writes its own pid to api.json: check they agree.
    fn check_pid_is_noodle(&self, i: usize) {
        let node = &self.nodes[i];
        let child_pid = node.child.as_ref().expect("node running").id();
        let raw = std::fs::read(node.dir.join("api.json")).expect("api.json of a ready node");
        let info: serde_json::Value = serde_json::from_slice(&raw).expect("api.json is json");
        assert_eq!(
            info["pid"].as_u64(),
            Some(u64::from(child_pid)),
            "node {}: the spawned pid is not the noodle process (did `ip netns exec` fork?)",
            i + 1
        );
    }

    /// A client command run inside node `i`'s namespace, where its API listens on loopback.
    fn cli(&self, i: usize, args: &[&str]) -> Output {
        let node = &self.nodes[i];
        self.cli_in(&node.netns, &node.dir, args)
    }

    /// A client command run inside namespace `netns` against the node `data_dir` points at.
    fn cli_in(&self, netns: &str, data_dir: &Path, args: &[&str]) -> Output {
        Command::new("ip")
            .args(["netns", "exec", netns, noodle_bin(), "--data-dir"])
            .arg(data_dir)
            .args(args)
            .env_remove("NOODLE_DATA_DIR")
            .stdin(Stdio::null())
            .output()
            .expect("run `ip netns exec ... noodle`")
    }

    fn status(&self, i: usize) -> Option<StatusReport> {
        let out = self.cli(i, &["status", "--json"]);
        if !out.status.success() {
            return None;
        }
        serde_json::from_slice(&out.stdout).ok()
    }

    fn wait_ready(&mut self, i: usize) -> StatusReport {
        self.eventually(
            READY_WITHIN,
            &format!("node {} answers status", i + 1),
            |lab| lab.status(i),
        )
    }

    /// Each node's own id, once it answers status (a joiner does after it was admitted).
    fn wait_self_ids(&mut self) -> Vec<String> {
        (0..NODES)
            .map(|i| {
                self.eventually(
                    FORM_WITHIN,
                    &format!("node {} admitted and answering", i + 1),
                    |lab| lab.status(i).map(|r| r.self_id),
                )
            })
            .collect()
    }

    /// A client command on node `i` that must succeed; its trimmed standard output.
    fn cli_ok(&self, i: usize, args: &[&str]) -> String {
        let out = self.cli(i, args);
        assert!(
            out.status.success(),
            "`noodle {}` failed: {}\n{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr),
            self.diagnostics()
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    fn token_without_addresses(&self) -> String {
        self.cli_ok(0, &["token", "create", "--no-addresses", "--uses", "8"])
    }

    /// Starts node `i` to run jobs: `slots` job slots, job lease `lease`, no mDNS. The founder
    /// (`join` is `None`) is returned once it answers, a joiner once node 1 knows it alive with
    /// its slots. Returns the node's id.
    fn spawn_job_node(&mut self, i: usize, join: Option<&str>, slots: u32, lease: &str) -> String {
        let slots_arg = slots.to_string();
        let shared = self
            .shared
            .path()
            .to_str()
            .expect("a UTF-8 path")
            .to_string();
        let extra = [
            "--slots",
            slots_arg.as_str(),
            "--no-mdns",
            "--job-lease",
            lease,
            "--job-rw",
            &shared,
        ];
        self.spawn_node_with(i, join, "127.0.0.1:7071", &extra);
        if join.is_none() {
            return self.wait_ready(i).self_id;
        }
        self.eventually(
            FORM_WITHIN,
            &format!("node {} known with its slots", i + 1),
            |lab| {
                let me = lab.status(i)?.self_id;
                lab.status(0)?
                    .nodes
                    .iter()
                    .any(|n| n.id == me && n.slots == slots && n.state == NodeState::Alive)
                    .then_some(me)
            },
        )
    }

    /// Polls `check` until it gives a value; fails with every node's log after `within`, or at
    /// once when a node process has exited.
    fn eventually<T>(
        &mut self,
        within: Duration,
        what: &str,
        mut check: impl FnMut(&Lab) -> Option<T>,
    ) -> T {
        let within = crate::support::patient(within);
        let start = Instant::now();
        loop {
            if let Some(v) = check(self) {
                return v;
            }
            if let Some(exited) = self.exited_node() {
                panic!("waiting for {what}: {exited}\n{}", self.diagnostics());
            }
            assert!(
                start.elapsed() < within,
                "timed out after {within:?} waiting for: {what}\n{}",
                self.diagnostics()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn exited_node(&mut self) -> Option<String> {
        for (i, node) in self.nodes.iter_mut().enumerate() {
            if let Some(child) = node.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                node.child = None;
                return Some(format!("node {} exited: {status}", i + 1));
            }
        }
        None
    }

    /// Every node's log and last status, for failure messages.
    fn diagnostics(&self) -> String {
        let mut out = String::new();
        for (i, node) in self.nodes.iter().enumerate() {
            let log = std::fs::read_to_string(&node.log).unwrap_or_else(|e| format!("<{e}>"));
            let _ = writeln!(
                out,
                "===== node {} (netns {}) log =====\n{log}",
                i + 1,
                node.netns
            );
            let status = self.cli(i, &["status", "--json"]);
            let _ = writeln!(
                out,
                "===== node {} status =====\n{}{}",
                i + 1,
                String::from_utf8_lossy(&status.stdout),
                String::from_utf8_lossy(&status.stderr)
            );
        }
        out
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        // Processes first: a namespace with a process in it outlives `ip netns del`.
        for node in &mut self.nodes {
            if let Some(mut child) = node.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        // Deleting a namespace destroys its interfaces, the veth peers and the bridge with them.
        for ns in self.namespaces.iter().rev() {
            let out = Command::new("ip").args(["netns", "del", ns]).output();
            if !matches!(&out, Ok(o) if o.status.success()) {
                eprintln!("netns: could not delete namespace {ns}: {out:?}");
            }
        }
    }
}

/// Runs `ip ARGS`; fails with its stderr (for example missing privileges) when it does not work.
fn ip(args: &[&str]) {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run `ip {}`: {e}", args.join(" ")));
    assert!(
        out.status.success(),
        "`ip {}` failed ({}): {}\nthis test needs root with CAP_NET_ADMIN and CAP_SYS_ADMIN \
         and a kernel with netns, veth and bridge support",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
}
