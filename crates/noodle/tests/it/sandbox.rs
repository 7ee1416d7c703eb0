//! The job sandbox from the attacker's side: a holder of a `jobs:run` token runs a job that
//! tries every path to the node's secrets and rights it can name (docs/security.md, threat 1).

use crate::control::{cap_create, with_token};
use crate::support::Node;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Every file and directory under `dir`.
fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut all = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(path) = stack.pop() {
        if path.is_dir()
            && let Ok(entries) = std::fs::read_dir(&path)
        {
            stack.extend(entries.filter_map(|e| e.ok()).map(|e| e.path()));
        }
        all.push(path);
    }
    all
}

/// A shell script that prints `GOT <what>` for every attempt that works.
fn attack_script(data_dir: &Path, node_pid: u32) -> String {
    let mut script = String::new();
    for path in walk(data_dir) {
        let p = path.display();
        if path.is_dir() {
            script += &format!("ls '{p}' >/dev/null 2>&1 && echo 'GOT list {p}'\n");
        } else {
            script += &format!("head -c1 '{p}' >/dev/null 2>&1 && echo 'GOT read {p}'\n");
        }
    }
    let d = data_dir.display();
    script += &format!(
        "for f in environ mem maps fd/0 root{d}/admin.credential; do
           head -c1 /proc/{node_pid}/$f >/dev/null 2>&1 && echo \"GOT /proc/{node_pid}/$f\"
         done
         ls /proc/{node_pid}/fd >/dev/null 2>&1 && echo 'GOT node fds'
         kill -0 {node_pid} 2>/dev/null && echo 'GOT signal to the node'
         unshare -Ur head -c1 {d}/admin.credential >/dev/null 2>&1 && echo 'GOT credential via a user namespace'
         ls /root >/dev/null 2>&1 && echo 'GOT /root'
         echo done\n"
    );
    script
}

/// A job started with a `jobs:run` token reads nothing of the node's data directory, reaches
/// none of the node process's files, cannot signal it, and gains nothing from a user
/// namespace; the same job on a node whose operator opted out of the sandbox reads all of it
/// (which shows the attempts are real).
#[test]
fn a_job_from_a_run_token_reaches_nothing_of_the_node() {
    let node = Node::founder("node-0");
    node.wait_ready(Duration::from_secs(15));
    let runner = cap_create(
        &node,
        &["--allow", "jobs:run", "--allow", "jobs:read", "--ttl", "1h"],
    )
    .token;
    let pid = node.child.as_ref().expect("running").id();
    let script = attack_script(&node.dir, pid);
    let out = with_token(&node, &runner, &["run", "--", "sh", "-c", &script]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(stdout, "done\n", "the job reached the node");

    let open = Node::start("node-open", &["--unsandboxed-jobs"]);
    open.wait_ready(Duration::from_secs(15));
    let runner = cap_create(
        &open,
        &["--allow", "jobs:run", "--allow", "jobs:read", "--ttl", "1h"],
    )
    .token;
    let pid = open.child.as_ref().expect("running").id();
    let script = attack_script(&open.dir, pid);
    let out = with_token(&open, &runner, &["run", "--", "sh", "-c", &script]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let credential = format!("GOT read {}", open.dir.join("admin.credential").display());
    assert!(stdout.contains(&credential), "{stdout}");
    assert!(stdout.contains("GOT signal to the node"), "{stdout}");
}

/// Another local user reads nothing of a node's data directory (the node's files are its own,
/// whatever the umask of whoever started it).
#[test]
fn another_local_user_reads_nothing_of_the_node() {
    let node = Node::founder("node-0");
    node.wait_ready(Duration::from_secs(15));
    // Open the way to the data directory itself, as a careless operator might.
    for dir in [node.dir.parent().expect("parent"), node.dir.as_path()] {
        std::fs::set_permissions(dir, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .expect("chmod");
    }
    let readable: Vec<String> = walk(&node.dir)
        .into_iter()
        .filter(|p| p != &node.dir && !p.is_dir())
        .filter(|p| {
            std::process::Command::new("setpriv")
                .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
                .args(["head", "-c1"])
                .arg(p)
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .status()
                .expect("setpriv")
                .success()
        })
        .map(|p| p.display().to_string())
        .collect();
    assert!(readable.is_empty(), "nobody can read {readable:?}");
}

/// A node that is not root confines each job in a user namespace of its own, under the same
/// Landlock rules: the job reads nothing of the node's data directory, although it runs as the
/// node's own uid.
#[test]
fn an_unprivileged_node_confines_its_jobs_in_a_user_namespace() {
    let node = Node::start_as("node-0", 65534);
    node.wait_ready(Duration::from_secs(15));
    let runner = cap_create(
        &node,
        &["--allow", "jobs:run", "--allow", "jobs:read", "--ttl", "1h"],
    )
    .token;
    let pid = node.child.as_ref().expect("running").id();
    let mut script = attack_script(&node.dir, pid);
    script.insert_str(
        0,
        "cat /proc/self/uid_map; grep NoNewPrivs /proc/self/status\n",
    );
    let out = with_token(&node, &runner, &["run", "--", "sh", "-c", &script]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut lines = stdout.lines();
    let map: Vec<&str> = lines
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    assert_eq!(map, ["65534", "65534", "1"], "{stdout}");
    assert_eq!(lines.next(), Some("NoNewPrivs:\t1"), "{stdout}");
    assert_eq!(
        lines.collect::<Vec<_>>(),
        ["done"],
        "the job reached the node"
    );
}

/// A job that fills its working directory past `--job-disk` with files each under the bound is
/// stopped, and says why.
#[test]
fn a_job_that_fills_its_disk_bound_is_stopped() {
    let node = Node::start("node-0", &["--job-disk", "2M"]);
    node.wait_ready(Duration::from_secs(15));
    let out = node.cli(&[
        "run",
        "--",
        "sh",
        "-c",
        "for i in 1 2 3 4; do head -c 1000000 /dev/zero > f$i; done; echo written; sleep 600",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(137), "{stderr}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "written\n");
    assert!(stderr.contains("grew past its bound"), "{stderr}");
}
