//! [`Store`]: chunks on disk, one file each, named by id and verified on every read and write.
//!
//! Layout: `<dir>/<first byte in hex>/<64 hex digits>`, e.g. `ab/abcdef…`, so no directory holds
//! more than 1/256 of the chunks. Writes go to `<dir>/<fan-out>/.tmp-…`, are fsynced and renamed
//! into place, so a chunk file is either absent or complete. One `Store` per directory: opening
//! removes temporary files left by a crash.

use std::collections::HashSet;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::{Checked, ChunkError, ChunkId, Chunker, MAX_CHUNK_BYTES, MAX_MANIFEST_BYTES, Manifest};

const TMP_PREFIX: &str = ".tmp-";

/// Makes temporary file names unique within the process (the pid separates processes).
static TMP_COUNTER: AtomicU64 = AtomicU64::new(0);

fn tmp_name(hint: &str) -> String {
    let n = TMP_COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{TMP_PREFIX}{hint}-{}-{n}", std::process::id())
}

fn io_at(path: &Path) -> impl FnOnce(io::Error) -> ChunkError + '_ {
    move |source| ChunkError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Makes a rename or create in `dir` durable.
fn sync_dir(dir: &Path) -> Result<(), ChunkError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_at(dir))
}

/// Removes a file on drop unless disarmed: no half-written file outlives an error.
struct TmpGuard(Option<PathBuf>);

impl Drop for TmpGuard {
    fn drop(&mut self) {
        if let Some(path) = self.0.take() {
            // Best effort: the error being returned already explains what went wrong.
            let _ = fs::remove_file(path);
        }
    }
}

/// Longest object the store keeps: a chunk, or an encoded manifest (a file of more than about
/// 110 000 chunks has a manifest longer than a chunk).
pub const MAX_OBJECT_BYTES: usize = if MAX_MANIFEST_BYTES > MAX_CHUNK_BYTES {
    MAX_MANIFEST_BYTES
} else {
    MAX_CHUNK_BYTES
};

/// A content-addressed chunk store in one directory, with a size cap.
#[derive(Debug)]
pub struct Store {
    dir: PathBuf,
    cap_bytes: u64,
    used_bytes: AtomicU64,
}

/// Refuses bytes longer than any object may be.
fn too_large(id: &ChunkId, data: &[u8]) -> Result<(), ChunkError> {
    if data.len() > MAX_OBJECT_BYTES {
        return Err(ChunkError::ChunkTooLarge {
            id: *id,
            len_bytes: data.len(),
            max_bytes: MAX_OBJECT_BYTES,
        });
    }
    Ok(())
}

/// Where a store in `dir` keeps object `id`.
pub fn object_path(dir: &Path, id: &ChunkId) -> PathBuf {
    dir.join(hex::encode([id.0[0]])).join(id.to_hex())
}

impl Store {
    /// Opens (creating if needed) the store in `dir`, holding at most `cap_bytes` of chunks.
    ///
    /// Scans the fan-out directories once to learn the current size and removes stale
    /// temporary files.
    pub fn open(dir: impl Into<PathBuf>, cap_bytes: u64) -> Result<Store, ChunkError> {
        let dir = dir.into();
        fs::create_dir_all(&dir).map_err(io_at(&dir))?;
        let mut used = 0u64;
        for byte in 0..=u8::MAX {
            let sub = dir.join(hex::encode([byte]));
            let entries = match fs::read_dir(&sub) {
                Ok(entries) => entries,
                Err(err) if err.kind() == io::ErrorKind::NotFound => continue,
                Err(source) => return Err(ChunkError::Io { path: sub, source }),
            };
            for entry in entries {
                let entry = entry.map_err(io_at(&sub))?;
                let name = entry.file_name();
                let name = name.to_string_lossy();
                if name.starts_with(TMP_PREFIX) {
                    let path = entry.path();
                    fs::remove_file(&path).map_err(io_at(&path))?;
                } else if name.parse::<ChunkId>().is_ok() {
                    used += entry.metadata().map_err(io_at(&entry.path()))?.len();
                }
            }
        }
        Ok(Store {
            dir,
            cap_bytes,
            used_bytes: AtomicU64::new(used),
        })
    }

    /// Every stored chunk (or manifest) with the time it was last written. Reads the
    /// fan-out directories.
    pub fn stored(&self) -> Result<Vec<(ChunkId, std::time::SystemTime)>, ChunkError> {
        let mut out = Vec::new();
        for byte in 0..=u8::MAX {
            let sub = self.dir.join(hex::encode([byte]));
            let entries = match fs::read_dir(&sub) {
                Ok(entries) => entries,
                Err(err) if err.kind() == io::ErrorKind::NotFound => continue,
                Err(source) => return Err(ChunkError::Io { path: sub, source }),
            };
            for entry in entries {
                let entry = entry.map_err(io_at(&sub))?;
                if let Ok(id) = entry.file_name().to_string_lossy().parse::<ChunkId>() {
                    let modified = entry
                        .metadata()
                        .and_then(|m| m.modified())
                        .map_err(io_at(&entry.path()))?;
                    out.push((id, modified));
                }
            }
        }
        Ok(out)
    }

    /// The directory the store lives in.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The size cap given to [`open`](Self::open).
    pub fn cap_bytes(&self) -> u64 {
        self.cap_bytes
    }

    /// The bytes of chunk data stored.
    pub fn total_bytes(&self) -> u64 {
        self.used_bytes.load(Ordering::SeqCst)
    }

    /// Where chunk `id` lives (whether or not it is there).
    pub fn chunk_path(&self, id: &ChunkId) -> PathBuf {
        object_path(&self.dir, id)
    }

    /// Whether chunk `id` is stored (not verified; [`get`](Self::get) verifies).
    pub fn has(&self, id: &ChunkId) -> bool {
        self.chunk_path(id).is_file()
    }

    /// The ids in `ids` that are not stored, in first-seen order, each once: what a sender must
    /// ship.
    pub fn missing(&self, ids: &[ChunkId]) -> Vec<ChunkId> {
        let mut seen = HashSet::new();
        ids.iter()
            .filter(|id| seen.insert(**id) && !self.has(id))
            .copied()
            .collect()
    }

    /// Stores `data` as object `id` (a chunk, or an encoded manifest). Returns `true` if it was
    /// written, `false` if already present.
    ///
    /// Refused, with nothing stored, if `data` does not hash to `id`, is longer than
    /// [`MAX_OBJECT_BYTES`], or would take the store over its cap.
    pub fn put(&self, id: &ChunkId, data: &[u8]) -> Result<bool, ChunkError> {
        too_large(id, data)?;
        self.put_checked(&Checked::new(*id, data)?)
    }

    /// [`put`](Self::put) of bytes already checked against their id (not hashed again).
    pub fn put_checked<B: AsRef<[u8]>>(&self, chunk: &Checked<B>) -> Result<bool, ChunkError> {
        let (id, data) = (&chunk.id(), chunk.data());
        too_large(id, data)?;
        if self.has(id) {
            return Ok(false);
        }
        let len = data.len() as u64;
        self.reserve(len)?;
        let written = self.write_chunk(id, data);
        if written.is_err() {
            self.used_bytes.fetch_sub(len, Ordering::SeqCst);
        }
        written.map(|()| true)
    }

    /// Takes `len` bytes of the cap, or fails with [`ChunkError::StoreFull`].
    fn reserve(&self, len: u64) -> Result<(), ChunkError> {
        let cap = self.cap_bytes;
        self.used_bytes
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |used| {
                used.checked_add(len).filter(|&total| total <= cap)
            })
            .map(|_| ())
            .map_err(|used| ChunkError::StoreFull {
                needed_bytes: len,
                used_bytes: used,
                cap_bytes: cap,
            })
    }

    fn write_chunk(&self, id: &ChunkId, data: &[u8]) -> Result<(), ChunkError> {
        let path = self.chunk_path(id);
        let sub = self.dir.join(hex::encode([id.0[0]]));
        fs::create_dir_all(&sub).map_err(io_at(&sub))?;
        let tmp = sub.join(tmp_name(&id.to_hex()));
        let mut guard = TmpGuard(Some(tmp.clone()));
        let mut file = File::create_new(&tmp).map_err(io_at(&tmp))?;
        file.write_all(data)
            .and_then(|()| file.sync_all())
            .map_err(io_at(&tmp))?;
        drop(file);
        fs::rename(&tmp, &path).map_err(io_at(&path))?;
        guard.0 = None;
        sync_dir(&sub)
    }

    /// Reads chunk `id`, checking that its bytes still hash to `id`.
    pub fn get(&self, id: &ChunkId) -> Result<Vec<u8>, ChunkError> {
        let path = self.chunk_path(id);
        let file = match File::open(&path) {
            Ok(file) => file,
            Err(err) if err.kind() == io::ErrorKind::NotFound => {
                return Err(ChunkError::NotFound(*id));
            }
            Err(source) => return Err(ChunkError::Io { path, source }),
        };
        // Read one byte past the limit so an oversized (hence corrupt) file is caught without
        // reading all of it.
        let mut data = Vec::new();
        file.take(MAX_OBJECT_BYTES as u64 + 1)
            .read_to_end(&mut data)
            .map_err(io_at(&path))?;
        if data.len() > MAX_OBJECT_BYTES || ChunkId::of(&data) != *id {
            return Err(ChunkError::Corrupt { id: *id, path });
        }
        Ok(data)
    }

    /// Removes chunk `id` (e.g. after [`get`](Self::get) found it corrupt). Returns whether it
    /// was there.
    pub fn remove(&self, id: &ChunkId) -> Result<bool, ChunkError> {
        let path = self.chunk_path(id);
        let len = match fs::metadata(&path) {
            Ok(meta) => meta.len(),
            Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(source) => return Err(ChunkError::Io { path, source }),
        };
        match fs::remove_file(&path) {
            Ok(()) => {
                // Saturating: a file that grew on disk since it was counted must not wrap.
                let _ = self
                    .used_bytes
                    .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |used| {
                        Some(used.saturating_sub(len))
                    });
                Ok(true)
            }
            Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(source) => Err(ChunkError::Io { path, source }),
        }
    }

    /// Chunks the file at `path` and stores every chunk, calling `on_progress(done, total)` in
    /// bytes after each chunk. Returns the file's manifest.
    ///
    /// If the file changes or disappears while being read, the error is returned and the chunks
    /// this call newly wrote are removed again, so a failed call leaves the store as it found it.
    pub fn put_file(
        &self,
        path: &Path,
        mut on_progress: impl FnMut(u64, u64),
    ) -> Result<Manifest, ChunkError> {
        let mut chunker = Chunker::open(path)?;
        let total = chunker.expected_bytes();
        on_progress(0, total);
        let mut written = Vec::new();
        let result = (|| {
            while let Some(chunk) = chunker.next_chunk()? {
                if self.put_checked(&chunk)? {
                    written.push(chunk.id());
                }
                on_progress(chunker.done_bytes(), total);
            }
            chunker.finish()
        })();
        if result.is_err() {
            for id in &written {
                // Best effort: the original error is the one to report.
                let _ = self.remove(id);
            }
        }
        result
    }

    /// Writes the file `manifest` describes to `dest`, atomically (temporary file next to `dest`,
    /// fsync, rename), calling `on_progress(done, total)` in bytes after each chunk.
    ///
    /// Fails with [`ChunkError::Missing`] before writing anything if any chunk is absent. On any
    /// error no file is left at `dest` (an existing `dest` is left untouched) and no temporary
    /// file remains. Only the bytes are reproduced: no permissions, owner or times.
    pub fn assemble(
        &self,
        manifest: &Manifest,
        dest: &Path,
        mut on_progress: impl FnMut(u64, u64),
    ) -> Result<(), ChunkError> {
        let missing = self.missing(&manifest.chunk_ids());
        if !missing.is_empty() {
            return Err(ChunkError::Missing(missing));
        }
        let parent = match dest.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
            _ => PathBuf::from("."),
        };
        let hint = dest
            .file_name()
            .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
        let tmp = parent.join(tmp_name(&hint));
        let mut guard = TmpGuard(Some(tmp.clone()));
        let mut file = File::create_new(&tmp).map_err(io_at(&tmp))?;
        let total = manifest.size();
        let mut done = 0u64;
        on_progress(done, total);
        for &(id, len) in manifest.chunks() {
            let data = self.get(&id)?;
            if data.len() as u64 != u64::from(len) {
                return Err(ChunkError::LengthMismatch {
                    id,
                    actual_bytes: data.len() as u64,
                    manifest_bytes: u64::from(len),
                });
            }
            file.write_all(&data).map_err(io_at(&tmp))?;
            done += data.len() as u64;
            on_progress(done, total);
        }
        file.sync_all().map_err(io_at(&tmp))?;
        drop(file);
        fs::rename(&tmp, dest).map_err(io_at(dest))?;
        guard.0 = None;
        sync_dir(&parent)
    }
}
