//! `noodle bench` rows of the memory fabric, through the client library a program would use,
//! against real `noodle up` processes on loopback, two copies of each version
//! (`--fabric-replicas 2`): every version is durable on both (fsynced, committed) before a put
//! returns.
//!
//! - `fabric_put_small_latency`: one client, 1 KiB objects, one at a time (one request each:
//!   `fabric_put_small`);
//! - `fabric_small_puts`: 16 clients at once, 1 KiB objects;
//! - `fabric_small_gets_cached`: 16 clients reading 1 KiB objects the node holds
//!   (`fabric_get_small`: one request each);
//! - `fabric_large_put_local`: one large object on a one-node cluster (upload, fsync, commit);
//! - `fabric_large_put`: one large object, uploaded and copied to another node (a third node
//!   has joined by then, so that one node holds no copy);
//! - `fabric_large_get_local`: that object read back from a node that holds it;
//! - `fabric_large_get_remote`: read through the node that holds no copy (fetched from the
//!   others, every chunk verified).

use crate::BenchError;
use crate::jobs::{join_token, ready, up};
use futures_util::StreamExt;
use noodle_api::fabric::{FabricPut, download_into};
use noodle_api::{ChunkRoute, Client};
use std::io::Write;
use std::path::Path;
use std::time::Instant;

pub(crate) struct Sizes {
    pub(crate) small_latency: usize,
    pub(crate) small_puts: usize,
    pub(crate) small_gets: usize,
    pub(crate) large_bytes: usize,
    pub(crate) large_runs: usize,
}

pub(crate) struct Samples {
    pub(crate) put_small_ms: Vec<f64>,
    pub(crate) puts_per_s: Vec<f64>,
    pub(crate) gets_per_s: Vec<f64>,
    pub(crate) large_put_local_mbps: Vec<f64>,
    pub(crate) large_put_mbps: Vec<f64>,
    pub(crate) large_get_gbps: Vec<f64>,
    pub(crate) large_get_remote_mbps: Vec<f64>,
}

/// Copies of each version in these rows.
const REPLICAS: &str = "2";

/// Clients at once in the concurrent rows.
const CLIENTS: usize = 16;
/// Runs of the concurrent rows.
const RUNS: usize = 3;

pub(crate) fn run(exe: &Path, scratch: &Path, s: Sizes) -> Result<Samples, BenchError> {
    crate::current_thread_runtime()?.block_on(bench(exe, scratch, s))
}

pub(crate) fn failed(what: &str, e: impl std::fmt::Display) -> BenchError {
    BenchError::Failed(format!("{what}: {e}"))
}

/// Uploads `file` and makes it the new version of `path`.
pub(crate) async fn put(client: &Client, file: &Path, path: &str) -> Result<(), BenchError> {
    let to = ChunkRoute::Fabric {
        path: path.to_string(),
    };
    let manifest = noodle_api::upload::upload_file(client, &to, file, |_| {})
        .await
        .map_err(|e| failed("upload", e))?;
    let req = FabricPut {
        manifest: manifest.id().to_hex(),
        tags: Default::default(),
    };
    client
        .fabric_put(path, &req)
        .await
        .map_err(|e| failed("put", e))?;
    Ok(())
}

/// Writes `len` pseudo-random bytes to `path`, 1 MiB at a time.
pub(crate) fn large_file(path: &Path, len: usize, seed: u64) -> Result<(), BenchError> {
    let io = |e| BenchError::io("writing a bench file", e);
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).map_err(io)?);
    let mut x = 0x9e37_79b9_7f4a_7c15u64 ^ seed;
    let mut block = vec![0u8; 1 << 20];
    let mut left = len;
    while left > 0 {
        for b in block.iter_mut() {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            *b = x as u8;
        }
        let n = left.min(block.len());
        f.write_all(&block[..n]).map_err(io)?;
        left -= n;
    }
    f.flush().map_err(io)
}

async fn get(client: &Client, path: &str) -> Result<u64, BenchError> {
    let object = client
        .fabric_object(path, None)
        .await
        .map_err(|e| failed("object", e))?;
    let mut sink = std::io::sink();
    download_into(client, &object, &mut sink, Path::new(path), |_, _| {})
        .await
        .map_err(|e| failed("get", e))?;
    Ok(object.size)
}

/// A 1 KiB object, made its own by `i`, put in one request.
async fn put_small(client: &Client, i: usize, path: &str) -> Result<(), BenchError> {
    let mut bytes = vec![0u8; 1024];
    bytes[..8].copy_from_slice(&(i as u64).to_le_bytes());
    client
        .fabric_put_small(path, bytes, &Default::default())
        .await
        .map_err(|e| failed("put", e))?;
    Ok(())
}

async fn get_small(client: &Client, path: &str) -> Result<(), BenchError> {
    client
        .fabric_get_small(path, None)
        .await
        .map_err(|e| failed("get", e))?;
    Ok(())
}

async fn bench(exe: &Path, scratch: &Path, s: Sizes) -> Result<Samples, BenchError> {
    let files = scratch.join("fabric-files");
    std::fs::create_dir_all(&files).map_err(|e| BenchError::io("bench files", e))?;
    let mut large_put_local_mbps = Vec::with_capacity(s.large_runs);
    {
        let solo = up(exe, &scratch.join("fabric-solo"), "fabric-solo", &[])?;
        let client = ready(&solo.dir, 1).await?;
        for run in 0..s.large_runs {
            let f = files.join("large-solo");
            large_file(&f, s.large_bytes, 1000 + run as u64)?;
            let t = Instant::now();
            put(&client, &f, &format!("/bench/solo/{run}")).await?;
            large_put_local_mbps.push(s.large_bytes as f64 / t.elapsed().as_secs_f64() / 1e6);
            let _ = std::fs::remove_file(&f);
        }
    }
    let a = up(
        exe,
        &scratch.join("fabric-a"),
        "fabric-a",
        &["--fabric-replicas", REPLICAS],
    )?;
    let client = ready(&a.dir, 1).await?;
    let token = join_token(&client).await?;
    let b = up(
        exe,
        &scratch.join("fabric-b"),
        "fabric-b",
        &["--join", &token, "--fabric-replicas", REPLICAS],
    )?;
    ready(&b.dir, 2).await?;
    ready(&a.dir, 2).await?;
    // Warm-up: links open, both nodes' details known, one version written on both.
    put_small(&client, usize::MAX, "/bench/warm").await?;

    let mut put_small_ms = Vec::with_capacity(s.small_latency);
    for i in 0..s.small_latency {
        let t = Instant::now();
        put_small(&client, i, &format!("/bench/latency/{i}")).await?;
        put_small_ms.push(t.elapsed().as_secs_f64() * 1e3);
    }

    let mut puts_per_s = Vec::with_capacity(RUNS);
    let mut gets_per_s = Vec::with_capacity(RUNS);
    for run in 0..RUNS {
        let paths: Vec<(usize, String)> = (0..s.small_puts)
            .map(|i| {
                let n = (run + 1) * 1_000_000 + i;
                (n, format!("/bench/many/{n}"))
            })
            .collect();
        let t = Instant::now();
        let mut done = futures_util::stream::iter(paths.iter())
            .map(|(n, p)| put_small(&client, *n, p))
            .buffer_unordered(CLIENTS);
        while let Some(r) = done.next().await {
            r?;
        }
        puts_per_s.push(s.small_puts as f64 / t.elapsed().as_secs_f64());

        let t = Instant::now();
        let mut done = futures_util::stream::iter(0..s.small_gets)
            .map(|i| get_small(&client, &paths[i % paths.len()].1))
            .buffer_unordered(CLIENTS);
        while let Some(r) = done.next().await {
            r?;
        }
        gets_per_s.push(s.small_gets as f64 / t.elapsed().as_secs_f64());
    }

    // A third node: with two copies of each version, one node holds none of it.
    let token = join_token(&client).await?;
    let c = up(
        exe,
        &scratch.join("fabric-c"),
        "fabric-c",
        &["--join", &token, "--fabric-replicas", REPLICAS],
    )?;
    let client_c = ready(&c.dir, 3).await?;
    let client_b = ready(&b.dir, 3).await?;
    ready(&a.dir, 3).await?;
    let mut clients = Vec::new();
    for cl in [&client, &client_b, &client_c] {
        let id = cl.status().await.map_err(|e| failed("status", e))?.self_id;
        clients.push((id, cl));
    }
    let mut large_put_mbps = Vec::with_capacity(s.large_runs);
    let mut large_get_gbps = Vec::with_capacity(s.large_runs);
    let mut large_get_remote_mbps = Vec::with_capacity(s.large_runs);
    for run in 0..s.large_runs {
        let f = files.join("large");
        large_file(&f, s.large_bytes, run as u64)?;
        let path = format!("/bench/large/{run}");
        let t = Instant::now();
        put(&client, &f, &path).await?;
        large_put_mbps.push(s.large_bytes as f64 / t.elapsed().as_secs_f64() / 1e6);
        let _ = std::fs::remove_file(&f);
        let object = client
            .fabric_object(&path, None)
            .await
            .map_err(|e| failed("object", e))?;
        let holder = clients.iter().find(|(id, _)| object.replicas.contains(id));
        let other = clients.iter().find(|(id, _)| !object.replicas.contains(id));
        let (Some((_, holder)), Some((_, other))) = (holder, other) else {
            return Err(failed(
                "placement",
                format!("copies on {:?}", object.replicas),
            ));
        };
        let t = Instant::now();
        let n = get(holder, &path).await?;
        large_get_gbps.push(n as f64 / t.elapsed().as_secs_f64() / 1e9);
        let t = Instant::now();
        let n = get(other, &path).await?;
        large_get_remote_mbps.push(n as f64 / t.elapsed().as_secs_f64() / 1e6);
    }
    drop((a, b, c));
    Ok(Samples {
        put_small_ms,
        puts_per_s,
        gets_per_s,
        large_put_local_mbps,
        large_put_mbps,
        large_get_gbps,
        large_get_remote_mbps,
    })
}
