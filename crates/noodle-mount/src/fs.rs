//! The file system the kernel sees: FUSE calls answered from the fabric through the node's API
//! client.
//!
//! - **Names**: a directory is a prefix. It exists while objects are under it, or once it was
//!   made here (`mkdir`, remembered by this mount only). A file and a directory of one name:
//!   the file shows.
//! - **Attributes** come from the version a path shows (size; the version's wall time as
//!   mtime) and are trusted for [`TTL`], so another node's writes show up within about a
//!   second. A directory listing answers the lookups of its entries for as long.
//! - **Reads** go to a local copy of the opened version (fetched whole at open, verified chunk
//!   by chunk, kept in [`Cache`]). A version never changes, so an open of the version the
//!   kernel cached last keeps its page cache (`FOPEN_KEEP_CACHE`); any other version drops it.
//! - **Writes** go to a temporary file per inode; when a handle that wrote is flushed (`close`)
//!   or fsynced, the file is uploaded and becomes the path's new version. So `close` returns
//!   once the version is committed, and a failed upload is `close`'s error. A file only
//!   created or emptied (`touch`, `: > f`), never written, becomes a version when its last
//!   handle is released, just after `close` returns: a shell's `> f` closes a first
//!   descriptor before it writes, and that must not make an empty version.
//! - **Rename** of a file puts its version under the new path (same manifest and tags: no bytes
//!   move unless this node lacks them), then removes the old path. A directory that holds
//!   objects is not renamed (`EXDEV`: `mv` then copies and removes, file by file); one only made
//!   here is.
//! - **Rights**: a path the caller may not read answers `EACCES`. A directory whose listing is
//!   denied still resolves, so a token for `/runs/42/` can walk `/runs` to reach it.
//!
//! The callbacks are synchronous: each blocks its FUSE thread on the node's answer (the
//! runtime `rt` does the I/O). Locks: the state lock is never held across a call to the node,
//! and a write file's lock may be held while taking the state lock, never the other way round.

use crate::cache::Cache;
use crate::errors::{FsError, errno_of, is_denial};
use crate::inodes::{InodeTable, Kind, ROOT};
use crate::names::{Child, Children, NameError, child_path, prefix_of, split, version_ms};
use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, InitFlags,
    KernelConfig, LockOwner, OpenAccMode, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate,
    ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyLseek, ReplyOpen, ReplyStatfs,
    ReplyWrite, ReplyXattr, Request, WriteFlags,
};
use noodle_api::fabric::{FabricObject, FabricPut};
use noodle_api::{ChunkRoute, Client, ClientError};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ffi::OsStr;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::runtime::Handle as Runtime;

/// How long the kernel (and this mount) trusts what it was told about a name or an inode: the
/// delay before another node's writes show up here.
pub(crate) const TTL: Duration = Duration::from_secs(1);
/// Objects one listing request asks for.
const LIST_PAGE: u32 = 1000;
/// Listing requests one directory read makes at most (100,000 objects under it).
const LIST_PAGES_MAX: usize = 100;
/// Directories made here (and still empty) that the mount remembers at most.
const MADE_DIRS_MAX: usize = 10_000;
/// Directory listings kept to answer lookups.
const LISTINGS_MAX: usize = 64;
/// The most bytes one read answers (the kernel asks for at most 1 MiB).
const READ_BYTES_MAX: u32 = 16 << 20;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A file being written: its bytes so far, and whether they differ from the path's version.
struct WriteFile {
    tmp: tempfile::NamedTempFile,
    /// The bytes differ from the path's version.
    dirty: bool,
    /// They differ by a write or a truncate call (not only by being created or opened with
    /// `O_TRUNC`): a flush commits only then. A shell's `> FILE` opens, duplicates and closes
    /// the first descriptor before anything is written; that flush must not make an empty
    /// version. A file only created or emptied becomes a version at its last close.
    written: bool,
}

/// The write file of an inode and the handles using it.
struct Writing {
    file: Arc<Mutex<WriteFile>>,
    handles: u32,
    /// False while the file exists only here (created, never uploaded yet).
    in_fabric: bool,
}

/// One directory entry as `readdir` hands it out.
struct DirEntry {
    ino: u64,
    kind: Kind,
    name: String,
}

/// An open handle.
#[derive(Clone)]
enum Open {
    Read {
        ino: u64,
        file: Arc<File>,
        manifest: String,
        version: String,
    },
    Write {
        ino: u64,
        file: Arc<Mutex<WriteFile>>,
    },
    Dir {
        ino: u64,
        entries: Option<Arc<Vec<DirEntry>>>,
    },
}

/// A directory's entries as listed, to answer lookups for [`TTL`].
struct Listing {
    at: Instant,
    entries: BTreeMap<String, Child>,
}

struct State {
    inodes: InodeTable,
    /// Directories made here, by path.
    made_dirs: BTreeSet<String>,
    listings: HashMap<String, Listing>,
    writing: HashMap<u64, Writing>,
}

impl State {
    fn forget_listing(&mut self, path: &str) {
        self.listings.remove(split(path).0);
    }
}

/// What a path is.
enum Found {
    File(FabricObject),
    Dir,
    /// Maybe a directory: the caller may not list it (nor read a file by that name). Shown
    /// as a directory so that a token for `/runs/42/` can walk `/runs`; never in the way of
    /// `mkdir` or a rename onto it.
    Denied,
    /// A file open for writing here (its inode).
    Writing(u64),
}

/// The fabric as a FUSE file system.
pub(crate) struct FabricFs {
    client: Client,
    rt: Runtime,
    cache: Cache,
    state: Mutex<State>,
    handles: Mutex<HashMap<u64, Open>>,
    next_handle: AtomicU64,
    uid: u32,
    gid: u32,
    /// The time of directories (they have no versions).
    started: SystemTime,
}

fn name_error(e: NameError) -> FsError {
    match e {
        NameError::Invalid => FsError::new(Errno::EINVAL, "not a fabric path segment"),
        NameError::TooLong => FsError::new(Errno::ENAMETOOLONG, "name too long"),
    }
}

fn table_full() -> FsError {
    FsError::new(Errno::ENFILE, "the mount's inode table is full")
}

fn is_not_found(e: &FsError) -> bool {
    e.errno == Errno::ENOENT
}

/// Whether the node refused a put because it lacks the version's chunks.
fn lacks_chunks(e: &ClientError) -> bool {
    matches!(e, ClientError::Api(m) if m.contains("upload the file first"))
}

impl FabricFs {
    pub(crate) fn new(client: Client, rt: Runtime, cache: Cache) -> FabricFs {
        FabricFs {
            client,
            rt,
            cache,
            state: Mutex::new(State {
                inodes: InodeTable::new(),
                made_dirs: BTreeSet::new(),
                listings: HashMap::new(),
                writing: HashMap::new(),
            }),
            handles: Mutex::new(HashMap::new()),
            next_handle: AtomicU64::new(1),
            uid: rustix::process::getuid().as_raw(),
            gid: rustix::process::getgid().as_raw(),
            started: SystemTime::now(),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }

    fn block_on<F: std::future::Future>(&self, f: F) -> F::Output {
        self.rt.block_on(f)
    }

    /// The errno for `e`, logged when it is a problem.
    fn fail(&self, op: &str, e: FsError) -> Errno {
        if e.worth_logging() {
            tracing::warn!(op, errno = e.errno.code(), error = %e.detail, "mount: a call failed");
        } else {
            tracing::debug!(op, errno = e.errno.code(), error = %e.detail, "mount: refused");
        }
        e.errno
    }

    fn add_handle(&self, open: Open) -> FileHandle {
        let fh = self.next_handle.fetch_add(1, Ordering::Relaxed);
        lock(&self.handles).insert(fh, open);
        FileHandle(fh)
    }

    fn handle(&self, fh: FileHandle) -> Result<Open, FsError> {
        lock(&self.handles)
            .get(&fh.0)
            .cloned()
            .ok_or_else(|| FsError::new(Errno::EBADF, "no such handle"))
    }

    fn attr(&self, ino: u64, kind: Kind, size: u64, mtime: SystemTime) -> FileAttr {
        let (file_kind, perm, nlink) = match kind {
            Kind::File => (FileType::RegularFile, 0o644, 1),
            Kind::Dir => (FileType::Directory, 0o755, 2),
        };
        FileAttr {
            ino: INodeNo(ino),
            size,
            blocks: size.div_ceil(512),
            atime: mtime,
            mtime,
            ctime: mtime,
            crtime: mtime,
            kind: file_kind,
            perm,
            nlink,
            uid: self.uid,
            gid: self.gid,
            rdev: 0,
            blksize: 4096,
            flags: 0,
        }
    }

    fn dir_attr(&self, ino: u64) -> FileAttr {
        self.attr(ino, Kind::Dir, 0, self.started)
    }

    fn file_attr(&self, ino: u64, o: &FabricObject) -> FileAttr {
        let mtime = UNIX_EPOCH + Duration::from_millis(version_ms(&o.version));
        self.attr(ino, Kind::File, o.size, mtime)
    }

    /// The attributes of a file open for writing: its bytes so far.
    fn writing_attr(&self, ino: u64, file: &Mutex<WriteFile>) -> Result<FileAttr, FsError> {
        let meta = lock(file)
            .tmp
            .as_file()
            .metadata()
            .map_err(|e| FsError::io("reading a file being written", e))?;
        let mtime = meta.modified().unwrap_or_else(|_| SystemTime::now());
        Ok(self.attr(ino, Kind::File, meta.len(), mtime))
    }

    /// The path of directory inode `ino`.
    fn dir_path(&self, ino: u64) -> Result<String, FsError> {
        let st = self.state();
        let inode = st
            .inodes
            .get(ino)
            .ok_or_else(|| FsError::new(Errno::ENOENT, format!("no inode {ino}")))?;
        if inode.kind != Kind::Dir {
            return Err(FsError::new(Errno::ENOTDIR, "not a directory"));
        }
        inode
            .path
            .clone()
            .ok_or_else(|| FsError::new(Errno::ENOENT, "the directory is gone"))
    }

    /// What `path` is now.
    fn resolve(&self, path: &str) -> Result<Found, FsError> {
        if path == "/" {
            return Ok(Found::Dir);
        }
        {
            let st = self.state();
            if let Some(ino) = st.inodes.ino_of(path)
                && st.writing.contains_key(&ino)
            {
                return Ok(Found::Writing(ino));
            }
            let (dir, name) = split(path);
            if let Some(listing) = st.listings.get(dir)
                && listing.at.elapsed() < TTL
            {
                return match listing.entries.get(name) {
                    Some(Child::File(o)) => Ok(Found::File(o.clone())),
                    Some(Child::Dir) => Ok(Found::Dir),
                    None if st.made_dirs.contains(path) => Ok(Found::Dir),
                    None => Err(FsError::not_found(path)),
                };
            }
        }
        match self.block_on(self.client.fabric_object(path, None)) {
            Ok(o) if o.exists => return Ok(Found::File(o)),
            Ok(_) | Err(ClientError::NotFound(_)) => {}
            Err(e) if errno_of(&e) == Errno::EACCES => {}
            Err(e) => return Err(e.into()),
        }
        if self.state().made_dirs.contains(path) {
            return Ok(Found::Dir);
        }
        match self.block_on(self.client.fabric_list(&prefix_of(path), None, 1)) {
            Ok(list) if !list.objects.is_empty() => Ok(Found::Dir),
            Ok(_) => Err(FsError::not_found(path)),
            // A directory we may not list may still lead to what we may read.
            Err(ClientError::Api(m)) if is_denial(&m) => Ok(Found::Denied),
            Err(e) => Err(e.into()),
        }
    }

    /// Looks `path` up for the kernel: its inode (counted as handed out) and attributes.
    fn entry(&self, path: &str) -> Result<FileAttr, FsError> {
        let found = self.resolve(path)?;
        let attr = match found {
            Found::Writing(ino) => {
                let file = self
                    .state()
                    .writing
                    .get(&ino)
                    .map(|w| w.file.clone())
                    .ok_or_else(|| FsError::not_found(path))?;
                self.writing_attr(ino, &file)?
            }
            Found::File(o) => {
                let mut st = self.state();
                let ino = st
                    .inodes
                    .intern(path, Kind::File)
                    .map_err(|_| table_full())?;
                let attr = self.file_attr(ino, &o);
                if let Some(i) = st.inodes.get_mut(ino) {
                    i.known = Some((o, Instant::now()));
                }
                attr
            }
            Found::Dir | Found::Denied => {
                let mut st = self.state();
                let ino = st
                    .inodes
                    .intern(path, Kind::Dir)
                    .map_err(|_| table_full())?;
                if let Some(i) = st.inodes.get_mut(ino) {
                    i.dir_seen = Some(Instant::now());
                }
                self.dir_attr(ino)
            }
        };
        self.state().inodes.looked_up(attr.ino.0);
        Ok(attr)
    }

    /// The attributes of inode `ino`, asking the node again once they are older than [`TTL`].
    fn attr_of(&self, ino: u64) -> Result<FileAttr, FsError> {
        if ino == ROOT {
            return Ok(self.dir_attr(ROOT));
        }
        let (path, kind, known, dir_fresh, open) = {
            let st = self.state();
            if let Some(w) = st.writing.get(&ino) {
                let file = w.file.clone();
                drop(st);
                return self.writing_attr(ino, &file);
            }
            let inode = st
                .inodes
                .get(ino)
                .ok_or_else(|| FsError::new(Errno::ENOENT, format!("no inode {ino}")))?;
            (
                inode.path.clone(),
                inode.kind,
                inode.known.clone(),
                inode.dir_seen.is_some_and(|t| t.elapsed() < TTL),
                inode.open,
            )
        };
        match (kind, &known) {
            (Kind::File, Some((o, at))) if at.elapsed() < TTL => return Ok(self.file_attr(ino, o)),
            (Kind::Dir, _) if dir_fresh => return Ok(self.dir_attr(ino)),
            _ => {}
        }
        let stale = || match (&known, open) {
            // Still open: what it was when opened.
            (Some((o, _)), 1..) => Ok(self.file_attr(ino, o)),
            _ => Err(FsError::new(Errno::ENOENT, "no longer there")),
        };
        let Some(path) = path else {
            return stale();
        };
        match (self.resolve(&path), kind) {
            (Ok(Found::File(o)), Kind::File) => {
                let attr = self.file_attr(ino, &o);
                if let Some(i) = self.state().inodes.get_mut(ino) {
                    i.known = Some((o, Instant::now()));
                }
                Ok(attr)
            }
            (Ok(Found::Dir | Found::Denied), Kind::Dir) => {
                if let Some(i) = self.state().inodes.get_mut(ino) {
                    i.dir_seen = Some(Instant::now());
                }
                Ok(self.dir_attr(ino))
            }
            (Ok(Found::Writing(other)), _) => {
                let file = self.state().writing.get(&other).map(|w| w.file.clone());
                match file {
                    Some(f) => self.writing_attr(other, &f),
                    None => stale(),
                }
            }
            (Err(e), _) if !is_not_found(&e) => Err(e),
            _ => {
                // Gone, or now the other kind: this inode no longer names the path.
                self.state().inodes.detach(&path);
                stale()
            }
        }
    }

    /// The version inode `ino` shows: the one last told to the kernel if that is recent (so
    /// the bytes match the size the kernel has), else asked again.
    fn current_object(&self, ino: u64) -> Result<FabricObject, FsError> {
        let (path, known) = {
            let st = self.state();
            let inode = st
                .inodes
                .get(ino)
                .ok_or_else(|| FsError::new(Errno::ENOENT, format!("no inode {ino}")))?;
            (inode.path.clone(), inode.known.clone())
        };
        if let Some((o, at)) = &known
            && (at.elapsed() < TTL || path.is_none())
        {
            return Ok(o.clone());
        }
        let path = path.ok_or_else(|| FsError::new(Errno::ENOENT, "no longer there"))?;
        match self.resolve(&path)? {
            Found::File(o) => {
                if let Some(i) = self.state().inodes.get_mut(ino) {
                    i.known = Some((o.clone(), Instant::now()));
                }
                Ok(o)
            }
            Found::Dir | Found::Denied => Err(FsError::new(Errno::EISDIR, path)),
            Found::Writing(_) => Err(FsError::new(Errno::EBUSY, "being written here")),
        }
    }

    /// Copies version `o` into `out` (through the cache).
    fn copy_version_into(&self, o: &FabricObject, out: &File) -> Result<(), FsError> {
        let src = self.cache.open(&self.client, &self.rt, o)?;
        let result = std::io::copy(&mut &src, &mut &*out)
            .map(|_| ())
            .map_err(|e| FsError::io("copying a version to write to", e));
        self.cache.release(&o.manifest);
        result
    }

    /// Makes the written bytes of inode `ino` the new version of its path, if they changed
    /// (`written_only`: only if changed by a write or truncate call; see [`WriteFile`]).
    fn commit(&self, ino: u64, file: &Mutex<WriteFile>, written_only: bool) -> Result<(), FsError> {
        let mut w = lock(file);
        if !w.dirty || (written_only && !w.written) {
            return Ok(());
        }
        let path = self.state().inodes.path(ino).map(str::to_string);
        let Some(path) = path else {
            // Removed while open: its bytes go nowhere.
            w.dirty = false;
            w.written = false;
            return Ok(());
        };
        let to = ChunkRoute::Fabric { path: path.clone() };
        let manifest = self.block_on(noodle_api::upload::upload_file(
            &self.client,
            &to,
            w.tmp.path(),
            |_| {},
        ))?;
        let put = FabricPut {
            manifest: manifest.id().to_hex(),
            tags: BTreeMap::new(),
        };
        let object = self.block_on(self.client.fabric_put(&path, &put))?;
        w.dirty = false;
        w.written = false;
        tracing::debug!(%path, version = %object.version, "mount: a file became a version");
        let mut st = self.state();
        if let Some(wr) = st.writing.get_mut(&ino) {
            wr.in_fabric = true;
        }
        if let Some(i) = st.inodes.get_mut(ino) {
            i.known = Some((object, Instant::now()));
            i.kernel_version = None;
        }
        st.forget_listing(&path);
        Ok(())
    }

    /// The entries of directory `path`: its objects and subdirectories in the fabric, the
    /// directories made here, the files being written here.
    fn list(&self, ino: u64, path: &str) -> Result<Vec<DirEntry>, FsError> {
        let prefix = prefix_of(path);
        let mut children = Children::new(&prefix);
        let mut after: Option<String> = None;
        let mut pages = 0;
        loop {
            let page = self.block_on(
                self.client
                    .fabric_list(&prefix, after.as_deref(), LIST_PAGE),
            );
            let page = match page {
                Ok(p) => p,
                Err(ClientError::NotFound(_)) => Default::default(),
                Err(e) => return Err(e.into()),
            };
            let full = page.objects.len() >= LIST_PAGE as usize;
            after = children.add_page(&page.objects, full, after.as_deref());
            pages += 1;
            if after.is_none() {
                break;
            }
            if pages >= LIST_PAGES_MAX {
                tracing::warn!(%path, pages, "mount: a directory too large to list whole");
                break;
            }
        }
        let mut st = self.state();
        for made in st.made_dirs.range(prefix.clone()..) {
            let Some(name) = made.strip_prefix(&prefix) else {
                break;
            };
            if !name.contains('/') {
                children
                    .entries
                    .entry(name.to_string())
                    .or_insert(Child::Dir);
            }
        }
        let now = Instant::now();
        let mut out = vec![
            DirEntry {
                ino,
                kind: Kind::Dir,
                name: ".".into(),
            },
            DirEntry {
                ino: st.inodes.ino_of(split(path).0).unwrap_or(ROOT),
                kind: Kind::Dir,
                name: "..".into(),
            },
        ];
        for (name, child) in &children.entries {
            let child_path = format!("{prefix}{name}");
            let kind = match child {
                Child::File(_) => Kind::File,
                Child::Dir => Kind::Dir,
            };
            let ino = match st.inodes.intern(&child_path, kind) {
                Ok(ino) => ino,
                // A full table: a number the table does not know (lookups get their own).
                Err(_) => u64::MAX - out.len() as u64,
            };
            if let Some(i) = st.inodes.get_mut(ino) {
                match child {
                    Child::File(o) => i.known = Some((o.clone(), now)),
                    Child::Dir => i.dir_seen = Some(now),
                }
            }
            out.push(DirEntry {
                ino,
                kind,
                name: name.clone(),
            });
        }
        let writing: Vec<u64> = st.writing.keys().copied().collect();
        for (name, ino, kind) in st
            .inodes
            .children_where(path, |_| true)
            .into_iter()
            .filter(|(_, ino, _)| writing.contains(ino))
        {
            if !children.entries.contains_key(&name) {
                out.push(DirEntry { ino, kind, name });
            }
        }
        if st.listings.len() >= LISTINGS_MAX {
            st.listings.retain(|_, l| l.at.elapsed() < TTL);
            if st.listings.len() >= LISTINGS_MAX {
                st.listings.clear();
            }
        }
        st.listings.insert(
            path.to_string(),
            Listing {
                at: now,
                entries: children.entries,
            },
        );
        Ok(out)
    }

    fn do_open(&self, ino: u64, flags: OpenFlags) -> Result<(FileHandle, FopenFlags), FsError> {
        let write = flags.acc_mode() != OpenAccMode::O_RDONLY;
        let truncate = flags.0 & libc::O_TRUNC != 0;
        let (kind, writing) = {
            let st = self.state();
            let inode = st
                .inodes
                .get(ino)
                .ok_or_else(|| FsError::new(Errno::ENOENT, format!("no inode {ino}")))?;
            (inode.kind, st.writing.contains_key(&ino))
        };
        if kind == Kind::Dir {
            return Err(FsError::new(Errno::EISDIR, "a directory"));
        }
        if write || writing {
            return self.open_write(ino, write && truncate);
        }
        let object = self.current_object(ino)?;
        let file = self.cache.open(&self.client, &self.rt, &object)?;
        let mut st = self.state();
        let Some(inode) = st.inodes.get_mut(ino) else {
            drop(st);
            self.cache.release(&object.manifest);
            return Err(FsError::new(Errno::ENOENT, "gone"));
        };
        let flags = if inode.reading.iter().any(|v| *v != object.version) {
            // Two versions open at once: this one bypasses the page cache, which holds the
            // other's bytes.
            inode.kernel_version = None;
            FopenFlags::FOPEN_DIRECT_IO
        } else if inode.kernel_version.as_deref() == Some(object.version.as_str()) {
            FopenFlags::FOPEN_KEEP_CACHE
        } else {
            inode.kernel_version = Some(object.version.clone());
            FopenFlags::empty()
        };
        inode.reading.push(object.version.clone());
        st.inodes.opened(ino);
        drop(st);
        let fh = self.add_handle(Open::Read {
            ino,
            file: Arc::new(file),
            manifest: object.manifest,
            version: object.version,
        });
        Ok((fh, flags))
    }

    /// A handle that writes inode `ino`: the inode's write file, made on first use from the
    /// version it shows (or empty, when truncated).
    fn open_write(&self, ino: u64, truncate: bool) -> Result<(FileHandle, FopenFlags), FsError> {
        let existing = self.state().writing.get(&ino).map(|w| w.file.clone());
        let file = match existing {
            Some(f) => f,
            None => {
                let tmp = self.cache.temp_file()?;
                if !truncate {
                    let object = self.current_object(ino)?;
                    self.copy_version_into(&object, tmp.as_file())?;
                }
                Arc::new(Mutex::new(WriteFile {
                    tmp,
                    dirty: truncate,
                    written: false,
                }))
            }
        };
        if truncate {
            let mut w = lock(&file);
            w.tmp
                .as_file()
                .set_len(0)
                .map_err(|e| FsError::io("truncating", e))?;
            w.dirty = true;
        }
        let mut st = self.state();
        // Another open may have made the write file meanwhile: all use the first.
        let writing = st.writing.entry(ino).or_insert(Writing {
            file,
            handles: 0,
            in_fabric: true,
        });
        writing.handles += 1;
        let file = writing.file.clone();
        if let Some(i) = st.inodes.get_mut(ino) {
            i.kernel_version = None;
        }
        st.inodes.opened(ino);
        drop(st);
        Ok((
            self.add_handle(Open::Write { ino, file }),
            FopenFlags::empty(),
        ))
    }

    fn do_release(&self, fh: FileHandle) -> Result<(), FsError> {
        let Some(open) = lock(&self.handles).remove(&fh.0) else {
            return Ok(());
        };
        match open {
            Open::Read {
                ino,
                manifest,
                version,
                ..
            } => {
                self.cache.release(&manifest);
                let mut st = self.state();
                if let Some(i) = st.inodes.get_mut(ino)
                    && let Some(pos) = i.reading.iter().position(|v| *v == version)
                {
                    i.reading.swap_remove(pos);
                }
                st.inodes.closed(ino);
                Ok(())
            }
            Open::Write { ino, file } => {
                let committed = self.commit(ino, &file, false);
                let mut st = self.state();
                let last = st.writing.get_mut(&ino).is_some_and(|w| {
                    w.handles = w.handles.saturating_sub(1);
                    w.handles == 0
                });
                if last
                    && let Some(w) = st.writing.remove(&ino)
                    && !w.in_fabric
                    && let Some(path) = st.inodes.path(ino).map(str::to_string)
                {
                    // Never became a version: it exists nowhere.
                    st.forget_listing(&path);
                    st.inodes.detach(&path);
                }
                st.inodes.closed(ino);
                committed
            }
            Open::Dir { ino, .. } => {
                self.state().inodes.closed(ino);
                Ok(())
            }
        }
    }

    fn do_read(&self, fh: FileHandle, offset: u64, size: u32) -> Result<Vec<u8>, FsError> {
        let size = size.min(READ_BYTES_MAX) as usize;
        let mut buf = vec![0u8; size];
        let read_at = |f: &File, buf: &mut [u8]| -> std::io::Result<usize> {
            let mut n = 0;
            while n < buf.len() {
                match f.read_at(&mut buf[n..], offset + n as u64) {
                    Ok(0) => break,
                    Ok(k) => n += k,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            }
            Ok(n)
        };
        let n = match self.handle(fh)? {
            Open::Read { file, .. } => read_at(&file, &mut buf),
            Open::Write { file, .. } => read_at(lock(&file).tmp.as_file(), &mut buf),
            Open::Dir { .. } => return Err(FsError::new(Errno::EISDIR, "a directory")),
        }
        .map_err(|e| FsError::io("reading", e))?;
        buf.truncate(n);
        Ok(buf)
    }

    fn do_write(&self, fh: FileHandle, offset: u64, data: &[u8]) -> Result<u32, FsError> {
        let Open::Write { file, .. } = self.handle(fh)? else {
            return Err(FsError::new(Errno::EBADF, "not open for writing"));
        };
        let mut w = lock(&file);
        w.tmp
            .as_file()
            .write_all_at(data, offset)
            .map_err(|e| FsError::io("writing", e))?;
        w.dirty = true;
        w.written = true;
        u32::try_from(data.len()).map_err(|_| FsError::new(Errno::EINVAL, "write too large"))
    }

    fn do_setattr(&self, ino: u64, size: Option<u64>) -> Result<FileAttr, FsError> {
        if let Some(size) = size {
            let writing = self.state().writing.get(&ino).map(|w| w.file.clone());
            match writing {
                Some(file) => {
                    let mut w = lock(&file);
                    w.tmp
                        .as_file()
                        .set_len(size)
                        .map_err(|e| FsError::io("truncating", e))?;
                    w.dirty = true;
                    w.written = true;
                }
                None => {
                    // `truncate PATH` without an open handle: a new version at once.
                    let object = self.current_object(ino)?;
                    if object.size != size {
                        let tmp = self.cache.temp_file()?;
                        if size > 0 {
                            self.copy_version_into(&object, tmp.as_file())?;
                        }
                        tmp.as_file()
                            .set_len(size)
                            .map_err(|e| FsError::io("truncating", e))?;
                        let file = Mutex::new(WriteFile {
                            tmp,
                            dirty: true,
                            written: true,
                        });
                        self.commit(ino, &file, false)?;
                    }
                }
            }
        }
        // Modes, owners and times are the fabric's own: accepted, not stored.
        self.attr_of(ino)
    }

    fn do_create(&self, parent: u64, name: &OsStr) -> Result<(FileAttr, FileHandle), FsError> {
        let dir = self.dir_path(parent)?;
        let path = child_path(&dir, name).map_err(name_error)?;
        let tmp = self.cache.temp_file()?;
        let file = Arc::new(Mutex::new(WriteFile {
            tmp,
            dirty: true,
            written: false,
        }));
        let mut st = self.state();
        let ino = st
            .inodes
            .intern(&path, Kind::File)
            .map_err(|_| table_full())?;
        let writing = st.writing.entry(ino).or_insert(Writing {
            file,
            handles: 0,
            in_fabric: false,
        });
        writing.handles += 1;
        let file = writing.file.clone();
        if let Some(i) = st.inodes.get_mut(ino) {
            i.kernel_version = None;
            i.known = None;
        }
        st.inodes.looked_up(ino);
        st.inodes.opened(ino);
        st.forget_listing(&path);
        drop(st);
        let attr = self.attr(ino, Kind::File, 0, SystemTime::now());
        Ok((attr, self.add_handle(Open::Write { ino, file })))
    }

    fn do_mkdir(&self, parent: u64, name: &OsStr) -> Result<FileAttr, FsError> {
        let dir = self.dir_path(parent)?;
        let path = child_path(&dir, name).map_err(name_error)?;
        match self.resolve(&path) {
            Ok(Found::Denied) => {}
            Ok(_) => return Err(FsError::new(Errno::EEXIST, path)),
            Err(e) if is_not_found(&e) => {}
            Err(e) => return Err(e),
        }
        let mut st = self.state();
        if st.made_dirs.len() >= MADE_DIRS_MAX {
            return Err(FsError::new(
                Errno::ENOSPC,
                "the mount remembers no more empty directories: put files in some",
            ));
        }
        st.made_dirs.insert(path.clone());
        let ino = st
            .inodes
            .intern(&path, Kind::Dir)
            .map_err(|_| table_full())?;
        if let Some(i) = st.inodes.get_mut(ino) {
            i.dir_seen = Some(Instant::now());
        }
        st.inodes.looked_up(ino);
        st.forget_listing(&path);
        Ok(self.dir_attr(ino))
    }

    fn do_unlink(&self, parent: u64, name: &OsStr) -> Result<(), FsError> {
        let dir = self.dir_path(parent)?;
        let path = child_path(&dir, name).map_err(|_| FsError::not_found("that name"))?;
        {
            let mut st = self.state();
            if let Some(ino) = st.inodes.ino_of(&path)
                && st.writing.get(&ino).is_some_and(|w| !w.in_fabric)
            {
                // Only here so far: forgetting it is the removal.
                st.inodes.detach(&path);
                st.forget_listing(&path);
                return Ok(());
            }
        }
        let removed = self.block_on(self.client.fabric_remove(&path));
        let mut st = self.state();
        st.forget_listing(&path);
        removed?;
        st.inodes.detach(&path);
        Ok(())
    }

    fn do_rmdir(&self, parent: u64, name: &OsStr) -> Result<(), FsError> {
        let dir = self.dir_path(parent)?;
        let path = child_path(&dir, name).map_err(|_| FsError::not_found("that name"))?;
        let prefix = prefix_of(&path);
        {
            let st = self.state();
            let made_under = st
                .made_dirs
                .range(prefix.clone()..)
                .next()
                .is_some_and(|d| d.starts_with(&prefix));
            let writing_under = st
                .writing
                .keys()
                .any(|ino| st.inodes.path(*ino).is_some_and(|p| p.starts_with(&prefix)));
            if made_under || writing_under {
                return Err(FsError::new(Errno::ENOTEMPTY, path));
            }
        }
        let list = self.block_on(self.client.fabric_list(&prefix, None, 1))?;
        if !list.objects.is_empty() {
            return Err(FsError::new(Errno::ENOTEMPTY, path));
        }
        // Made here, or one whose last object just went: either way it is gone now.
        let mut st = self.state();
        st.forget_listing(&path);
        st.made_dirs.remove(&path);
        st.inodes.detach(&path);
        Ok(())
    }

    fn do_rename(
        &self,
        parent: u64,
        name: &OsStr,
        new_parent: u64,
        new_name: &OsStr,
        flags: RenameFlags,
    ) -> Result<(), FsError> {
        if flags.contains(RenameFlags::RENAME_EXCHANGE) {
            return Err(FsError::new(Errno::EINVAL, "exchange is not supported"));
        }
        let from_dir = self.dir_path(parent)?;
        let to_dir = self.dir_path(new_parent)?;
        let from = child_path(&from_dir, name).map_err(|_| FsError::not_found("that name"))?;
        let to = child_path(&to_dir, new_name).map_err(name_error)?;
        if from == to {
            return Ok(());
        }
        let source = self.resolve(&from)?;
        let target = match self.resolve(&to) {
            Ok(Found::Denied) => None,
            Ok(t) => Some(t),
            Err(e) if is_not_found(&e) => None,
            Err(e) => return Err(e),
        };
        if target.is_some() && flags.contains(RenameFlags::RENAME_NOREPLACE) {
            return Err(FsError::new(Errno::EEXIST, to));
        }
        let result = match source {
            Found::Dir | Found::Denied => self.rename_dir(&from, &to, target),
            Found::File(o) => {
                if matches!(target, Some(Found::Dir)) {
                    return Err(FsError::new(Errno::EISDIR, to));
                }
                self.rename_file(&from, &to, o)
            }
            Found::Writing(ino) => {
                if matches!(target, Some(Found::Dir)) {
                    return Err(FsError::new(Errno::EISDIR, to));
                }
                let (file, in_fabric) = {
                    let st = self.state();
                    match st.writing.get(&ino) {
                        Some(w) => (w.file.clone(), w.in_fabric),
                        None => return Err(FsError::new(Errno::EAGAIN, "closed meanwhile")),
                    }
                };
                if in_fabric {
                    // Its bytes so far become a version of the old path, which then moves.
                    self.commit(ino, &file, false)?;
                    let object = self.block_on(self.client.fabric_object(&from, None))?;
                    self.rename_file(&from, &to, object)
                } else {
                    // Only here so far: the first version is written under the new name.
                    self.state().inodes.rename(&from, &to);
                    Ok(())
                }
            }
        };
        let mut st = self.state();
        st.forget_listing(&from);
        st.forget_listing(&to);
        result
    }

    fn rename_dir(&self, from: &str, to: &str, target: Option<Found>) -> Result<(), FsError> {
        match target {
            Some(Found::File(_) | Found::Writing(_)) => {
                return Err(FsError::new(Errno::ENOTDIR, to.to_string()));
            }
            Some(Found::Dir | Found::Denied) => {
                let list = self.block_on(self.client.fabric_list(&prefix_of(to), None, 1))?;
                let st = self.state();
                let to_prefix = prefix_of(to);
                let made_under = st
                    .made_dirs
                    .range(to_prefix.clone()..)
                    .next()
                    .is_some_and(|d| d.starts_with(&to_prefix));
                if !list.objects.is_empty() || made_under {
                    return Err(FsError::new(Errno::ENOTEMPTY, to.to_string()));
                }
            }
            None => {}
        }
        let from_prefix = prefix_of(from);
        let list = self.block_on(self.client.fabric_list(&from_prefix, None, 1))?;
        let mut st = self.state();
        let writing_under = st.writing.keys().any(|ino| {
            st.inodes
                .path(*ino)
                .is_some_and(|p| p.starts_with(&from_prefix))
        });
        if !list.objects.is_empty() || writing_under {
            // Moving every object is a copy of each: `mv` does that itself on EXDEV.
            return Err(FsError::new(
                Errno::EXDEV,
                format!("{from} holds objects: a directory with objects is not renamed"),
            ));
        }
        let moved: Vec<String> = st
            .made_dirs
            .iter()
            .filter(|d| d.as_str() == from || d.starts_with(&from_prefix))
            .cloned()
            .collect();
        for d in moved {
            st.made_dirs.remove(&d);
            st.made_dirs.insert(format!("{to}{}", &d[from.len()..]));
        }
        st.made_dirs.remove(to);
        st.made_dirs.insert(to.to_string());
        st.inodes.rename(from, to);
        Ok(())
    }

    /// Puts version `object` of `from` under `to`, then removes `from`.
    fn rename_file(&self, from: &str, to: &str, object: FabricObject) -> Result<(), FsError> {
        let put = FabricPut {
            manifest: object.manifest.clone(),
            tags: object.tags.clone(),
        };
        let placed = match self.block_on(self.client.fabric_put(to, &put)) {
            Err(e) if lacks_chunks(&e) => {
                // This node lacks the chunks: fetch them here, then upload for the new path.
                let _pinned = self.cache.open(&self.client, &self.rt, &object)?;
                let uploaded = self.block_on(noodle_api::upload::upload_file(
                    &self.client,
                    &ChunkRoute::Fabric {
                        path: to.to_string(),
                    },
                    &self.cache.version_path(&object.manifest),
                    |_| {},
                ));
                self.cache.release(&object.manifest);
                uploaded?;
                self.block_on(self.client.fabric_put(to, &put))
            }
            other => other,
        }?;
        self.block_on(self.client.fabric_remove(from))?;
        let mut st = self.state();
        st.inodes.rename(from, to);
        if let Some(ino) = st.inodes.ino_of(to)
            && let Some(i) = st.inodes.get_mut(ino)
        {
            // The same bytes under a new version: what the kernel cached still holds.
            if i.kernel_version.as_deref() == Some(object.version.as_str()) {
                i.kernel_version = Some(placed.version.clone());
            }
            i.known = Some((placed, Instant::now()));
        }
        Ok(())
    }

    fn do_readdir(
        &self,
        ino: u64,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) -> Result<(), (FsError, ReplyDirectory)> {
        let cached = match self.handle(fh) {
            Ok(Open::Dir { entries, .. }) => entries,
            Ok(_) => return Err((FsError::new(Errno::ENOTDIR, "not a directory"), reply)),
            Err(e) => return Err((e, reply)),
        };
        let entries = match cached {
            Some(e) if offset > 0 => e,
            _ => {
                let path = match self.dir_path(ino) {
                    Ok(p) => p,
                    Err(e) => return Err((e, reply)),
                };
                let listed = match self.list(ino, &path) {
                    Ok(l) => Arc::new(l),
                    Err(e) => return Err((e, reply)),
                };
                if let Some(Open::Dir { entries, .. }) = lock(&self.handles).get_mut(&fh.0) {
                    *entries = Some(listed.clone());
                }
                listed
            }
        };
        let skip = usize::try_from(offset).unwrap_or(usize::MAX);
        for (i, e) in entries.iter().enumerate().skip(skip) {
            let kind = match e.kind {
                Kind::File => FileType::RegularFile,
                Kind::Dir => FileType::Directory,
            };
            if reply.add(INodeNo(e.ino), (i + 1) as u64, kind, &e.name) {
                break;
            }
        }
        reply.ok();
        Ok(())
    }
}

impl Filesystem for FabricFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        // `open(O_TRUNC)` arrives as one open with the flag, not a truncate then an open.
        if let Err(missing) = config.add_capabilities(InitFlags::FUSE_ATOMIC_O_TRUNC) {
            tracing::debug!(?missing, "mount: the kernel lacks atomic O_TRUNC");
        }
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let result = self
            .dir_path(parent.0)
            .and_then(|dir| match child_path(&dir, name) {
                Ok(path) => self.entry(&path),
                Err(NameError::TooLong) => Err(name_error(NameError::TooLong)),
                Err(NameError::Invalid) => Err(FsError::not_found("that name")),
            });
        match result {
            Ok(attr) => reply.entry(&TTL, &attr, Generation(0)),
            Err(e) => reply.error(self.fail("lookup", e)),
        }
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        self.state().inodes.forget(ino.0, nlookup);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.attr_of(ino.0) {
            Ok(attr) => reply.attr(&TTL, &attr),
            Err(e) => reply.error(self.fail("getattr", e)),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        _mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<fuser::TimeOrNow>,
        _mtime: Option<fuser::TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        match self.do_setattr(ino.0, size) {
            Ok(attr) => reply.attr(&TTL, &attr),
            Err(e) => reply.error(self.fail("setattr", e)),
        }
    }

    fn mkdir(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        _mode: u32,
        _umask: u32,
        reply: ReplyEntry,
    ) {
        match self.do_mkdir(parent.0, name) {
            Ok(attr) => reply.entry(&TTL, &attr, Generation(0)),
            Err(e) => reply.error(self.fail("mkdir", e)),
        }
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        match self.do_unlink(parent.0, name) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(self.fail("unlink", e)),
        }
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        match self.do_rmdir(parent.0, name) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(self.fail("rmdir", e)),
        }
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        match self.do_rename(parent.0, name, newparent.0, newname, flags) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(self.fail("rename", e)),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        match self.do_open(ino.0, flags) {
            Ok((fh, open_flags)) => reply.opened(fh, open_flags),
            Err(e) => reply.error(self.fail("open", e)),
        }
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        match self.do_read(fh, offset, size) {
            Ok(data) => reply.data(&data),
            Err(e) => reply.error(self.fail("read", e)),
        }
    }

    fn write(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        match self.do_write(fh, offset, data) {
            Ok(n) => reply.written(n),
            Err(e) => reply.error(self.fail("write", e)),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        let result = match self.handle(fh) {
            Ok(Open::Write { ino, file }) => self.commit(ino, &file, true),
            Ok(_) => Ok(()),
            Err(e) => Err(e),
        };
        match result {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(self.fail("flush", e)),
        }
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        match self.do_release(fh) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(self.fail("release", e)),
        }
    }

    fn fsync(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        let result = match self.handle(fh) {
            Ok(Open::Write { ino, file }) => self.commit(ino, &file, false),
            Ok(_) => Ok(()),
            Err(e) => Err(e),
        };
        match result {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(self.fail("fsync", e)),
        }
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        match self.dir_path(ino.0) {
            Ok(_) => {
                self.state().inodes.opened(ino.0);
                let fh = self.add_handle(Open::Dir {
                    ino: ino.0,
                    entries: None,
                });
                reply.opened(fh, FopenFlags::empty());
            }
            Err(e) => reply.error(self.fail("opendir", e)),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        reply: ReplyDirectory,
    ) {
        if let Err((e, reply)) = self.do_readdir(ino.0, fh, offset, reply) {
            reply.error(self.fail("readdir", e));
        }
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        match self.do_release(fh) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(self.fail("releasedir", e)),
        }
    }

    // Extended attributes, `copy_file_range`, `lseek` holes and `fallocate` are not
    // supported. `ENOSYS` makes the kernel stop asking (and fall back where it can); these
    // answer it without fuser's warning for each.
    fn getxattr(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _name: &OsStr,
        _size: u32,
        reply: ReplyXattr,
    ) {
        reply.error(Errno::ENOSYS);
    }

    fn listxattr(&self, _req: &Request, _ino: INodeNo, _size: u32, reply: ReplyXattr) {
        reply.error(Errno::ENOSYS);
    }

    fn setxattr(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _name: &OsStr,
        _value: &[u8],
        _flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        reply.error(Errno::ENOSYS);
    }

    fn removexattr(&self, _req: &Request, _ino: INodeNo, _name: &OsStr, reply: ReplyEmpty) {
        reply.error(Errno::ENOSYS);
    }

    fn lseek(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _offset: i64,
        _whence: i32,
        reply: ReplyLseek,
    ) {
        reply.error(Errno::ENOSYS);
    }

    fn fallocate(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _offset: u64,
        _length: u64,
        _mode: i32,
        reply: ReplyEmpty,
    ) {
        reply.error(Errno::ENOSYS);
    }

    fn copy_file_range(
        &self,
        _req: &Request,
        _ino_in: INodeNo,
        _fh_in: FileHandle,
        _offset_in: u64,
        _ino_out: INodeNo,
        _fh_out: FileHandle,
        _offset_out: u64,
        _len: u64,
        _flags: fuser::CopyFileRangeFlags,
        reply: ReplyWrite,
    ) {
        reply.error(Errno::ENOSYS);
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        // The fabric has no fixed size; report plenty (some tools refuse a full disk).
        let blocks = 1u64 << 40;
        let inodes = self.state().inodes.len() as u64;
        let max = crate::inodes::INODES_MAX as u64;
        reply.statfs(
            blocks,
            blocks,
            blocks,
            max,
            max.saturating_sub(inodes),
            4096,
            crate::names::NAME_BYTES_MAX as u32,
            4096,
        );
    }

    fn create(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        _mode: u32,
        _umask: u32,
        _flags: i32,
        reply: ReplyCreate,
    ) {
        match self.do_create(parent.0, name) {
            Ok((attr, fh)) => reply.created(&TTL, &attr, Generation(0), fh, FopenFlags::empty()),
            Err(e) => reply.error(self.fail("create", e)),
        }
    }
}
