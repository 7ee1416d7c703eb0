//! `noodle run --file`, client side: chunks a local file, asks the local node which chunks it
//! lacks, uploads only those (then the manifest), and names the result as a [`JobFile`].
//!
//! A file is read twice, streaming, never whole: once to cut and hash it into a manifest, once to
//! re-read the chunks the node lacks. Every re-read chunk is hashed again, so a file that changes
//! between the two passes is refused rather than shipped half old, half new. At most a handful of
//! chunks (4 MiB each) are in memory at a time, whatever the file size.

use std::collections::HashSet;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use noodle_api::{Client, JobFile};
use noodle_chunks::{ChunkId, Chunker, Manifest};
use tokio::sync::mpsc;

/// Files at least this large get a progress bar (when asked for).
const PROGRESS_MIN_BYTES: u64 = 8 << 20;
/// Ids per `chunks_missing` call: about 700 KB of JSON, well under the node's limits.
const MISSING_IDS_PER_CALL: usize = 10_000;
/// Chunk uploads in flight to the local node.
const UPLOADS_IN_FLIGHT: usize = 4;
/// Chunks read ahead of the uploads: with the uploads in flight, at most 8 chunks (32 MiB) are
/// in memory.
const READ_AHEAD_CHUNKS: usize = 4;

/// One chunk to upload: the first place it occurs in the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Planned {
    id: ChunkId,
    offset: u64,
    len: u32,
}

/// Chunks the local file at `path`, uploads what the node lacks, returns the [`JobFile`] named
/// `name`. Shows a progress bar on stderr for files of at least 8 MiB when `progress` is true (and
/// stderr is a terminal); prints nothing otherwise. A file that changes or disappears while it is
/// read is refused with an error naming it.
pub(crate) async fn upload(
    client: &Client,
    path: &Path,
    name: &str,
    executable: bool,
    progress: bool,
) -> Result<JobFile> {
    let size = tokio::fs::metadata(path)
        .await
        .with_context(|| format!("cannot read {}", path.display()))?
        .len();
    let bar = if progress && size >= PROGRESS_MIN_BYTES {
        progress_bar(size, format!("hashing {name}"))
    } else {
        ProgressBar::hidden()
    };

    // Pass 1: cut and hash, one chunk in memory at a time.
    let manifest = {
        let owned = path.to_owned();
        let bar = bar.clone();
        tokio::task::spawn_blocking(move || hash_file(&owned, &bar))
            .await
            .map_err(|e| anyhow!("hashing {} failed: {e}", path.display()))??
    };

    // Which chunks (and whether the manifest) the node lacks.
    let mut ids = unique_ids(&manifest);
    ids.push(manifest.id());
    let mut missing = HashSet::new();
    for batch in ids.chunks(MISSING_IDS_PER_CALL) {
        let asked: HashSet<ChunkId> = batch.iter().copied().collect();
        let answer = client
            .chunks_missing(batch.iter().map(ChunkId::to_hex).collect())
            .await
            .context("asking the node which chunks it already has")?;
        for hex in answer {
            let id = hex
                .parse::<ChunkId>()
                .map_err(|e| anyhow!("the node answered with a malformed chunk id: {e}"))?;
            if !asked.contains(&id) {
                bail!("the node reported chunk {id} missing, which was not asked about");
            }
            missing.insert(id);
        }
    }
    let plan = upload_plan(&manifest, &missing);
    let manifest_bytes = manifest.encode();
    let upload_manifest = missing.contains(&manifest.id());
    let chunk_bytes: u64 = plan.iter().map(|p| u64::from(p.len)).sum();
    tracing::debug!(
        file = %path.display(),
        chunks = manifest.chunks().len(),
        upload_chunks = plan.len(),
        upload_bytes = chunk_bytes,
        "shipping a file"
    );
    bar.set_message(format!("uploading {name}"));
    bar.set_length(
        chunk_bytes
            + if upload_manifest {
                manifest_bytes.len() as u64
            } else {
                0
            },
    );
    bar.set_position(0);

    // Pass 2: re-read, verify and upload the missing chunks, then the manifest, so that a node
    // holding the manifest (almost always) holds its chunks too.
    let uploaded = upload_chunks(client, path, plan, &bar).await;
    if let Err(e) = uploaded {
        bar.abandon();
        return Err(e);
    }
    if upload_manifest {
        let len = manifest_bytes.len() as u64;
        if let Err(e) = client
            .put_chunk(&manifest.id().to_hex(), manifest_bytes)
            .await
            .with_context(|| format!("uploading the manifest of {}", path.display()))
        {
            bar.abandon();
            return Err(e);
        }
        bar.inc(len);
    }
    bar.finish_and_clear();
    Ok(JobFile {
        name: name.to_owned(),
        manifest: manifest.id().to_hex(),
        executable,
        bytes: manifest.size(),
    })
}

fn progress_bar(len: u64, message: String) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::stderr());
    // A fixed template that always parses; fall back to the default style if it ever does not.
    if let Ok(style) = ProgressStyle::with_template(
        "{msg} [{bar:30}] {bytes}/{total_bytes} ({bytes_per_sec}, {eta})",
    ) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_message(message);
    bar
}

/// Pass 1: the file's manifest, advancing `bar` as bytes are hashed.
fn hash_file(path: &Path, bar: &ProgressBar) -> Result<Manifest> {
    let mut chunker = Chunker::open(path)?;
    while chunker.next_chunk()?.is_some() {
        bar.set_position(chunker.done_bytes());
    }
    Ok(chunker.finish()?)
}

/// The manifest's chunk ids, each once, in file order.
fn unique_ids(manifest: &Manifest) -> Vec<ChunkId> {
    let mut seen = HashSet::new();
    manifest
        .chunks()
        .iter()
        .filter(|(id, _)| seen.insert(*id))
        .map(|&(id, _)| id)
        .collect()
}

/// The chunks in `missing` to upload, each once at its first offset, in file order.
fn upload_plan(manifest: &Manifest, missing: &HashSet<ChunkId>) -> Vec<Planned> {
    let mut planned = HashSet::new();
    let mut offset = 0u64;
    let mut plan = Vec::new();
    for &(id, len) in manifest.chunks() {
        if missing.contains(&id) && planned.insert(id) {
            plan.push(Planned { id, offset, len });
        }
        offset += u64::from(len);
    }
    plan
}

/// Reads the planned chunk from `file` (the file at `path`) and checks it still hashes to its id.
fn read_chunk_at(file: &mut File, path: &Path, p: &Planned) -> Result<Vec<u8>> {
    let mut data = vec![0u8; p.len as usize];
    file.seek(SeekFrom::Start(p.offset))
        .and_then(|_| file.read_exact(&mut data))
        .map_err(|e| {
            if e.kind() == std::io::ErrorKind::UnexpectedEof {
                changed(path)
            } else {
                anyhow!("{}: {e}", path.display())
            }
        })?;
    if ChunkId::of(&data) != p.id {
        return Err(changed(path));
    }
    Ok(data)
}

fn changed(path: &Path) -> anyhow::Error {
    anyhow!(
        "{} changed while it was being uploaded; run again once it is stable",
        path.display()
    )
}

/// Pass 2: a reader thread re-reads the planned chunks into a small queue; up to
/// [`UPLOADS_IN_FLIGHT`] of them are uploaded at once.
async fn upload_chunks(
    client: &Client,
    path: &Path,
    plan: Vec<Planned>,
    bar: &ProgressBar,
) -> Result<()> {
    if plan.is_empty() {
        return Ok(());
    }
    let (tx, mut rx) = mpsc::channel::<Result<(ChunkId, Vec<u8>)>>(READ_AHEAD_CHUNKS);
    let reader_path: PathBuf = path.to_owned();
    let reader = tokio::task::spawn_blocking(move || {
        let mut file = match File::open(&reader_path) {
            Ok(file) => file,
            Err(e) => {
                let _ = tx.blocking_send(Err(anyhow!("{}: {e}", reader_path.display())));
                return;
            }
        };
        for p in &plan {
            let item = read_chunk_at(&mut file, &reader_path, p).map(|data| (p.id, data));
            let failed = item.is_err();
            // A closed queue means the uploads failed; their error is the one reported.
            if tx.blocking_send(item).is_err() || failed {
                return;
            }
        }
    });

    let mut in_flight = FuturesUnordered::new();
    let mut reading = true;
    let result = 'upload: loop {
        while reading && in_flight.len() < UPLOADS_IN_FLIGHT {
            match rx.recv().await {
                Some(Ok((id, data))) => in_flight.push(async move {
                    let len = data.len() as u64;
                    client
                        .put_chunk(&id.to_hex(), data)
                        .await
                        .with_context(|| format!("uploading chunk {id} of {}", path.display()))
                        .map(|()| len)
                }),
                Some(Err(e)) => break 'upload Err(e),
                None => reading = false,
            }
        }
        match in_flight.next().await {
            Some(Ok(len)) => bar.inc(len),
            Some(Err(e)) => break Err(e),
            None => break Ok(()),
        }
    };
    // Stops the reader (if still running) and waits for it, so no thread outlives the call.
    drop(rx);
    if let Err(e) = reader.await {
        tracing::warn!(error = %e, "chunk reader task failed");
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// Incompressible test bytes: blake3 of a counter, 32 bytes at a time.
    fn random_bytes(seed: u8, len: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(len + 32);
        let mut i = 0u64;
        while out.len() < len {
            let mut block = [seed; 9];
            block[1..].copy_from_slice(&i.to_le_bytes());
            out.extend_from_slice(&ChunkId::of(&block).0);
            i += 1;
        }
        out.truncate(len);
        out
    }

    #[test]
    fn ship_cli_plan_dedups_and_keeps_offsets() -> Result<()> {
        let (a, b, c) = (ChunkId::of(b"a"), ChunkId::of(b"b"), ChunkId::of(b"c"));
        let manifest = Manifest::new(60, vec![(a, 10), (b, 20), (a, 10), (c, 20)])?;
        assert_eq!(unique_ids(&manifest), vec![a, b, c]);
        let missing: HashSet<ChunkId> = [a, c].into_iter().collect();
        assert_eq!(
            upload_plan(&manifest, &missing),
            vec![
                Planned {
                    id: a,
                    offset: 0,
                    len: 10
                },
                Planned {
                    id: c,
                    offset: 40,
                    len: 20
                },
            ]
        );
        assert!(upload_plan(&manifest, &HashSet::new()).is_empty());
        Ok(())
    }

    #[test]
    fn ship_cli_reread_matches_and_notices_changes() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("data.bin");
        let data = random_bytes(1, 3 << 20);
        std::fs::write(&path, &data)?;
        let manifest = hash_file(&path, &ProgressBar::hidden())?;
        assert!(manifest.chunks().len() > 1);
        let all: HashSet<ChunkId> = manifest.chunk_ids().into_iter().collect();
        let plan = upload_plan(&manifest, &all);
        let mut file = File::open(&path)?;
        let mut rebuilt = Vec::new();
        for p in &plan {
            rebuilt.extend(read_chunk_at(&mut file, &path, p)?);
        }
        assert!(rebuilt == data, "re-read chunks differ from the file");

        // The file changes after hashing: the re-read is refused, naming the file.
        let mut f = std::fs::OpenOptions::new().write(true).open(&path)?;
        f.write_all(b"edited")?;
        drop(f);
        let err = read_chunk_at(&mut File::open(&path)?, &path, &plan[0])
            .err()
            .ok_or_else(|| anyhow!("a changed chunk was read back"))?;
        assert!(
            err.to_string().contains("data.bin") && err.to_string().contains("changed"),
            "{err}"
        );
        // ... and so is one cut short.
        std::fs::write(&path, &data[..100])?;
        let err = read_chunk_at(&mut File::open(&path)?, &path, &plan[0])
            .err()
            .ok_or_else(|| anyhow!("a truncated chunk was read back"))?;
        assert!(err.to_string().contains("changed"), "{err}");
        Ok(())
    }

    #[test]
    fn ship_cli_missing_file_is_named() {
        let err = hash_file(
            Path::new("/nonexistent/noodle-ship"),
            &ProgressBar::hidden(),
        )
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
        assert!(err.contains("/nonexistent/noodle-ship"), "{err}");
    }
}
