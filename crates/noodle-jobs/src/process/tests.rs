//! Tests of job processes: real programs (`sh`, `env`, `python3`) in temporary directories.

use super::output::{FINAL_NOTICE_MAX_BYTES, read_all};
use super::*;
use noodle_api::output_frame::NOTICE;
use std::time::Instant;

/// A temporary job: `dir/work` is the working directory, `dir/output` the log.
struct Job {
    dir: tempfile::TempDir,
}

impl Job {
    fn new() -> Job {
        let dir = tempfile::tempdir().expect("tempdir");
        fs::create_dir(dir.path().join("work")).expect("workdir");
        Job { dir }
    }

    fn workdir(&self) -> PathBuf {
        self.dir.path().join("work")
    }

    fn spec(&self, command: &[&str]) -> ProcessSpec {
        ProcessSpec {
            command: command.iter().map(|s| s.to_string()).collect(),
            workdir: self.workdir(),
            env: Vec::new(),
            env_in_workdir: Vec::new(),
            path: None,
            cpus: 1,
            mem_bytes: 0,
            cgroup_parent: None,
        }
    }

    fn log(&self, max_bytes: u64) -> Arc<OutputLog> {
        OutputLog::create(&self.dir.path().join("output"), max_bytes).expect("log")
    }

    /// Runs `spec` to the end: exit code and frames.
    async fn run(&self, spec: &ProcessSpec) -> (i32, Vec<(u8, Vec<u8>)>) {
        let log = self.log(1 << 20);
        let mut job = JobProcess::spawn(spec, log.clone(), None).expect("spawn");
        let code = tokio::time::timeout(Duration::from_secs(30), job.wait())
            .await
            .expect("job ends");
        assert!(log.is_closed());
        (code, read_all(&log, 1 << 20))
    }
}

/// Everything the job wrote to `kind`, concatenated.
fn stream(frames: &[(u8, Vec<u8>)], kind: u8) -> String {
    let bytes: Vec<u8> = frames
        .iter()
        .filter(|(k, _)| *k == kind)
        .flat_map(|(_, payload)| payload.clone())
        .collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

/// `(state, process group)` of a process from `/proc/<pid>/stat`; `None` once it is gone.
fn proc_stat(pid: i32) -> Option<(char, i32)> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may hold spaces: fields start after the last ')'.
    let mut fields = stat.get(stat.rfind(')')? + 1..)?.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let _ppid = fields.next()?;
    let pgrp = fields.next()?.parse().ok()?;
    Some((state, pgrp))
}

/// Processes of group `pgid` that are still alive (zombies are dead: they wait to be reaped).
fn live_members(pgid: i32) -> Vec<i32> {
    let mut live = Vec::new();
    for entry in fs::read_dir("/proc").expect("/proc").flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<i32>().ok())
        else {
            continue;
        };
        if let Some((state, pgrp)) = proc_stat(pid)
            && pgrp == pgid
            && state != 'Z'
        {
            live.push(pid);
        }
    }
    live
}

/// Polls `done` every 20 ms for up to `limit`; whether it became true.
async fn eventually(limit: Duration, mut done: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if done() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    done()
}

#[tokio::test]
async fn output_and_exit_code_are_captured() {
    let job = Job::new();
    let (code, frames) = job
        .run(&job.spec(&["sh", "-c", "echo out; echo err >&2; exit 3"]))
        .await;
    assert_eq!(code, 3);
    assert!(frames.contains(&(STDOUT, b"out\n".to_vec())), "{frames:?}");
    assert!(frames.contains(&(STDERR, b"err\n".to_vec())), "{frames:?}");
    assert!(
        !frames.iter().any(|(kind, _)| *kind == NOTICE),
        "{frames:?}"
    );
}

#[tokio::test]
async fn missing_programs_are_named() {
    let job = Job::new();
    for program in ["definitely-not-a-program-xyz", "./nope"] {
        match JobProcess::spawn(&job.spec(&[program]), job.log(1024), None) {
            Err(error @ SpawnError::NotFound { .. }) => {
                assert_eq!(error.to_string(), format!("no such program `{program}`"));
            }
            Err(other) => panic!("{program}: {other}"),
            Ok(_) => panic!("{program} started"),
        }
    }
    assert!(matches!(
        JobProcess::spawn(&job.spec(&[]), job.log(1024), None),
        Err(SpawnError::EmptyCommand)
    ));
}

#[tokio::test]
async fn programs_relative_to_the_workdir_run_and_must_be_executable() {
    use std::os::unix::fs::PermissionsExt;
    let job = Job::new();
    let script = job.workdir().join("my_program");
    fs::write(&script, "#!/bin/sh\necho \"hi $1\"\n").expect("script");

    fs::set_permissions(&script, fs::Permissions::from_mode(0o644)).expect("chmod");
    match JobProcess::spawn(&job.spec(&["./my_program"]), job.log(1024), None) {
        Err(error @ SpawnError::NotExecutable { .. }) => {
            assert!(error.to_string().contains("`./my_program`"), "{error}");
        }
        Err(other) => panic!("{other}"),
        Ok(_) => panic!("a file without execute permission started"),
    }

    fs::set_permissions(&script, fs::Permissions::from_mode(0o755)).expect("chmod");
    let (code, frames) = job.run(&job.spec(&["./my_program", "there"])).await;
    assert_eq!(code, 0);
    assert_eq!(stream(&frames, STDOUT), "hi there\n");
}

#[tokio::test]
async fn flood_of_output_is_bounded() {
    let job = Job::new();
    let max_bytes = 1 << 20;
    let total = 50_000_000u64;
    let log = job.log(max_bytes);
    let mut process = JobProcess::spawn(
        &job.spec(&["sh", "-c", &format!("yes | head -c {total}")]),
        log.clone(),
        None,
    )
    .expect("spawn");
    let code = tokio::time::timeout(Duration::from_secs(60), process.wait())
        .await
        .expect("job ends");
    assert_eq!(code, 0);

    let file_len = fs::metadata(job.dir.path().join("output"))
        .expect("stat")
        .len();
    assert!(
        file_len <= max_bytes + FINAL_NOTICE_MAX_BYTES,
        "log of {file_len} bytes"
    );
    let frames = read_all(&log, 1 << 20);
    let kept = stream(&frames, STDOUT).len() as u64;
    assert_eq!(kept + log.dropped(), total);
    // The log is filled up to its bound, whatever sizes the pipe reads had: each read becomes
    // a frame with its own header, so how much of the bound is payload depends on them.
    assert!(file_len > max_bytes - 1024, "only {file_len} bytes of log");
    assert!(kept > max_bytes / 2, "only {kept} bytes kept");
    let notices = stream(&frames, NOTICE);
    assert!(
        notices.contains(&format!("output beyond {max_bytes} bytes is dropped")),
        "{notices}"
    );
    assert!(
        notices.contains(&format!("{} bytes of output dropped", log.dropped())),
        "{notices}"
    );
}

#[tokio::test]
async fn terminate_kills_a_group_that_ignores_sigterm() {
    let job = Job::new();
    let log = job.log(1 << 20);
    let mut process = JobProcess::spawn(
        &job.spec(&["sh", "-c", "trap '' TERM; sleep 60 & sleep 60"]),
        log,
        None,
    )
    .expect("spawn");
    let pgid = process.pid() as i32;
    // `sh` and both sleeps (or two, if the shell execs the last command).
    assert!(
        eventually(Duration::from_secs(60), || live_members(pgid).len() >= 2).await,
        "group {pgid}: {:?}",
        live_members(pgid)
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    let members = live_members(pgid);

    let start = Instant::now();
    process.terminate(Duration::from_millis(300));
    process.terminate(Duration::from_millis(300));
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert_eq!(live_members(pgid), members, "SIGTERM was ignored");
    // Before `wait` (which kills leftovers itself): the delayed SIGKILL empties the group.
    assert!(
        eventually(Duration::from_secs(60), || live_members(pgid).is_empty()).await,
        "group {pgid} still has {:?}",
        live_members(pgid)
    );
    assert!(start.elapsed() >= Duration::from_millis(300));
    let code = tokio::time::timeout(Duration::from_secs(60), process.wait())
        .await
        .expect("job ends");
    assert_eq!(code, 128 + 9);
    // Signals after the end are no-ops.
    process.terminate(Duration::ZERO);
    process.kill();
}

#[tokio::test]
async fn kill_reaches_background_processes() {
    let job = Job::new();
    let log = job.log(1 << 20);
    let mut process = JobProcess::spawn(
        &job.spec(&["sh", "-c", "sleep 60 & echo $! > bg.pid; sleep 60"]),
        log,
        None,
    )
    .expect("spawn");
    let pid_file = job.workdir().join("bg.pid");
    let mut background = None;
    assert!(
        eventually(Duration::from_secs(60), || {
            background = fs::read_to_string(&pid_file)
                .ok()
                .and_then(|s| s.trim().parse::<i32>().ok());
            background.is_some()
        })
        .await
    );
    let background = background.expect("pid");
    assert_eq!(
        proc_stat(background).map(|(_, pgrp)| pgrp),
        Some(process.pid() as i32)
    );

    process.kill();
    // Gone or a zombie (reparented; its reaper may be slow): either way not running.
    let gone = || proc_stat(background).is_none_or(|(state, _)| state == 'Z');
    assert!(
        eventually(Duration::from_secs(60), gone).await,
        "{:?}",
        proc_stat(background)
    );
    let code = tokio::time::timeout(Duration::from_secs(60), process.wait())
        .await
        .expect("job ends");
    assert_eq!(code, 128 + 9);
}

#[tokio::test]
async fn leftovers_die_with_the_main_process() {
    let job = Job::new();
    // The background sleep holds stdout open; the job still ends when `sh` does.
    let spec = job.spec(&["sh", "-c", "sleep 600 & echo $! > bg.pid; echo done"]);
    let start = Instant::now();
    let (code, frames) = job.run(&spec).await;
    assert_eq!(code, 0);
    // Not held until the background sleep ends (the drain gives up after DRAIN_TIMEOUT).
    assert!(start.elapsed() < Duration::from_secs(300));
    assert_eq!(stream(&frames, STDOUT), "done\n");
    let background: i32 = fs::read_to_string(job.workdir().join("bg.pid"))
        .expect("pid file")
        .trim()
        .parse()
        .expect("pid");
    let gone = || proc_stat(background).is_none_or(|(state, _)| state == 'Z');
    assert!(eventually(Duration::from_secs(60), gone).await);
}

/// A command that tries to allocate 512 MiB: python3 where there is one, else awk.
fn allocate_512_mib() -> Vec<&'static str> {
    if Path::new("/usr/bin/python3").exists() {
        vec![
            "python3",
            "-c",
            "x = bytearray(512 * 1024 * 1024); print(len(x))",
        ]
    } else {
        vec![
            "awk",
            "BEGIN { s = sprintf(\"%536870912s\", \"\"); print length(s) }",
        ]
    }
}

#[tokio::test]
async fn memory_bound_without_cgroup_is_an_rlimit() {
    let job = Job::new();
    let command = allocate_512_mib();

    // Without a bound it works, so a failure below is the bound's doing.
    let (code, frames) = job.run(&job.spec(&command)).await;
    assert_eq!(code, 0, "{frames:?}");
    assert_eq!(stream(&frames, STDOUT), "536870912\n");

    let mut spec = job.spec(&command);
    spec.mem_bytes = 64 << 20;
    let (code, frames) = job.run(&spec).await;
    assert_ne!(code, 0, "{frames:?}");
    assert_eq!(stream(&frames, STDOUT), "");
    if command[0] == "python3" {
        assert!(
            stream(&frames, STDERR).contains("MemoryError"),
            "{frames:?}"
        );
    }

    // A cgroup parent that is not a cgroup v2 directory falls back to the rlimit.
    spec.cgroup_parent = Some(job.dir.path().to_path_buf());
    let (code, frames) = job.run(&spec).await;
    assert_ne!(code, 0, "{frames:?}");
    assert_eq!(stream(&frames, STDOUT), "");
}

#[tokio::test]
async fn environment_is_clean() {
    let job = Job::new();
    let mut spec = job.spec(&["env"]);
    spec.env = vec![
        ("NOODLE_JOB_ID".into(), "j-1".into()),
        ("NOODLE_NODE".into(), "n1".into()),
    ];
    let (code, frames) = job.run(&spec).await;
    assert_eq!(code, 0);
    let workdir = fs::canonicalize(job.workdir()).expect("canonical workdir");
    let mut vars: Vec<String> = stream(&frames, STDOUT).lines().map(String::from).collect();
    vars.sort();
    let path = vars
        .iter()
        .find(|v| v.starts_with("PATH="))
        .cloned()
        .expect("PATH");
    let mut expected = vec![
        format!("HOME={}", workdir.display()),
        "LANG=C.UTF-8".to_string(),
        "LC_ALL=C.UTF-8".to_string(),
        "NOODLE_JOB_ID=j-1".to_string(),
        "NOODLE_NODE=n1".to_string(),
        path,
        format!("TMPDIR={}", workdir.join("tmp").display()),
    ];
    expected.sort();
    assert_eq!(vars, expected);
    assert!(workdir.join("tmp").is_dir());

    let (code, frames) = job.run(&job.spec(&["sh", "-c", "pwd -P"])).await;
    assert_eq!(code, 0);
    assert_eq!(stream(&frames, STDOUT), format!("{}\n", workdir.display()));
}

#[tokio::test]
async fn dropping_a_running_job_kills_it() {
    let job = Job::new();
    let log = job.log(1 << 20);
    let process = JobProcess::spawn(&job.spec(&["sleep", "60"]), log.clone(), None).expect("spawn");
    let pid = process.pid() as i32;
    assert!(proc_stat(pid).is_some());
    drop(process);
    let gone = || proc_stat(pid).is_none_or(|(state, _)| state == 'Z');
    assert!(eventually(Duration::from_secs(60), gone).await);
    assert!(eventually(Duration::from_secs(60), || log.is_closed()).await);
}

#[test]
fn jobs_die_with_the_thread_that_started_them() {
    // Stands in for the node dying: the kernel sends the parent-death signal when the thread
    // that forked the job exits. The job is leaked so that nothing of ours kills it.
    let job = Job::new();
    let spec = job.spec(&["sleep", "60"]);
    let log = job.log(1024);
    let pid = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(async {
            let process = JobProcess::spawn(&spec, log, None).expect("spawn");
            let pid = process.pid() as i32;
            std::mem::forget(process);
            pid
        })
    })
    .join()
    .expect("thread");
    let start = Instant::now();
    // Gone or a zombie: the leaked child is never reaped.
    while proc_stat(pid).is_some_and(|(state, _)| state != 'Z') {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "job {pid} outlived its parent"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn exit_codes_read_like_a_shell() {
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(exit_code(ExitStatus::from_raw(3 << 8)), 3);
    assert_eq!(exit_code(ExitStatus::from_raw(9)), 137);
    assert_eq!(exit_code(ExitStatus::from_raw(15)), 143);
}

#[test]
fn cgroup_v2_root_needs_cgroup_v2() {
    let dir = tempfile::tempdir().expect("tempdir");
    assert_eq!(cgroup_v2_root_in(dir.path()), None);
    fs::write(dir.path().join("cgroup.controllers"), "cpuset io pids\n").expect("write");
    assert_eq!(cgroup_v2_root_in(dir.path()), None);
    fs::write(
        dir.path().join("cgroup.controllers"),
        "cpu io memory pids\n",
    )
    .expect("write");
    let root = cgroup_v2_root_in(dir.path()).expect("root");
    assert_eq!(root, dir.path().join("noodle-jobs"));
    assert_eq!(
        fs::read_to_string(root.join("cgroup.subtree_control")).expect("read"),
        "+cpu +memory"
    );
    // A job cgroup is only made inside a cgroup v2 file system.
    assert!(JobCgroup::create(&root, 1, 1 << 20).is_err());
    assert_eq!(fs::read_dir(&root).expect("dir").count(), 1);
}

/// A node's data directory with a secret in it and one job's working directory, as the
/// runtime lays them out, with the sandbox of that node.
struct Confined {
    _tmp: tempfile::TempDir,
    data: PathBuf,
    work: PathBuf,
    sandbox: Sandbox,
}

impl Confined {
    fn new(cfg: sandbox::SandboxConfig) -> Confined {
        let tmp = tempfile::tempdir().expect("tempdir");
        // Like `/root`: nothing above the data directory is passable for other users.
        fs::set_permissions(
            tmp.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o700),
        )
        .expect("chmod");
        let data = tmp.path().join("data");
        let jobs = data.join("jobs");
        let work = jobs.join("1.1").join("work");
        fs::create_dir_all(&jobs).expect("jobs");
        fs::write(data.join("secret"), "the capability root key").expect("secret");
        fs::set_permissions(
            data.join("secret"),
            std::os::unix::fs::PermissionsExt::from_mode(0o600),
        )
        .expect("chmod");
        let sandbox = Sandbox::new(&cfg, &data).expect("this machine can sandbox jobs");
        fs::create_dir_all(&work).expect("workdir");
        Confined {
            _tmp: tmp,
            data,
            work,
            sandbox,
        }
    }

    /// Runs `script` with `sh -c` in the sandbox: exit code, stdout, stderr.
    async fn run(&self, script: &str) -> (i32, String, String) {
        let spec = ProcessSpec {
            command: vec!["sh".into(), "-c".into(), script.into()],
            workdir: self.work.clone(),
            env: Vec::new(),
            env_in_workdir: Vec::new(),
            path: Some(self.sandbox.job_path(&node_path())),
            cpus: 1,
            mem_bytes: 0,
            cgroup_parent: None,
        };
        let confinement = self.sandbox.confine(&self.work, &[]).expect("confine");
        let log = OutputLog::create(&self.data.join("jobs/1.1/output.log"), 1 << 20).expect("log");
        let mut job = JobProcess::spawn(&spec, log.clone(), Some(confinement)).expect("spawn");
        let code = tokio::time::timeout(Duration::from_secs(60), job.wait())
            .await
            .expect("job ends");
        let frames = read_all(&log, 1 << 20);
        (code, stream(&frames, STDOUT), stream(&frames, STDERR))
    }
}

/// The attack a `jobs:run` token allows: the job tries every file of the node it can name.
#[tokio::test]
async fn a_sandboxed_job_reaches_its_own_files_and_the_system_but_nothing_of_the_node() {
    let jail = Confined::new(sandbox::SandboxConfig::default());
    let node = std::process::id();
    let data = jail.data.display();
    let script = format!(
        "id -u; id -G
         cat {data}/secret && echo READ-SECRET
         cat ../../../secret && echo READ-SECRET-RELATIVE
         ls {data} && echo LISTED-DATA
         cat /proc/{node}/environ && echo READ-NODE-ENVIRON
         ls /proc/{node}/root/ && echo LISTED-NODE-ROOT
         cat /proc/{node}/root{data}/secret && echo READ-SECRET-VIA-PROC
         kill -0 {node} && echo SIGNALLED-NODE
         echo x > /tmp/noodle-sandbox-escape-$$ && echo WROTE-TMP
         ls /root && echo LISTED-ROOT-HOME
         echo \"home=$HOME pwd=$(pwd) tmp=$TMPDIR\"
         echo mine > mine && cat mine
         echo tmp > \"$TMPDIR/t\" && cat \"$TMPDIR/t\"
         head -c 1 /dev/urandom > /dev/null && echo DEV-OK
         cat /etc/passwd > /dev/null && echo ETC-OK
         python3 -c 'import yaml; print(\"yaml\", yaml.safe_load(\"k: v\")[\"k\"])'
         echo to-stderr > /dev/stderr"
    );
    let (code, out, err) = jail.run(&script).await;
    assert_eq!(code, 0, "{out}\n{err}");
    let mut lines = out.lines();
    let uid: u32 = lines.next().and_then(|l| l.parse().ok()).expect("uid line");
    assert!(sandbox::JOB_UIDS.contains(&uid), "ran as uid {uid}");
    assert_eq!(
        lines.next(),
        Some(uid.to_string().as_str()),
        "supplementary groups"
    );
    for escaped in [
        "READ-SECRET",
        "LISTED-DATA",
        "READ-NODE-ENVIRON",
        "LISTED-NODE-ROOT",
        "SIGNALLED-NODE",
        "LISTED-ROOT-HOME",
    ] {
        assert!(!out.contains(escaped), "{escaped}:\n{out}\n{err}");
    }
    // A system-wide Python package (python3-yaml, from scripts/install-test-deps.sh).
    let view = format!(
        "home={JOB_WORK} pwd={JOB_WORK} tmp=/tmp\n",
        JOB_WORK = sandbox::JOB_WORK
    );
    for works in [
        view.as_str(),
        "mine\n",
        "tmp\n",
        "DEV-OK",
        "ETC-OK",
        "yaml v\n",
        "WROTE-TMP",
    ] {
        assert!(out.contains(works), "{works}:\n{out}\n{err}");
    }
    assert!(err.contains("to-stderr"), "{err}");
    assert!(!err.contains("the capability root key"), "{err}");
    // Its `/tmp` was its own.
    let escape = fs::read_dir(jail.work.join("tmp"))
        .expect("the job's tmp")
        .filter_map(|e| e.ok())
        .find(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("noodle-sandbox-escape-")
        })
        .expect("the job's /tmp file is in its own tmp");
    assert!(!Path::new("/tmp").join(escape.file_name()).exists());
}

/// `no_new_privs`: a set-uid program does not run as its owner.
#[tokio::test]
async fn a_sandboxed_job_gains_nothing_from_set_uid_programs() {
    let jail = Confined::new(sandbox::SandboxConfig::default());
    let (code, out, err) = jail
        .run("grep NoNewPrivs /proc/self/status; grep '^Uid' /proc/self/status")
        .await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("NoNewPrivs:\t1"), "{out}");
    assert!(!out.contains("\t0\t"), "root in some uid field: {out}");
}

/// A fork bomb meets the process limit, and what it left behind dies with the job (a process
/// that left the job's process group included), before the uid is used again.
#[tokio::test]
async fn a_sandboxed_job_cannot_fork_without_bound_and_leaves_nothing_behind() {
    let jail = Confined::new(sandbox::SandboxConfig {
        processes_max: 8,
        ..sandbox::SandboxConfig::default()
    });
    let (_, out, err) = jail
        .run(
            "setsid sleep 600 & echo escaped $!
             i=0; while [ $i -lt 30 ]; do sleep 600 & i=$((i+1)); echo $i; done; echo tried",
        )
        .await;
    assert!(
        err.contains("fork") || err.contains("Resource temporarily unavailable"),
        "{out}\n{err}"
    );
    let escaped: i32 = out
        .lines()
        .find_map(|l| l.strip_prefix("escaped ")?.parse().ok())
        .expect("the escaped pid");
    let started = out.lines().filter_map(|l| l.parse::<u64>().ok()).max();
    assert!(
        started.is_some_and(|n| n < 8),
        "{started:?} sleeps started under a limit of 8 processes"
    );
    assert!(
        eventually(Duration::from_secs(10), || proc_stat(escaped)
            .is_none_or(|(state, _)| state == 'Z'))
        .await,
        "the process that left the group still runs"
    );
}

/// The work directory bound is also a file-size limit: no single file outgrows it.
#[tokio::test]
async fn a_sandboxed_job_cannot_write_a_file_past_its_disk_bound() {
    let jail = Confined::new(sandbox::SandboxConfig {
        disk_max_bytes: 1 << 20,
        ..sandbox::SandboxConfig::default()
    });
    let (code, _, err) = jail
        .run("head -c 4194304 /dev/zero > big; echo $? >&2")
        .await;
    assert_eq!(code, 0, "{err}");
    let size = fs::metadata(jail.work.join("big")).expect("big").len();
    assert!(size <= 1 << 20, "{size} bytes written");
}

/// Paths the operator exposes are readable (or writable) by jobs; nothing else of the host.
#[tokio::test]
async fn operator_paths_are_exposed_as_configured() {
    // Not under /tmp, which is the job's own.
    let shared = tempfile::tempdir_in("/var/tmp").expect("tempdir");
    fs::set_permissions(
        shared.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .expect("chmod");
    fs::write(shared.path().join("venv.txt"), "packages").expect("file");
    let hidden = tempfile::tempdir_in("/var/tmp").expect("tempdir");
    fs::set_permissions(
        hidden.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .expect("chmod");
    fs::write(hidden.path().join("other.txt"), "not for jobs").expect("file");
    let jail = Confined::new(sandbox::SandboxConfig {
        read_only: vec![shared.path().to_path_buf()],
        ..sandbox::SandboxConfig::default()
    });
    let (_, out, err) = jail
        .run(&format!(
            "cat {s}/venv.txt; cat {h}/other.txt; echo x > {s}/new && echo WROTE",
            s = shared.path().display(),
            h = hidden.path().display()
        ))
        .await;
    assert!(out.contains("packages"), "{out}\n{err}");
    assert!(!out.contains("not for jobs"), "{out}");
    assert!(!out.contains("WROTE"), "{out}");
}

/// On a fresh machine the node (umask 077) may be the first to make the run directory: it must
/// still be passable by jobs, or none reaches its own working directory.
#[test]
fn the_run_directory_is_passable_by_jobs_whoever_made_it() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().expect("tempdir");
    let run = tmp.path().join("run");
    fs::create_dir(&run).expect("run dir");
    fs::set_permissions(&run, fs::Permissions::from_mode(0o700)).expect("chmod");
    sandbox::prepare_run_dir(&run).expect("prepared");
    let mode = |p: &Path| fs::metadata(p).expect("metadata").permissions().mode() & 0o777;
    assert_eq!(mode(&run), 0o755);
    assert_eq!(mode(&run.join("job-uids")), 0o700);
    assert_eq!(mode(&run.join("work")), 0o755);
}
