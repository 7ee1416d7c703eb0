//! `noodle mount`: the fabric as a directory through a real FUSE mount, used with ordinary
//! shell tools, read back with `noodle get` on another node; two mounts writing one path at
//! once; bad mount points; unmounting from outside and by signal.
//!
//! Needs `/dev/fuse` and `fusermount3` (Debian's `fuse3`, installed by
//! `scripts/install-test-deps.sh`): without them these tests fail and say so.

use crate::control::{cap_create, with_token};
use crate::fabric::ok;
use crate::support::{Node, cluster, eventually, noodle_bin, patient};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Runs `script` with `sh -c`; returns its stdout, failing the test on a non-zero exit.
fn sh(script: &str) -> String {
    let out = Command::new("sh").arg("-c").arg(script).output().unwrap();
    assert!(
        out.status.success(),
        "sh -c {script:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// Whether `dir` is a mount point now (`/proc/mounts`).
fn mounted(dir: &Path) -> bool {
    let table = std::fs::read_to_string("/proc/mounts").unwrap();
    let dir = dir.to_str().unwrap();
    table.lines().any(|l| l.split(' ').nth(1) == Some(dir))
}

/// Fails the test, clearly, where FUSE cannot work.
fn require_fuse() {
    assert!(
        Path::new("/dev/fuse").exists(),
        "FUSE is unusable here: /dev/fuse is missing (load the fuse module, or give the \
         container the device); the mount tests need it"
    );
    let fusermount = Command::new("fusermount3").arg("--version").output();
    assert!(
        fusermount.is_ok(),
        "FUSE is unusable here: no fusermount3 (run scripts/install-test-deps.sh to install \
         Debian's fuse3)"
    );
}

/// One `noodle mount` process on an empty directory of its own. On drop it is unmounted
/// (lazily, so a failing test never leaves a mount behind) and killed.
struct Mount {
    child: Option<Child>,
    dir: PathBuf,
    log: PathBuf,
    _tmp: tempfile::TempDir,
}

impl Mount {
    /// Mounts the fabric of `node` (acting with `token`, if given) and waits until mounted.
    fn start(node: &Node, token: Option<&str>) -> Mount {
        require_fuse();
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("fabric");
        std::fs::create_dir(&dir).unwrap();
        let log = tmp.path().join("mount.log");
        let mut command = Command::new(noodle_bin());
        command
            .env("XDG_CONFIG_HOME", "/proc/noodle-tests-have-no-config")
            .env_remove("NOODLE_TOKEN")
            .arg("--data-dir")
            .arg(&node.dir);
        if let Some(t) = token {
            command.arg("--token").arg(t);
        }
        let child = command
            .arg("mount")
            .arg(&dir)
            .arg("--cache-dir")
            .arg(tmp.path())
            .env("NOODLE_LOG", "warn,noodle_mount=debug")
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(tmp.path().join("mount.out")).unwrap())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let mut m = Mount {
            child: Some(child),
            dir,
            log,
            _tmp: tmp,
        };
        let within = patient(Duration::from_secs(10));
        let start = Instant::now();
        while !mounted(&m.dir) {
            if let Some(status) = m.child.as_mut().unwrap().try_wait().unwrap() {
                panic!(
                    "noodle mount exited ({status}) before mounting (is FUSE usable here?):\n{}",
                    m.logs()
                );
            }
            assert!(
                start.elapsed() < within,
                "not mounted within {within:?}:\n{}",
                m.logs()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        m
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.join(rel)
    }

    fn d(&self) -> &str {
        self.dir.to_str().unwrap()
    }

    fn logs(&self) -> String {
        let out = std::fs::read_to_string(self.log.with_file_name("mount.out")).unwrap_or_default();
        format!(
            "{out}{}",
            std::fs::read_to_string(&self.log).unwrap_or_default()
        )
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// Waits for the `noodle mount` process to exit; returns its exit code.
    fn wait_exit(&mut self, within: Duration) -> Option<i32> {
        let mut child = self.child.take().unwrap();
        let within = patient(within);
        let start = Instant::now();
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status.code();
            }
            if start.elapsed() > within {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "noodle mount did not exit within {within:?}:\n{}",
                    self.logs()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        if mounted(&self.dir) {
            let _ = Command::new("fusermount3")
                .args(["-u", "-z", "-q", "--"])
                .arg(&self.dir)
                .status();
        }
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Shell tools write through a mount on one node; another node reads every byte back with
/// `noodle get`; what that node puts shows up in the mount.
#[test]
fn shell_tools_write_through_a_mount_and_another_node_reads_them() {
    let nodes = cluster(2);
    // The founder is a voter: its own admin may write, so its mount may.
    let m = Mount::start(&nodes[0], None);
    let tmp = tempfile::tempdir().unwrap();
    let big = tmp.path().join("big.bin");
    std::fs::write(&big, random_bytes(6 << 20, 11)).unwrap();
    let d = m.d();
    sh(&format!(
        "set -e; mkdir -p {d}/runs/1; echo hello > {d}/runs/1/greeting.txt; \
         cp {} {d}/runs/1/big.bin; mv {d}/runs/1/greeting.txt {d}/runs/1/hello.txt",
        big.display()
    ));
    let listed = sh(&format!("ls {d}/runs/1"));
    assert_eq!(listed, "big.bin\nhello.txt\n");
    assert_eq!(sh(&format!("cat {d}/runs/1/hello.txt")), "hello\n");
    assert_eq!(
        sh(&format!("stat -c '%s %F' {d}/runs/1/big.bin")).trim(),
        format!("{} regular file", 6 << 20)
    );
    assert_eq!(sh(&format!("stat -c %F {d}/runs/1")).trim(), "directory");
    assert_eq!(
        std::fs::read(m.path("runs/1/big.bin")).unwrap(),
        std::fs::read(&big).unwrap()
    );

    // Node 1 reads what the mount wrote, byte for byte; the renamed name is gone.
    let back = tmp.path().join("back.bin");
    ok(
        &nodes[1],
        &["get", "/runs/1/big.bin", "-o", back.to_str().unwrap()],
    );
    assert_eq!(std::fs::read(&back).unwrap(), std::fs::read(&big).unwrap());
    assert_eq!(
        ok(&nodes[1], &["get", "/runs/1/hello.txt", "-o", "-"]),
        "hello\n"
    );
    assert!(
        !nodes[1]
            .cli(&["get", "/runs/1/greeting.txt", "-o", "-"])
            .status
            .success()
    );

    // A rewrite is a new version; an append reads the old bytes first.
    sh(&format!(
        "echo again > {d}/runs/1/hello.txt; echo more >> {d}/runs/1/hello.txt"
    ));
    assert_eq!(
        ok(&nodes[1], &["get", "/runs/1/hello.txt", "-o", "-"]),
        "again\nmore\n"
    );
    let versions = ok(&nodes[1], &["versions", "/runs/1/hello.txt"]);
    assert_eq!(versions.lines().count(), 3, "{versions}\n{}", m.logs());

    // rm removes it for every node; its versions stay.
    sh(&format!("rm {d}/runs/1/hello.txt"));
    assert!(
        !nodes[1]
            .cli(&["get", "/runs/1/hello.txt", "-o", "-"])
            .status
            .success()
    );
    assert!(ok(&nodes[1], &["versions", "/runs/1/hello.txt"]).contains("(removed)"));
    assert_eq!(sh(&format!("ls {d}/runs/1")), "big.bin\n");

    // What node 1 puts (a non-voter: with a person's token) shows up in node 0's mount.
    let writer = cap_create(&nodes[0], &["--allow", "fabric:write:/from-b/"]);
    let data = tmp.path().join("data.bin");
    std::fs::write(&data, random_bytes(300_000, 12)).unwrap();
    let out = with_token(
        &nodes[1],
        &writer.token,
        &["put", data.to_str().unwrap(), "/from-b/data.bin"],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let shown = eventually(Duration::from_secs(10), "node 1's put in the mount", || {
        std::fs::read(m.path("from-b/data.bin")).ok()
    });
    assert_eq!(shown, std::fs::read(&data).unwrap());
    assert!(sh(&format!("ls {d}")).contains("from-b"));
    // A directory with objects is not renamed in place: `mv` copies and removes instead.
    sh(&format!("mv {d}/from-b {d}/moved"));
    assert_eq!(
        std::fs::read(m.path("moved/data.bin")).unwrap(),
        std::fs::read(&data).unwrap()
    );
    assert!(
        !nodes[1]
            .cli(&["get", "/from-b/data.bin", "-o", "-"])
            .status
            .success()
    );
}

/// Two mounts on two nodes write one path at the same moment: both versions are kept, every
/// node and both mounts show the later one, and a `fabric_conflict` event reports it.
#[test]
fn two_mounts_writing_one_path_keep_both_versions_and_report_a_conflict() {
    let nodes = cluster(2);
    let ids = [nodes[0].node_id(), nodes[1].node_id()];
    // Node 1 is not a voter: its mount acts with a person's token.
    let cap = cap_create(
        &nodes[0],
        &["--allow", "fabric:write:/c/", "--allow", "fabric:read:/"],
    );
    eventually(Duration::from_secs(15), "node 1 takes the token", || {
        with_token(&nodes[1], &cap.token, &["ls", "/"])
            .status
            .success()
            .then_some(())
    });
    let mounts = [
        Mount::start(&nodes[0], None),
        Mount::start(&nodes[1], Some(&cap.token)),
    ];
    for m in &mounts {
        if let Err(e) = std::fs::create_dir(m.path("c")) {
            panic!("mkdir: {e}\n{}", m.logs());
        }
    }
    let conflicts = |node: &Node| {
        ok(node, &["events", "--json"])
            .lines()
            .map(|l| serde_json::from_str::<noodle_api::Event>(l).unwrap())
            .filter(|e| e.kind.as_str() == "fabric_conflict" && e.node == "/c/x")
            .count()
    };
    // Writes "at once" overlap at the node only when their commits interleave: a few rounds
    // until one does (each round is two closes released together).
    let rounds_max = 100;
    let mut last = Vec::new();
    let mut rounds = 0;
    while rounds < rounds_max && conflicts(&nodes[0]) + conflicts(&nodes[1]) == 0 {
        rounds += 1;
        let contents: Vec<String> = (0..2)
            .map(|side| format!("round {rounds} from node {side}\n"))
            .collect();
        let barrier = std::sync::Barrier::new(2);
        std::thread::scope(|s| {
            for (m, text) in mounts.iter().zip(&contents) {
                let barrier = &barrier;
                s.spawn(move || {
                    use std::io::Write;
                    let mut f = std::fs::File::create(m.path("c/x")).unwrap();
                    f.write_all(text.as_bytes()).unwrap();
                    barrier.wait();
                    // close: the file becomes a version (and close fails if it cannot).
                    f.sync_all().unwrap();
                    drop(f);
                });
            }
        });
        last = contents;
    }
    assert!(
        conflicts(&nodes[0]) + conflicts(&nodes[1]) > 0,
        "no fabric_conflict event after {rounds} rounds of simultaneous writes"
    );
    eprintln!("a fabric_conflict after {rounds} round(s) of simultaneous writes");
    // Both versions of every round are kept.
    let versions: Vec<noodle_api::fabric::FabricObject> =
        ok(&nodes[0], &["versions", "/c/x", "--json"])
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
    assert_eq!(versions.len(), 2 * rounds, "{versions:?}");
    // The newest (by hybrid-logical time, then node) is what the path shows, everywhere.
    let head = &versions[0];
    let writer = ids
        .iter()
        .position(|id| head.version.ends_with(id))
        .unwrap();
    for node in &nodes {
        assert_eq!(ok(node, &["get", "/c/x", "-o", "-"]), last[writer]);
    }
    for m in &mounts {
        eventually(
            Duration::from_secs(10),
            "the mount shows the newest",
            || (std::fs::read_to_string(m.path("c/x")).ok()? == last[writer]).then_some(()),
        );
    }
    // The other one of the last round stays readable by its version.
    let other = versions[1..]
        .iter()
        .find(|v| v.version.ends_with(&ids[1 - writer]))
        .unwrap();
    assert_eq!(
        ok(
            &nodes[1],
            &["get", "/c/x", "--version", &other.version, "-o", "-"]
        ),
        last[1 - writer]
    );
}

/// A missing directory, a file, and a directory something is already mounted on: one clear
/// error each, nothing mounted.
#[test]
fn bad_mount_points_get_one_clear_error() {
    require_fuse();
    let nodes = cluster(1);
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("missing");
    let file = tmp.path().join("file");
    std::fs::write(&file, "x").unwrap();
    let full = tmp.path().join("full");
    std::fs::create_dir(&full).unwrap();
    std::fs::write(full.join("f"), "x").unwrap();
    let m = Mount::start(&nodes[0], None);
    for (dir, says) in [
        (missing.to_str().unwrap(), "does not exist"),
        (file.to_str().unwrap(), "is not a directory"),
        (full.to_str().unwrap(), "is not empty"),
        (m.d(), "is busy: something is already mounted there"),
    ] {
        let out = nodes[0].cli(&["mount", dir]);
        assert_eq!(out.status.code(), Some(1), "{dir}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(err.lines().count(), 1, "one line: {err}");
        assert!(
            err.starts_with("error: ") && err.contains(says),
            "{dir}: {err}"
        );
    }
    assert!(!mounted(&missing) && !mounted(&full));
    // The busy mount still works.
    std::fs::write(m.path("still"), "ok").unwrap();
    assert_eq!(ok(&nodes[0], &["get", "/still", "-o", "-"]), "ok");
}

/// `fusermount3 -u` from outside ends `noodle mount` with exit 0; SIGINT and SIGTERM unmount.
#[test]
fn unmount_from_outside_or_by_signal_ends_the_mount_cleanly() {
    let nodes = cluster(1);
    let mut m = Mount::start(&nodes[0], None);
    std::fs::write(m.path("f"), "x").unwrap();
    let out = Command::new("fusermount3")
        .arg("-u")
        .arg(&m.dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        m.wait_exit(Duration::from_secs(10)),
        Some(0),
        "{}",
        m.logs()
    );
    assert!(!mounted(&m.dir));
    assert!(m.logs().contains("was unmounted"), "{}", m.logs());

    for signal in ["-INT", "-TERM"] {
        let mut m = Mount::start(&nodes[0], None);
        assert_eq!(std::fs::read_to_string(m.path("f")).unwrap(), "x");
        let killed = Command::new("kill")
            .arg(signal)
            .arg(m.pid().to_string())
            .status()
            .unwrap();
        assert!(killed.success());
        assert_eq!(
            m.wait_exit(Duration::from_secs(10)),
            Some(0),
            "{}",
            m.logs()
        );
        eventually(
            Duration::from_secs(5),
            "the mount gone from /proc/mounts",
            || (!mounted(&m.dir)).then_some(()),
        );
        assert!(m.logs().contains("unmounted"), "{signal}: {}", m.logs());
    }
}
