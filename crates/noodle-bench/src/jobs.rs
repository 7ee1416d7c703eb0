//! `noodle bench` rows of `noodle run`: the end-to-end latency of `noodle run -- true` on a
//! remote node, and tiny-job throughput per node.
//!
//! Two real `noodle up` processes (the `noodle` binary the caller names) on loopback, their data directories in the
//! bench's scratch directory: `bench-submit` offers no job slots, `bench-remote` carries the
//! label `bench=remote`, so every job crosses the link. The latency row runs the real CLI
//! (a fresh `noodle run` process each time: argv to exit code), as a user would.

use crate::BenchError;
use futures_util::StreamExt;
use noodle_api::{Client, JobSubmit};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub(crate) struct Sizes {
    pub(crate) latency_runs: usize,
    pub(crate) throughput_runs: usize,
    pub(crate) throughput_jobs: usize,
}

pub(crate) struct Samples {
    pub(crate) run_true_ms: Vec<f64>,
    pub(crate) jobs_per_s: Vec<f64>,
}

/// Jobs in flight at once while submitting the throughput batch.
const SUBMIT_CONCURRENCY: usize = 64;
/// CPU slots the remote node offers: `true` needs almost no CPU, so the slots measure how fast
/// the node turns jobs over, not how many cores it has.
const REMOTE_SLOTS: &str = "32";

pub(crate) struct UpProcess {
    child: Child,
    pub(crate) dir: PathBuf,
}

impl Drop for UpProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub(crate) fn up(
    exe: &Path,
    dir: &Path,
    name: &str,
    extra: &[&str],
) -> Result<UpProcess, BenchError> {
    let log_path = dir.with_extension("log");
    let log = std::fs::File::create(&log_path)
        .map_err(|e| BenchError::io(format!("creating {}", log_path.display()), e))?;
    let child = Command::new(exe)
        // The founder keeps its owner token beside the bench's scratch directory.
        .env("XDG_CONFIG_HOME", dir.with_extension("config"))
        .arg("--data-dir")
        .arg(dir)
        .args([
            "up",
            "--listen",
            "127.0.0.1:0",
            "--api",
            "127.0.0.1:0",
            "--no-mdns",
            "--name",
            name,
        ])
        .args(extra)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .map_err(|e| BenchError::io("cannot start a bench node", e))?;
    Ok(UpProcess {
        child,
        dir: dir.to_path_buf(),
    })
}

pub(crate) async fn ready(dir: &Path, nodes: usize) -> Result<Client, BenchError> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(client) = Client::from_data_dir(dir)
            && let Ok(s) = client.status().await
            && s.totals.nodes_alive as usize >= nodes
        {
            return Ok(client);
        }
        if Instant::now() > deadline {
            return Err(BenchError::Failed(format!(
                "the bench nodes did not come up (logs next to {})",
                dir.display()
            )));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A single-use join token from the node of `client`, for the bench's second node.
pub(crate) async fn join_token(client: &Client) -> Result<String, BenchError> {
    Ok(client
        .create_token(&noodle_api::TokenRequest {
            ttl_secs: 600,
            no_addresses: false,
            uses: 1,
        })
        .await?
        .token)
}

fn tiny_job() -> JobSubmit {
    JobSubmit {
        command: vec!["true".into()],
        cpus: 1,
        mem_bytes: 0,
        gpus: 0,
        labels: [("bench".to_string(), "remote".to_string())].into(),
        retries: 0,
        files: Vec::new(),
        reads: Vec::new(),
        writes: Vec::new(),
    }
}

pub(crate) fn run(exe: &Path, scratch: &Path, s: Sizes) -> Result<Samples, BenchError> {
    crate::current_thread_runtime()?.block_on(bench(exe, scratch, s))
}

async fn bench(exe: &Path, scratch: &Path, s: Sizes) -> Result<Samples, BenchError> {
    let submit_dir = scratch.join("bench-submit");
    let remote_dir = scratch.join("bench-remote");
    let submitter = up(exe, &submit_dir, "bench-submit", &["--slots", "0"])?;
    let client = ready(&submitter.dir, 1).await?;
    let token = join_token(&client).await?;
    let remote = up(
        exe,
        &remote_dir,
        "bench-remote",
        &[
            "--join",
            &token,
            "--label",
            "bench=remote",
            "--slots",
            REMOTE_SLOTS,
        ],
    )?;
    ready(&remote.dir, 2).await?;
    ready(&submitter.dir, 2).await?;
    // The remote node's slots must have reached the submitter (gossip) before jobs go there.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !client
        .status()
        .await?
        .nodes
        .iter()
        .any(|n| n.name == "bench-remote" && n.slots > 0)
    {
        if Instant::now() > deadline {
            return Err(BenchError::Failed(
                "the remote bench node's slots did not reach the submitting node".into(),
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Warm-up: the remote node must be known to the scheduler and the links open.
    let warm = client.submit_job(&tiny_job()).await?;
    let done = client.wait_job(warm.id, Duration::from_secs(30)).await?;
    if done.state != "succeeded" {
        return Err(BenchError::Failed(format!(
            "the warm-up job ended {}: {:?}",
            done.state, done.error
        )));
    }

    let mut run_true_ms = Vec::with_capacity(s.latency_runs);
    for _ in 0..s.latency_runs {
        let t = Instant::now();
        let status = tokio::process::Command::new(exe)
            .arg("--data-dir")
            .arg(&submitter.dir)
            .args(["run", "--label", "bench=remote", "--", "true"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .status()
            .await
            .map_err(|e| BenchError::io("running `noodle run -- true`", e))?;
        run_true_ms.push(t.elapsed().as_secs_f64() * 1e3);
        if !status.success() {
            return Err(BenchError::Failed(format!(
                "`noodle run -- true` failed: {status}"
            )));
        }
    }

    let mut jobs_per_s = Vec::with_capacity(s.throughput_runs);
    for _ in 0..s.throughput_runs {
        let t = Instant::now();
        let mut submitted = futures_util::stream::iter(0..s.throughput_jobs)
            .map(|_| {
                let client = client.clone();
                async move { client.submit_job(&tiny_job()).await }
            })
            .buffer_unordered(SUBMIT_CONCURRENCY);
        let mut ids = Vec::with_capacity(s.throughput_jobs);
        while let Some(job) = submitted.next().await {
            ids.push(job?.id);
        }
        for id in ids {
            let job = client.wait_job(id, Duration::from_secs(60)).await?;
            if job.state != "succeeded" {
                return Err(BenchError::Failed(format!(
                    "bench job {id} ended {}: {:?}",
                    job.state, job.error
                )));
            }
        }
        jobs_per_s.push(s.throughput_jobs as f64 / t.elapsed().as_secs_f64());
    }
    drop(remote);
    drop(submitter);
    Ok(Samples {
        run_true_ms,
        jobs_per_s,
    })
}
