//! The mount's local files: versions fetched for reading (one file per manifest, every chunk
//! verified by `download`, kept up to a byte budget and dropped least recently used first while
//! no handle reads them), and the temporary files that writes go to before they become
//! versions. Everything lives in one temporary directory, removed when the mount ends.
//!
//! A version is immutable, so a file fetched once serves every later open of it; the manifest
//! id names it. Versions are streamed to disk, never held in memory whole.

use crate::errors::FsError;
use noodle_api::Client;
use noodle_api::fabric::{FabricObject, download};
use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::runtime::Handle;

/// Which fetched versions to keep: sizes, pins (open handles), and the order of last use.
/// Sans-IO: it says which files to delete; the caller deletes them.
#[derive(Debug)]
pub(crate) struct CacheIndex {
    entries: HashMap<String, Entry>,
    total_bytes: u64,
    max_bytes: u64,
    tick: u64,
}

#[derive(Debug)]
struct Entry {
    size: u64,
    pins: u32,
    used: u64,
}

impl CacheIndex {
    pub(crate) fn new(max_bytes: u64) -> CacheIndex {
        CacheIndex {
            entries: HashMap::new(),
            total_bytes: 0,
            max_bytes,
            tick: 0,
        }
    }

    /// Pins `id` if it is here.
    pub(crate) fn pin(&mut self, id: &str) -> bool {
        self.tick += 1;
        match self.entries.get_mut(id) {
            Some(e) => {
                e.pins += 1;
                e.used = self.tick;
                true
            }
            None => false,
        }
    }

    /// Records a fetched `id` of `size` bytes, pinned once; returns what to evict.
    pub(crate) fn insert_pinned(&mut self, id: &str, size: u64) -> Vec<String> {
        self.tick += 1;
        if let Some(old) = self.entries.remove(id) {
            self.total_bytes -= old.size;
        }
        self.entries.insert(
            id.to_string(),
            Entry {
                size,
                pins: 1,
                used: self.tick,
            },
        );
        self.total_bytes += size;
        self.evictions()
    }

    /// One handle of `id` closed; returns what to evict.
    pub(crate) fn unpin(&mut self, id: &str) -> Vec<String> {
        if let Some(e) = self.entries.get_mut(id) {
            e.pins = e.pins.saturating_sub(1);
        }
        self.evictions()
    }

    /// Forgets `id` (its file is gone).
    pub(crate) fn remove(&mut self, id: &str) {
        if let Some(old) = self.entries.remove(id) {
            self.total_bytes -= old.size;
        }
    }

    #[cfg(test)]
    pub(crate) fn total_bytes(&self) -> u64 {
        self.total_bytes
    }

    /// Unpinned entries, least recently used first, until the total fits the budget. Pinned
    /// entries stay even over budget: an open handle reads them.
    fn evictions(&mut self) -> Vec<String> {
        let mut out = Vec::new();
        if self.total_bytes <= self.max_bytes {
            return out;
        }
        let mut idle: Vec<(u64, String)> = self
            .entries
            .iter()
            .filter(|(_, e)| e.pins == 0)
            .map(|(id, e)| (e.used, id.clone()))
            .collect();
        idle.sort();
        for (_, id) in idle {
            if self.total_bytes <= self.max_bytes {
                break;
            }
            self.remove(&id);
            out.push(id);
        }
        out
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Whether `id` is a manifest id that is safe as a file name (hex, bounded).
fn is_hex_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 128 && id.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The mount's directory of fetched versions and files being written.
pub(crate) struct Cache {
    objects: PathBuf,
    writes: PathBuf,
    index: Mutex<CacheIndex>,
    /// One lock per version being fetched, so two opens fetch it once.
    fetching: Mutex<HashMap<String, Arc<Mutex<()>>>>,
    root: tempfile::TempDir,
}

impl Cache {
    /// A new, empty cache in a temporary directory under `base` (the system's temporary
    /// directory if `None`).
    pub(crate) fn new(base: Option<&Path>, max_bytes: u64) -> std::io::Result<Cache> {
        let mut builder = tempfile::Builder::new();
        builder.prefix("noodle-mount-");
        let root = match base {
            Some(b) => builder.tempdir_in(b)?,
            None => builder.tempdir()?,
        };
        let objects = root.path().join("versions");
        let writes = root.path().join("writes");
        std::fs::create_dir(&objects)?;
        std::fs::create_dir(&writes)?;
        Ok(Cache {
            objects,
            writes,
            index: Mutex::new(CacheIndex::new(max_bytes)),
            fetching: Mutex::new(HashMap::new()),
            root,
        })
    }

    pub(crate) fn root(&self) -> &Path {
        self.root.path()
    }

    /// A read-only file with the bytes of version `object`, fetched from the node unless it
    /// is here already. It stays pinned (never evicted) until [`Cache::release`] of its
    /// manifest.
    pub(crate) fn open(
        &self,
        client: &Client,
        rt: &Handle,
        object: &FabricObject,
    ) -> Result<File, FsError> {
        let id = object.manifest.as_str();
        if !is_hex_id(id) {
            return Err(FsError::new(
                fuser::Errno::EIO,
                format!("{}: the node named an odd manifest {id:?}", object.path),
            ));
        }
        let path = self.objects.join(id);
        let gate = lock(&self.fetching)
            .entry(id.to_string())
            .or_default()
            .clone();
        let result = {
            let _fetching = lock(&gate);
            self.open_or_fetch(client, rt, object, &path)
        };
        let mut fetching = lock(&self.fetching);
        if fetching.get(id).is_some_and(|g| Arc::strong_count(g) <= 2) {
            fetching.remove(id);
        }
        result
    }

    fn open_or_fetch(
        &self,
        client: &Client,
        rt: &Handle,
        object: &FabricObject,
        path: &Path,
    ) -> Result<File, FsError> {
        let id = object.manifest.as_str();
        if lock(&self.index).pin(id) {
            match File::open(path) {
                Ok(f) => return Ok(f),
                Err(e) => {
                    // Deleted behind our back: fetch it again.
                    tracing::warn!(file = %path.display(), error = %e, "a cached version is gone");
                    let mut index = lock(&self.index);
                    index.remove(id);
                }
            }
        }
        tracing::debug!(path = %object.path, version = %object.version, "fetching a version");
        rt.block_on(download(client, object, path, |_, _| {}))?;
        let file = File::open(path).map_err(|e| FsError::io("opening a fetched version", e))?;
        let evict = lock(&self.index).insert_pinned(id, object.size);
        self.delete(evict);
        Ok(file)
    }

    /// Where the fetched version `manifest` is (while pinned).
    pub(crate) fn version_path(&self, manifest: &str) -> PathBuf {
        self.objects.join(manifest)
    }

    /// One handle reading `manifest` closed.
    pub(crate) fn release(&self, manifest: &str) {
        let evict = lock(&self.index).unpin(manifest);
        self.delete(evict);
    }

    fn delete(&self, ids: Vec<String>) {
        for id in ids {
            let path = self.objects.join(&id);
            if let Err(e) = std::fs::remove_file(&path) {
                tracing::warn!(file = %path.display(), error = %e, "dropping a cached version");
            }
        }
    }

    /// A new temporary file for writes, deleted when dropped.
    pub(crate) fn temp_file(&self) -> Result<tempfile::NamedTempFile, FsError> {
        tempfile::NamedTempFile::new_in(&self.writes)
            .map_err(|e| FsError::io("making a file for writes", e))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn the_least_recently_used_unpinned_versions_go_first() {
        let mut c = CacheIndex::new(100);
        assert!(c.insert_pinned("a", 40).is_empty());
        assert!(c.insert_pinned("b", 40).is_empty());
        assert!(c.unpin("a").is_empty());
        assert!(c.unpin("b").is_empty());
        assert!(c.pin("a"));
        assert!(c.unpin("a").is_empty());
        // c pushes it over: b was used longest ago.
        assert_eq!(c.insert_pinned("c", 40), ["b"]);
        assert_eq!(c.total_bytes(), 80);
        assert!(!c.pin("b"));
    }

    #[test]
    fn pinned_versions_stay_over_budget_until_closed() {
        let mut c = CacheIndex::new(10);
        assert!(c.insert_pinned("big", 50).is_empty());
        assert!(c.insert_pinned("big2", 50).is_empty());
        assert_eq!(c.total_bytes(), 100);
        assert_eq!(c.unpin("big"), ["big"]);
        assert_eq!(c.unpin("big2"), ["big2"]);
        assert_eq!(c.total_bytes(), 0);
    }

    #[test]
    fn only_hex_ids_name_files() {
        assert!(is_hex_id("ab12"));
        assert!(!is_hex_id("../x"));
        assert!(!is_hex_id(""));
    }
}
