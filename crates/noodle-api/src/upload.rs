//! Shipping a local file to the node (`noodle run --file`, `noodle put`, SDKs, agents): chunks
//! the file, asks the node which chunks it lacks, uploads only those (then the manifest), and
//! returns the file's manifest.
//!
//! A file is read twice, streaming, never whole: once to cut and hash it into a manifest, once to
//! re-read the chunks the node lacks. Every re-read chunk is hashed again, so a file that changes
//! between the two passes is refused rather than shipped half old, half new. At most a handful of
//! chunks (4 MiB each) are in memory at a time, whatever the file size.
//!
//! Nothing here prints: progress goes to a callback ([`UploadProgress`]), which the CLI turns
//! into a progress bar.

use std::collections::HashSet;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use noodle_chunks::{ChunkError, ChunkId, Chunker, Manifest};
use tokio::sync::mpsc;

use crate::{ChunkRoute, Client, ClientError};

/// Ids per `chunks_missing` call: about 700 KB of JSON, well under the node's limits.
const MISSING_IDS_PER_CALL: usize = 10_000;
/// Chunk uploads in flight to the local node.
const UPLOADS_IN_FLIGHT: usize = 4;
/// Chunks read ahead of the uploads: with the uploads in flight, at most 8 chunks (32 MiB) are
/// in memory.
const READ_AHEAD_CHUNKS: usize = 4;

/// How far an upload has come. Reported in order: `Hashing` from 0 to the file's size, then
/// `Uploading` from 0 to the bytes the node lacked (the missing chunks, then the manifest if the
/// node lacked it too).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UploadProgress {
    /// Pass 1: `done_bytes` of the file's `total_bytes` are cut and hashed.
    Hashing { done_bytes: u64, total_bytes: u64 },
    /// Pass 2: `done_bytes` of the `total_bytes` the node lacks are uploaded. The first report
    /// of this phase has `done_bytes` 0.
    Uploading { done_bytes: u64, total_bytes: u64 },
}

/// Why a file could not be shipped. Every variant names the file (or says what the node
/// answered); the messages are shown to users as they are.
#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    /// The file's size could not be read (missing, unreadable).
    #[error("cannot read {}", path.display())]
    Metadata {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The hashing task died (a panic or the runtime shutting down).
    #[error("hashing {} failed: {detail}", path.display())]
    HashTask { path: PathBuf, detail: String },
    /// Cutting and hashing the file failed; a file that changed while it was hashed is
    /// [`ChunkError::Changed`].
    #[error(transparent)]
    Chunk(#[from] ChunkError),
    /// The node could not say which chunks it lacks.
    #[error("asking the node which chunks it already has")]
    AskMissing(#[source] ClientError),
    /// The node's list of missing chunks holds something that is not a chunk id.
    #[error("the node answered with a malformed chunk id: {0}")]
    MalformedId(String),
    /// The node's list of missing chunks holds an id it was not asked about.
    #[error("the node reported chunk {0} missing, which was not asked about")]
    UnaskedId(ChunkId),
    /// Re-reading the file failed.
    #[error("{}: {error}", path.display())]
    Reread {
        path: PathBuf,
        /// Shown in the message, not as a source: the message already says it.
        error: std::io::Error,
    },
    /// The file changed (or was cut short) between hashing and uploading.
    #[error(
        "{} changed while it was being uploaded; run again once it is stable",
        path.display()
    )]
    Changed { path: PathBuf },
    /// The node refused a chunk or could not be reached.
    #[error("uploading chunk {id} of {}", path.display())]
    PutChunk {
        id: ChunkId,
        path: PathBuf,
        #[source]
        source: ClientError,
    },
    /// The node refused the manifest or could not be reached.
    #[error("uploading the manifest of {}", path.display())]
    PutManifest {
        path: PathBuf,
        #[source]
        source: ClientError,
    },
}

/// One chunk to upload: the first place it occurs in the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Planned {
    id: ChunkId,
    offset: u64,
    len: u32,
}

/// Chunks the local file at `path`, uploads what the node of `client` lacks and returns the
/// file's manifest, stored on the node for `to`. Reports its progress to `progress`, which may
/// be called from a blocking thread. A file that changes or disappears while it is read is
/// refused with an error naming it.
pub async fn upload_file(
    client: &Client,
    to: &ChunkRoute,
    path: &Path,
    progress: impl Fn(UploadProgress) + Send + Sync + 'static,
) -> Result<Manifest, UploadError> {
    let progress: Arc<dyn Fn(UploadProgress) + Send + Sync> = Arc::new(progress);
    let size = tokio::fs::metadata(path)
        .await
        .map_err(|source| UploadError::Metadata {
            path: path.to_owned(),
            source,
        })?
        .len();
    progress(UploadProgress::Hashing {
        done_bytes: 0,
        total_bytes: size,
    });

    // Pass 1: cut and hash, one chunk in memory at a time.
    let manifest = {
        let owned = path.to_owned();
        let progress = progress.clone();
        tokio::task::spawn_blocking(move || {
            hash_file(&owned, &|done_bytes| {
                progress(UploadProgress::Hashing {
                    done_bytes,
                    total_bytes: size,
                })
            })
        })
        .await
        .map_err(|e| UploadError::HashTask {
            path: path.to_owned(),
            detail: e.to_string(),
        })??
    };

    // Which chunks (and whether the manifest) the node lacks.
    let mut ids = unique_ids(&manifest);
    ids.push(manifest.id());
    let mut missing = HashSet::new();
    for batch in ids.chunks(MISSING_IDS_PER_CALL) {
        let asked: HashSet<ChunkId> = batch.iter().copied().collect();
        let answer = client
            .chunks_missing(to, batch.iter().map(ChunkId::to_hex).collect())
            .await
            .map_err(UploadError::AskMissing)?;
        for hex in answer {
            let id = hex
                .parse::<ChunkId>()
                .map_err(|e| UploadError::MalformedId(e.to_string()))?;
            if !asked.contains(&id) {
                return Err(UploadError::UnaskedId(id));
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
    let total_bytes = chunk_bytes
        + if upload_manifest {
            manifest_bytes.len() as u64
        } else {
            0
        };
    let mut done_bytes = 0;
    progress(UploadProgress::Uploading {
        done_bytes,
        total_bytes,
    });

    // Pass 2: re-read, verify and upload the missing chunks, then the manifest, so that a node
    // holding the manifest (almost always) holds its chunks too.
    upload_chunks(client, to, path, plan, &mut |len| {
        done_bytes += len;
        progress(UploadProgress::Uploading {
            done_bytes,
            total_bytes,
        });
    })
    .await?;
    if upload_manifest {
        let len = manifest_bytes.len() as u64;
        client
            .put_chunk(to, &manifest.id().to_hex(), manifest_bytes)
            .await
            .map_err(|source| UploadError::PutManifest {
                path: path.to_owned(),
                source,
            })?;
        done_bytes += len;
        progress(UploadProgress::Uploading {
            done_bytes,
            total_bytes,
        });
    }
    Ok(manifest)
}

/// Pass 1: the file's manifest, telling `hashed` the bytes hashed so far after every chunk.
fn hash_file(path: &Path, hashed: &dyn Fn(u64)) -> Result<Manifest, UploadError> {
    let mut chunker = Chunker::open(path)?;
    while chunker.next_chunk()?.is_some() {
        hashed(chunker.done_bytes());
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
fn read_chunk_at(file: &mut File, path: &Path, p: &Planned) -> Result<Vec<u8>, UploadError> {
    let mut data = vec![0u8; p.len as usize];
    file.seek(SeekFrom::Start(p.offset))
        .and_then(|_| file.read_exact(&mut data))
        .map_err(|error| {
            if error.kind() == std::io::ErrorKind::UnexpectedEof {
                changed(path)
            } else {
                UploadError::Reread {
                    path: path.to_owned(),
                    error,
                }
            }
        })?;
    if ChunkId::of(&data) != p.id {
        return Err(changed(path));
    }
    Ok(data)
}

fn changed(path: &Path) -> UploadError {
    UploadError::Changed {
        path: path.to_owned(),
    }
}

/// Pass 2: a reader thread re-reads the planned chunks into a small queue; up to
/// [`UPLOADS_IN_FLIGHT`] of them are uploaded at once. `uploaded` hears the length of every
/// chunk the node took.
async fn upload_chunks(
    client: &Client,
    to: &ChunkRoute,
    path: &Path,
    plan: Vec<Planned>,
    uploaded: &mut (dyn FnMut(u64) + Send),
) -> Result<(), UploadError> {
    if plan.is_empty() {
        return Ok(());
    }
    let (tx, mut rx) = mpsc::channel::<Result<(ChunkId, Vec<u8>), UploadError>>(READ_AHEAD_CHUNKS);
    let reader_path: PathBuf = path.to_owned();
    let reader = tokio::task::spawn_blocking(move || {
        let mut file = match File::open(&reader_path) {
            Ok(file) => file,
            Err(error) => {
                let _ = tx.blocking_send(Err(UploadError::Reread {
                    path: reader_path,
                    error,
                }));
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
                        .put_chunk(to, &id.to_hex(), data)
                        .await
                        .map_err(|source| UploadError::PutChunk {
                            id,
                            path: path.to_owned(),
                            source,
                        })
                        .map(|()| len)
                }),
                Some(Err(e)) => break 'upload Err(e),
                None => reading = false,
            }
        }
        match in_flight.next().await {
            Some(Ok(len)) => uploaded(len),
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
    fn upload_plan_dedups_and_keeps_offsets() -> anyhow::Result<()> {
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
    fn upload_reread_matches_and_notices_changes() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("data.bin");
        let data = random_bytes(1, 3 << 20);
        std::fs::write(&path, &data)?;
        let hashed = std::sync::Mutex::new(Vec::new());
        let manifest = hash_file(&path, &|done| {
            if let Ok(mut h) = hashed.lock() {
                h.push(done);
            }
        })?;
        assert!(manifest.chunks().len() > 1);
        // One report per chunk, rising to the file's size.
        let hashed = hashed.into_inner().map_err(|e| anyhow::anyhow!("{e}"))?;
        assert_eq!(hashed.len(), manifest.chunks().len());
        assert!(hashed.windows(2).all(|w| w[0] < w[1]), "{hashed:?}");
        assert_eq!(hashed.last().copied(), Some(data.len() as u64));
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
            .ok_or_else(|| anyhow::anyhow!("a changed chunk was read back"))?;
        assert!(
            err.to_string().contains("data.bin") && err.to_string().contains("changed"),
            "{err}"
        );
        // ... and so is one cut short.
        std::fs::write(&path, &data[..100])?;
        let err = read_chunk_at(&mut File::open(&path)?, &path, &plan[0])
            .err()
            .ok_or_else(|| anyhow::anyhow!("a truncated chunk was read back"))?;
        assert!(err.to_string().contains("changed"), "{err}");
        Ok(())
    }

    #[test]
    fn upload_missing_file_is_named() {
        let err = hash_file(Path::new("/nonexistent/noodle-ship"), &|_| {})
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("/nonexistent/noodle-ship"), "{err}");
    }

    /// The messages users see, with the sources `anyhow`'s `{:#}` appends, are the ones the
    /// CLI printed before this code moved here.
    #[test]
    fn upload_error_messages() {
        let path = PathBuf::from("/data/x.bin");
        let io = || std::io::Error::new(std::io::ErrorKind::NotFound, "gone");
        let chain = |e: &dyn std::error::Error| {
            let mut s = e.to_string();
            let mut next = e.source();
            while let Some(cause) = next {
                s.push_str(&format!(": {cause}"));
                next = cause.source();
            }
            s
        };
        let cases: Vec<(UploadError, &str)> = vec![
            (
                UploadError::Metadata {
                    path: path.clone(),
                    source: io(),
                },
                "cannot read /data/x.bin: gone",
            ),
            (
                UploadError::Reread {
                    path: path.clone(),
                    error: io(),
                },
                "/data/x.bin: gone",
            ),
            (
                changed(&path),
                "/data/x.bin changed while it was being uploaded; run again once it is stable",
            ),
            (
                UploadError::AskMissing(ClientError::Api("denied".into())),
                "asking the node which chunks it already has: the node refused the request: \
                 denied",
            ),
            (
                UploadError::PutManifest {
                    path: path.clone(),
                    source: ClientError::Api("full".into()),
                },
                "uploading the manifest of /data/x.bin: the node refused the request: full",
            ),
        ];
        for (err, want) in cases {
            assert_eq!(chain(&err), want);
        }
    }
}
