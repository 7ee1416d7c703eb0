//! Test harness: real `noodle` processes with their own data directories on loopback.

use noodle_api::StatusReport;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// `noodle up` on ephemeral loopback ports without mDNS: what every test node starts with.
pub(crate) const UP_ON_LOOPBACK: &[&str] = &[
    "up",
    "--listen",
    "127.0.0.1:0",
    "--api",
    "127.0.0.1:0",
    "--no-mdns",
];

/// A loopback address (`127.A.B.C`) that no other node of this or a concurrent test process
/// uses: a node listening on it can be restarted on its old port without another node having
/// taken that port meanwhile.
pub(crate) fn private_loopback_ip() -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    assert!(n < 150, "out of private loopback addresses");
    let pid = std::process::id();
    format!("127.{}.{}.{}", 100 + n, (pid >> 8) & 0xff, pid & 0xff)
}

/// How much longer than its nominal deadline a test waits for a condition. A deadline here is
/// only a liveness bound (the test must end), never a speed claim: speed is measured by
/// `noodle bench`. CI may run on a machine several times slower than a developer's, so every
/// wait gets this much patience; `NOODLE_TEST_PATIENCE` changes the factor.
pub(crate) fn patient(within: Duration) -> Duration {
    let factor = std::env::var("NOODLE_TEST_PATIENCE")
        .ok()
        .and_then(|f| f.parse::<u32>().ok())
        .unwrap_or(6)
        .max(1);
    within * factor
}

pub(crate) fn noodle_bin() -> &'static str {
    env!("CARGO_BIN_EXE_noodle")
}

/// One `noodle up` process. Killed (SIGKILL) on drop.
pub(crate) struct Node {
    pub dir: PathBuf,
    pub child: Option<Child>,
    pub name: String,
    /// The `--listen` address every (re)start uses.
    pub listen: String,
    /// Runs the node as this (unprivileged) uid, from this copy of the binary.
    run_as: Option<(u32, PathBuf)>,
    _tmp: Option<tempfile::TempDir>,
}

impl Node {
    /// Starts a node that forms a new cluster.
    pub(crate) fn founder(name: &str) -> Node {
        Node::start(name, &[])
    }

    /// Starts a node with extra `noodle up` arguments, in a fresh data directory.
    pub(crate) fn start(name: &str, extra: &[&str]) -> Node {
        Node::start_listening(name, "127.0.0.1:0", extra)
    }

    /// Starts a node that forms a new cluster in the data directory `dir` (kept by the caller).
    pub(crate) fn start_in(dir: PathBuf, name: &str) -> Node {
        let mut node = Node {
            dir,
            child: None,
            name: name.to_string(),
            listen: "127.0.0.1:0".to_string(),
            run_as: None,
            _tmp: None,
        };
        node.spawn(&[]);
        node
    }

    /// [`Node::start`] with the cluster port on `listen` instead of `127.0.0.1:0`.
    pub(crate) fn start_listening(name: &str, listen: &str, extra: &[&str]) -> Node {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("data");
        let mut node = Node {
            dir,
            child: None,
            name: name.to_string(),
            listen: listen.to_string(),
            run_as: None,
            _tmp: Some(tmp),
        };
        node.spawn(extra);
        node
    }

    /// Starts a founder that runs as the unprivileged `uid` (the test runs as root), in a data
    /// directory that `uid` owns, from a copy of the binary that `uid` can reach.
    pub(crate) fn start_as(name: &str, uid: u32) -> Node {
        let tmp = tempfile::tempdir_in("/var/tmp").expect("tempdir");
        let dir = tmp.path().join("data");
        std::fs::create_dir(&dir).expect("data dir");
        std::os::unix::fs::chown(&dir, Some(uid), Some(uid)).expect("chown");
        let bin = tmp.path().join("noodle");
        if std::fs::hard_link(noodle_bin(), &bin).is_err() {
            std::fs::copy(noodle_bin(), &bin).expect("copy the binary");
        }
        let mut node = Node {
            dir,
            child: None,
            name: name.to_string(),
            listen: "127.0.0.1:0".to_string(),
            run_as: Some((uid, bin)),
            _tmp: Some(tmp),
        };
        node.spawn(&[]);
        node
    }

    /// (Re)starts the process on this node's data directory.
    pub(crate) fn spawn(&mut self, extra: &[&str]) {
        let _ = std::fs::remove_file(self.dir.join("api.json"));
        let log = std::fs::File::create(self.log_path_for_spawn()).expect("log file");
        let mut up = UP_ON_LOOPBACK.to_vec();
        assert_eq!(up[1], "--listen");
        up[2] = &self.listen;
        let mut command = match &self.run_as {
            None => Command::new(noodle_bin()),
            Some((uid, bin)) => {
                let mut c = Command::new("setpriv");
                c.arg(format!("--reuid={uid}"))
                    .arg(format!("--regid={uid}"))
                    .args(["--clear-groups", "--"])
                    .arg(bin)
                    .env("HOME", self.dir.parent().unwrap_or(&self.dir));
                c
            }
        };
        let child = command
            .arg("--data-dir")
            .arg(&self.dir)
            .args(&up)
            .arg("--name")
            .arg(&self.name)
            .args(extra)
            .env("NOODLE_LOG", "info")
            // Where a founder keeps its owner token: the test's own directory.
            .env("XDG_CONFIG_HOME", self.config_home())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn noodle up");
        self.child = Some(child);
    }

    /// The founder's config directory (its owner token is in `noodle/owner-*.token`).
    pub(crate) fn config_home(&self) -> PathBuf {
        self.dir.with_extension("config")
    }

    fn log_path_for_spawn(&self) -> PathBuf {
        std::fs::create_dir_all(&self.dir).expect("data dir");
        self.dir.with_extension(format!(
            "log.{}",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0)
        ))
    }

    /// Everything this node logged so far, for failure messages.
    pub(crate) fn logs(&self) -> String {
        let parent = self.dir.parent().map(Path::to_path_buf).unwrap_or_default();
        let mut out = String::new();
        if let Ok(entries) = std::fs::read_dir(parent) {
            let mut paths: Vec<_> = entries.flatten().map(|e| e.path()).collect();
            paths.sort();
            for p in paths {
                if p.to_string_lossy().contains(".log.") {
                    out.push_str(&std::fs::read_to_string(&p).unwrap_or_default());
                }
            }
        }
        out
    }

    /// Makes every later (re)start listen on the cluster address this run got, so that the
    /// addresses other members keep for this node stay right across restarts.
    pub(crate) fn pin_listen_addr(&mut self) {
        let report = self.wait_ready(Duration::from_secs(10));
        let me = report
            .nodes
            .iter()
            .find(|n| n.is_self)
            .expect("status lists the answering node");
        self.listen = me.addr.clone();
    }

    pub(crate) fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Runs a client command against this node.
    pub(crate) fn cli(&self, args: &[&str]) -> Output {
        cli(&self.dir, args)
    }

    pub(crate) fn token(&self, extra: &[&str]) -> String {
        let mut args = vec!["token", "create"];
        args.extend_from_slice(extra);
        let out = self.cli(&args);
        assert!(
            out.status.success(),
            "token create failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    pub(crate) fn status(&self) -> Option<StatusReport> {
        let out = self.cli(&["status", "--json"]);
        if !out.status.success() {
            return None;
        }
        serde_json::from_slice(&out.stdout).ok()
    }

    /// Waits until the node answers `status`.
    pub(crate) fn wait_ready(&self, within: Duration) -> StatusReport {
        let within = patient(within);
        let start = Instant::now();
        loop {
            if let Some(s) = self.status() {
                return s;
            }
            assert!(
                start.elapsed() < within,
                "node {} not ready within {within:?}:\n{}",
                self.name,
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub(crate) fn node_id(&self) -> String {
        let raw = std::fs::read(self.dir.join("node.json")).expect("node.json");
        let v: serde_json::Value = serde_json::from_slice(&raw).expect("node.json json");
        v["node_id"].as_str().expect("node_id").to_string()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill9();
    }
}

pub(crate) fn cli(dir: &Path, args: &[&str]) -> Output {
    Command::new(noodle_bin())
        // A token a person kept with `noodle login` on this machine must not change the tests.
        .env("XDG_CONFIG_HOME", "/proc/noodle-tests-have-no-config")
        .env_remove("NOODLE_TOKEN")
        .arg("--data-dir")
        .arg(dir)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run noodle")
}

/// Polls `check` until it returns `Some`, or fails with `what` after `within`.
pub(crate) fn eventually<T>(
    within: Duration,
    what: &str,
    mut check: impl FnMut() -> Option<T>,
) -> T {
    let within = patient(within);
    let start = Instant::now();
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(
            start.elapsed() < within,
            "timed out after {within:?} waiting for: {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A founder and `n - 1` nodes joined with its token; returns once every node sees every node
/// alive.
pub(crate) fn cluster(n: usize) -> Vec<Node> {
    cluster_with(n, &[])
}

/// [`cluster`] with extra `noodle up` arguments for every node.
pub(crate) fn cluster_with(n: usize, extra: &[&str]) -> Vec<Node> {
    let first = Node::start("node-0", extra);
    first.wait_ready(Duration::from_secs(10));
    let uses = n.saturating_sub(1).max(1).to_string();
    let token = first.token(&["--uses", &uses]);
    let mut nodes = vec![first];
    for i in 1..n {
        let mut args = vec!["--join", token.as_str()];
        args.extend_from_slice(extra);
        nodes.push(Node::start(&format!("node-{i}"), &args));
    }
    wait_all_alive(&nodes, Duration::from_secs(15));
    nodes
}

/// Waits until every node reports every node of `nodes` alive; returns how long it took.
pub(crate) fn wait_all_alive(nodes: &[Node], within: Duration) -> Duration {
    let start = Instant::now();
    let ids: Vec<String> = nodes
        .iter()
        .map(|n| {
            eventually(within, "node.json", || {
                n.dir.join("node.json").exists().then(|| n.node_id())
            })
        })
        .collect();
    eventually(within, "all nodes alive on every node", || {
        nodes
            .iter()
            .all(|n| {
                n.status().is_some_and(|s| {
                    ids.iter().all(|id| {
                        s.nodes
                            .iter()
                            .any(|x| &x.id == id && x.state == noodle_api::NodeState::Alive)
                    })
                })
            })
            .then_some(())
    });
    start.elapsed()
}

/// Whether process `pid` exists and is not a zombie.
pub(crate) fn process_alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        !s.rsplit(')')
            .next()
            .unwrap_or("")
            .trim_start()
            .starts_with('Z')
    })
}

/// A directory that sandboxed jobs may write to (`noodle up --job-rw DIR`), with `files` in
/// it that jobs of any uid may append to: how a test watches jobs from outside. In `/var/tmp`,
/// since `/tmp` is each job's own.
pub(crate) fn job_shared_dir(files: &[&str]) -> tempfile::TempDir {
    use std::os::unix::fs::PermissionsExt;
    let mode = |path: &Path, mode: u32| {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod")
    };
    let dir = tempfile::tempdir_in("/var/tmp").expect("shared dir");
    mode(dir.path(), 0o777);
    for f in files {
        std::fs::write(dir.path().join(f), "").expect("shared file");
        mode(&dir.path().join(f), 0o666);
    }
    dir
}
