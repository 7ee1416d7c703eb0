//! `noodle bench`: microbenchmarks of the transport, the control plane and `noodle run`, next to
//! this machine's own limits.
//!
//! Absolute numbers drift on shared machines, so every hardware-bound row also says how it
//! compares with the matching limit measured in the same run: throughput rows as a fraction of
//! the limit (1.0 = as fast as the limit), latency rows as a multiple of it (1.0 = as fast).
//!
//! [`run`] measures and returns [`Row`]s; [`render`] makes the human table. This crate never
//! prints: the binary decides what goes to stdout (`noodle bench --json` serialises the rows).
//! The `noodle run` rows start real `noodle up` processes of [`BenchOptions::noodle_exe`].
#![forbid(unsafe_code)]
#![warn(clippy::print_stdout, clippy::print_stderr)]

mod control;
mod error;
mod fabric;
mod jobs;
mod mount;

pub use error::BenchError;

use bytes::Bytes;
use noodle_link::Peer;
use noodle_link::{
    JoinPeer, Link, LinkConfig, LinkEvent, RemoteError, Service, ServiceFuture, TlsMaterial,
};
use noodle_security::{ClusterCa, NodeKey};
use serde::Serialize;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

/// What to measure and where.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// Fewer iterations: finishes in well under 30 s.
    pub quick: bool,
    /// The data directory: scratch files, the benchmark control plane's databases and the
    /// benchmark nodes' data directories go into a temporary directory in it (its disk is the
    /// one measured), removed at the end.
    pub data_dir: PathBuf,
    /// The `noodle` binary: the `noodle run` rows start two `noodle up` nodes and run
    /// `noodle run -- true` with it.
    pub noodle_exe: PathBuf,
}

/// One measured row.
///
/// Its JSON form (`noodle bench --json`) is a public contract: `name`, `unit`, `median`, `p99`,
/// `ratio_to_limit`, in this order.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub name: String,
    pub unit: &'static str,
    pub median: f64,
    pub p99: f64,
    /// Median divided by the median of this row's limit row, if it has one.
    pub ratio_to_limit: Option<f64>,
    /// A reference row: this machine's own limit, not a measurement of Noodle.
    #[serde(skip)]
    pub is_limit: bool,
}

/// A row that measures one of this machine's limits.
fn limit_row(name: &str, unit: &'static str, samples: Vec<f64>) -> Row {
    Row {
        is_limit: true,
        ..row(name, unit, samples, None)
    }
}

fn row(name: &str, unit: &'static str, mut samples: Vec<f64>, limit: Option<&Row>) -> Row {
    samples.sort_by(|a, b| a.total_cmp(b));
    let pick = |q: f64| {
        if samples.is_empty() {
            return 0.0;
        }
        let i = ((samples.len() as f64 - 1.0) * q).round() as usize;
        samples[i.min(samples.len() - 1)]
    };
    let median = pick(0.5);
    // For throughput the bad tail is the low end: p99 is the 1st percentile of the rates.
    let p99 = if unit.ends_with("/s") {
        pick(0.01)
    } else {
        pick(0.99)
    };
    Row {
        name: name.to_string(),
        unit,
        median,
        p99,
        ratio_to_limit: limit.filter(|l| l.median > 0.0).map(|l| median / l.median),
        is_limit: false,
    }
}

struct Sizes {
    rtt_iters: usize,
    bulk_runs: usize,
    bulk_bytes: usize,
    handshakes: usize,
    memcpy_runs: usize,
    tcp_runs: usize,
    tcp_bytes: usize,
    fsyncs: usize,
}

/// Runs every benchmark, one after the other, and returns the rows: Noodle's first, then this
/// machine's limits.
///
/// Blocks threads of its own (each benchmark node runs on its own thread and runtime, as two
/// processes would), so the caller's runtime only waits.
pub async fn run(opts: &BenchOptions) -> Result<Vec<Row>, BenchError> {
    let quick = opts.quick;
    let data_dir = opts.data_dir.as_path();
    let s = if quick {
        Sizes {
            rtt_iters: 2000,
            bulk_runs: 8,
            bulk_bytes: 64 << 20,
            handshakes: 60,
            memcpy_runs: 10,
            tcp_runs: 8,
            tcp_bytes: 128 << 20,
            fsyncs: 50,
        }
    } else {
        Sizes {
            rtt_iters: 20_000,
            bulk_runs: 20,
            bulk_bytes: 256 << 20,
            handshakes: 300,
            memcpy_runs: 30,
            tcp_runs: 20,
            tcp_bytes: 512 << 20,
            fsyncs: 300,
        }
    };
    std::fs::create_dir_all(data_dir).map_err(|e| {
        BenchError::io(format!("creating data directory {}", data_dir.display()), e)
    })?;
    let scratch = tempfile::tempdir_in(data_dir)
        .map_err(|e| BenchError::io("creating a scratch file in the data directory", e))?;

    // Limits of this machine.
    let (memcpy, tcp_bw, tcp_rtt, fsync) = {
        let path = scratch.path().to_path_buf();
        let (memcpy_runs, tcp_runs, tcp_bytes, rtt_iters, fsyncs) = (
            s.memcpy_runs,
            s.tcp_runs,
            s.tcp_bytes,
            s.rtt_iters,
            s.fsyncs,
        );
        tokio::task::spawn_blocking(move || -> Result<_, BenchError> {
            Ok((
                limit_row("memcpy", "GB/s", memcpy_gbps(memcpy_runs)),
                limit_row(
                    "tcp_loopback_throughput",
                    "MB/s",
                    tcp_mbps(tcp_runs, tcp_bytes)?,
                ),
                limit_row("tcp_loopback_rtt", "us", tcp_rtt_us(rtt_iters)?),
                limit_row("datadir_fsync_latency", "us", fsync_us(&path, fsyncs)?),
            ))
        })
        .await??
    };

    // The link between two nodes on loopback, each node on its own thread and runtime as two
    // processes would be, so that the measurement is not one scheduler juggling both ends.
    let sizes = (s.rtt_iters, s.bulk_runs, s.bulk_bytes, s.handshakes);
    let (rtts, bulk, handshakes) = std::thread::spawn(move || link_bench(sizes))
        .join()
        .map_err(|_| BenchError::Panicked("link benchmark thread"))??;

    // The control plane: three Raft members on loopback, their databases in the data directory.
    let control_sizes = if quick {
        control::Sizes {
            commits: 300,
            batch_runs: 3,
            batch_commits: 5000,
            auth_runs: 5,
            revocations: 20,
        }
    } else {
        control::Sizes {
            commits: 2000,
            batch_runs: 5,
            batch_commits: 20_000,
            auth_runs: 15,
            revocations: 100,
        }
    };
    let control_dir = scratch.path().to_path_buf();
    let control = std::thread::spawn(move || control::run(&control_dir, control_sizes))
        .join()
        .map_err(|_| BenchError::Panicked("control-plane benchmark thread"))??;

    // `noodle run`: two real nodes, jobs on the remote one.
    let jobs_sizes = if quick {
        jobs::Sizes {
            latency_runs: 20,
            throughput_runs: 2,
            throughput_jobs: 200,
        }
    } else {
        jobs::Sizes {
            latency_runs: 100,
            throughput_runs: 5,
            throughput_jobs: 500,
        }
    };
    let jobs_dir = scratch.path().to_path_buf();
    let exe = opts.noodle_exe.clone();
    let jobs = std::thread::spawn(move || jobs::run(&exe, &jobs_dir, jobs_sizes))
        .join()
        .map_err(|_| BenchError::Panicked("jobs benchmark thread"))??;

    // The memory fabric: two real nodes, every version durable on both.
    let fabric_sizes = if quick {
        fabric::Sizes {
            small_latency: 30,
            small_puts: 160,
            small_gets: 800,
            large_bytes: 64 << 20,
            large_runs: 2,
        }
    } else {
        fabric::Sizes {
            small_latency: 200,
            small_puts: 1000,
            small_gets: 5000,
            large_bytes: 256 << 20,
            large_runs: 3,
        }
    };
    let fabric_dir = scratch.path().to_path_buf();
    let exe = opts.noodle_exe.clone();
    let fabric = std::thread::spawn(move || fabric::run(&exe, &fabric_dir, fabric_sizes))
        .join()
        .map_err(|_| BenchError::Panicked("fabric benchmark thread"))??;

    // `noodle mount`: a large version read through a real FUSE mount. Without FUSE here the
    // row is left out, with a warning that says why.
    let mount_sizes = if quick {
        mount::Sizes {
            bytes: 64 << 20,
            runs: 2,
        }
    } else {
        mount::Sizes {
            bytes: 256 << 20,
            runs: 3,
        }
    };
    let mount_dir = scratch.path().to_path_buf();
    let exe = opts.noodle_exe.clone();
    let mount_read = std::thread::spawn(move || mount::run(&exe, &mount_dir, mount_sizes))
        .join()
        .map_err(|_| BenchError::Panicked("mount benchmark thread"))?
        .map(|mbps| row("fabric_mount_read", "MB/s", mbps, None));
    if let Err(e) = &mount_read {
        tracing::warn!(error = %e, "no fabric_mount_read row");
    }

    // What the job sandbox adds to one job (`true`, spawned and reaped in this process, on a
    // thread of its own: it runs its own runtime).
    let spawns = if quick { 50 } else { 200 };
    let spawn_dir = scratch.path().to_path_buf();
    let (plain, sandboxed) = std::thread::spawn(move || {
        let plain =
            noodle_jobs::bench::spawn_true_us(&spawn_dir.join("spawn-plain"), false, spawns);
        let sandboxed =
            noodle_jobs::bench::spawn_true_us(&spawn_dir.join("spawn-sandboxed"), true, spawns);
        (plain, sandboxed)
    })
    .join()
    .map_err(|_| BenchError::Panicked("job spawn benchmark thread"))?;
    let plain = limit_row("job_spawn_plain", "us", plain.map_err(BenchError::Failed)?);
    let sandboxed = sandboxed.map(|s| row("job_spawn_sandboxed", "us", s, Some(&plain)));
    if let Err(e) = &sandboxed {
        tracing::warn!(error = %e, "no job_spawn_sandboxed row");
    }

    let link_bulk = row("link_bulk_throughput", "MB/s", bulk, Some(&tcp_bw));
    let mut rows = vec![
        row("link_rtt", "us", rtts, Some(&tcp_rtt)),
        link_bulk.clone(),
        row("link_pq_handshakes", "handshakes/s", handshakes, None),
        row(
            "control_commit_latency",
            "us",
            control.commit_us,
            Some(&fsync),
        ),
        row(
            "control_batched_commits",
            "commits/s",
            control.batched_per_s,
            None,
        ),
        row(
            "cap_authorisations",
            "authorisations/s",
            control.authorisations_per_s,
            None,
        ),
        row("revocation_everywhere", "ms", control.revocation_ms, None),
        row("node_remove_everywhere", "ms", control.removal_ms, None),
        row("run_true_latency", "ms", jobs.run_true_ms, None),
        row("tiny_jobs_per_node", "jobs/s", jobs.jobs_per_s, None),
        row("fabric_put_small_latency", "ms", fabric.put_small_ms, None),
        row("fabric_small_puts", "puts/s", fabric.puts_per_s, None),
        row(
            "fabric_small_gets_cached",
            "gets/s",
            fabric.gets_per_s,
            None,
        ),
        row(
            "fabric_large_put",
            "MB/s",
            fabric.large_put_mbps,
            Some(&link_bulk),
        ),
        row(
            "fabric_large_get_local",
            "GB/s",
            fabric.large_get_gbps,
            Some(&memcpy),
        ),
        row(
            "fabric_large_get_remote",
            "MB/s",
            fabric.large_get_remote_mbps,
            Some(&link_bulk),
        ),
        row(
            "fabric_large_put_local",
            "MB/s",
            fabric.large_put_local_mbps,
            None,
        ),
    ];
    rows.extend(mount_read.ok());
    rows.extend(sandboxed.ok());
    rows.extend([plain, memcpy, tcp_bw, tcp_rtt, fsync]);
    Ok(rows)
}

/// The human table of `noodle bench`, one line per row, then a line that says how to read the
/// VS LIMIT column.
pub fn render(rows: &[Row]) -> String {
    use std::fmt::Write;
    let mut out = format!(
        "{:<26} {:>12} {:>12}  {:<13} {}\n",
        "METRIC", "MEDIAN", "P99", "UNIT", "VS LIMIT"
    );
    for r in rows {
        let ratio = match (r.ratio_to_limit, r.is_limit) {
            (Some(x), _) => format!("{x:.2}x"),
            (None, true) => "limit".into(),
            (None, false) => "-".into(),
        };
        let _ = writeln!(
            out,
            "{:<26} {:>12.2} {:>12.2}  {:<13} {}",
            r.name, r.median, r.p99, r.unit, ratio
        );
    }
    out.push_str("throughput rows: fraction of the limit; latency rows: multiple of the limit\n");
    out
}

/// A current-thread runtime for one benchmark thread.
fn current_thread_runtime() -> Result<tokio::runtime::Runtime, BenchError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| BenchError::io("starting a benchmark runtime", e))
}

type LinkSamples = (Vec<f64>, Vec<f64>, Vec<f64>);

/// Runs node B on a thread of its own and measures from node A on the calling thread.
fn link_bench(
    (rtt_iters, bulk_runs, bulk_bytes, handshake_count): (usize, usize, usize, usize),
) -> Result<LinkSamples, BenchError> {
    let ca = Arc::new(ClusterCa::generate("bench")?);
    let (addr_tx, addr_rx) = std::sync::mpsc::channel();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let ca_b = ca.clone();
    let server = std::thread::spawn(move || -> Result<(), BenchError> {
        let rt = current_thread_runtime()?;
        rt.block_on(async move {
            let b = bench_link(&ca_b, "bench-b")?;
            let _ = addr_tx.send(b.local_addr());
            let _ = stop_rx.await;
            b.shutdown().await;
            Ok(())
        })
    });
    let to: SocketAddr = addr_rx
        .recv()
        .map_err(|_| BenchError::Failed("benchmark peer failed to start".into()))?;
    let rt = current_thread_runtime()?;
    let result = rt.block_on(async move {
        let a = bench_link(&ca, "bench-a")?;
        a.request(to, "echo", b"warm-up").await?;
        let payload = [7u8; 64];
        let mut rtts = Vec::with_capacity(rtt_iters);
        for _ in 0..rtt_iters {
            let t = Instant::now();
            a.request(to, "echo", &payload).await?;
            rtts.push(t.elapsed().as_secs_f64() * 1e6);
        }
        let mut bulk = Vec::with_capacity(bulk_runs);
        let chunk = Bytes::from(vec![0x5au8; 1 << 20]);
        for _ in 0..bulk_runs {
            let t = Instant::now();
            let (mut send, mut recv) = a.open_stream(to, "sink").await?;
            let mut sent = 0;
            while sent < bulk_bytes {
                send.write_chunk(chunk.clone()).await?;
                sent += chunk.len();
            }
            send.finish()?;
            let answer = recv.read_to_end(64).await?;
            let got = u64::from_be_bytes(
                answer
                    .as_slice()
                    .try_into()
                    .map_err(|_| BenchError::Failed("bad sink answer".into()))?,
            );
            if got as usize != sent {
                return Err(BenchError::Failed(format!(
                    "sink received {got} of {sent} bytes"
                )));
            }
            bulk.push(sent as f64 / 1e6 / t.elapsed().as_secs_f64());
        }
        let mut handshakes = Vec::with_capacity(handshake_count);
        for _ in 0..handshake_count {
            let took = a.probe_handshake(to).await?;
            handshakes.push(1.0 / took.as_secs_f64());
        }
        a.shutdown().await;
        Ok((rtts, bulk, handshakes))
    });
    let _ = stop_tx.send(());
    server
        .join()
        .map_err(|_| BenchError::Panicked("benchmark peer"))??;
    result
}

struct BenchService;

impl Service for BenchService {
    fn call(&self, _from: Peer, _method: &str, body: Bytes) -> ServiceFuture {
        Box::pin(async move { Ok(body.to_vec()) })
    }
    fn join(&self, _peer: JoinPeer, _body: Bytes) -> ServiceFuture {
        Box::pin(async { Err(RemoteError::new(RemoteError::FORBIDDEN, "bench")) })
    }
    fn datagram(&self, _from: &Peer, _data: Bytes) {}
    fn event(&self, _event: LinkEvent) {}
    fn is_stream(&self, method: &str) -> bool {
        method == "sink"
    }
    fn stream(
        &self,
        _from: Peer,
        _method: &str,
        mut send: quinn::SendStream,
        mut recv: quinn::RecvStream,
    ) -> futures_util::future::BoxFuture<'static, ()> {
        Box::pin(async move {
            let mut total: u64 = 0;
            while let Ok(Some(chunk)) = recv.read_chunk(usize::MAX, true).await {
                total += chunk.bytes.len() as u64;
            }
            let _ = send.write_all(&total.to_be_bytes()).await;
            let _ = send.finish();
            let _ = send.stopped().await;
        })
    }
}

fn bench_link(ca: &ClusterCa, name: &str) -> Result<Link, BenchError> {
    bench_link_with(ca, name, Arc::new(BenchService))
}

/// A link on a loopback port with a certificate of `ca` for node `name`.
fn bench_link_with(
    ca: &ClusterCa,
    name: &str,
    service: Arc<dyn Service>,
) -> Result<Link, BenchError> {
    let key = NodeKey::generate()?;
    let tls = TlsMaterial {
        ca: ca.cert_der().clone(),
        cert: ca.issue_node_cert(name, &key.public_key_raw(), noodle_security::NODE_CERT_TTL)?,
        key: key.private_key_der(),
    };
    Ok(Link::bind(
        LinkConfig::new(SocketAddr::from((Ipv4Addr::LOCALHOST, 0))),
        &tls,
        service,
    )?)
}

fn memcpy_gbps(runs: usize) -> Vec<f64> {
    const BYTES: usize = 64 << 20;
    let src = vec![1u8; BYTES];
    let mut dst = vec![0u8; BYTES];
    (0..runs)
        .map(|_| {
            let t = Instant::now();
            dst.copy_from_slice(std::hint::black_box(&src));
            std::hint::black_box(&dst);
            BYTES as f64 / 1e9 / t.elapsed().as_secs_f64()
        })
        .collect()
}

fn tcp_mbps(runs: usize, bytes: usize) -> Result<Vec<f64>, BenchError> {
    let io = |e| BenchError::io("loopback TCP throughput", e);
    let mut out = Vec::with_capacity(runs);
    for _ in 0..runs {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").map_err(io)?;
        let addr = listener.local_addr().map_err(io)?;
        let reader = std::thread::spawn(move || -> std::io::Result<usize> {
            let (mut s, _) = listener.accept()?;
            let mut buf = vec![0u8; 1 << 20];
            let mut total = 0;
            loop {
                let n = s.read(&mut buf)?;
                if n == 0 {
                    break;
                }
                total += n;
            }
            s.write_all(&[1])?;
            Ok(total)
        });
        let buf = vec![0x5au8; 1 << 20];
        let t = Instant::now();
        let mut s = std::net::TcpStream::connect(addr).map_err(io)?;
        let mut sent = 0;
        while sent < bytes {
            s.write_all(&buf).map_err(io)?;
            sent += buf.len();
        }
        s.shutdown(std::net::Shutdown::Write).map_err(io)?;
        let mut ack = [0u8; 1];
        s.read_exact(&mut ack).map_err(io)?;
        out.push(sent as f64 / 1e6 / t.elapsed().as_secs_f64());
        let got = reader
            .join()
            .map_err(|_| BenchError::Panicked("tcp reader"))?
            .map_err(io)?;
        if got != sent {
            return Err(BenchError::Failed(format!(
                "tcp reader got {got} of {sent}"
            )));
        }
    }
    Ok(out)
}

fn tcp_rtt_us(iters: usize) -> Result<Vec<f64>, BenchError> {
    let io = |e| BenchError::io("loopback TCP round trips", e);
    let listener = std::net::TcpListener::bind("127.0.0.1:0").map_err(io)?;
    let addr = listener.local_addr().map_err(io)?;
    let echo = std::thread::spawn(move || -> std::io::Result<()> {
        let (mut s, _) = listener.accept()?;
        s.set_nodelay(true)?;
        let mut buf = [0u8; 64];
        while s.read_exact(&mut buf).is_ok() {
            s.write_all(&buf)?;
        }
        Ok(())
    });
    let mut s = std::net::TcpStream::connect(addr).map_err(io)?;
    s.set_nodelay(true).map_err(io)?;
    let mut buf = [7u8; 64];
    let mut out = Vec::with_capacity(iters);
    for _ in 0..iters {
        let t = Instant::now();
        s.write_all(&buf).map_err(io)?;
        s.read_exact(&mut buf).map_err(io)?;
        out.push(t.elapsed().as_secs_f64() * 1e6);
    }
    drop(s);
    let _ = echo.join();
    Ok(out)
}

fn fsync_us(dir: &Path, iters: usize) -> Result<Vec<f64>, BenchError> {
    let path = dir.join("fsync-probe");
    let io = |e| BenchError::io(format!("fsync probe {}", path.display()), e);
    let mut f = std::fs::File::create(&path).map_err(io)?;
    let block = [0u8; 4096];
    let mut out = Vec::with_capacity(iters);
    for _ in 0..iters {
        let t = Instant::now();
        f.write_all(&block).map_err(io)?;
        f.sync_data().map_err(io)?;
        out.push(t.elapsed().as_secs_f64() * 1e6);
    }
    Ok(out)
}

#[cfg(test)]
mod tests;
