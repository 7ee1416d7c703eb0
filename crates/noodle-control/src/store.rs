//! The Raft log and the state machine, both in one redb database per node.
//!
//! - `log`: index -> entry, `raft_meta`: vote, committed and purged log ids. Appends commit with
//!   [`Durability::Immediate`] (fsync) before openraft is told they are flushed, so a write is
//!   acknowledged only once it is durable on a majority.
//! - `state`: the replicated state (see [`crate::state`]), `sm_meta`: last applied log id and
//!   membership. Applying commits without fsync: after a crash the state may be behind the
//!   log, and openraft re-applies from the log. Purging the log commits with fsync, which also
//!   makes every earlier apply durable, so nothing is purged that the state has not kept.
//! - `snapshot`: the current snapshot, kept for followers that fell behind the purged log.
//!
//! One writer at a time is redb's rule. Disk work runs in place on the calling task: a redb
//! commit with fsync takes about one fsync (~0.2 ms here), and handing it to another thread
//! (`block_in_place`) cost more than that in commit latency. Group commit happens above, in
//! `Control` (see `Command::Batch`).

use crate::machine::Machines;
use crate::state;
use crate::types::{RaftId, TypeConfig};
use openraft::storage::{LogFlushed, LogState, RaftLogStorage, RaftStateMachine, Snapshot};
use openraft::{
    Entry, EntryPayload, LogId, OptionalSend, RaftLogReader, RaftSnapshotBuilder, SnapshotMeta,
    StorageError, StorageIOError, StoredMembership, Vote,
};
use redb::{
    Database, Durability, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition,
};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::fmt::Debug;
use std::io::Cursor;
use std::ops::RangeBounds;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("log");
const RAFT_META: TableDefinition<&str, &[u8]> = TableDefinition::new("raft_meta");
pub(crate) const STATE: TableDefinition<&[u8], &[u8]> = TableDefinition::new("state");
const SM_META: TableDefinition<&str, &[u8]> = TableDefinition::new("sm_meta");
const SNAPSHOT: TableDefinition<&str, &[u8]> = TableDefinition::new("snapshot");

type SResult<T> = Result<T, StorageError<RaftId>>;

/// A redb failure, as text (redb has one error type per operation).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct DbError(pub String);

pub(crate) fn db_err(e: impl std::fmt::Display) -> DbError {
    DbError(e.to_string())
}

fn encode<T: Serialize>(v: &T) -> Result<Vec<u8>, DbError> {
    postcard::to_allocvec(v).map_err(db_err)
}

fn decode<T: DeserializeOwned>(b: &[u8]) -> Result<T, DbError> {
    postcard::from_bytes(b).map_err(db_err)
}

/// How durable log appends are. Only tests choose anything but `Fsync`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AppendDurability {
    /// Acknowledge an append only after it is on disk.
    Fsync,
    /// Test-only: acknowledge before the disk has it. The simulation must catch this.
    UnsafeAckBeforeFsync,
}

/// The layout of the tables and of what is in them. Format 2 keeps subsystem state under
/// `s/<name>/` and proposal answers (exactly-once); format 1 had jobs in the control plane's own
/// command enum and cannot be read.
const FORMAT: u64 = 2;

/// One node's control-plane database. Cheap to clone; every clone sees the same database, also
/// after [`Store::reopen`].
#[derive(Clone)]
pub struct Store {
    /// `None` while the database is closed for a reopen.
    db: Arc<RwLock<Option<Arc<Database>>>>,
    /// Where the file is, for a reopen (`None` for a store on another backend).
    path: Option<PathBuf>,
    append: AppendDurability,
    snapshot_seq: Arc<AtomicU64>,
    machines: Machines,
    /// Where each remembered proposal id was applied (see [`state::Answers`]).
    answers: Arc<Mutex<state::Answers>>,
    /// How far the state machine has applied, and who waits for it.
    applied: Arc<Mutex<Applied>>,
    /// The committed index written last (see `save_committed`).
    committed_saved: Arc<Mutex<u64>>,
}

/// Readers waiting for an entry to be applied, at most.
const APPLIED_WAITERS_MAX: usize = 65_536;
/// The committed index is written when it has moved this many entries.
const COMMITTED_SAVE_EVERY: u64 = 64;

/// The last entry applied, and the readers waiting for a later one, woken in the order of
/// (index, arrival): the same order in every run of a simulation.
#[derive(Default)]
struct Applied {
    index: u64,
    arrivals: u64,
    waiting: std::collections::BTreeMap<(u64, u64), tokio::sync::oneshot::Sender<()>>,
}

impl Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("append", &self.append)
            .finish()
    }
}

#[derive(Serialize, Deserialize)]
struct StoredSnapshot {
    meta: SnapshotMeta<RaftId, crate::Member>,
    data: Vec<u8>,
}

impl Store {
    /// Opens (or creates) the database file. A file that redb cannot read, or that another
    /// version of noodle wrote, is an error: the caller decides whether to start over (see the
    /// node's recovery).
    pub fn open(path: &Path) -> Result<Store, DbError> {
        let db = init(Database::create(path).map_err(db_err)?)?;
        Ok(Store::with_db(db, Some(path.to_path_buf())))
    }

    /// Opens a database on any storage, e.g. the simulation's crash-prone disk.
    pub fn with_backend(backend: impl redb::StorageBackend) -> Result<Store, DbError> {
        let db = Database::builder()
            .create_with_backend(backend)
            .map_err(db_err)?;
        Ok(Store::with_db(init(db)?, None))
    }

    fn with_db(db: Database, path: Option<PathBuf>) -> Store {
        Store {
            db: Arc::new(RwLock::new(Some(Arc::new(db)))),
            path,
            append: AppendDurability::Fsync,
            snapshot_seq: Arc::default(),
            machines: Machines::default(),
            answers: Arc::default(),
            applied: Arc::default(),
            committed_saved: Arc::default(),
        }
    }

    /// The store with the subsystem state machines its entries are applied with.
    pub(crate) fn with_machines(mut self, machines: Machines) -> Store {
        self.machines = machines;
        self
    }

    /// The index of the last entry applied here (0 before the first).
    pub(crate) fn applied_index(&self) -> u64 {
        self.lock_applied().index
    }

    /// Resolves once entry `index` is applied here (at once if it is); dropped unresolved if
    /// the store is dropped first. `None` while [`APPLIED_WAITERS_MAX`] readers wait already
    /// (the caller looks again later).
    pub(crate) fn applied_wake(&self, index: u64) -> Option<tokio::sync::oneshot::Receiver<()>> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let mut applied = self.lock_applied();
        if applied.index >= index {
            let _ = tx.send(());
        } else {
            // A reader that gave up leaves its sender behind: dropped by the wake-up that
            // passes it.
            if applied.waiting.len() >= APPLIED_WAITERS_MAX {
                return None;
            }
            applied.arrivals += 1;
            let key = (index, applied.arrivals);
            applied.waiting.insert(key, tx);
        }
        Some(rx)
    }

    /// Records that entries up to `index` are applied and wakes who waited for them.
    fn applied_to(&self, index: u64) {
        let mut applied = self.lock_applied();
        applied.index = applied.index.max(index);
        let first_later = (applied.index + 1, 0);
        let later = applied.waiting.split_off(&first_later);
        let ready = std::mem::replace(&mut applied.waiting, later);
        drop(applied);
        for (_, tx) in ready {
            let _ = tx.send(());
        }
    }

    fn lock_applied(&self) -> std::sync::MutexGuard<'_, Applied> {
        self.applied.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn lock_answers(&self) -> std::sync::MutexGuard<'_, state::Answers> {
        self.answers.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn machines(&self) -> &Machines {
        &self.machines
    }

    fn db(&self) -> Result<Arc<Database>, DbError> {
        self.db
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .ok_or_else(|| DbError("the control-plane database is being reopened".into()))
    }

    /// Closes the database file and opens it again: after a failed write (a full disk) redb
    /// refuses every later one until it is reopened. Fails (and keeps the database closed, to
    /// be retried) while another handle still uses the file.
    pub(crate) fn reopen(&self) -> Result<(), DbError> {
        let path = self
            .path
            .as_ref()
            .ok_or_else(|| DbError("this database cannot be reopened".into()))?;
        let mut cell = self.db.write().unwrap_or_else(|e| e.into_inner());
        if let Some(old) = cell.take()
            && let Err(old) = Arc::try_unwrap(old)
        {
            *cell = Some(old);
            return Err(DbError(
                "the control-plane database is still in use; reopening it later".into(),
            ));
        }
        *cell = Some(Arc::new(init(Database::create(path).map_err(db_err)?)?));
        self.lock_answers().invalidate();
        Ok(())
    }

    /// Test-only switch: see [`AppendDurability::UnsafeAckBeforeFsync`].
    pub fn set_append_durability(&mut self, d: AppendDurability) {
        self.append = d;
    }

    /// A consistent read-only view of the replicated state as this database has it.
    pub fn view(&self) -> Result<crate::StateView, DbError> {
        let txn = self.db()?.begin_read().map_err(db_err)?;
        Ok(crate::StateView::new(txn))
    }

    /// How many handles to the database are alive (this one included).
    pub(crate) fn holders(&self) -> usize {
        Arc::strong_count(&self.db)
    }

    /// Commits a small durable write: whether the disk takes writes again.
    pub(crate) fn probe_write(&self) -> Result<(), DbError> {
        self.put_meta(SM_META, "probe", &(), Durability::Immediate)
    }

    fn meta<T: DeserializeOwned>(
        &self,
        table: TableDefinition<&str, &[u8]>,
        key: &str,
    ) -> Result<Option<T>, DbError> {
        let txn = self.db()?.begin_read().map_err(db_err)?;
        let t = txn.open_table(table).map_err(db_err)?;
        match t.get(key).map_err(db_err)? {
            Some(v) => Ok(Some(decode(v.value())?)),
            None => Ok(None),
        }
    }

    fn put_meta<T: Serialize>(
        &self,
        table: TableDefinition<&str, &[u8]>,
        key: &str,
        v: &T,
        durability: Durability,
    ) -> Result<(), DbError> {
        let mut txn = self.db()?.begin_write().map_err(db_err)?;
        txn.set_durability(durability).map_err(db_err)?;
        {
            let mut t = txn.open_table(table).map_err(db_err)?;
            t.insert(key, encode(v)?.as_slice()).map_err(db_err)?;
        }
        txn.commit().map_err(db_err)
    }

    pub(crate) fn last_log_id(&self) -> Result<Option<LogId<RaftId>>, DbError> {
        let txn = self.db()?.begin_read().map_err(db_err)?;
        let t = txn.open_table(LOG).map_err(db_err)?;
        match t.last().map_err(db_err)? {
            Some((_, v)) => {
                let e: Entry<TypeConfig> = decode(v.value())?;
                Ok(Some(e.log_id))
            }
            None => Ok(None),
        }
    }

    fn build(&self) -> Result<Snapshot<TypeConfig>, DbError> {
        let txn = self.db()?.begin_read().map_err(db_err)?;
        let meta_t = txn.open_table(SM_META).map_err(db_err)?;
        let get = |k: &str| -> Result<Option<Vec<u8>>, DbError> {
            Ok(meta_t.get(k).map_err(db_err)?.map(|v| v.value().to_vec()))
        };
        let applied: Option<LogId<RaftId>> =
            get("applied")?.map(|b| decode(&b)).transpose()?.flatten();
        let membership: StoredMembership<RaftId, crate::Member> = get("membership")?
            .map(|b| decode(&b))
            .transpose()?
            .unwrap_or_default();
        let data = state::dump(&txn)?;
        drop(meta_t);
        drop(txn);
        let seq = self.snapshot_seq.fetch_add(1, Ordering::Relaxed);
        let snapshot_id = match applied {
            Some(l) => format!("{}-{}-{seq}", l.leader_id, l.index),
            None => format!("none-{seq}"),
        };
        let meta = SnapshotMeta {
            last_log_id: applied,
            last_membership: membership,
            snapshot_id,
        };
        let stored = StoredSnapshot {
            meta: meta.clone(),
            data: data.clone(),
        };
        self.put_meta(SNAPSHOT, "current", &stored, Durability::None)?;
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        })
    }
}

/// Creates the tables and checks (or, in a new database, writes) the format.
fn init(db: Database) -> Result<Database, DbError> {
    let txn = db.begin_write().map_err(db_err)?;
    {
        let log = txn.open_table(LOG).map_err(db_err)?;
        txn.open_table(RAFT_META).map_err(db_err)?;
        let state = txn.open_table(STATE).map_err(db_err)?;
        let mut meta = txn.open_table(SM_META).map_err(db_err)?;
        txn.open_table(SNAPSHOT).map_err(db_err)?;
        let format: Option<u64> = match meta.get("format").map_err(db_err)? {
            Some(v) => Some(decode(v.value())?),
            None => None,
        };
        let empty = log.is_empty().map_err(db_err)? && state.is_empty().map_err(db_err)?;
        match format {
            Some(FORMAT) => {}
            None if empty => {
                meta.insert("format", encode(&FORMAT)?.as_slice())
                    .map_err(db_err)?;
            }
            other => {
                return Err(DbError(format!(
                    "it is in format {} and this noodle reads format {FORMAT}",
                    other.unwrap_or(1)
                )));
            }
        }
    }
    txn.commit().map_err(db_err)?;
    Ok(db)
}

impl RaftLogReader<TypeConfig> for Store {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> SResult<Vec<Entry<TypeConfig>>> {
        let read = || -> Result<Vec<Entry<TypeConfig>>, DbError> {
            let txn = self.db()?.begin_read().map_err(db_err)?;
            let t = txn.open_table(LOG).map_err(db_err)?;
            let mut out = Vec::new();
            for item in t.range(range).map_err(db_err)? {
                let (_, v) = item.map_err(db_err)?;
                out.push(decode(v.value())?);
            }
            Ok(out)
        };
        read().map_err(|e| StorageIOError::read_logs(&e).into())
    }
}

impl RaftLogStorage<TypeConfig> for Store {
    type LogReader = Store;

    async fn get_log_state(&mut self) -> SResult<LogState<TypeConfig>> {
        let purged: Option<LogId<RaftId>> = self
            .meta(RAFT_META, "purged")
            .map_err(|e| StorageIOError::read_logs(&e))?
            .flatten();
        let last = self
            .last_log_id()
            .map_err(|e| StorageIOError::read_logs(&e))?
            .or(purged);
        Ok(LogState {
            last_purged_log_id: purged,
            last_log_id: last,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<RaftId>) -> SResult<()> {
        self.put_meta(RAFT_META, "vote", vote, Durability::Immediate)
            .map_err(|e| StorageIOError::write_vote(&e).into())
    }

    async fn read_vote(&mut self) -> SResult<Option<Vote<RaftId>>> {
        self.meta(RAFT_META, "vote")
            .map_err(|e| StorageIOError::read_vote(&e).into())
    }

    async fn save_committed(&mut self, committed: Option<LogId<RaftId>>) -> SResult<()> {
        // Not synced, and written only every COMMITTED_SAVE_EVERY entries (a write of its
        // own per batch costs as much as applying it): it may go back in a crash, and only
        // saves re-applying after a restart. Linearizable reads therefore never rely on it
        // alone (see `Control::read_index_here`).
        let index = committed.map_or(0, |l| l.index);
        {
            let mut saved = self
                .committed_saved
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            if index < *saved + COMMITTED_SAVE_EVERY && index >= *saved {
                return Ok(());
            }
            *saved = index;
        }
        self.put_meta(RAFT_META, "committed", &committed, Durability::None)
            .map_err(|e| StorageIOError::write(&e).into())
    }

    async fn read_committed(&mut self) -> SResult<Option<LogId<RaftId>>> {
        Ok(self
            .meta(RAFT_META, "committed")
            .map_err(|e| StorageIOError::read(&e))?
            .flatten())
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> SResult<()>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let durability = match self.append {
            AppendDurability::Fsync => Durability::Immediate,
            AppendDurability::UnsafeAckBeforeFsync => Durability::None,
        };
        let write = || -> Result<(), DbError> {
            let mut txn = self.db()?.begin_write().map_err(db_err)?;
            txn.set_durability(durability).map_err(db_err)?;
            {
                let mut t = txn.open_table(LOG).map_err(db_err)?;
                for e in entries {
                    t.insert(e.log_id.index, encode(&e)?.as_slice())
                        .map_err(db_err)?;
                }
            }
            txn.commit().map_err(db_err)
        };
        let result = write();
        let io = result
            .as_ref()
            .map(|_| ())
            .map_err(|e| std::io::Error::other(e.to_string()));
        callback.log_io_completed(io);
        result.map_err(|e| StorageIOError::write_logs(&e).into())
    }

    async fn truncate(&mut self, log_id: LogId<RaftId>) -> SResult<()> {
        let write = || -> Result<(), DbError> {
            let txn = self.db()?.begin_write().map_err(db_err)?;
            {
                let mut t = txn.open_table(LOG).map_err(db_err)?;
                t.retain_in(log_id.index.., |_, _| false).map_err(db_err)?;
            }
            txn.commit().map_err(db_err)
        };
        write().map_err(|e| StorageIOError::write_logs(&e).into())
    }

    async fn purge(&mut self, log_id: LogId<RaftId>) -> SResult<()> {
        let write = || -> Result<(), DbError> {
            let txn = self.db()?.begin_write().map_err(db_err)?;
            {
                let mut meta = txn.open_table(RAFT_META).map_err(db_err)?;
                meta.insert("purged", encode(&Some(log_id))?.as_slice())
                    .map_err(db_err)?;
                let mut t = txn.open_table(LOG).map_err(db_err)?;
                t.retain_in(..=log_id.index, |_, _| false).map_err(db_err)?;
            }
            txn.commit().map_err(db_err)
        };
        write().map_err(|e| StorageIOError::write_logs(&e).into())
    }
}

impl RaftSnapshotBuilder<TypeConfig> for Store {
    async fn build_snapshot(&mut self) -> SResult<Snapshot<TypeConfig>> {
        self.build()
            .map_err(|e| StorageIOError::write_snapshot(None, &e).into())
    }
}

impl RaftStateMachine<TypeConfig> for Store {
    type SnapshotBuilder = Store;

    async fn applied_state(
        &mut self,
    ) -> SResult<(
        Option<LogId<RaftId>>,
        StoredMembership<RaftId, crate::Member>,
    )> {
        let read = || -> Result<_, DbError> {
            let applied: Option<LogId<RaftId>> = self.meta(SM_META, "applied")?.flatten();
            let membership = self.meta(SM_META, "membership")?.unwrap_or_default();
            Ok((applied, membership))
        };
        let state = read().map_err(|e| StorageIOError::read_state_machine(&e))?;
        self.applied_to(state.0.map_or(0, |l| l.index));
        Ok(state)
    }

    async fn apply<I>(&mut self, entries: I) -> SResult<Vec<crate::Response>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut answers = self.lock_answers();
        let write = || -> Result<Vec<crate::Response>, DbError> {
            let mut txn = self.db()?.begin_write().map_err(db_err)?;
            txn.set_durability(Durability::None).map_err(db_err)?;
            let mut responses = Vec::new();
            let mut last = None;
            let mut membership = None;
            let applying;
            {
                let mut t = txn.open_table(STATE).map_err(db_err)?;
                let mut ctx = state::Applying::begin(&t, &self.machines, &mut answers)?;
                for e in entries {
                    last = Some(e.log_id);
                    match e.payload {
                        EntryPayload::Blank => responses.push(crate::Response::Done),
                        EntryPayload::Normal(p) => {
                            responses.push(state::apply_entry(&mut t, &mut ctx, p)?)
                        }
                        EntryPayload::Membership(m) => {
                            membership = Some(StoredMembership::new(Some(e.log_id), m));
                            responses.push(crate::Response::Done);
                        }
                    }
                }
                let mut meta = txn.open_table(SM_META).map_err(db_err)?;
                if let Some(last) = last {
                    meta.insert("applied", encode(&Some(last))?.as_slice())
                        .map_err(db_err)?;
                }
                if let Some(m) = membership {
                    meta.insert("membership", encode(&m)?.as_slice())
                        .map_err(db_err)?;
                }
                applying = ctx;
            }
            txn.commit().map_err(db_err)?;
            // Only what committed joins the index of answers.
            applying.commit();
            if let Some(last) = last {
                self.applied_to(last.index);
            }
            Ok(responses)
        };
        let result = write();
        if result.is_err() {
            answers.invalidate();
        }
        result.map_err(|e| StorageIOError::write_state_machine(&e).into())
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> SResult<Box<Cursor<Vec<u8>>>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<RaftId, crate::Member>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> SResult<()> {
        let data = snapshot.into_inner();
        let write = || -> Result<(), DbError> {
            let txn = self.db()?.begin_write().map_err(db_err)?;
            {
                let mut t = txn.open_table(STATE).map_err(db_err)?;
                state::restore(&mut t, &data)?;
                self.lock_answers().invalidate();
                let mut sm = txn.open_table(SM_META).map_err(db_err)?;
                sm.insert("applied", encode(&meta.last_log_id)?.as_slice())
                    .map_err(db_err)?;
                sm.insert("membership", encode(&meta.last_membership)?.as_slice())
                    .map_err(db_err)?;
                let mut s = txn.open_table(SNAPSHOT).map_err(db_err)?;
                let stored = StoredSnapshot {
                    meta: meta.clone(),
                    data: data.clone(),
                };
                s.insert("current", encode(&stored)?.as_slice())
                    .map_err(db_err)?;
            }
            txn.commit().map_err(db_err)
        };
        write().map_err(|e| StorageIOError::write_snapshot(Some(meta.signature()), &e))?;
        self.applied_to(meta.last_log_id.map_or(0, |l| l.index));
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> SResult<Option<Snapshot<TypeConfig>>> {
        let stored: Option<StoredSnapshot> = self
            .meta(SNAPSHOT, "current")
            .map_err(|e| StorageIOError::read_snapshot(None, &e))?;
        Ok(stored.map(|s| Snapshot {
            meta: s.meta,
            snapshot: Box::new(Cursor::new(s.data)),
        }))
    }
}
