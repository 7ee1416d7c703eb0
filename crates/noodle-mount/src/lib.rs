//! `noodle mount DIR`: the memory fabric as an ordinary directory, through FUSE (fuser, mounted
//! with its pure-Rust mount: the `mount` system call as root, `fusermount3` otherwise; no
//! libfuse is linked).
//!
//! The file system ([`fs`]) is a client of the local node's API like any other command: it
//! reads and writes with the same calls as `noodle get` and `noodle put`, with the caller's
//! credential, so the node's rights checks and audit apply unchanged. A file becomes a new
//! version of its path when it is closed after writing; reads are served from a local copy of
//! the version opened, and the kernel keeps its page cache across opens of the same version.
//!
//! This crate never prints and never exits: [`mount`] returns a [`Mounted`] the binary waits
//! on and unmounts. Its pure parts (the inode table, names and listings, the cache's index)
//! are sans-IO and tested on their own.
#![forbid(unsafe_code)]

mod cache;
mod errors;
mod fs;
mod inodes;
mod names;

use noodle_api::Client;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// How long [`Mounted::unmount`] waits for the kernel to end the session.
const UNMOUNT_WAIT: Duration = Duration::from_secs(5);
/// How often [`Mounted::ended`] looks whether the session has ended.
const ENDED_POLL: Duration = Duration::from_millis(100);

/// How to mount.
#[derive(Debug, Clone)]
pub struct MountOptions {
    /// Where the mount keeps fetched versions and files being written (a fresh temporary
    /// directory inside it, removed at unmount); the system's temporary directory if `None`.
    pub cache_dir: Option<PathBuf>,
    /// Bytes of fetched versions kept for later opens (versions open for reading stay even
    /// beyond it).
    pub cache_bytes_max: u64,
    /// Threads answering the kernel: a slow fetch or upload holds one of them.
    pub threads: usize,
}

impl Default for MountOptions {
    fn default() -> MountOptions {
        MountOptions {
            cache_dir: None,
            cache_bytes_max: 4 << 30,
            threads: 4,
        }
    }
}

/// Why the fabric could not be mounted (or unmounted). Each message is one line that says
/// what to do.
#[derive(Debug, thiserror::Error)]
pub enum MountError {
    #[error(
        "{} does not exist: make the directory first (mkdir -p {})",
        .0.display(), .0.display()
    )]
    Missing(PathBuf),
    #[error("{} is not a directory", .0.display())]
    NotDirectory(PathBuf),
    #[error(
        "{} is busy: something is already mounted there (unmount it first: fusermount3 -u {})",
        .0.display(), .0.display()
    )]
    Busy(PathBuf),
    #[error(
        "{} is a mount whose program is gone: unmount it with `fusermount3 -u {}`",
        .0.display(), .0.display()
    )]
    Dead(PathBuf),
    #[error("{} is not empty: mount onto an empty directory", .0.display())]
    NotEmpty(PathBuf),
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "cannot mount: /dev/fuse is missing (load the fuse module; in a container, pass the \
         device /dev/fuse)"
    )]
    NoFuseDevice,
    #[error("cannot mount on {}: {detail}", dir.display())]
    Mount { dir: PathBuf, detail: String },
    #[error("cannot make the mount's cache directory: {0}")]
    Cache(std::io::Error),
    #[error("unmounting {}: {source}", dir.display())]
    Unmount {
        dir: PathBuf,
        source: std::io::Error,
    },
}

/// Checks that `dir` can take a mount: it exists, is a directory, nothing is mounted on it, it
/// is empty, and this machine has `/dev/fuse`. Returns its canonical path.
pub fn check_mount_point(dir: &Path) -> Result<PathBuf, MountError> {
    let meta = match std::fs::metadata(dir) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(MountError::Missing(dir.to_path_buf()));
        }
        Err(e) if e.raw_os_error() == Some(libc::ENOTCONN) => {
            return Err(MountError::Dead(dir.to_path_buf()));
        }
        Err(source) => {
            return Err(MountError::Read {
                path: dir.to_path_buf(),
                source,
            });
        }
    };
    if !meta.is_dir() {
        return Err(MountError::NotDirectory(dir.to_path_buf()));
    }
    let read = |path: &Path| {
        let path = path.to_path_buf();
        move |source| MountError::Read { path, source }
    };
    let canonical = dir.canonicalize().map_err(read(dir))?;
    let mountinfo = Path::new("/proc/self/mountinfo");
    let table = std::fs::read_to_string(mountinfo).map_err(read(mountinfo))?;
    if names::mount_points(&table).contains(&canonical) {
        return Err(MountError::Busy(canonical));
    }
    if std::fs::read_dir(&canonical)
        .map_err(read(&canonical))?
        .next()
        .is_some()
    {
        return Err(MountError::NotEmpty(canonical));
    }
    if !Path::new("/dev/fuse").exists() {
        return Err(MountError::NoFuseDevice);
    }
    Ok(canonical)
}

/// Mounts the fabric of `client`'s node on `dir` (checked with [`check_mount_point`] first)
/// and serves it on threads of its own; `runtime` runs the client's calls. Blocks until the
/// kernel has the mount.
pub fn mount(
    client: Client,
    runtime: tokio::runtime::Handle,
    dir: &Path,
    options: MountOptions,
) -> Result<Mounted, MountError> {
    let dir = check_mount_point(dir)?;
    let cache = cache::Cache::new(options.cache_dir.as_deref(), options.cache_bytes_max)
        .map_err(MountError::Cache)?;
    let cache_root = cache.root().to_path_buf();
    let filesystem = fs::FabricFs::new(client, runtime, cache);
    let root = rustix::process::geteuid().is_root();
    let mut config = fuser::Config::default();
    config.mount_options = vec![
        fuser::MountOption::FSName("noodle".into()),
        fuser::MountOption::Subtype("noodle".into()),
        fuser::MountOption::DefaultPermissions,
        fuser::MountOption::NoAtime,
    ];
    if root {
        // fusermount3 unmounts it should this process die without unmounting (SIGKILL); it
        // needs `allow_other`, which only root may always ask for.
        config.mount_options.push(fuser::MountOption::AutoUnmount);
        config.acl = fuser::SessionACL::RootAndOwner;
    }
    config.n_threads = Some(options.threads.max(1));
    let session = fuser::spawn_mount(filesystem, &dir, &config).map_err(|e| {
        let detail = match e.kind() {
            std::io::ErrorKind::NotFound => {
                format!("{e} (is fusermount3 installed? Debian's package is fuse3)")
            }
            std::io::ErrorKind::PermissionDenied => {
                format!("{e} (run as root, or give this user /dev/fuse and fusermount3: fuse3)")
            }
            _ => e.to_string(),
        };
        MountError::Mount {
            dir: dir.clone(),
            detail: detail.trim().to_string(),
        }
    })?;
    tracing::info!(dir = %dir.display(), "mounted the fabric");
    Ok(Mounted {
        session: Some(session),
        dir,
        cache_root,
    })
}

/// How an unmount went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unmounted {
    /// Unmounted, every handle closed.
    Clean,
    /// Programs still used it: detached from the directory, and gone once they let go (or
    /// when this process ends).
    Detached,
}

/// A mounted fabric. Dropping it unmounts too, without waiting.
pub struct Mounted {
    session: Option<fuser::BackgroundSession>,
    dir: PathBuf,
    cache_root: PathBuf,
}

impl Mounted {
    /// The mount point (canonical).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Whether the kernel still talks to this mount.
    pub fn is_running(&self) -> bool {
        self.session
            .as_ref()
            .is_some_and(|s| !s.guard.is_finished())
    }

    /// Returns once the mount has ended from outside (`fusermount3 -u DIR`, `umount DIR`).
    pub async fn ended(&self) {
        while self.is_running() {
            tokio::time::sleep(ENDED_POLL).await;
        }
    }

    /// Unmounts and waits (a few seconds at most) for the session to end. A mount still in use
    /// is detached lazily. Blocks: call it off the async threads.
    pub fn unmount(mut self) -> Result<Unmounted, MountError> {
        let Some(session) = self.session.take() else {
            return Ok(Unmounted::Clean);
        };
        let unmount_error = |source: std::io::Error| MountError::Unmount {
            dir: self.dir.clone(),
            source,
        };
        let mut outcome = Unmounted::Clean;
        if !session.guard.is_finished() {
            use rustix::io::Errno;
            use rustix::mount::{UnmountFlags, unmount};
            match unmount(&self.dir, UnmountFlags::empty()) {
                Ok(()) => {}
                // Ended meanwhile: nothing is mounted there any more.
                Err(Errno::INVAL) => {}
                Err(Errno::BUSY) => {
                    tracing::warn!(dir = %self.dir.display(), "the mount is busy: detaching it");
                    unmount(&self.dir, UnmountFlags::DETACH)
                        .map_err(|e| unmount_error(e.into()))?;
                    outcome = Unmounted::Detached;
                }
                Err(Errno::PERM) => outcome = fusermount_unmount(&self.dir)?,
                Err(e) => return Err(unmount_error(e.into())),
            }
        }
        let deadline = Instant::now() + UNMOUNT_WAIT;
        while !session.guard.is_finished() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        if session.guard.is_finished() {
            if let Err(e) = session.join() {
                tracing::warn!(error = %e, "the mount's session ended with an error");
            }
        } else {
            // Still held by programs that use it; they lose it when this process ends.
            outcome = Unmounted::Detached;
            drop(session);
            let _ = std::fs::remove_dir_all(&self.cache_root);
        }
        Ok(outcome)
    }
}

/// `fusermount3 -u DIR` (and `-z` when busy): how a user who is not root unmounts.
fn fusermount_unmount(dir: &Path) -> Result<Unmounted, MountError> {
    let run = |lazy: bool| {
        let mut c = std::process::Command::new("fusermount3");
        c.arg("-u").arg("-q");
        if lazy {
            c.arg("-z");
        }
        c.arg("--").arg(dir).output()
    };
    let error = |source| MountError::Unmount {
        dir: dir.to_path_buf(),
        source,
    };
    if run(false).map_err(error)?.status.success() {
        return Ok(Unmounted::Clean);
    }
    let out = run(true).map_err(error)?;
    if out.status.success() {
        return Ok(Unmounted::Detached);
    }
    Err(error(std::io::Error::other(
        String::from_utf8_lossy(&out.stderr).trim().to_string(),
    )))
}
