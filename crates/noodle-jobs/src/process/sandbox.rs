//! The job sandbox: what a job may touch on the node that runs it (docs/security.md).
//!
//! Every job runs
//!
//! - **as an identity of its own.** When the node is root: a uid and gid claimed for this job
//!   alone from [`JOB_UIDS`] (a lock file per uid under [`CLAIMS_DIR`], so that several nodes
//!   on one machine never hand out the same one), with no supplementary groups. Otherwise: in a
//!   user namespace of its own (the node's uid mapped to itself), which makes the process limit
//!   count this job's processes only.
//! - **in a mount view of its own** (root nodes): its working directory at [`JOB_WORK`] (so
//!   that no directory above the node's data directory has to be passable), its `tmp` as
//!   `/tmp`, and the node's data directory an empty read-only directory.
//! - **under a Landlock ruleset**: read and execute on the system directories, read on `/proc`
//!   and `/sys`, the device files every program needs (a GPU's only when the job was given it),
//!   the paths the operator exposed (`noodle up --job-ro/--job-rw`), and everything in its own
//!   working directory. The node's data directory, other jobs, `/tmp`, `/home` and `/root` are
//!   out of reach. Where the kernel has Landlock scopes (ABI 6), the job can neither signal nor
//!   reach the abstract unix sockets of processes outside its sandbox.
//! - **with `no_new_privs`** (a set-uid program gives back nothing), a process limit
//!   (`RLIMIT_NPROC`, per job thanks to the identity above) and a file-size limit equal to the
//!   bound on its working directory (whose total the executor watches).
//!
//! When the job ends, every process of its uid is killed (one that left the job's process group
//! too) before the uid is given back.
//!
//! [`Sandbox::new`] checks once, when the node starts, that all of this can be built;
//! [`Sandbox::confine`] prepares one job in the node (it allocates and may fail), and
//! [`Confinement::enter`] applies it in the forked child with async-signal-safe system calls
//! only.

use landlock::{
    ABI, Access, AccessFs, BitFlags, CompatLevel, Compatible, PathBeneath, PathFd, Ruleset,
    RulesetAttr, RulesetCreatedAttr, Scope,
};
use rustix::fs::{FlockOperation, Mode, OFlags};
use rustix::mount::{MountFlags, MountPropagationFlags, mount, mount_bind, mount_change};
use rustix::process::{Resource, Rlimit};
use rustix::thread::UnshareFlags;
use std::ffi::{CStr, CString};
use std::hash::{BuildHasher, RandomState};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStringExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// The uids (and gids, the same numbers) jobs run as when the node is root: above systemd's
/// container range (which ends at 0x6FFFFFFF) and far from any user's.
pub(crate) const JOB_UIDS: std::ops::Range<u32> = 0x7000_0000..0x7001_0000;
/// How many uids one job tries before it gives up (only a machine running tens of thousands of
/// jobs at once sees that).
const CLAIM_TRIES: u32 = 512;
/// Holds [`CLAIMS_DIR`] and [`JOB_WORK`]; passable by every job (created under the node's
/// umask 077 it would not be, and no job could reach its own directory).
const RUN_DIR: &str = "/run/noodle";
/// Where the claims of job uids live, machine-wide (root only).
const CLAIMS_DIR: &str = "/run/noodle/job-uids";
/// Where a job of a root node sees its working directory (its `HOME`), in its own mount
/// namespace; its `tmp` is also its `/tmp` there.
pub(crate) const JOB_WORK: &str = "/run/noodle/work";
const JOB_WORK_C: &CStr = c"/run/noodle/work";
const JOB_WORK_TMP_C: &CStr = c"/run/noodle/work/tmp";
/// How often the end of a job signals every process of its uid: a process may fork while the
/// first sweep passes (at most [`SandboxConfig::processes_max`] of them).
const KILL_SWEEPS: u32 = 4;
/// Directories of the host that every job may read and execute from, when they exist.
const SYSTEM_DIRS: &[&str] = &[
    "/usr",
    "/bin",
    "/sbin",
    "/lib",
    "/lib32",
    "/lib64",
    "/libx32",
    "/etc",
    "/opt",
    // where /etc/resolv.conf points under systemd-resolved
    "/run/systemd/resolve",
];
/// Read-only views of the kernel (process and device information).
const KERNEL_DIRS: &[&str] = &["/proc", "/sys"];
/// Device files every program may read and write.
const DEVICES: &[&str] = &[
    "/dev/null",
    "/dev/zero",
    "/dev/full",
    "/dev/random",
    "/dev/urandom",
    "/dev/tty",
];
/// Shared memory (POSIX semaphores and shared memory, as Python's multiprocessing uses).
const SHARED_MEMORY: &str = "/dev/shm";
/// The device files of NVIDIA GPUs that are not one GPU's own (`/dev/nvidiaN`).
const GPU_CONTROL_DEVICES: &[&str] = &[
    "/dev/nvidiactl",
    "/dev/nvidia-uvm",
    "/dev/nvidia-uvm-tools",
    "/dev/nvidia-modeset",
    "/dev/nvidia-caps",
    "/dev/dri",
];

/// How the node confines jobs (`noodle up --job-*`).
#[derive(Debug, Clone)]
pub struct SandboxConfig {
    /// `false` only when the operator opted out (`noodle up --unsandboxed-jobs`): jobs then run
    /// as the node's own user and can read everything the node can.
    pub enabled: bool,
    /// Extra host paths jobs may read and execute from (a shared venv or conda directory).
    pub read_only: Vec<PathBuf>,
    /// Extra host paths jobs may also write to (a shared results directory).
    pub read_write: Vec<PathBuf>,
    /// Processes (and threads) one job may have at once.
    pub processes_max: u64,
    /// Bound on one job's working directory, in bytes.
    pub disk_max_bytes: u64,
}

impl Default for SandboxConfig {
    fn default() -> SandboxConfig {
        SandboxConfig {
            enabled: true,
            read_only: Vec::new(),
            read_write: Vec::new(),
            processes_max: 4096,
            disk_max_bytes: 10 << 30,
        }
    }
}

/// Why the node cannot sandbox jobs, or one job.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SandboxError {
    #[error("Landlock is not available (kernel 5.13 or later with `lsm=landlock`): {0}")]
    Landlock(String),
    #[error("cannot expose {path} to jobs: {reason}")]
    Path { path: PathBuf, reason: String },
    #[error("cannot prepare the job's sandbox: {0}")]
    Prepare(String),
    #[error("no free uid for the job among {tried} tried under {CLAIMS_DIR}")]
    NoUid { tried: u32 },
}

/// One path a job may reach, opened once when the node starts.
struct Rule {
    dir: PathFd,
    access: BitFlags<AccessFs>,
}

/// Who a job runs as.
#[derive(Debug)]
enum Identity {
    /// The node is root: a uid and a mount view of its own per job, in which `data_dir` (the
    /// node's) is empty.
    Dynamic { data_dir: CString },
    /// The node is not root: the node's uid, in a user namespace of the job's own.
    Namespace { uid: u32, gid: u32 },
}

/// The node's job sandbox, checked once when the node starts.
pub(crate) struct Sandbox {
    abi: ABI,
    identity: Identity,
    /// System directories, devices and the operator's paths.
    rules: Vec<Rule>,
    /// Where jobs may execute from: the system directories and the operator's paths.
    executable_roots: Vec<PathBuf>,
    /// GPU control devices, for jobs given a GPU.
    gpu_rules: Vec<Rule>,
    processes_max: u64,
    disk_max_bytes: u64,
}

impl std::fmt::Debug for Sandbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sandbox")
            .field("abi", &self.abi)
            .field("identity", &self.identity)
            .field("rules", &self.rules.len())
            .finish_non_exhaustive()
    }
}

impl Sandbox {
    /// Checks that jobs can be confined here and prepares what every job shares; `data_dir` is
    /// what jobs of a root node see as an empty directory.
    pub(crate) fn new(cfg: &SandboxConfig, data_dir: &Path) -> Result<Sandbox, SandboxError> {
        // Probe with the first ABI as a hard requirement: a kernel without Landlock fails here.
        let abi = ABI::V6;
        Ruleset::default()
            .set_compatibility(CompatLevel::HardRequirement)
            .handle_access(AccessFs::from_all(ABI::V1))
            .and_then(|r| r.create())
            .map_err(|e| SandboxError::Landlock(e.to_string()))?;
        let identity = if rustix::process::geteuid().is_root() {
            prepare_run_dir(Path::new(RUN_DIR))?;
            let data_dir = std::fs::canonicalize(data_dir)
                .ok()
                .and_then(|d| CString::new(d.into_os_string().into_vec()).ok())
                .ok_or_else(|| {
                    SandboxError::Prepare(format!("cannot name {}", data_dir.display()))
                })?;
            Identity::Dynamic { data_dir }
        } else {
            user_namespaces_work()?;
            Identity::Namespace {
                uid: rustix::process::getuid().as_raw(),
                gid: rustix::process::getgid().as_raw(),
            }
        };
        let read = AccessFs::from_read(abi);
        let read_only = AccessFs::ReadFile | AccessFs::ReadDir;
        let device = AccessFs::from_file(abi) & !AccessFs::Execute;
        let mut rules = Vec::new();
        let add_existing = |paths: &[&str], access: BitFlags<AccessFs>, rules: &mut Vec<_>| {
            for path in paths {
                if let Ok(dir) = PathFd::new(path) {
                    rules.push(Rule { dir, access });
                }
            }
        };
        add_existing(SYSTEM_DIRS, read, &mut rules);
        add_existing(KERNEL_DIRS, read_only, &mut rules);
        add_existing(DEVICES, device, &mut rules);
        add_existing(&[SHARED_MEMORY], AccessFs::from_all(abi), &mut rules);
        let mut gpu_rules = Vec::new();
        add_existing(GPU_CONTROL_DEVICES, device | read_only, &mut gpu_rules);
        for (paths, access) in [
            (&cfg.read_only, read),
            (&cfg.read_write, AccessFs::from_all(abi)),
        ] {
            for path in paths {
                let refused = |reason: String| SandboxError::Path {
                    path: path.clone(),
                    reason,
                };
                let real = std::fs::canonicalize(path).map_err(|e| refused(e.to_string()))?;
                if matches!(identity, Identity::Dynamic { .. }) && real.starts_with("/tmp") {
                    return Err(refused(
                        "jobs have a /tmp of their own: expose a path outside /tmp".into(),
                    ));
                }
                let dir = PathFd::new(&real).map_err(|e| refused(e.to_string()))?;
                rules.push(Rule { dir, access });
            }
        }
        let executable_roots = SYSTEM_DIRS
            .iter()
            .map(PathBuf::from)
            .chain(cfg.read_only.iter().cloned())
            .chain(cfg.read_write.iter().cloned())
            .collect();
        Ok(Sandbox {
            abi,
            identity,
            rules,
            executable_roots,
            gpu_rules,
            processes_max: cfg.processes_max,
            disk_max_bytes: cfg.disk_max_bytes,
        })
    }

    /// The node's `PATH` without what jobs cannot reach (a `~/.local/bin` of the node's user),
    /// so that a program is found where the job can run it.
    pub(crate) fn job_path(&self, node_path: &std::ffi::OsStr) -> std::ffi::OsString {
        let reachable = std::env::split_paths(node_path).filter(|dir| {
            self.executable_roots
                .iter()
                .any(|root| dir.starts_with(root))
        });
        std::env::join_paths(reachable).unwrap_or_default()
    }

    /// The bound on one job's working directory.
    pub(crate) fn disk_max_bytes(&self) -> u64 {
        self.disk_max_bytes
    }

    /// Prepares the sandbox of one job that runs in `workdir` (which holds its files) with the
    /// GPUs `gpus`: claims its uid and hands it the directory, builds its ruleset.
    pub(crate) fn confine(
        &self,
        workdir: &Path,
        gpus: &[u32],
    ) -> Result<Confinement, SandboxError> {
        let prepare = |e: &dyn std::fmt::Display| SandboxError::Prepare(e.to_string());
        // The job's TMPDIR (the process module creates it too, for unconfined jobs).
        let tmp = workdir.join("tmp");
        std::fs::create_dir_all(&tmp).map_err(|e| prepare(&e))?;
        let (claim, setup) = match &self.identity {
            Identity::Dynamic { data_dir } => {
                let claim = UidClaim::take()?;
                give_tree(workdir, claim.uid).map_err(|e| prepare(&e))?;
                let work = std::fs::canonicalize(workdir)
                    .ok()
                    .and_then(|d| CString::new(d.into_os_string().into_vec()).ok())
                    .ok_or_else(|| prepare(&format!("cannot name {}", workdir.display())))?;
                let setup = EnterIdentity::Switch {
                    uid: claim.uid,
                    gid: claim.uid,
                    work,
                    data_dir: data_dir.clone(),
                };
                (Some(claim), setup)
            }
            Identity::Namespace { uid, gid } => (
                None,
                EnterIdentity::Namespace {
                    uid_map: format!("{uid} {uid} 1\n").into_bytes(),
                    gid_map: format!("{gid} {gid} 1\n").into_bytes(),
                },
            ),
        };
        let all = AccessFs::from_all(self.abi);
        let mut ruleset = Ruleset::default()
            .handle_access(all)
            .and_then(|r| r.scope(Scope::from_all(self.abi)))
            .and_then(|r| r.create())
            .map_err(|e| prepare(&e))?;
        let own = PathFd::new(workdir).map_err(|e| prepare(&e))?;
        // Seen as `/tmp` (a mount of its own) too, where the walk up does not pass `workdir`.
        let own_tmp = PathFd::new(&tmp).map_err(|e| prepare(&e))?;
        let gpu_devices: Vec<PathFd> = gpus
            .iter()
            .filter_map(|i| PathFd::new(format!("/dev/nvidia{i}")).ok())
            .collect();
        let gpu_shared = if gpus.is_empty() {
            &[][..]
        } else {
            &self.gpu_rules[..]
        };
        let device = AccessFs::from_file(self.abi) & !AccessFs::Execute;
        for rule in self.rules.iter().chain(gpu_shared) {
            ruleset = ruleset
                .add_rule(PathBeneath::new(&rule.dir, rule.access))
                .map_err(|e| prepare(&e))?;
        }
        for dev in &gpu_devices {
            ruleset = ruleset
                .add_rule(PathBeneath::new(dev, device))
                .map_err(|e| prepare(&e))?;
        }
        for dir in [&own, &own_tmp] {
            ruleset = ruleset
                .add_rule(PathBeneath::new(dir, all))
                .map_err(|e| prepare(&e))?;
        }
        let ruleset: Option<OwnedFd> = ruleset.into();
        let ruleset = ruleset.ok_or_else(|| prepare(&"Landlock did not create a ruleset"))?;
        let limit =
            |resource: Resource, wanted: u64| match rustix::process::getrlimit(resource).maximum {
                Some(hard) => wanted.min(hard),
                None => wanted,
            };
        let view = matches!(setup, EnterIdentity::Switch { .. }).then(|| PathBuf::from(JOB_WORK));
        Ok(Confinement {
            claim,
            view,
            child: ChildConfinement {
                ruleset,
                identity: setup,
                processes_max: limit(Resource::Nproc, self.processes_max),
                file_size_max: limit(Resource::Fsize, self.disk_max_bytes),
            },
        })
    }
}

/// One job's sandbox, prepared in the node.
pub(crate) struct Confinement {
    /// The job's own uid, while it runs (root nodes).
    pub(crate) claim: Option<UidClaim>,
    /// Where the job sees its working directory, if not where it is ([`JOB_WORK`], with its
    /// `tmp` as `/tmp`).
    pub(crate) view: Option<PathBuf>,
    /// What the forked child applies.
    pub(crate) child: ChildConfinement,
}

/// The part of a [`Confinement`] that the forked child applies: all prepared beforehand.
pub(crate) struct ChildConfinement {
    ruleset: OwnedFd,
    identity: EnterIdentity,
    processes_max: u64,
    file_size_max: u64,
}

enum EnterIdentity {
    /// A root node's job: its own mount view (`work` is its real working directory), then its
    /// own uid.
    Switch {
        uid: u32,
        gid: u32,
        work: CString,
        data_dir: CString,
    },
    Namespace {
        uid_map: Vec<u8>,
        gid_map: Vec<u8>,
    },
}

impl ChildConfinement {
    /// In the forked child, before anything else that depends on credentials: the limits that
    /// need the node's privileges, then the job's identity. Async-signal-safe system calls only.
    pub(crate) fn enter_identity(&self) -> io::Result<()> {
        for (resource, bytes) in [
            (Resource::Nproc, self.processes_max),
            (Resource::Fsize, self.file_size_max),
        ] {
            rustix::process::setrlimit(
                resource,
                Rlimit {
                    current: Some(bytes),
                    maximum: Some(bytes),
                },
            )?;
        }
        match &self.identity {
            EnterIdentity::Switch {
                uid,
                gid,
                work,
                data_dir,
            } => {
                enter_view(work, data_dir)?;
                let (uid, gid) = (
                    rustix::process::Uid::from_raw(*uid),
                    rustix::process::Gid::from_raw(*gid),
                );
                rustix::thread::set_thread_groups(&[])?;
                rustix::thread::set_thread_res_gid(gid, gid, gid)?;
                rustix::thread::set_thread_res_uid(uid, uid, uid)?;
            }
            EnterIdentity::Namespace { uid_map, gid_map } => {
                // The node is not dumpable, which makes `/proc/self` root's: the id maps could
                // not be written. The exec below resets it anyway.
                rustix::process::set_dumpable_behavior(
                    rustix::process::DumpableBehavior::Dumpable,
                )?;
                // SAFETY: the forked child has one thread, so no other thread can observe the
                // credentials change half-way.
                #[allow(unsafe_code)]
                unsafe {
                    rustix::thread::unshare_unsafe(UnshareFlags::NEWUSER)?;
                }
                write_proc(c"/proc/self/setgroups", b"deny")?;
                write_proc(c"/proc/self/uid_map", uid_map)?;
                write_proc(c"/proc/self/gid_map", gid_map)?;
            }
        }
        rustix::process::umask(Mode::from_raw_mode(0o022));
        Ok(())
    }

    /// In the forked child, last before exec: `no_new_privs` and the Landlock ruleset.
    pub(crate) fn restrict(&self) -> io::Result<()> {
        rustix::thread::set_no_new_privs(true)?;
        // SAFETY: a plain system call on a descriptor this struct owns; it reads no memory.
        #[allow(unsafe_code)]
        let rc = unsafe {
            libc::syscall(
                libc::SYS_landlock_restrict_self,
                self.ruleset.as_raw_fd(),
                0u32,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

/// In the forked child (still root): a mount namespace of its own, private, in which the job's
/// working directory is [`JOB_WORK`] (the current directory) and its `tmp` is `/tmp`, and the
/// node's data directory is an empty read-only directory.
fn enter_view(work: &CStr, data_dir: &CStr) -> io::Result<()> {
    // SAFETY: the forked child has one thread.
    #[allow(unsafe_code)]
    unsafe {
        rustix::thread::unshare_unsafe(UnshareFlags::NEWNS)?;
    }
    // Nothing of what follows may reach the node's own mount namespace.
    mount_change(
        c"/",
        MountPropagationFlags::PRIVATE | MountPropagationFlags::REC,
    )?;
    mount_bind(work, JOB_WORK_C)?;
    mount(
        c"none",
        data_dir,
        c"tmpfs",
        MountFlags::RDONLY | MountFlags::NOSUID | MountFlags::NODEV | MountFlags::NOEXEC,
        c"size=4k,mode=0755",
    )?;
    // From the view: the real path may be under the data directory just hidden.
    mount_bind(JOB_WORK_TMP_C, c"/tmp")?;
    rustix::process::chdir(JOB_WORK_C)?;
    Ok(())
}

/// Writes one of the process's own id-map files (no allocation: the path is a literal).
fn write_proc(path: &CStr, contents: &[u8]) -> io::Result<()> {
    let fd = rustix::fs::open(path, OFlags::WRONLY | OFlags::CLOEXEC, Mode::empty())?;
    rustix::io::write(&fd, contents)?;
    Ok(())
}

/// A job uid, held (its lock file locked) until dropped.
pub(crate) struct UidClaim {
    pub(crate) uid: u32,
    _lock: OwnedFd,
}

impl UidClaim {
    /// Claims a uid no other job on this machine holds, starting at a random one.
    fn take() -> Result<UidClaim, SandboxError> {
        let span = JOB_UIDS.end - JOB_UIDS.start;
        let start = (RandomState::new().hash_one(std::process::id()) % u64::from(span)) as u32;
        for i in 0..CLAIM_TRIES {
            let uid = JOB_UIDS.start + (start + i) % span;
            let path = format!("{CLAIMS_DIR}/{uid}");
            let lock = rustix::fs::open(
                path.as_str(),
                OFlags::RDWR | OFlags::CREATE | OFlags::CLOEXEC,
                Mode::from_raw_mode(0o600),
            )
            .map_err(|e| SandboxError::Prepare(format!("{path}: {e}")))?;
            if rustix::fs::flock(&lock, FlockOperation::NonBlockingLockExclusive).is_ok() {
                return Ok(UidClaim { uid, _lock: lock });
            }
        }
        Err(SandboxError::NoUid { tried: CLAIM_TRIES })
    }

    /// SIGKILLs every process of this uid (the job's leftovers), from a short-lived child that
    /// takes the uid: `kill(-1)` then reaches exactly those.
    pub(crate) fn kill_all(&self) {
        let uid = self.uid;
        // SAFETY: the child makes raw system calls only (setresuid, kill, _exit): no allocation,
        // no locks, nothing of the parent's threads.
        #[allow(unsafe_code)]
        let pid = unsafe { libc::fork() };
        match pid {
            -1 => {
                tracing::warn!(uid, error = %io::Error::last_os_error(), "cannot fork to kill a job's leftover processes");
            }
            0 => {
                #[allow(unsafe_code)]
                // SAFETY: see above; `_exit` never returns.
                unsafe {
                    if libc::syscall(libc::SYS_setresuid, uid, uid, uid) == 0 {
                        for _ in 0..KILL_SWEEPS {
                            // -1: nothing of the uid is left (only the zombies it signals).
                            if libc::kill(-1, libc::SIGKILL) != 0 {
                                break;
                            }
                        }
                    }
                    libc::_exit(0);
                }
            }
            child => loop {
                let mut status = 0;
                // SAFETY: waits for the child forked above; `status` is a valid out pointer.
                #[allow(unsafe_code)]
                let rc = unsafe { libc::waitpid(child, &mut status, 0) };
                if rc != -1 || io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
                    break;
                }
            },
        }
    }
}

/// The part of a job's working directory that stays the node's (read-only to the job): its
/// fabric inputs (`noodle run --read`).
pub(crate) const READ_ONLY_DIR: &str = "fabric";

/// Gives `dir` and everything in it but [`READ_ONLY_DIR`] to `uid` (and the same gid); `dir`
/// becomes 0700.
fn give_tree(dir: &Path, uid: u32) -> io::Result<()> {
    let mut stack = vec![dir.to_path_buf()];
    let inputs = dir.join(READ_ONLY_DIR);
    while let Some(path) = stack.pop() {
        if path == inputs {
            // Stays the node's: the job may read its inputs, not change them.
            continue;
        }
        std::os::unix::fs::lchown(&path, Some(uid), Some(uid))?;
        if path.is_dir() && !path.is_symlink() {
            for entry in std::fs::read_dir(&path)? {
                stack.push(entry?.path());
            }
        }
    }
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
}

/// Makes `run` ([`RUN_DIR`]) passable by every job, its `job-uids` ([`CLAIMS_DIR`]) the
/// node's alone and its `work` ([`JOB_WORK`]) a mount point jobs may pass, whatever made them
/// before and under whatever umask.
pub(crate) fn prepare_run_dir(run: &Path) -> Result<(), SandboxError> {
    for (dir, mode) in [
        (run.to_path_buf(), 0o755),
        (run.join("job-uids"), 0o700),
        (run.join("work"), 0o755),
    ] {
        std::fs::create_dir_all(&dir)
            .and_then(|()| std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(mode)))
            .map_err(|e| SandboxError::Prepare(format!("{}: {e}", dir.display())))?;
    }
    Ok(())
}

/// Checks once that this process may create a user namespace (some distributions forbid it to
/// unprivileged users).
fn user_namespaces_work() -> Result<(), SandboxError> {
    let mut probe = std::process::Command::new("/bin/true");
    // SAFETY: a raw system call in the forked child.
    #[allow(unsafe_code)]
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut probe, || {
            rustix::thread::unshare_unsafe(UnshareFlags::NEWUSER).map_err(io::Error::from)
        });
    }
    match probe.status() {
        Ok(status) if status.success() => Ok(()),
        Ok(status) => Err(SandboxError::Prepare(format!(
            "a user namespace probe failed ({status})"
        ))),
        Err(e) => Err(SandboxError::Prepare(format!(
            "this user cannot create user namespaces: {e}"
        ))),
    }
}

/// The bytes `dir` takes on disk, or `None` once past `max_bytes` or [`DISK_WALK_ENTRIES`]
/// entries (a job that makes that many files is over any bound that matters).
pub(crate) fn usage_within(dir: &Path, max_bytes: u64) -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    let mut total = 0u64;
    let mut entries = 0usize;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(path) = stack.pop() {
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            continue; // removed meanwhile
        };
        total = total.saturating_add(meta.blocks().saturating_mul(512));
        entries += 1;
        if total > max_bytes || entries > DISK_WALK_ENTRIES {
            return None;
        }
        if meta.is_dir()
            && let Ok(list) = std::fs::read_dir(&path)
        {
            stack.extend(list.filter_map(|e| e.ok()).map(|e| e.path()));
        }
    }
    Some(total)
}

/// Most entries one check of a working directory looks at.
pub(crate) const DISK_WALK_ENTRIES: usize = 200_000;
