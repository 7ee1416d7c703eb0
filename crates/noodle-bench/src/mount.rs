//! The `noodle mount` row, against one real `noodle up` process and a real FUSE mount of the
//! `noodle` binary it is given:
//!
//! - `fabric_mount_read`: the first sequential read of a large version through the mount
//!   (`cat`-like, 1 MiB reads): the mount fetches the version from the node (every chunk
//!   verified) into its cache, and the kernel reads it through FUSE. MB/s.
//!
//! It needs FUSE (`/dev/fuse`, and `fusermount3` or root). Where FUSE is unusable it fails
//! with a message saying so, and `run` leaves the row out with a warning instead of failing
//! the whole bench.

use crate::BenchError;
use crate::fabric::{large_file, put};
use crate::jobs::{ready, up};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub(crate) struct Sizes {
    pub(crate) bytes: usize,
    pub(crate) runs: usize,
}

/// How long the mount may take to appear.
const MOUNT_WAIT: Duration = Duration::from_secs(30);

pub(crate) fn run(exe: &Path, scratch: &Path, s: Sizes) -> Result<Vec<f64>, BenchError> {
    fuse_usable()?;
    crate::current_thread_runtime()?.block_on(bench(exe, scratch, s))
}

/// Whether this machine can mount with FUSE at all.
fn fuse_usable() -> Result<(), BenchError> {
    if !Path::new("/dev/fuse").exists() {
        return Err(BenchError::Failed(
            "FUSE is unusable here: /dev/fuse is missing".into(),
        ));
    }
    if Command::new("fusermount3")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_err()
    {
        return Err(BenchError::Failed(
            "FUSE is unusable here: no fusermount3 (Debian's fuse3)".into(),
        ));
    }
    Ok(())
}

/// Whether `dir` is a mount point now.
fn mounted(dir: &Path) -> bool {
    let Ok(table) = std::fs::read_to_string("/proc/mounts") else {
        return false;
    };
    let Some(dir) = dir.to_str() else {
        return false;
    };
    table.lines().any(|l| l.split(' ').nth(1) == Some(dir))
}

/// A `noodle mount` process; unmounted and ended on drop.
struct MountProcess {
    child: Child,
    dir: PathBuf,
}

impl Drop for MountProcess {
    fn drop(&mut self) {
        if mounted(&self.dir) {
            let _ = Command::new("fusermount3")
                .args(["-u", "-z", "-q", "--"])
                .arg(&self.dir)
                .status();
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn mount(exe: &Path, data_dir: &Path, scratch: &Path) -> Result<MountProcess, BenchError> {
    let dir = scratch.join("mount-point");
    std::fs::create_dir_all(&dir).map_err(|e| BenchError::io("making the mount point", e))?;
    let log_path = scratch.join("mount.log");
    let log = std::fs::File::create(&log_path)
        .map_err(|e| BenchError::io(format!("creating {}", log_path.display()), e))?;
    let child = Command::new(exe)
        .arg("--data-dir")
        .arg(data_dir)
        .arg("mount")
        .arg(&dir)
        .arg("--cache-dir")
        .arg(scratch)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .map_err(|e| BenchError::io("starting noodle mount", e))?;
    let mut m = MountProcess { child, dir };
    let deadline = Instant::now() + MOUNT_WAIT;
    while !mounted(&m.dir) {
        let exited = m
            .child
            .try_wait()
            .map_err(|e| BenchError::io("watching noodle mount", e))?;
        if exited.is_some() || Instant::now() > deadline {
            let why = std::fs::read_to_string(&log_path).unwrap_or_default();
            return Err(BenchError::Failed(format!(
                "FUSE is unusable here: noodle mount did not mount: {}",
                why.trim()
            )));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(m)
}

/// Reads `path` from start to end in 1 MiB reads; returns the bytes read.
fn read_through(path: &Path) -> Result<u64, BenchError> {
    let io = |e| BenchError::io(format!("reading {} through the mount", path.display()), e);
    let mut f = std::fs::File::open(path).map_err(io)?;
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    loop {
        let n = f.read(&mut buf).map_err(io)?;
        if n == 0 {
            return Ok(total);
        }
        total += n as u64;
    }
}

async fn bench(exe: &Path, scratch: &Path, s: Sizes) -> Result<Vec<f64>, BenchError> {
    let node = up(exe, &scratch.join("mount-node"), "mount-node", &[])?;
    let client = ready(&node.dir, 1).await?;
    let files = scratch.join("mount-files");
    std::fs::create_dir_all(&files).map_err(|e| BenchError::io("bench files", e))?;
    for run in 0..s.runs {
        let f = files.join(format!("large-{run}"));
        large_file(&f, s.bytes, run as u64)?;
        put(&client, &f, &format!("/bench/mount/{run}")).await?;
        let _ = std::fs::remove_file(&f);
    }
    let m = mount(exe, &node.dir, scratch)?;
    let mut mbps = Vec::with_capacity(s.runs);
    for run in 0..s.runs {
        let path = m.dir.join(format!("bench/mount/{run}"));
        let t = Instant::now();
        // Blocking on this bench thread's own runtime is fine: the node and the mount are
        // other processes.
        let n = read_through(&path)?;
        if n != s.bytes as u64 {
            return Err(BenchError::Failed(format!(
                "read {n} bytes of {} through the mount",
                s.bytes
            )));
        }
        mbps.push(n as f64 / t.elapsed().as_secs_f64() / 1e6);
    }
    drop(m);
    drop(node);
    Ok(mbps)
}
