//! The local half of the job executor behind `noodle run`: starts one job's program as a child
//! process, captures its output into an [`OutputLog`], and stops it. Knows nothing of scheduling,
//! leases or the network.
//!
//! Lifecycle of a [`JobProcess`]:
//!
//! 1. [`JobProcess::spawn`] resolves the program (through `PATH`, or relative to the working
//!    directory when it contains a `/`) so that a missing program gets a clear error, builds a
//!    clean environment, optionally creates a cgroup v2 group with the job's memory and CPU limits,
//!    and starts the child in a process group of its own with stdin from `/dev/null`. Between fork
//!    and exec the child asks the kernel for SIGKILL when the node dies, joins its cgroup and sets
//!    its rlimits (no core dumps; without a cgroup, an address-space limit for the memory bound).
//! 2. Two tasks pump stdout and stderr into the log in chunks of up to 64 KiB.
//! 3. [`JobProcess::wait`] notices the exit of the main process *without reaping it* (`waitid`
//!    with `WNOWAIT`, checked on every SIGCHLD the node gets), kills whatever the job left behind
//!    in its process group and cgroup (the job ends when its main process does), reaps it, lets
//!    the pumps drain the pipes, closes the log and removes the cgroup.
//! 4. [`JobProcess::terminate`] and [`JobProcess::kill`] signal the whole process group.
//!
//! Why the main process is reaped last: the group's id is the main process's pid. A zombie keeps
//! its pid, but once reaped, the pid (and so the group id) may be reused by a stranger, so group
//! signals are only ever sent before the reap, under the same lock that marks it.
//!
//! Bounds: output by the log's `max_bytes`; draining the pipes after the exit by
//! [`DRAIN_TIMEOUT`] (a process that left the group may hold them open); removing the cgroup by
//! [`CGROUP_REMOVE_TRIES`].
//!
//! Must never panic on an I/O error, and never signal a process group after its leader was
//! reaped.

mod output;
pub(crate) mod sandbox;

pub(crate) use output::OutputLog;
pub(crate) use sandbox::{Confinement, Sandbox, SandboxConfig};

use noodle_api::output_frame::{STDERR, STDOUT};
use rustix::fs::Access;
use rustix::process::{Pid, Resource, Rlimit, Signal, WaitId, WaitIdOptions};
use std::ffi::OsString;
use std::fs::{self, OpenOptions};
use std::io;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::{Child, Command};
use tokio::runtime::Handle;
use tokio::signal::unix::{Signal as SignalStream, SignalKind};
use tokio::task::JoinHandle;

/// `PATH` for jobs when the node itself has none.
const DEFAULT_PATH: &str = "/usr/local/bin:/usr/bin:/bin";
/// Largest read from a job's stdout or stderr (one frame of the log).
const READ_CHUNK_BYTES: usize = 64 * 1024;
/// The smallest address-space limit given to a job: below this even a shell cannot start.
const MIN_ADDRESS_SPACE_BYTES: u64 = 64 << 20;
/// How long to keep reading output after the job's processes were killed: only a process that
/// left the job's process group (and has no cgroup to catch it) can hold the pipes open longer.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);
/// How often to try removing a job's cgroup (its killed processes take a moment to go).
const CGROUP_REMOVE_TRIES: u32 = 50;
const CGROUP_REMOVE_INTERVAL: Duration = Duration::from_millis(20);
/// How often to look for the exit without a SIGCHLD stream.
const EXIT_POLL_INTERVAL: Duration = Duration::from_millis(50);
/// How often to look for the exit anyway with a SIGCHLD stream (belt and braces).
const EXIT_RECHECK_INTERVAL: Duration = Duration::from_secs(2);
/// The exit code reported when the job's status cannot be read.
const EXIT_UNKNOWN: i32 = -1;
/// The CFS period written to `cpu.max` (the kernel's default).
const CPU_PERIOD_US: u64 = 100_000;
/// `statfs` type of a cgroup v2 file system.
const CGROUP2_SUPER_MAGIC: i128 = 0x6367_7270;

/// What to run and under which limits.
#[derive(Debug, Clone)]
pub(crate) struct ProcessSpec {
    /// Program and arguments. The program is looked up in `PATH`, or relative to `workdir` when
    /// it contains a `/` (`./my_program`).
    pub(crate) command: Vec<String>,
    /// An existing directory: the job's working directory and `HOME`.
    pub(crate) workdir: PathBuf,
    /// Extra environment (`NOODLE_JOB_ID`, ...), set last. Otherwise the environment is empty
    /// but for `PATH` (the node's), `HOME`, `TMPDIR` (`workdir/tmp`, created), and
    /// `LANG`/`LC_ALL` (`C.UTF-8`).
    pub(crate) env: Vec<(String, String)>,
    /// Environment naming places in the working directory: (name, path relative to it), set
    /// to where the job sees them.
    pub(crate) env_in_workdir: Vec<(String, String)>,
    /// `PATH` for the job, which also finds its program; `None` for the node's.
    pub(crate) path: Option<OsString>,
    /// CPU slots: the job's CPU time is capped at this many CPUs (with a cgroup only).
    pub(crate) cpus: u32,
    /// Memory bound; 0 for none. With a cgroup it is `memory.max`, else an address-space rlimit.
    pub(crate) mem_bytes: u64,
    /// A cgroup v2 directory to create the job's group in (see [`cgroup_v2_root`]); `None` for
    /// rlimits only.
    pub(crate) cgroup_parent: Option<PathBuf>,
}

/// Why a job's program did not start. The message is one line; the caller adds the node.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SpawnError {
    #[error("empty command: nothing to run")]
    EmptyCommand,
    #[error("no such program `{program}`")]
    NotFound { program: String },
    #[error("`{program}` is not an executable program")]
    NotExecutable { program: String },
    #[error("cannot start `{program}`: {source}")]
    Io { program: String, source: io::Error },
}

/// One running job process (see the module documentation).
pub(crate) struct JobProcess {
    pid: u32,
    child: Child,
    killer: JobKiller,
    /// Wakes `wait` when some child of the node changed state; `None` (then `wait` polls) if
    /// tokio could not listen for SIGCHLD.
    sigchld: Option<SignalStream>,
    /// The stdout and stderr pumps.
    pumps: Vec<JoinHandle<()>>,
    log: Arc<OutputLog>,
    /// Set once `wait` finished.
    exit_code: Option<i32>,
    /// Whether `wait` closes the log (else its caller does, after notices of its own).
    close_log: bool,
}

/// Stops a job while another task waits for it: [`JobProcess::killer`].
#[derive(Clone)]
pub(crate) struct JobKiller {
    group: Arc<Group>,
    handle: Handle,
}

/// The job's process group and cgroup, shared with delayed kills.
struct Group {
    pgid: Pid,
    /// Whether group signals are over: the leader is about to be (or was) reaped, after which
    /// its pid may belong to someone else.
    finished: Mutex<bool>,
    cgroup: Option<JobCgroup>,
    /// The job's own uid (sandboxed jobs on a root node): every process of it is killed when
    /// the job finishes, before the uid is given back with this claim.
    uid_claim: Option<sandbox::UidClaim>,
}

impl JobProcess {
    /// Starts `spec.command` and pumps its output into `log`.
    ///
    /// Call it from an async task (a runtime worker thread), never from `spawn_blocking`: the
    /// kernel sends the parent-death signal when the *thread* that forked exits, and an idle
    /// blocking thread exits after a few seconds, which would kill the job.
    ///
    /// With a `confinement` (see [`sandbox`]), the child enters it before exec, and every
    /// process of the job's uid is killed when the job ends.
    pub(crate) fn spawn(
        spec: &ProcessSpec,
        log: Arc<OutputLog>,
        confinement: Option<Confinement>,
    ) -> Result<JobProcess, SpawnError> {
        let name = spec.command.first().ok_or(SpawnError::EmptyCommand)?;
        let io_error = |source: io::Error| SpawnError::Io {
            program: name.clone(),
            source,
        };
        let handle = Handle::try_current()
            .map_err(|_| io_error(io::Error::other("not inside a tokio runtime")))?;
        // A relative working directory would make a relative program path ambiguous (the
        // parent's cwd or the child's?), so everything below uses the absolute one.
        let workdir = fs::canonicalize(&spec.workdir).map_err(io_error)?;
        let path_var = spec.path.clone().unwrap_or_else(node_path);
        let program = resolve_program(name, &workdir, &path_var)?;
        // Listening before the child exists means no SIGCHLD of it can be missed.
        let sigchld = tokio::signal::unix::signal(SignalKind::child())
            .inspect_err(|error| {
                tracing::warn!(%error, "cannot listen for SIGCHLD; polling for job exits");
            })
            .ok();
        let tmp = workdir.join("tmp");
        fs::create_dir_all(&tmp).map_err(io_error)?;

        let (cgroup, cgroup_procs) = match spec.cgroup_parent.as_deref() {
            None => (None, None),
            Some(parent) => match JobCgroup::create(parent, spec.cpus, spec.mem_bytes) {
                Ok((cgroup, procs)) => (Some(cgroup), Some(procs)),
                Err(error) => {
                    tracing::warn!(parent = %parent.display(), %error, "cannot set up a cgroup for a job; using rlimits only");
                    (None, None)
                }
            },
        };
        let address_space_bytes = (spec.mem_bytes > 0).then(|| {
            let wanted = spec.mem_bytes.max(MIN_ADDRESS_SPACE_BYTES);
            // Raising a hard limit needs privilege: stay within the node's own.
            match rustix::process::getrlimit(Resource::As).maximum {
                Some(hard) => wanted.min(hard),
                None => wanted,
            }
        });
        let (uid_claim, view, child_confinement) = match confinement {
            Some(c) => (c.claim, c.view, Some(c.child)),
            None => (None, None, None),
        };
        // What the job sees: in a view of its own, its directory is elsewhere and its `tmp`
        // is `/tmp`.
        let (program, home, tmpdir) = match view {
            Some(view) => (
                program
                    .strip_prefix(&workdir)
                    .map_or_else(|_| program.clone(), |rel| view.join(rel)),
                view,
                PathBuf::from("/tmp"),
            ),
            None => (program, workdir.clone(), tmp),
        };
        // The job owns its ends of the pipes, so that it may open `/dev/stdout` again.
        let owner = uid_claim.as_ref().map(|c| c.uid);
        let (out_rx, out_tx) = job_pipe(owner).map_err(io_error)?;
        let (err_rx, err_tx) = job_pipe(owner).map_err(io_error)?;
        let setup = ChildSetup {
            parent: rustix::process::getpid(),
            address_space_bytes: if cgroup.is_some() {
                None
            } else {
                address_space_bytes
            },
            fallback_address_space_bytes: address_space_bytes,
            cgroup_procs,
            confinement: child_confinement,
        };

        let mut command = Command::new(&program);
        command
            .arg0(name)
            .args(&spec.command[1..])
            .current_dir(&workdir)
            .env_clear()
            .env("PATH", &path_var)
            .env("HOME", &home)
            .env("TMPDIR", &tmpdir)
            .env("LANG", "C.UTF-8")
            .env("LC_ALL", "C.UTF-8")
            .envs(spec.env.iter().map(|(k, v)| (k, v)))
            .envs(
                spec.env_in_workdir
                    .iter()
                    .map(|(k, rel)| (k, home.join(rel))),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::from(out_tx))
            .stderr(Stdio::from(err_tx))
            .process_group(0)
            .kill_on_drop(false);
        // SAFETY: the closure runs in the forked child before exec, where only async-signal-safe
        // calls are allowed: `ChildSetup::apply` makes raw syscalls through rustix and libc
        // (prctl, getppid, setrlimit, setres[ug]id, unshare, open, write, landlock) on values
        // prepared before the fork, and neither allocates nor takes locks.
        #[allow(unsafe_code)]
        unsafe {
            command.pre_exec(move || setup.apply());
        }
        let spawned = command.spawn();
        drop(command); // closes the parent's copies of `cgroup.procs` and the pipes' write ends
        let mut child = match spawned {
            Ok(child) => child,
            Err(error) => {
                if let Some(cgroup) = &cgroup {
                    cgroup.remove_now();
                }
                return Err(spawn_error(name, error));
            }
        };

        // `id()` is `None` only after tokio saw the exit, which it cannot have yet.
        let Some((pid, pgid)) = child
            .id()
            .and_then(|pid| Some((pid, Pid::from_raw(i32::try_from(pid).ok()?)?)))
        else {
            let _ = child.start_kill();
            return Err(io_error(io::Error::other("started without a pid")));
        };
        if let Some(cgroup) = &cgroup
            && !cgroup.holds(pid)
        {
            tracing::warn!(pid, cgroup = %cgroup.dir.display(), "job process did not join its cgroup; it runs under rlimits only");
        }
        let mut pumps = Vec::with_capacity(2);
        for (rx, kind) in [(out_rx, STDOUT), (err_rx, STDERR)] {
            match tokio::net::unix::pipe::Receiver::from_owned_fd(rx.into()) {
                Ok(rx) => pumps.push(handle.spawn(pump(rx, kind, log.clone()))),
                // The job's writes to it fail (EPIPE) and the rest goes on.
                Err(error) => tracing::warn!(pid, %error, "cannot read a job's output pipe"),
            }
        }
        tracing::debug!(pid, program = %program.display(), "job process started");
        Ok(JobProcess {
            pid,
            child,
            killer: JobKiller {
                group: Arc::new(Group {
                    pgid,
                    finished: Mutex::new(false),
                    cgroup,
                    uid_claim,
                }),
                handle,
            },
            sigchld,
            pumps,
            close_log: true,
            log,
            exit_code: None,
        })
    }

    /// The main process's pid (also the id of the job's process group).
    #[cfg_attr(
        not(test),
        allow(dead_code, reason = "for callers that log or inspect it")
    )]
    pub(crate) fn pid(&self) -> u32 {
        self.pid
    }

    /// Leaves the log open when the job ends: the caller adds what happens after (a job's
    /// output written to the fabric) and closes it.
    pub(crate) fn leave_log_open(&mut self) {
        self.close_log = false;
    }

    /// Waits for the job to end: its exit code, or 128 + the signal number when a signal killed
    /// it (like a shell). Whatever the job left running is killed, all output is in the log and
    /// the log is closed before this returns (unless [`Self::leave_log_open`]). Later calls
    /// return the same code.
    pub(crate) async fn wait(&mut self) -> i32 {
        if let Some(code) = self.exit_code {
            return code;
        }
        let group = &self.killer.group;
        wait_for_exit(group.pgid, &mut self.sigchld).await;
        // The main process is a zombie now, so the group id is still its own: kill what is
        // left of the job and stop all group signals before reaping.
        group.finish();
        let code = match self.child.wait().await {
            Ok(status) => exit_code(status),
            Err(error) => {
                tracing::error!(pid = self.pid, %error, "cannot read a job's exit status");
                EXIT_UNKNOWN
            }
        };
        drain(std::mem::take(&mut self.pumps), &self.log).await;
        if self.close_log {
            self.log.close();
        }
        if let Some(cgroup) = &group.cgroup {
            cgroup.remove().await;
        }
        tracing::debug!(pid = self.pid, code, "job process ended");
        self.exit_code = Some(code);
        code
    }

    /// See [`JobKiller::terminate`].
    #[cfg_attr(not(test), allow(dead_code, reason = "the executor uses `killer()`"))]
    pub(crate) fn terminate(&self, grace: Duration) {
        self.killer.terminate(grace);
    }

    /// See [`JobKiller::kill`].
    pub(crate) fn kill(&self) {
        self.killer.kill();
    }

    /// A handle that stops the job, for use while `wait` holds the `JobProcess`.
    pub(crate) fn killer(&self) -> JobKiller {
        self.killer.clone()
    }
}

impl JobKiller {
    /// Asks the job to stop: SIGTERM (and SIGCONT, so that a stopped process sees it) to its
    /// process group now, SIGKILL to the group after `grace` if anything of it is still there.
    /// Does not wait; safe to call more than once and after the job ended.
    pub(crate) fn terminate(&self, grace: Duration) {
        if !self.group.signal(Signal::TERM) {
            return;
        }
        self.group.signal(Signal::CONT);
        let group = self.group.clone();
        self.handle.spawn(async move {
            tokio::time::sleep(grace).await;
            group.signal(Signal::KILL);
        });
    }

    /// SIGKILLs the job's whole process group (and cgroup) now. Does not wait; safe to call
    /// more than once and after the job ended.
    pub(crate) fn kill(&self) {
        self.group.signal(Signal::KILL);
    }
}

impl Drop for JobProcess {
    /// A job dropped before `wait` finished is killed, and cleaned up in the background.
    fn drop(&mut self) {
        if self.exit_code.is_some() {
            return;
        }
        let group = self.killer.group.clone();
        group.finish();
        // tokio reaps the dropped child in the background.
        let pumps = std::mem::take(&mut self.pumps);
        let log = self.log.clone();
        self.killer.handle.spawn(async move {
            drain(pumps, &log).await;
            log.close();
            if let Some(cgroup) = &group.cgroup {
                cgroup.remove().await;
            }
        });
    }
}

impl Group {
    /// Sends `signal` to the process group (SIGKILL also to the cgroup), unless the group is
    /// finished. Returns whether it was sent.
    fn signal(&self, signal: Signal) -> bool {
        let finished = self.finished.lock().unwrap_or_else(PoisonError::into_inner);
        if *finished {
            return false;
        }
        self.send(signal);
        true
    }

    /// Kills what is left of the job and ends group signals, before the leader is reaped.
    fn finish(&self) {
        let mut finished = self.finished.lock().unwrap_or_else(PoisonError::into_inner);
        if !*finished {
            self.send(Signal::KILL);
            if let Some(claim) = &self.uid_claim {
                claim.kill_all();
            }
            *finished = true;
        }
    }

    fn send(&self, signal: Signal) {
        match rustix::process::kill_process_group(self.pgid, signal) {
            // ESRCH: nothing left in the group.
            Ok(()) | Err(rustix::io::Errno::SRCH) => {}
            Err(error) => {
                tracing::warn!(pgid = self.pgid.as_raw_pid(), ?signal, %error, "cannot signal a job's process group");
            }
        }
        if signal == Signal::KILL
            && let Some(cgroup) = &self.cgroup
        {
            cgroup.kill();
        }
    }
}

/// What the child does between fork and exec; everything is prepared before the fork.
struct ChildSetup {
    /// The node's pid, to notice that it died before the parent-death signal was set.
    parent: Pid,
    /// `RLIMIT_AS` to set.
    address_space_bytes: Option<u64>,
    /// `RLIMIT_AS` to set instead if joining the cgroup fails.
    fallback_address_space_bytes: Option<u64>,
    /// The job cgroup's `cgroup.procs`, open for writing.
    cgroup_procs: Option<OwnedFd>,
    /// The job's sandbox.
    confinement: Option<sandbox::ChildConfinement>,
}

impl ChildSetup {
    /// Runs in the child: async-signal-safe syscalls only, no allocation (errors are raw errnos).
    fn apply(&self) -> io::Result<()> {
        rustix::process::setrlimit(
            Resource::Core,
            Rlimit {
                current: Some(0),
                maximum: Some(0),
            },
        )?;
        let mut address_space_bytes = self.address_space_bytes;
        if let Some(procs) = &self.cgroup_procs {
            // "0" moves the writing process; the parent checks the outcome and logs it.
            if rustix::io::write(procs, b"0").is_err() {
                address_space_bytes = self.fallback_address_space_bytes;
            }
        }
        if let Some(bytes) = address_space_bytes {
            rustix::process::setrlimit(
                Resource::As,
                Rlimit {
                    current: Some(bytes),
                    maximum: Some(bytes),
                },
            )?;
        }
        if let Some(confinement) = &self.confinement {
            confinement.enter_identity()?;
        }
        // After the identity change, which clears it.
        rustix::process::set_parent_process_death_signal(Some(Signal::KILL))?;
        // The node may have died since the fork: then no signal comes.
        if rustix::process::getppid() != Some(self.parent) {
            return Err(rustix::io::Errno::SRCH.into());
        }
        if let Some(confinement) = &self.confinement {
            confinement.restrict()?;
        }
        Ok(())
    }
}

/// The node's own `PATH` (a default when it has none).
pub(crate) fn node_path() -> OsString {
    std::env::var_os("PATH")
        .filter(|p| !p.is_empty())
        .unwrap_or_else(|| OsString::from(DEFAULT_PATH))
}

/// A pipe for the job's stdout or stderr (both ends close on exec), given to `owner`.
fn job_pipe(owner: Option<u32>) -> io::Result<(io::PipeReader, io::PipeWriter)> {
    let (rx, tx) = io::pipe()?;
    if let Some(uid) = owner {
        std::os::unix::fs::fchown(&tx, Some(uid), Some(uid))?;
    }
    Ok((rx, tx))
}

/// Copies one of the job's pipes into the log until it closes.
async fn pump(mut from: impl AsyncRead + Unpin, kind: u8, log: Arc<OutputLog>) {
    let mut buf = vec![0u8; READ_CHUNK_BYTES];
    loop {
        match from.read(&mut buf).await {
            Ok(0) => break,
            Ok(n) => log.append(kind, &buf[..n]),
            Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
            Err(error) => {
                tracing::warn!(%error, kind, "cannot read a job's output; the rest is lost");
                break;
            }
        }
    }
}

/// Lets the pumps finish, for at most [`DRAIN_TIMEOUT`]; then stops them and says so in the log.
async fn drain(pumps: Vec<JoinHandle<()>>, log: &OutputLog) {
    let deadline = tokio::time::Instant::now() + DRAIN_TIMEOUT;
    let mut stopped = false;
    for mut pump in pumps {
        match tokio::time::timeout_at(deadline, &mut pump).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => tracing::error!(%error, "a job's output pump failed"),
            Err(_) => {
                pump.abort();
                stopped = true;
            }
        }
    }
    if stopped {
        tracing::warn!(
            "a process outside the job's process group holds its output open; stopped reading it"
        );
        log.notice("output after the job ended is not captured: a process that left the job's process group still holds it open");
    }
}

/// Returns once the process `pid` (our child) exited, without reaping it (`WNOWAIT`): checks
/// after every SIGCHLD the node gets, or every [`EXIT_POLL_INTERVAL`] without a SIGCHLD stream.
async fn wait_for_exit(pid: Pid, sigchld: &mut Option<SignalStream>) {
    let options = WaitIdOptions::EXITED | WaitIdOptions::NOHANG | WaitIdOptions::NOWAIT;
    loop {
        match rustix::process::waitid(WaitId::Pid(pid), options) {
            Ok(Some(_)) => return,
            Ok(None) => {}
            Err(rustix::io::Errno::INTR) => continue,
            Err(error) => {
                // ECHILD: reaped already (an earlier, cancelled `wait`); the status is in `Child`.
                tracing::debug!(pid = pid.as_raw_pid(), %error, "waitid on a job process");
                return;
            }
        }
        match sigchld {
            Some(stream) => {
                if let Ok(None) = tokio::time::timeout(EXIT_RECHECK_INTERVAL, stream.recv()).await {
                    // The runtime is shutting down its signal driver: poll from now on.
                    *sigchld = None;
                }
            }
            None => tokio::time::sleep(EXIT_POLL_INTERVAL).await,
        }
    }
}

/// Exit code as a shell reports it: the code, or 128 + the signal that killed the process.
fn exit_code(status: ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    status
        .code()
        .or_else(|| status.signal().map(|signal| 128 + signal))
        .unwrap_or(EXIT_UNKNOWN)
}

/// The path to execute for `name`, as `execvp` would find it, or why there is none.
fn resolve_program(name: &str, workdir: &Path, path_var: &OsString) -> Result<PathBuf, SpawnError> {
    let not_found = || SpawnError::NotFound {
        program: name.to_string(),
    };
    let not_executable = || SpawnError::NotExecutable {
        program: name.to_string(),
    };
    if name.is_empty() {
        return Err(not_found());
    }
    if name.contains('/') {
        // `join` keeps an absolute `name` as it is.
        let path = workdir.join(name);
        return match probe(&path) {
            Probe::Executable => Ok(path),
            Probe::NotExecutable => Err(not_executable()),
            Probe::Missing => Err(not_found()),
        };
    }
    let mut seen_not_executable = false;
    for dir in std::env::split_paths(path_var) {
        if dir.as_os_str().is_empty() {
            continue;
        }
        // A relative PATH entry is relative to the job's working directory, as for execvp.
        let path = workdir.join(dir).join(name);
        match probe(&path) {
            Probe::Executable => return Ok(path),
            Probe::NotExecutable => seen_not_executable = true,
            Probe::Missing => {}
        }
    }
    Err(if seen_not_executable {
        not_executable()
    } else {
        not_found()
    })
}

enum Probe {
    Executable,
    NotExecutable,
    Missing,
}

fn probe(path: &Path) -> Probe {
    match fs::metadata(path) {
        Err(_) => Probe::Missing,
        Ok(meta) if meta.is_file() && rustix::fs::access(path, Access::EXEC_OK).is_ok() => {
            Probe::Executable
        }
        Ok(_) => Probe::NotExecutable,
    }
}

fn spawn_error(name: &str, error: io::Error) -> SpawnError {
    let program = name.to_string();
    match error.raw_os_error() {
        // Also a script whose interpreter is missing.
        Some(code) if code == rustix::io::Errno::NOENT.raw_os_error() => {
            SpawnError::NotFound { program }
        }
        Some(code)
            if code == rustix::io::Errno::ACCESS.raw_os_error()
                || code == rustix::io::Errno::NOEXEC.raw_os_error() =>
        {
            SpawnError::NotExecutable { program }
        }
        _ => SpawnError::Io {
            program,
            source: error,
        },
    }
}

/// The directory `noodle-jobs` under the cgroup v2 mount, with the cpu and memory controllers
/// enabled for its children; `None` where there is no cgroup v2 or the node may not use it (then
/// jobs run under rlimits only).
pub(crate) fn cgroup_v2_root() -> Option<PathBuf> {
    cgroup_v2_root_in(Path::new("/sys/fs/cgroup"))
}

fn cgroup_v2_root_in(mount: &Path) -> Option<PathBuf> {
    let controllers = fs::read_to_string(mount.join("cgroup.controllers")).ok()?;
    let available: Vec<&str> = controllers.split_whitespace().collect();
    if !(available.contains(&"cpu") && available.contains(&"memory")) {
        tracing::info!(
            controllers = controllers.trim(),
            "cgroup v2 lacks the cpu or memory controller; jobs run under rlimits only"
        );
        return None;
    }
    // Usually on already (systemd does it); if this fails, the write below fails too.
    let _ = fs::write(mount.join("cgroup.subtree_control"), "+cpu +memory");
    let dir = mount.join("noodle-jobs");
    let setup = match fs::create_dir(&dir) {
        Err(error) if error.kind() != io::ErrorKind::AlreadyExists => Err(error),
        _ => fs::write(dir.join("cgroup.subtree_control"), "+cpu +memory"),
    };
    match setup {
        Ok(()) => Some(dir),
        Err(error) => {
            tracing::info!(dir = %dir.display(), %error, "cannot use cgroup v2 for jobs; they run under rlimits only");
            None
        }
    }
}

/// A job's own cgroup v2 group, `<parent>/job-<node pid>-<n>`.
struct JobCgroup {
    dir: PathBuf,
}

impl JobCgroup {
    /// Creates the group with the job's limits; returns it with its `cgroup.procs` open for
    /// the child to join through.
    fn create(parent: &Path, cpus: u32, mem_bytes: u64) -> io::Result<(JobCgroup, OwnedFd)> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        // Anywhere else the control files below would be plain files and the limits a fiction.
        if i128::from(rustix::fs::statfs(parent)?.f_type) != CGROUP2_SUPER_MAGIC {
            return Err(io::Error::other(format!(
                "{} is not in a cgroup v2 file system",
                parent.display()
            )));
        }
        let name = format!(
            "job-{}-{}-{}",
            std::process::id(),
            noodle_host::now_ms(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let dir = parent.join(name);
        fs::create_dir(&dir)?;
        let cgroup = JobCgroup { dir };
        match cgroup.configure(cpus, mem_bytes) {
            Ok(procs) => Ok((cgroup, procs)),
            Err(error) => {
                cgroup.remove_now();
                Err(error)
            }
        }
    }

    fn configure(&self, cpus: u32, mem_bytes: u64) -> io::Result<OwnedFd> {
        if mem_bytes > 0 {
            fs::write(self.dir.join("memory.max"), mem_bytes.to_string())?;
            // Keep the job from going around its bound through swap (absent without swap
            // accounting, which is fine).
            let _ = fs::write(self.dir.join("memory.swap.max"), "0");
        }
        if cpus > 0 {
            let quota_us = u64::from(cpus) * CPU_PERIOD_US;
            fs::write(
                self.dir.join("cpu.max"),
                format!("{quota_us} {CPU_PERIOD_US}"),
            )?;
        }
        let procs = OpenOptions::new()
            .write(true)
            .open(self.dir.join("cgroup.procs"))?;
        Ok(OwnedFd::from(procs))
    }

    /// Whether process `pid` is in this group.
    fn holds(&self, pid: u32) -> bool {
        let Some(name) = self.dir.file_name().and_then(|n| n.to_str()) else {
            return false;
        };
        fs::read_to_string(format!("/proc/{pid}/cgroup")).is_ok_and(|text| {
            text.lines()
                .any(|line| line.starts_with("0::") && line.ends_with(&format!("/{name}")))
        })
    }

    /// SIGKILLs every process in the group: `cgroup.kill` (Linux 5.14), else one by one.
    fn kill(&self) {
        if fs::write(self.dir.join("cgroup.kill"), "1").is_ok() {
            return;
        }
        let Ok(procs) = fs::read_to_string(self.dir.join("cgroup.procs")) else {
            return;
        };
        for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
            if let Some(pid) = Pid::from_raw(pid) {
                let _ = rustix::process::kill_process(pid, Signal::KILL);
            }
        }
    }

    /// Kills what is left and removes the group, retrying while the killed processes go.
    async fn remove(&self) {
        for _ in 0..CGROUP_REMOVE_TRIES {
            match fs::remove_dir(&self.dir) {
                Ok(()) => return,
                Err(error) if error.kind() == io::ErrorKind::NotFound => return,
                Err(_) => {
                    self.kill();
                    tokio::time::sleep(CGROUP_REMOVE_INTERVAL).await;
                }
            }
        }
        tracing::warn!(cgroup = %self.dir.display(), "cannot remove a job's cgroup; it is left behind");
    }

    /// Removes the (empty) group at once.
    fn remove_now(&self) {
        if let Err(error) = fs::remove_dir(&self.dir) {
            tracing::warn!(cgroup = %self.dir.display(), %error, "cannot remove a job's cgroup");
        }
    }
}

#[cfg(test)]
mod tests;
