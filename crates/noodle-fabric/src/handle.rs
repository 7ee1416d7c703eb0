//! The fabric as the node's other subsystems use it: a job's node copies the objects under
//! its `--read` prefixes into the job's directory before it starts, and turns the files the
//! job left in its output directory into versions under its `--write` prefix when it ends.
//!
//! The node acts in its own name here; whether the job may read or write those prefixes was
//! decided when it was submitted (its submitter's rights), and a member that is not a voter
//! writes only where a job placed on it was granted ([`crate::grants`]).

use crate::machine::Content;
use crate::path::{ObjectPath, Prefix};
use crate::subsystem::FabricNode;
use noodle_chunks::{ChunkError, ChunkId, Manifest};
use noodle_host::Actor;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

/// Objects one `--read` prefix may hold, at most.
pub(crate) const READ_OBJECTS_MAX: usize = 100_000;
/// Files a job's output may hold, at most.
pub(crate) const WRITE_FILES_MAX: usize = 10_000;
/// Nodes [`FabricHandle::holdings`] names at most.
pub const HOLDERS_MAX: usize = 64;
/// Objects of each prefix [`FabricHandle::holdings`] looks at.
const HOLDINGS_OBJECTS_MAX: usize = 10_000;
/// Objects listed per read of the records.
const PAGE: usize = 1000;
/// Mode of a copied input: read-only for everyone.
const INPUT_MODE: u32 = 0o444;

#[derive(Debug, thiserror::Error)]
pub enum HandleError {
    #[error("the fabric is not running on this node")]
    NotRunning,
    #[error("{0}")]
    Fabric(String),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    TooMuch(String),
    #[error(
        "{path}: not a regular file or directory inside the output directory (links are not followed)"
    )]
    NotRegular { path: PathBuf },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> HandleError + '_ {
    move |source| HandleError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Chunks another subsystem still needs: manifest ids whose manifests and chunks collection
/// must keep (the files of jobs that have not ended).
pub type Pins = Box<dyn Fn() -> Vec<ChunkId> + Send + Sync>;

/// The started fabric of this node, for other subsystems; empty until the fabric starts.
/// Cheap to clone.
#[derive(Clone, Default)]
pub struct FabricHandle(Arc<OnceLock<Arc<FabricNode>>>, pub(crate) PinList);

/// The pins registered so far.
pub(crate) type PinList = Arc<std::sync::Mutex<Vec<Pins>>>;

impl std::fmt::Debug for FabricHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FabricHandle")
            .field("running", &self.0.get().is_some())
            .finish()
    }
}

impl FabricHandle {
    pub(crate) fn set(&self, node: Arc<FabricNode>) {
        let _ = self.0.set(node);
    }

    fn node(&self) -> Result<&Arc<FabricNode>, HandleError> {
        self.0.get().ok_or(HandleError::NotRunning)
    }

    /// The node's one chunk store, served to members with `method`; `None` until the fabric
    /// has started.
    pub fn store(&self, method: &'static str) -> Option<crate::chunks::ChunkStore> {
        self.0.get().map(|node| node.store.with_method(method))
    }

    /// Registers what another subsystem needs kept in the store (see [`Pins`]).
    pub fn pin(&self, pins: Pins) {
        self.1.lock().unwrap_or_else(|e| e.into_inner()).push(pins);
    }

    /// Copies the version every object under `prefix` shows now into `dir`, at
    /// `dir/<its path without the leading />`, read-only; at most `max_bytes` in all.
    /// Returns the objects and bytes copied.
    pub async fn read_prefix(
        &self,
        prefix: &str,
        dir: &Path,
        max_bytes: u64,
    ) -> Result<(u64, u64), HandleError> {
        let node = self.node()?;
        let prefix = Prefix::parse(prefix).map_err(|e| HandleError::Fabric(e.to_string()))?;
        let (mut objects, mut bytes) = (0u64, 0u64);
        let mut after: Option<ObjectPath> = None;
        loop {
            let (from, under) = (after.clone(), prefix.clone());
            let page = node
                .read(move |v| v.list(&under, from.as_ref(), PAGE))
                .await
                .map_err(|r| HandleError::Fabric(r.message))?;
            for (path, version) in &page {
                let Some(content) = &version.content else {
                    continue;
                };
                objects += 1;
                bytes += content.size;
                if objects as usize > READ_OBJECTS_MAX || bytes > max_bytes {
                    return Err(HandleError::TooMuch(format!(
                        "{prefix} holds more than {READ_OBJECTS_MAX} objects or {max_bytes} bytes"
                    )));
                }
                let dest = dir.join(path.as_str().trim_start_matches('/'));
                node.copy_out(content, &dest, INPUT_MODE)
                    .await
                    .map_err(|e| HandleError::Fabric(format!("{path}: {e}")))?;
            }
            match page.last() {
                Some((last, _)) if page.len() == PAGE => after = Some(last.clone()),
                _ => return Ok((objects, bytes)),
            }
        }
    }

    /// Where the objects under `prefixes` are, for placing a job that reads them: each node
    /// with the bytes it holds (a version held by R nodes counts 1/R of its size on each),
    /// most first, at most [`HOLDERS_MAX`] nodes; from the first [`HOLDINGS_OBJECTS_MAX`]
    /// objects of each prefix. From this node's copy of the records; empty if the fabric is
    /// not running.
    pub fn holdings(&self, prefixes: &[String]) -> Vec<(String, u64)> {
        let Ok(node) = self.node() else {
            return Vec::new();
        };
        let mut held: BTreeMap<String, u64> = BTreeMap::new();
        for prefix in prefixes.iter().filter_map(|p| Prefix::parse(p).ok()) {
            let listed = node
                .host
                .control
                .read_local(|v| crate::machine::view(v).list(&prefix, None, HOLDINGS_OBJECTS_MAX));
            for (_, version) in listed.unwrap_or_default() {
                let Some(content) = version.content else {
                    continue;
                };
                let share = content.size / content.replicas.len().max(1) as u64;
                for r in content.replicas {
                    *held.entry(r).or_default() += share;
                }
            }
        }
        let mut held: Vec<(String, u64)> = held.into_iter().collect();
        held.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        held.truncate(HOLDERS_MAX);
        held
    }

    /// Makes every regular file under `dir` a new version at `prefix` + its path relative to
    /// `dir`, written by `creator` with `tags`. Links are never followed: a file whose real
    /// place is not under `dir` is refused. Returns the paths written, in order.
    pub async fn write_dir(
        &self,
        dir: &Path,
        prefix: &str,
        creator: &str,
        tags: BTreeMap<String, String>,
    ) -> Result<Vec<String>, HandleError> {
        let node = self.node()?;
        let prefix = Prefix::parse(prefix).map_err(|e| HandleError::Fabric(e.to_string()))?;
        let root = dir.to_owned();
        let (files, real_root) = tokio::task::spawn_blocking(move || {
            if std::fs::symlink_metadata(&root)
                .is_err_and(|e| e.kind() == std::io::ErrorKind::NotFound)
            {
                // The job removed its output directory: no output.
                return Ok((Vec::new(), root));
            }
            let real_root = real_dir(&root)?;
            Ok::<_, HandleError>((output_files(&real_root)?, real_root))
        })
        .await
        .map_err(|e| HandleError::Fabric(e.to_string()))??;
        let actor = Actor {
            name: creator.to_string(),
            right: format!("fabric:write:{prefix}"),
            quotas: Vec::new(),
            token: None,
        };
        let mut written = Vec::new();
        for rel in files {
            let text = format!("{prefix}{}", rel.to_string_lossy());
            let path = ObjectPath::parse(&text)
                .map_err(|e| HandleError::Fabric(format!("output file {}: {e}", rel.display())))?;
            let (here, file, root) = (node.clone(), real_root.join(&rel), real_root.clone());
            let output = tokio::task::spawn_blocking(move || -> Result<Output, HandleError> {
                let mut opened = open_beneath(&root, &file)?;
                let len = opened.metadata().map_err(io(&file))?.len();
                let fabric = |e: String| HandleError::Fabric(e);
                if here.keeps(len).map_err(|r| fabric(r.message))? {
                    let mut bytes = Vec::new();
                    std::io::Read::read_to_end(
                        &mut std::io::Read::take(&mut opened, len),
                        &mut bytes,
                    )
                    .map_err(io(&file))?;
                    return Ok(Output::Kept(bytes));
                }
                here.store
                    .put_open(opened, &file)
                    .map(Output::Stored)
                    .map_err(|e| fabric(e.to_string()))
            })
            .await
            .map_err(|e| HandleError::Fabric(e.to_string()))??;
            match output {
                Output::Kept(bytes) => node.put_kept(&actor, &path, bytes, tags.clone()).await,
                Output::Stored(m) => node.put_version(&actor, &path, m.id(), tags.clone()).await,
            }
            .map_err(|r| HandleError::Fabric(format!("{path}: {}", r.message)))?;
            written.push(path.to_string());
        }
        Ok(written)
    }
}

/// A job's output file: small enough to be kept in the records, or stored in chunks.
enum Output {
    Kept(Vec<u8>),
    Stored(Manifest),
}

/// Where the directory `dir` really is, refusing one that is a link (whoever owns the
/// directory above could have put one there: the node must not read where it leads).
fn real_dir(dir: &Path) -> Result<PathBuf, HandleError> {
    let meta = std::fs::symlink_metadata(dir).map_err(io(dir))?;
    let parent = dir.parent().unwrap_or(Path::new("/"));
    let real_parent = std::fs::canonicalize(parent).map_err(io(parent))?;
    let real = std::fs::canonicalize(dir).map_err(io(dir))?;
    if !meta.file_type().is_dir() || real.parent() != Some(real_parent.as_path()) {
        return Err(HandleError::NotRegular {
            path: dir.to_owned(),
        });
    }
    Ok(real)
}

/// The regular files under `root` (relative paths, sorted), not following links; at most
/// [`WRITE_FILES_MAX`].
fn output_files(root: &Path) -> Result<Vec<PathBuf>, HandleError> {
    let mut out = Vec::new();
    if !root.exists() {
        return Ok(out);
    }
    let mut dirs = vec![PathBuf::new()];
    while let Some(rel) = dirs.pop() {
        let here = root.join(&rel);
        for entry in std::fs::read_dir(&here).map_err(io(&here))? {
            let entry = entry.map_err(io(&here))?;
            let kind = entry.file_type().map_err(io(&entry.path()))?;
            let name = rel.join(entry.file_name());
            if kind.is_dir() {
                dirs.push(name);
            } else if kind.is_file() {
                out.push(name);
                if out.len() > WRITE_FILES_MAX {
                    return Err(HandleError::TooMuch(format!(
                        "the job left more than {WRITE_FILES_MAX} files in its output"
                    )));
                }
            }
            // Links, sockets and devices are not output.
        }
    }
    out.sort();
    Ok(out)
}

/// Opens `file` for reading without following a link at its end, and checks that what was
/// opened really is a regular file under `root` (a directory on the way swapped for a link
/// would lead elsewhere).
fn open_beneath(root: &Path, file: &Path) -> Result<std::fs::File, HandleError> {
    use std::os::unix::fs::OpenOptionsExt;
    let opened = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(file)
        .map_err(io(file))?;
    let meta = opened.metadata().map_err(io(file))?;
    let real_root = std::fs::canonicalize(root).map_err(io(root))?;
    let fd = std::os::fd::AsRawFd::as_raw_fd(&opened);
    let real = std::fs::read_link(format!("/proc/self/fd/{fd}")).map_err(io(file))?;
    if !meta.is_file() || !real.starts_with(&real_root) {
        return Err(HandleError::NotRegular {
            path: file.to_owned(),
        });
    }
    Ok(opened)
}

impl FabricNode {
    /// Writes a version's content to `dest` with `mode`: from this node's store when it holds
    /// all of it, else fetched from each replica in turn (and kept here). A corrupt copy here
    /// is dropped and fetched again.
    pub(crate) async fn copy_out(
        &self,
        content: &Content,
        dest: &Path,
        mode: u32,
    ) -> Result<(), String> {
        if let Some(bytes) = &content.bytes {
            return crate::chunks::write_new(bytes.clone(), dest, mode)
                .await
                .map_err(|e| e.to_string());
        }
        let id = ChunkId(content.manifest);
        let mut failures = Vec::new();
        let others = content
            .replicas
            .iter()
            .filter(|n| **n != self.host.node_id)
            .map(Some);
        for source in std::iter::once(None).chain(others) {
            let manifest = match source {
                None => match self.local_manifest(id).await {
                    Some(m) => m,
                    None => continue,
                },
                Some(node) => {
                    let Some(addr) = self.peer_addr_soon(node).await else {
                        failures.push(format!("{node}: address unknown"));
                        continue;
                    };
                    match self.store.fetch(&self.host.link, addr, id).await {
                        Ok((m, _)) => m,
                        Err(e) => {
                            failures.push(format!("{node}: {e}"));
                            continue;
                        }
                    }
                }
            };
            match self.store.assemble(&Arc::new(manifest), dest, mode).await {
                Ok(()) => return Ok(()),
                Err(crate::chunks::StoreError::Chunk(ChunkError::Corrupt { id, .. })) => {
                    tracing::warn!(chunk = %id, "removing a corrupt fabric chunk");
                    let _ = self.store.remove(&id);
                    failures.push(format!("chunk {id} was corrupt here"));
                }
                Err(e) => failures.push(e.to_string()),
            }
        }
        Err(format!(
            "no copy could be read ({})",
            if failures.is_empty() {
                "no replica is known".to_string()
            } else {
                failures.join("; ")
            }
        ))
    }

    /// The manifest `id`, if this node holds it and every chunk of it.
    async fn local_manifest(&self, id: ChunkId) -> Option<Manifest> {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || {
            let manifest = Manifest::decode(&store.get(&id).ok()?).ok()?;
            manifest
                .chunk_ids()
                .iter()
                .all(|c| store.has(c))
                .then_some(manifest)
        })
        .await
        .ok()
        .flatten()
    }
}
