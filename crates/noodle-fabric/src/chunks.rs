//! A node's chunk store and how chunks move between nodes: what a client uploads
//! ([`ChunkStore::missing`], [`ChunkStore::put`]: `noodle run --file`'s `/v1/chunks`, the
//! fabric's `noodle put`), the raw stream other members open to fetch chunks (a list of ids
//! in, the chunks out, one message each: [`ChunkStore::serve_get`]), fetching the chunks of a
//! manifest from another node ([`ChunkStore::fetch`]), and [`ChunkStore::materialize`], which
//! makes a file appear in a directory (a job's files in its working directory).
//!
//! The storage model is `noodle-chunks`: files are manifests of blake3-named chunks, so what a
//! node already has is never shipped again, and every byte that arrives is checked against its
//! name before it is stored. This module only moves chunks and checks inputs; it must never write
//! outside the job's working directory and never trust a length, count or name from the network
//! without bounding it first.
//!
//! Every call that touches the disk is blocking except [`ChunkStore::materialize`], which moves its
//! file work to `spawn_blocking`. [`ChunkStore`] is cheap to clone so that callers can do the same
//! with [`ChunkStore::missing`], [`ChunkStore::put`] and [`ChunkStore::read_get`].
//!
//! The store keeps manifests beside chunks; an uploaded object longer than a chunk is accepted
//! only if it decodes as a manifest.

use std::collections::HashMap;
use std::fs;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{StreamExt, TryStreamExt, stream};
use noodle_api::JobFile;
use noodle_chunks::{
    Checked, ChunkError, ChunkId, MAX_CHUNK_BYTES, MAX_OBJECT_BYTES, Manifest, ManifestError, Store,
};
use noodle_link::{Link, RecvStream, RemoteError, SendStream, recv_message, send_message};

/// The raw-stream method a member answers with the chunks it holds.
pub const METHOD_GET: &str = "chunks.get";
/// Bytes of one `chunks.get` request at most: a count (at most 5 bytes) and 32 bytes per id.
const GET_REQUEST_BYTES_MAX: usize = 5 + GET_IDS_MAX * 32;
/// Ids in one [`ChunkStore::missing`] call.
pub const MISSING_IDS_MAX: usize = 100_000;
/// Ids in one `chunks.get` request.
pub const GET_IDS_MAX: usize = 64;
/// Chunk bytes in one `chunks.get` answer: well under the link's 16 MiB frame limit, with room
/// for the encoding. A single chunk (4 MiB) or manifest (under 10 MiB) always fits alone.
pub const GET_ANSWER_BYTES_MAX: usize = 12 << 20;
/// `chunks.get` requests one materialisation keeps in flight: enough to fill a link while one
/// answer is being verified and written, with at most 48 MiB of answers in memory.
const FETCH_IN_FLIGHT: usize = 4;
/// Chunks read through this node being kept in the background at once; beyond that a chunk
/// read through is not kept.
const CACHE_WRITES_IN_FLIGHT: usize = 8;
/// Tries of one `chunks.get` request whose connection failed or timed out.
const FETCH_ATTEMPTS: u32 = 3;
/// First pause between those tries; doubled each time.
const FETCH_BACKOFF: Duration = Duration::from_millis(200);
/// Fetch-and-assemble rounds: the second one re-fetches a chunk found corrupt on disk.
const ASSEMBLE_ATTEMPTS: u32 = 2;
/// Longest job file name, and longest component of it (Linux's `PATH_MAX`, `NAME_MAX`).
const NAME_BYTES_MAX: usize = 4096;
const NAME_COMPONENT_BYTES_MAX: usize = 255;

/// Why a shipping call failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The caller's input is invalid (bad id, name, size, or bytes that do not match their id).
    #[error("{0}")]
    BadRequest(String),
    /// The origin does not have a chunk the file needs.
    #[error("origin is missing a chunk: {0}")]
    Missing(String),
    /// The origin could not be reached or answered nonsense.
    #[error("cannot fetch chunks: {0}")]
    Unreachable(String),
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error(transparent)]
    Chunk(#[from] ChunkError),
}

impl StoreError {
    /// The HTTP status the API answers this error with.
    pub fn http_status(&self) -> u16 {
        match self {
            StoreError::BadRequest(_) => 400,
            StoreError::Missing(_) => 404,
            StoreError::Unreachable(_) => 502,
            StoreError::Chunk(ChunkError::StoreFull { .. }) => 507,
            StoreError::Chunk(
                ChunkError::HashMismatch { .. }
                | ChunkError::ChunkTooLarge { .. }
                | ChunkError::Manifest(_),
            ) => 400,
            StoreError::Io { .. } | StoreError::Chunk(_) => 500,
        }
    }
}

fn io_at(path: &Path) -> impl FnOnce(io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Runs blocking file work off the async threads; `path` names the work in the error if the
/// task dies.
async fn blocking<T: Send + 'static>(
    path: &Path,
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| StoreError::Io {
            path: path.to_owned(),
            source: io::Error::other(format!("blocking task failed: {e}")),
        })?
}

/// The chunk store of this node. Cheap to clone.
#[derive(Debug, Clone)]
pub struct ChunkStore {
    store: Arc<Store>,
    /// The raw-stream method the node's members answer with this store's chunks.
    method: &'static str,
    /// Copies of chunks read through this node being written in the background.
    cache_writes: Arc<tokio::sync::Semaphore>,
}

impl ChunkStore {
    /// Opens the store in `dir`, holding at most `cap_bytes`. Blocking: it scans the store
    /// once.
    pub fn open(
        dir: &Path,
        cap_bytes: u64,
        method: &'static str,
    ) -> Result<ChunkStore, StoreError> {
        let store = Store::open(dir.to_owned(), cap_bytes)?;
        Ok(ChunkStore {
            store: Arc::new(store),
            method,
            cache_writes: Arc::new(tokio::sync::Semaphore::new(CACHE_WRITES_IN_FLIGHT)),
        })
    }

    /// API: which of `ids` (hex) this node lacks, each once, in first-seen order. At most
    /// [`MISSING_IDS_MAX`] ids; a malformed one is refused by name. Blocking (a `stat` per id).
    pub fn missing(&self, ids: &[String]) -> Result<Vec<String>, StoreError> {
        if ids.len() > MISSING_IDS_MAX {
            return Err(StoreError::BadRequest(format!(
                "{} chunk ids asked for, more than {MISSING_IDS_MAX} per request",
                ids.len()
            )));
        }
        let parsed = ids
            .iter()
            .map(|s| s.parse::<ChunkId>())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| StoreError::BadRequest(e.to_string()))?;
        Ok(self
            .store
            .missing(&parsed)
            .into_iter()
            .map(|id| id.to_hex())
            .collect())
    }

    /// API: stores one uploaded chunk or manifest. `bytes` must hash to `id_hex` and be at most
    /// [`MAX_CHUNK_BYTES`], or at most [`MAX_MANIFEST_BYTES`] if they are a manifest. Blocking
    /// (hashes, writes and fsyncs up to a few MiB).
    pub fn put(&self, id_hex: &str, bytes: &[u8]) -> Result<(), StoreError> {
        let id = id_hex
            .parse::<ChunkId>()
            .map_err(|e| StoreError::BadRequest(e.to_string()))?;
        if bytes.len() > MAX_OBJECT_BYTES {
            return Err(StoreError::BadRequest(format!(
                "chunk {id} is {} bytes, more than {MAX_OBJECT_BYTES}",
                bytes.len()
            )));
        }
        let checked = Checked::new(id, bytes)
            .map_err(|_| StoreError::BadRequest(format!("chunk does not match its id {id}")))?;
        self.put_verified(&checked)?;
        Ok(())
    }

    /// Stores bytes checked against their id. Returns whether they were written.
    fn put_verified<B: AsRef<[u8]>>(&self, chunk: &Checked<B>) -> Result<bool, StoreError> {
        let (id, bytes) = (chunk.id(), chunk.data());
        if bytes.len() > MAX_CHUNK_BYTES {
            // Only a manifest may be this long: refuse anything else rather than keep it.
            Manifest::decode(bytes).map_err(|e| {
                StoreError::BadRequest(format!(
                    "chunk {id} is {} bytes, more than {MAX_CHUNK_BYTES}, and not a manifest: {e}",
                    bytes.len()
                ))
            })?;
        }
        Ok(self.store.put_checked(chunk)?)
    }

    /// Stores the open file `file` (named `label` in errors), every chunk and its manifest,
    /// durably; returns the manifest. Blocking.
    pub fn put_open(&self, file: fs::File, label: &Path) -> Result<Manifest, StoreError> {
        let len = file.metadata().map_err(io_at(label))?.len();
        self.put_reader(file, len, label)
    }

    /// Stores `len` bytes from `reader` (named `label` in errors), every chunk and its
    /// manifest, durably; returns the manifest. Blocking.
    pub fn put_reader(
        &self,
        reader: impl std::io::Read,
        len: u64,
        label: &Path,
    ) -> Result<Manifest, StoreError> {
        let mut chunker = noodle_chunks::Chunker::new(reader, len, label)?;
        while let Some(chunk) = chunker.next_chunk()? {
            self.store.put_checked(&chunk)?;
        }
        let manifest = chunker.finish()?;
        self.store.put(&manifest.id(), &manifest.encode())?;
        Ok(manifest)
    }

    /// Marks these stored chunks as just used, so that collection leaves them for another
    /// [`crate::FabricConfig::upload_grace`] (a new version refers to them now). Blocking.
    pub fn touch(&self, ids: &[ChunkId]) -> Result<(), StoreError> {
        let now = std::time::SystemTime::now();
        for id in ids {
            let path = self.store.chunk_path(id);
            fs::File::options()
                .write(true)
                .open(&path)
                .and_then(|f| f.set_modified(now))
                .map_err(io_at(&path))?;
        }
        Ok(())
    }

    /// Removes chunk `id` if it was last written at least `idle` ago; whether it did.
    /// Blocking.
    pub fn remove_if_idle(&self, id: &ChunkId, idle: std::time::Duration) -> bool {
        let path = self.store.chunk_path(id);
        let idle_enough = fs::metadata(&path)
            .and_then(|m| m.modified())
            .is_ok_and(|t| t.elapsed().is_ok_and(|age| age >= idle));
        idle_enough && self.store.remove(id).is_ok_and(|removed| removed)
    }

    /// The same store, served to members with `method` (another subsystem's chunks stream).
    pub fn with_method(&self, method: &'static str) -> ChunkStore {
        ChunkStore {
            store: self.store.clone(),
            method,
            cache_writes: self.cache_writes.clone(),
        }
    }

    /// Bytes stored.
    pub fn total_bytes(&self) -> u64 {
        self.store.total_bytes()
    }

    /// Every stored chunk with the time it was written. Blocking.
    pub fn stored(&self) -> Result<Vec<(ChunkId, std::time::SystemTime)>, StoreError> {
        Ok(self.store.stored()?)
    }

    pub fn has(&self, id: &ChunkId) -> bool {
        self.store.has(id)
    }

    /// Reads and verifies a stored chunk or manifest.
    pub fn get(&self, id: &ChunkId) -> Result<Vec<u8>, ChunkError> {
        self.store.get(id)
    }

    /// Removes a chunk found corrupt.
    pub fn remove(&self, id: &ChunkId) -> Result<(), ChunkError> {
        self.store.remove(id).map(|_| ())
    }

    /// What a `chunks.get` stream answers: `body` is a postcard `Vec<[u8; 32]>` of at most
    /// [`GET_IDS_MAX`] ids; the answer is their bytes, in the same order, at most
    /// [`GET_ANSWER_BYTES_MAX`] in all. Blocking (reads up to 12 MiB).
    pub fn read_get(&self, body: &[u8]) -> Result<Vec<Vec<u8>>, RemoteError> {
        let bad = |m: String| RemoteError::new(RemoteError::BAD_REQUEST, m);
        // Refuse more than the bound before decoding anything.
        if body.len() > GET_REQUEST_BYTES_MAX {
            return Err(bad(format!(
                "chunks.get body of {} bytes asks for more than {GET_IDS_MAX} chunks",
                body.len()
            )));
        }
        let ids: Vec<ChunkId> = postcard::from_bytes(body)
            .map_err(|e| bad(format!("unreadable chunks.get request: {e}")))?;
        if ids.len() > GET_IDS_MAX {
            return Err(bad(format!(
                "chunks.get asks for {} chunks, more than {GET_IDS_MAX}",
                ids.len()
            )));
        }
        let mut chunks = Vec::with_capacity(ids.len());
        let mut total_bytes = 0usize;
        for id in &ids {
            let data = match self.get(id) {
                Ok(data) => data,
                Err(ChunkError::NotFound(_)) => {
                    return Err(RemoteError::new(
                        RemoteError::NOT_FOUND,
                        format!("chunk {id} is not here"),
                    ));
                }
                Err(e @ ChunkError::Corrupt { .. }) => {
                    // Handled here: the chunk is dropped so that a fresh copy can be shipped in.
                    tracing::warn!(error = %e, "removing a corrupt chunk asked for by a member");
                    if let Err(e) = self.remove(id) {
                        tracing::warn!(error = %e, "could not remove a corrupt chunk");
                    }
                    return Err(RemoteError::new(
                        RemoteError::NOT_FOUND,
                        format!("chunk {id} is not here (the stored copy was corrupt)"),
                    ));
                }
                Err(e) => {
                    tracing::warn!(error = %e, chunk = %id, "cannot read a chunk for a member");
                    return Err(RemoteError::new(
                        RemoteError::INTERNAL,
                        format!("cannot read chunk {id}"),
                    ));
                }
            };
            total_bytes += data.len();
            if total_bytes > GET_ANSWER_BYTES_MAX {
                return Err(bad(format!(
                    "chunks.get asks for more than {GET_ANSWER_BYTES_MAX} bytes; ask for fewer \
                     chunks at a time"
                )));
            }
            chunks.push(data);
        }
        Ok(chunks)
    }

    /// Serves a `chunks.get` stream for another member: one request message (the ids), then
    /// the answer ([`send_get_answer`]).
    pub async fn serve_get(&self, mut send: SendStream, mut recv: RecvStream) {
        let answer = match recv_message(&mut recv, GET_REQUEST_BYTES_MAX).await {
            Ok(Some(body)) => {
                let ship = self.clone();
                tokio::task::spawn_blocking(move || ship.read_get(&body))
                    .await
                    .unwrap_or_else(|e| Err(RemoteError::new(RemoteError::INTERNAL, e.to_string())))
            }
            Ok(None) => Err(RemoteError::new(
                RemoteError::BAD_REQUEST,
                "no chunks.get request",
            )),
            Err(e) => Err(RemoteError::new(RemoteError::BAD_REQUEST, e.to_string())),
        };
        send_get_answer(&mut send, answer).await;
    }

    /// On the executing node: makes `file` appear at `workdir/<file.name>` (mode 0755 if
    /// executable, else 0644), fetching from `origin` over `link` whatever this node lacks.
    /// Every chunk is verified against its id before it is stored; the file is written
    /// atomically, so a failed call leaves no partial file. Returns the bytes fetched over the
    /// network: 0 when everything was already here.
    pub async fn materialize(
        &self,
        link: &Link,
        origin: SocketAddr,
        file: &JobFile,
        workdir: &Path,
    ) -> Result<u64, StoreError> {
        let started = Instant::now();
        let rel = validate_name(&file.name)?;
        let manifest_id = file.manifest.parse::<ChunkId>().map_err(|e| {
            StoreError::BadRequest(format!("job file {:?}: bad manifest id: {e}", file.name))
        })?;
        let dest = workdir.join(rel);
        let (manifest, mut fetched_bytes) = self.manifest(link, origin, manifest_id).await?;
        if manifest.size() != file.bytes {
            return Err(StoreError::BadRequest(format!(
                "job file {:?} says {} bytes but its manifest {manifest_id} describes {}",
                file.name,
                file.bytes,
                manifest.size()
            )));
        }
        let manifest = Arc::new(manifest);
        let mut attempt = 1;
        loop {
            fetched_bytes += self.fetch_missing(link, origin, &manifest).await?;
            let mode = if file.executable { 0o755 } else { 0o644 };
            match self.assemble(&manifest, &dest, mode).await {
                Ok(()) => break,
                Err(StoreError::Chunk(ChunkError::Corrupt { id, .. }))
                    if attempt < ASSEMBLE_ATTEMPTS =>
                {
                    tracing::warn!(chunk = %id, "stored chunk is corrupt; fetching it again");
                    let ship = self.clone();
                    blocking(&dest, move || Ok(ship.remove(&id)?)).await?;
                }
                // A chunk that went away between the fetch and the assembly: fetch again.
                Err(StoreError::Chunk(ChunkError::Missing(ids))) if attempt < ASSEMBLE_ATTEMPTS => {
                    tracing::warn!(
                        chunks = ids.len(),
                        "chunks went missing before assembly; fetching them again"
                    );
                }
                Err(e) => return Err(e),
            }
            attempt += 1;
        }
        metrics::counter!("noodle_ship_fetched_bytes_total").increment(fetched_bytes);
        tracing::info!(
            file = %file.name,
            bytes = manifest.size(),
            fetched_bytes,
            %origin,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "job file materialized"
        );
        Ok(fetched_bytes)
    }

    /// Makes this store hold the manifest `id` and every chunk of it, fetching from `origin`
    /// over `link` whatever it lacks, each verified against its id and stored durably. Returns
    /// the manifest and the bytes fetched.
    pub async fn fetch(
        &self,
        link: &Link,
        origin: SocketAddr,
        id: ChunkId,
    ) -> Result<(Manifest, u64), StoreError> {
        let (manifest, mut fetched) = self.manifest(link, origin, id).await?;
        let manifest = Arc::new(manifest);
        fetched += self.fetch_missing(link, origin, &manifest).await?;
        Ok((Arc::unwrap_or_clone(manifest), fetched))
    }

    /// The manifest `id`, from the store or else from `origin` (then kept). Returns it and the
    /// bytes fetched for it.
    pub async fn manifest(
        &self,
        link: &Link,
        origin: SocketAddr,
        id: ChunkId,
    ) -> Result<(Manifest, u64), StoreError> {
        let label = PathBuf::from(format!("manifest {id}"));
        let ship = self.clone();
        let local = blocking(&label, move || {
            if !ship.has(&id) {
                return Ok(None);
            }
            match ship.get(&id) {
                Ok(bytes) => Ok(Some(bytes)),
                Err(ChunkError::NotFound(_)) => Ok(None),
                Err(e @ ChunkError::Corrupt { .. }) => {
                    tracing::warn!(error = %e, "stored manifest is corrupt; fetching it again");
                    ship.remove(&id)?;
                    Ok(None)
                }
                Err(e) => Err(e.into()),
            }
        })
        .await?;
        let (bytes, fetched_bytes) = match local {
            Some(bytes) => (bytes, 0),
            None => {
                let mut answer = request_chunks(link, origin, &[id], self.method).await?;
                let ship = self.clone();
                let bytes = blocking(&label, move || {
                    let checked = Checked::new(id, answer.pop().unwrap_or_default())?;
                    ship.put_verified(&checked)?;
                    Ok(checked.into_data())
                })
                .await?;
                let len = bytes.len() as u64;
                (bytes, len)
            }
        };
        let manifest = Manifest::decode(&bytes).map_err(|e: ManifestError| {
            StoreError::BadRequest(format!("{id} does not name a manifest: {e}"))
        })?;
        Ok((manifest, fetched_bytes))
    }

    /// Fetches the chunks of `manifest` this node lacks from `origin`, a few requests at a time.
    /// Returns the bytes fetched.
    async fn fetch_missing(
        &self,
        link: &Link,
        origin: SocketAddr,
        manifest: &Arc<Manifest>,
    ) -> Result<u64, StoreError> {
        let label = PathBuf::from(format!("manifest {}", manifest.id()));
        let ship = self.clone();
        let m = manifest.clone();
        let batches = blocking(&label, move || {
            let missing = ship.store.missing(&m.chunk_ids());
            Ok(plan_batches(&m, &missing))
        })
        .await?;
        if batches.is_empty() {
            return Ok(0);
        }
        tracing::debug!(batches = batches.len(), %origin, "fetching chunks");
        stream::iter(batches)
            .map(|batch| self.fetch_batch(link, origin, batch))
            .buffer_unordered(FETCH_IN_FLIGHT)
            .try_fold(0u64, |total, n| async move { Ok(total + n) })
            .await
    }

    /// Chunk `id` (of `len` bytes; `None`: a manifest) from `origin`, checked, for a read: it
    /// is returned before a copy is kept here, which is written (durably, as any) in the
    /// background, unless [`CACHE_WRITES_IN_FLIGHT`] copies are being written already.
    pub async fn read_through(
        &self,
        link: &Link,
        origin: SocketAddr,
        id: ChunkId,
        len: Option<u32>,
    ) -> Result<bytes::Bytes, StoreError> {
        let mut answer = request_chunks(link, origin, &[id], self.method).await?;
        let data = bytes::Bytes::from(answer.pop().unwrap_or_default());
        let label = PathBuf::from(format!("chunk {id} from {origin}"));
        let checked = blocking(&label, move || Ok(Checked::new(id, data)))
            .await?
            .inspect_err(|_| {
                tracing::warn!(chunk = %id, %origin, "origin sent a chunk that does not match its id; refused");
            })?;
        let data = checked.data();
        if let Some(len) = len.filter(|l| u64::from(*l) != data.len() as u64) {
            return Err(ChunkError::LengthMismatch {
                id,
                actual_bytes: data.len() as u64,
                manifest_bytes: u64::from(len),
            }
            .into());
        }
        if let Ok(permit) = self.cache_writes.clone().try_acquire_owned() {
            let (ship, copy) = (self.clone(), checked.clone());
            tokio::task::spawn_blocking(move || {
                let _permit = permit;
                if let Err(e) = ship.put_verified(&copy) {
                    tracing::debug!(chunk = %id, error = %e, "keeping a chunk read through");
                }
            });
        }
        Ok(checked.into_data())
    }

    /// Fetches, verifies and stores one batch. Returns its bytes.
    pub async fn fetch_batch(
        &self,
        link: &Link,
        origin: SocketAddr,
        batch: Vec<(ChunkId, u32)>,
    ) -> Result<u64, StoreError> {
        let ids: Vec<ChunkId> = batch.iter().map(|&(id, _)| id).collect();
        let entries = request_chunks(link, origin, &ids, self.method).await?;
        let ship = self.clone();
        let label = PathBuf::from(format!("chunks from {origin}"));
        blocking(&label, move || {
            let mut total = 0u64;
            for (&(id, len), data) in batch.iter().zip(&entries) {
                let checked = Checked::new(id, data).inspect_err(|_| {
                    // Logged here because the error itself cannot say where the chunk came from.
                    tracing::warn!(chunk = %id, %origin, "origin sent a chunk that does not match its id; refused");
                })?;
                if data.len() as u64 != u64::from(len) {
                    return Err(ChunkError::LengthMismatch {
                        id,
                        actual_bytes: data.len() as u64,
                        manifest_bytes: u64::from(len),
                    }
                    .into());
                }
                ship.put_verified(&checked)?;
                total += data.len() as u64;
            }
            Ok(total)
        })
        .await
    }

    /// Writes the file atomically (from chunks all in the store) and sets its mode.
    pub(crate) async fn assemble(
        &self,
        manifest: &Arc<Manifest>,
        dest: &Path,
        mode: u32,
    ) -> Result<(), StoreError> {
        let ship = self.clone();
        let manifest = manifest.clone();
        let path = dest.to_owned();
        blocking(dest, move || {
            if let Some(parent) = path.parent() {
                fs::create_dir_all(parent).map_err(io_at(parent))?;
            }
            ship.store.assemble(&manifest, &path, |_, _| {})?;
            set_mode(&path, mode)
        })
        .await
    }
}

/// Writes `bytes` (an object kept in the records) as the new file `dest` with `mode`.
pub(crate) async fn write_new(bytes: Vec<u8>, dest: &Path, mode: u32) -> Result<(), StoreError> {
    let path = dest.to_owned();
    blocking(dest, move || {
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).map_err(io_at(parent))?;
        }
        let mut file = fs::File::create_new(&path).map_err(io_at(&path))?;
        std::io::Write::write_all(&mut file, &bytes).map_err(io_at(&path))?;
        set_mode(&path, mode)
    })
    .await
}

#[cfg(unix)]
fn set_mode(path: &Path, mode: u32) -> Result<(), StoreError> {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).map_err(io_at(path))
}

#[cfg(not(unix))]
fn set_mode(_path: &Path, _mode: u32) -> Result<(), StoreError> {
    Ok(())
}

/// Checks a job file name and returns it as a relative path: components separated by `/`, none
/// empty, `.` or `..`, none longer than 255 bytes, no NUL, not absolute.
pub fn validate_name(name: &str) -> Result<PathBuf, StoreError> {
    let bad = |why: &str| {
        let shown: String = name.chars().take(80).collect();
        StoreError::BadRequest(format!("job file name {shown:?} {why}"))
    };
    if name.is_empty() {
        return Err(bad("is empty"));
    }
    if name.len() > NAME_BYTES_MAX {
        return Err(bad(&format!("is longer than {NAME_BYTES_MAX} bytes")));
    }
    if name.starts_with('/') {
        return Err(bad(
            "is absolute; give a path relative to the job's directory",
        ));
    }
    if name.contains('\0') {
        return Err(bad("contains a NUL byte"));
    }
    let mut path = PathBuf::new();
    for component in name.split('/') {
        match component {
            "" => return Err(bad("has an empty component")),
            "." | ".." => return Err(bad("may not contain `.` or `..`")),
            c if c.len() > NAME_COMPONENT_BYTES_MAX => {
                return Err(bad(&format!(
                    "has a component longer than {NAME_COMPONENT_BYTES_MAX} bytes"
                )));
            }
            c => path.push(c),
        }
    }
    Ok(path)
}

/// Groups the chunks in `missing` (lengths from `manifest`) into `chunks.get` requests of at
/// most [`GET_IDS_MAX`] ids and [`GET_ANSWER_BYTES_MAX`] bytes, in file order.
fn plan_batches(manifest: &Manifest, missing: &[ChunkId]) -> Vec<Vec<(ChunkId, u32)>> {
    let lens: HashMap<ChunkId, u32> = manifest.chunks().iter().copied().collect();
    let mut batches = Vec::new();
    let mut batch: Vec<(ChunkId, u32)> = Vec::new();
    let mut batch_bytes = 0usize;
    for id in missing {
        // Every id comes from the manifest's own list; a manifest chunk is at most 4 MiB.
        let Some(&len) = lens.get(id) else { continue };
        let len_bytes = len as usize;
        if !batch.is_empty()
            && (batch.len() == GET_IDS_MAX || batch_bytes + len_bytes > GET_ANSWER_BYTES_MAX)
        {
            batches.push(std::mem::take(&mut batch));
            batch_bytes = 0;
        }
        batch.push((*id, len));
        batch_bytes += len_bytes;
    }
    if !batch.is_empty() {
        batches.push(batch);
    }
    batches
}

/// Answers a `chunks.get` stream: a status message (postcard `Result<u32, (u16, String)>`: how
/// many chunks follow, or why none do), then one message per chunk, in the order asked.
pub async fn send_get_answer(send: &mut SendStream, answer: Result<Vec<Vec<u8>>, RemoteError>) {
    let status: Result<u32, (u16, String)> = match &answer {
        Ok(chunks) => Ok(chunks.len() as u32),
        Err(e) => Err((e.code, e.message.clone())),
    };
    let Ok(status) = postcard::to_allocvec(&status) else {
        return;
    };
    if send_message(send, &status).await.is_err() {
        return;
    }
    for chunk in answer.iter().flatten() {
        if send_message(send, chunk).await.is_err() {
            return;
        }
    }
    let _ = send.finish();
}

/// One `chunks.get` stream to `origin`: the chunks of `ids`, in order.
async fn get_chunks_once(
    link: &Link,
    origin: SocketAddr,
    method: &str,
    request: &[u8],
    count: usize,
) -> Result<Vec<Vec<u8>>, GetError> {
    let broken = |e: &dyn std::fmt::Display| GetError::Broken(e.to_string());
    let (mut send, mut recv) = link
        .open_stream(origin, method)
        .await
        .map_err(|e| broken(&e))?;
    send_message(&mut send, request)
        .await
        .map_err(|e| broken(&e))?;
    let _ = send.finish();
    let status = recv_message(&mut recv, 64 + 4096)
        .await
        .map_err(|e| broken(&e))?
        .ok_or_else(|| GetError::Broken("the stream ended before the answer".into()))?;
    let status: Result<u32, (u16, String)> = postcard::from_bytes(&status).map_err(|e| {
        GetError::Refused(format!(
            "{origin} sent an unreadable chunks.get answer: {e}"
        ))
    })?;
    match status {
        Err((code, message)) if code == RemoteError::NOT_FOUND => {
            return Err(GetError::Missing(format!("{origin}: {message}")));
        }
        Err((RemoteError::UNAVAILABLE, message)) => return Err(GetError::Broken(message)),
        Err((_, message)) => return Err(GetError::Refused(format!("{origin}: {message}"))),
        Ok(n) if n as usize != count => {
            return Err(GetError::Refused(format!(
                "{origin} answered chunks.get with {n} chunks instead of {count}"
            )));
        }
        Ok(_) => {}
    }
    let mut chunks = Vec::with_capacity(count);
    for _ in 0..count {
        let chunk = recv_message(&mut recv, MAX_OBJECT_BYTES)
            .await
            .map_err(|e| broken(&e))?
            .ok_or_else(|| GetError::Broken("the stream ended inside the answer".into()))?;
        chunks.push(chunk);
    }
    Ok(chunks)
}

/// Why one `chunks.get` stream gave no chunks.
enum GetError {
    /// The origin lacks a chunk.
    Missing(String),
    /// The connection or stream broke: worth another try.
    Broken(String),
    /// The origin refused or answered nonsense.
    Refused(String),
}

/// Fetches the chunks of `ids` from `origin` over a `chunks.get` stream, trying a broken
/// stream again a few times.
async fn request_chunks(
    link: &Link,
    origin: SocketAddr,
    ids: &[ChunkId],
    method: &str,
) -> Result<Vec<Vec<u8>>, StoreError> {
    let request = postcard::to_allocvec(ids)
        .map_err(|e| StoreError::Unreachable(format!("cannot encode a chunks.get request: {e}")))?;
    let mut attempt = 1;
    loop {
        let err = match get_chunks_once(link, origin, method, &request, ids.len()).await {
            Ok(chunks) => return Ok(chunks),
            Err(GetError::Missing(m)) => return Err(StoreError::Missing(m)),
            Err(GetError::Refused(m)) => return Err(StoreError::Unreachable(m)),
            Err(GetError::Broken(e)) => e,
        };
        if attempt >= FETCH_ATTEMPTS {
            return Err(StoreError::Unreachable(format!("{origin}: {err}")));
        }
        tracing::debug!(error = %err, attempt, "chunks.get failed; trying again");
        tokio::time::sleep(FETCH_BACKOFF * 2u32.pow(attempt - 1)).await;
        attempt += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use noodle_link::{JoinPeer, LinkConfig, LinkEvent, Peer, Service, ServiceFuture, TlsMaterial};
    use noodle_security::{ClusterCa, NodeKey};
    use std::collections::HashSet;

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    const CAP_BYTES: u64 = 1 << 30;

    /// Pseudo-random bytes (blake3 in XOF mode): incompressible, so chunking cuts them like a
    /// real binary.
    fn random_bytes(seed: &[u8], len: usize) -> Vec<u8> {
        let mut out = vec![0u8; len];
        blake3::Hasher::new()
            .update(seed)
            .finalize_xof()
            .fill(&mut out);
        out
    }

    /// Answers `chunks.get` from a [`ChunkStore`]; when `forge` is set, flips a byte in every chunk
    /// longer than 1 KiB (manifests of small files stay intact, so the chunk check is what trips).
    struct Origin {
        ship: ChunkStore,
        forge: bool,
    }

    impl Service for Origin {
        fn call(&self, _from: Peer, method: &str, _body: Bytes) -> ServiceFuture {
            let m = format!("unknown method `{method}`");
            Box::pin(async move { Err(RemoteError::new(RemoteError::NOT_FOUND, m)) })
        }
        fn is_stream(&self, method: &str) -> bool {
            method == METHOD_GET
        }
        fn stream(
            &self,
            _from: Peer,
            _method: &str,
            mut send: SendStream,
            mut recv: RecvStream,
        ) -> futures_util::future::BoxFuture<'static, ()> {
            let ship = self.ship.clone();
            let forge = self.forge;
            if !forge {
                return Box::pin(async move { ship.serve_get(send, recv).await });
            }
            Box::pin(async move {
                let Ok(Some(body)) = recv_message(&mut recv, GET_REQUEST_BYTES_MAX).await else {
                    return;
                };
                let mut answer = ship.read_get(&body);
                for entry in answer.iter_mut().flatten().filter(|e| e.len() > 1024) {
                    entry[0] ^= 0xff;
                }
                send_get_answer(&mut send, answer).await;
            })
        }
        fn join(&self, _peer: JoinPeer, _body: Bytes) -> ServiceFuture {
            Box::pin(async { Err(RemoteError::new(RemoteError::FORBIDDEN, "test")) })
        }
        fn datagram(&self, _from: &Peer, _data: Bytes) {}
        fn event(&self, _event: LinkEvent) {}
    }

    fn link(
        ca: &ClusterCa,
        name: &str,
        service: Arc<dyn Service>,
    ) -> Result<Link, Box<dyn std::error::Error>> {
        let key = NodeKey::generate()?;
        let tls = TlsMaterial {
            ca: ca.cert_der().clone(),
            cert: ca.issue_node_cert(
                name,
                &key.public_key_raw(),
                noodle_security::NODE_CERT_TTL,
            )?,
            key: key.private_key_der(),
        };
        let mut cfg = LinkConfig::new("127.0.0.1:0".parse()?);
        // Unoptimised test builds on a busy machine are slow; the default 5 s is meant for release.
        cfg.request_timeout = Duration::from_secs(30);
        Ok(Link::bind(cfg, &tls, service)?)
    }

    /// Puts `data` into `ship` as a file (chunks and manifest) and returns its manifest.
    fn put_file(
        ship: &ChunkStore,
        dir: &Path,
        data: &[u8],
    ) -> Result<Manifest, Box<dyn std::error::Error>> {
        let src = dir.join("src.bin");
        fs::write(&src, data)?;
        let manifest = ship.store.put_file(&src, |_, _| {})?;
        ship.put(&manifest.id().to_hex(), &manifest.encode())?;
        Ok(manifest)
    }

    fn job_file(name: &str, manifest: &Manifest, executable: bool) -> JobFile {
        JobFile {
            name: name.to_owned(),
            manifest: manifest.id().to_hex(),
            executable,
            bytes: manifest.size(),
        }
    }

    #[cfg(unix)]
    fn mode_of(path: &Path) -> Result<u32, io::Error> {
        use std::os::unix::fs::PermissionsExt;
        Ok(fs::metadata(path)?.permissions().mode() & 0o777)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn ship_over_real_links() -> TestResult {
        let tmp = tempfile::tempdir()?;
        let ca = ClusterCa::generate("ship-test")?;
        let origin_ship = ChunkStore::open(&tmp.path().join("origin"), CAP_BYTES, METHOD_GET)?;
        let data = random_bytes(b"ship", 5_000_000);
        let manifest = put_file(&origin_ship, tmp.path(), &data)?;
        assert!(
            manifest.chunks().len() >= 3,
            "want several chunks, got {}",
            manifest.chunks().len()
        );

        let origin = link(
            &ca,
            "origin",
            Arc::new(Origin {
                ship: origin_ship.clone(),
                forge: false,
            }),
        )?;
        let forger = link(
            &ca,
            "forger",
            Arc::new(Origin {
                ship: origin_ship.clone(),
                forge: true,
            }),
        )?;
        let idle = Arc::new(Origin {
            ship: ChunkStore::open(&tmp.path().join("idle"), CAP_BYTES, METHOD_GET)?,
            forge: false,
        });
        let exec = link(&ca, "exec", idle)?;

        // First run: everything is fetched, the file is exact and executable.
        let ship = ChunkStore::open(&tmp.path().join("exec"), CAP_BYTES, METHOD_GET)?;
        let workdir = tmp.path().join("job1");
        let file = job_file("bin/prog", &manifest, true);
        let fetched = ship
            .materialize(&exec, origin.local_addr(), &file, &workdir)
            .await?;
        let manifest_len = manifest.encode().len() as u64;
        assert_eq!(fetched, data.len() as u64 + manifest_len);
        let dest = workdir.join("bin/prog");
        assert!(fs::read(&dest)? == data, "materialized bytes differ");
        #[cfg(unix)]
        assert_eq!(mode_of(&dest)?, 0o755);

        // Second run, even under another name: nothing crosses the network.
        let workdir2 = tmp.path().join("job2");
        let file2 = job_file("data.csv", &manifest, false);
        assert_eq!(
            ship.materialize(&exec, origin.local_addr(), &file2, &workdir2)
                .await?,
            0
        );
        assert!(fs::read(workdir2.join("data.csv"))? == data);
        #[cfg(unix)]
        assert_eq!(mode_of(&workdir2.join("data.csv"))?, 0o644);

        // A forging origin: the first bad chunk is refused and no file appears.
        let fresh = ChunkStore::open(&tmp.path().join("fresh"), CAP_BYTES, METHOD_GET)?;
        let workdir3 = tmp.path().join("job3");
        let err = fresh
            .materialize(&exec, forger.local_addr(), &file, &workdir3)
            .await
            .err()
            .ok_or("a forged chunk was accepted")?;
        assert!(
            matches!(err, StoreError::Chunk(ChunkError::HashMismatch { .. })),
            "{err}"
        );
        assert!(!workdir3.join("bin/prog").exists());
        let missing = fresh.missing(
            &manifest
                .chunk_ids()
                .iter()
                .map(ChunkId::to_hex)
                .collect::<Vec<_>>(),
        )?;
        assert_eq!(
            missing.len(),
            manifest.chunks().len(),
            "a forged chunk was stored"
        );

        // An origin that lost a chunk: Missing, naming it.
        let lost = manifest.chunks()[1].0;
        origin_ship.store.remove(&lost)?;
        let err = fresh
            .materialize(&exec, origin.local_addr(), &file, &workdir3)
            .await
            .err()
            .ok_or("materialized without a chunk")?;
        assert!(
            matches!(&err, StoreError::Missing(m) if m.contains(&lost.to_hex())),
            "{err}"
        );

        // A bad name is refused before anything is fetched.
        let evil = job_file("../x", &manifest, false);
        let err = fresh
            .materialize(&exec, origin.local_addr(), &evil, &workdir3)
            .await
            .err()
            .ok_or("`../x` was accepted")?;
        assert!(matches!(err, StoreError::BadRequest(_)), "{err}");
        assert!(!tmp.path().join("x").exists());

        exec.shutdown().await;
        origin.shutdown().await;
        forger.shutdown().await;
        Ok(())
    }

    /// The node's job loop spawns materialisation as a task: its future must be `Send`.
    #[allow(dead_code)]
    fn ship_materialize_is_send(
        ship: &ChunkStore,
        link: &Link,
        origin: SocketAddr,
        file: &JobFile,
    ) {
        fn send<T: Send>(_: &T) {}
        send(&ship.materialize(link, origin, file, Path::new("/nonexistent")));
    }

    #[test]
    fn ship_names_are_checked() {
        for good in [
            "prog",
            "data.csv",
            "bin/prog",
            "a/b/c.txt",
            ".hidden",
            "..dots",
        ] {
            assert!(validate_name(good).is_ok(), "{good:?} refused");
        }
        let long = "a".repeat(256);
        let long_path = format!("a/{long}");
        for bad in [
            "",
            "/etc/passwd",
            "../x",
            "a/../../x",
            "a//b",
            "a/",
            "./a",
            "a/.",
            "a\0b",
            &long,
            &long_path,
        ] {
            assert!(
                matches!(validate_name(bad), Err(StoreError::BadRequest(_))),
                "{bad:?} accepted"
            );
        }
        assert!(validate_name(&"a".repeat(255)).is_ok());
    }

    #[test]
    fn ship_api_missing_and_put() -> TestResult {
        let tmp = tempfile::tempdir()?;
        let ship = ChunkStore::open(tmp.path(), CAP_BYTES, METHOD_GET)?;
        let data = b"hello chunk".to_vec();
        let id = ChunkId::of(&data).to_hex();
        let other = ChunkId::of(b"other").to_hex();
        assert_eq!(
            ship.missing(&[id.clone(), other.clone(), id.clone()])?,
            vec![id.clone(), other.clone()]
        );
        ship.put(&id, &data)?;
        assert_eq!(
            ship.missing(&[id.clone(), other.clone()])?,
            vec![other.clone()]
        );

        let err = ship
            .missing(&[id.clone(), "nothex".into()])
            .err()
            .ok_or("bad hex accepted")?;
        assert!(
            matches!(&err, StoreError::BadRequest(m) if m.contains("nothex")),
            "{err}"
        );
        let too_many = vec![id.clone(); MISSING_IDS_MAX + 1];
        assert!(matches!(
            ship.missing(&too_many),
            Err(StoreError::BadRequest(_))
        ));

        let err = ship
            .put(&other, &data)
            .err()
            .ok_or("mismatched chunk accepted")?;
        assert!(
            matches!(&err, StoreError::BadRequest(m) if m.contains("does not match its id")),
            "{err}"
        );
        assert!(matches!(
            ship.put("zz", &data),
            Err(StoreError::BadRequest(_))
        ));
        let huge = vec![0u8; MAX_OBJECT_BYTES + 1];
        let huge_id = ChunkId::of(&huge).to_hex();
        assert!(matches!(
            ship.put(&huge_id, &huge),
            Err(StoreError::BadRequest(_))
        ));
        // Longer than a chunk but not a manifest: refused.
        let big = vec![7u8; MAX_CHUNK_BYTES + 1];
        let big_id = ChunkId::of(&big).to_hex();
        assert!(matches!(
            ship.put(&big_id, &big),
            Err(StoreError::BadRequest(_))
        ));
        Ok(())
    }

    #[test]
    fn ship_large_manifest_is_kept_in_the_store() -> TestResult {
        let tmp = tempfile::tempdir()?;
        let ship = ChunkStore::open(tmp.path(), CAP_BYTES, METHOD_GET)?;
        // A manifest longer than a chunk: 130 000 minimum-size chunks (never stored).
        let n = 130_000u32;
        let len = noodle_chunks::MIN_CHUNK_BYTES as u32;
        let chunks = (0..n)
            .map(|i| (ChunkId::of(&i.to_le_bytes()), len))
            .collect();
        let manifest = Manifest::new(u64::from(n) * u64::from(len), chunks)?;
        let bytes = manifest.encode();
        assert!(bytes.len() > MAX_CHUNK_BYTES);
        let id = manifest.id();
        assert_eq!(ship.missing(&[id.to_hex()])?, vec![id.to_hex()]);
        ship.put(&id.to_hex(), &bytes)?;
        assert!(ship.missing(&[id.to_hex()])?.is_empty());
        let body = postcard::to_allocvec(&vec![id])?;
        let answer = ship.read_get(&body).map_err(|e| e.message)?;
        assert!(answer == vec![bytes.clone()]);
        // Survives a restart, and counts against the cap.
        drop(ship);
        let ship = ChunkStore::open(tmp.path(), CAP_BYTES, METHOD_GET)?;
        assert!(ship.missing(&[id.to_hex()])?.is_empty());
        assert!(ship.store.total_bytes() >= bytes.len() as u64);
        let small = ChunkStore::open(&tmp.path().join("small"), 1 << 20, METHOD_GET)?;
        assert!(matches!(
            small.put(&id.to_hex(), &bytes),
            Err(StoreError::Chunk(ChunkError::StoreFull { .. }))
        ));
        Ok(())
    }

    #[test]
    fn ship_read_get_bounds_and_order() -> TestResult {
        let tmp = tempfile::tempdir()?;
        let ship = ChunkStore::open(tmp.path(), CAP_BYTES, METHOD_GET)?;
        let a = random_bytes(b"a", 4 << 20);
        let b = random_bytes(b"b", 300);
        let (ia, ib) = (ChunkId::of(&a), ChunkId::of(&b));
        ship.put(&ia.to_hex(), &a)?;
        ship.put(&ib.to_hex(), &b)?;

        // The answer is in request order, repeats included.
        let body = postcard::to_allocvec(&vec![ib.0, ia.0, ib.0])?;
        let answer = ship.read_get(&body).map_err(|e| e.message)?;
        assert!(answer == vec![b.clone(), a.clone(), b.clone()]);

        // Missing: NOT_FOUND naming the first missing id.
        let gone = ChunkId::of(b"gone");
        let body = postcard::to_allocvec(&vec![ia, gone, ChunkId::of(b"also gone")])?;
        let err = ship.read_get(&body).err().ok_or("missing chunk served")?;
        assert_eq!(err.code, RemoteError::NOT_FOUND);
        assert!(err.message.contains(&gone.to_hex()), "{}", err.message);

        // Too many ids, too many bytes, garbage.
        let body = postcard::to_allocvec(&vec![ib; GET_IDS_MAX + 1])?;
        assert_eq!(
            ship.read_get(&body).err().map(|e| e.code),
            Some(RemoteError::BAD_REQUEST)
        );
        let body = postcard::to_allocvec(&vec![ia; 4])?;
        assert_eq!(
            ship.read_get(&body).err().map(|e| e.code),
            Some(RemoteError::BAD_REQUEST)
        );
        assert_eq!(
            ship.read_get(&[0xff; 7]).err().map(|e| e.code),
            Some(RemoteError::BAD_REQUEST)
        );
        Ok(())
    }

    #[test]
    fn ship_batches_respect_both_bounds() -> TestResult {
        let big = MAX_CHUNK_BYTES as u32;
        let mut chunks: Vec<(ChunkId, u32)> = (0..10u32)
            .map(|i| (ChunkId::of(&i.to_le_bytes()), big))
            .collect();
        chunks.extend((10..210u32).map(|i| (ChunkId::of(&i.to_le_bytes()), 1000)));
        let size = chunks.iter().map(|&(_, l)| u64::from(l)).sum();
        let manifest = Manifest::new(size, chunks.clone())?;
        let missing: Vec<ChunkId> = chunks.iter().map(|&(id, _)| id).collect();
        let batches = plan_batches(&manifest, &missing);
        let mut seen = HashSet::new();
        for batch in &batches {
            assert!(!batch.is_empty() && batch.len() <= GET_IDS_MAX);
            let bytes: usize = batch.iter().map(|&(_, l)| l as usize).sum();
            assert!(bytes <= GET_ANSWER_BYTES_MAX, "batch of {bytes} bytes");
            seen.extend(batch.iter().map(|&(id, _)| id));
        }
        assert_eq!(seen.len(), missing.len());
        // Three 4 MiB chunks per 12 MiB batch.
        assert_eq!(batches[0].len(), 3);
        Ok(())
    }
}
