//! Subsystem state machines: how a subsystem (jobs, and later the fabric's metadata) keeps its
//! own part of the replicated state without this crate knowing its types.
//!
//! A subsystem implements [`StateMachine`]: a name, a check of its commands, and a pure apply
//! function over its own keys. Its commands travel in the log as bytes under its name
//! ([`crate::Command::Machine`]); its keys live under `s/<name>/` in the state table, and it
//! sees only those ([`MachineTable`], [`MachineView`]). The control plane composes the machines
//! it was started with ([`Machines`]); adding one never edits this crate.
//!
//! An apply function must be deterministic: every voter applies the same log to the same state
//! and must reach the same result. It must never read the clock, randomness or anything outside
//! its table; times and ids come in the command.

use crate::store::{DbError, db_err};
use redb::{ReadTransaction, ReadableTable, Table};
use std::collections::BTreeMap;
use std::sync::Arc;

/// Longest subsystem name.
pub const MACHINE_NAME_BYTES_MAX: usize = 32;

/// Why a command was refused: one line, shown to whoever proposed it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Rejection(pub String);

/// What a subsystem's command did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applied {
    Done,
    /// A record was created (its id).
    Created(u64),
    /// The command was invalid for the current state: the machine changed nothing.
    Rejected(Rejection),
}

/// A subsystem's part of the replicated state.
pub trait StateMachine: Send + Sync + 'static {
    /// The subsystem's name: at most [`MACHINE_NAME_BYTES_MAX`] bytes of `[a-z0-9_-]`.
    fn name(&self) -> &'static str;

    /// Checks a command's bounds before it is proposed (and again before it is applied).
    fn validate(&self, command: &[u8]) -> Result<(), Rejection>;

    /// Applies one command to the subsystem's keys. Errors are storage failures only; a command
    /// that is invalid for the current state is answered [`Applied::Rejected`] and must change
    /// nothing.
    fn apply(&self, table: &mut MachineTable<'_, '_>, command: &[u8]) -> Result<Applied, DbError>;

    /// What the leader needs to take `command` from `caller`, a member that is not a voter,
    /// judged on the leader's state (`view`): a person's right for what people ask for,
    /// nothing more for a node's own reports (then [`StateMachine::may_forward`] says whose
    /// they are) or for what the node may do to its own work. Every need listed must be met.
    /// The default: only from voters.
    fn forwarding(
        &self,
        _view: &MachineView<'_>,
        _caller: &str,
        _command: &[u8],
    ) -> Vec<crate::Needs> {
        vec![crate::Needs::Voter]
    }

    /// Whether the node `caller` may forward `command` to the leader, judged on the leader's
    /// state (`view`) before it is proposed. A node's own reports (a job it runs) are its to
    /// make; another node's are not. The default takes every command.
    fn may_forward(
        &self,
        _view: &MachineView<'_>,
        _caller: &str,
        _command: &[u8],
    ) -> Result<(), Rejection> {
        Ok(())
    }
}

/// The state machines a control plane was started with, by name.
#[derive(Clone, Default)]
pub struct Machines {
    by_name: Arc<BTreeMap<&'static str, Arc<dyn StateMachine>>>,
}

impl std::fmt::Debug for Machines {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.by_name.keys()).finish()
    }
}

impl Machines {
    /// Registers `machines`; a bad or repeated name is refused.
    pub fn new(machines: Vec<Arc<dyn StateMachine>>) -> Result<Machines, Rejection> {
        let mut by_name = BTreeMap::new();
        for m in machines {
            let name = m.name();
            let valid = !name.is_empty()
                && name.len() <= MACHINE_NAME_BYTES_MAX
                && name.bytes().all(|b| {
                    b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_'
                });
            if !valid {
                return Err(Rejection(format!("bad state machine name {name:?}")));
            }
            if by_name.insert(name, m).is_some() {
                return Err(Rejection(format!("two state machines are named {name:?}")));
            }
        }
        Ok(Machines {
            by_name: Arc::new(by_name),
        })
    }

    pub(crate) fn get(&self, name: &str) -> Result<&Arc<dyn StateMachine>, Rejection> {
        self.by_name.get(name).ok_or_else(|| {
            Rejection(format!(
                "this node has no state machine named {name:?} (a node of another version?)"
            ))
        })
    }
}

type StateTable<'t> = Table<'t, &'static [u8], &'static [u8]>;

/// Key/value pairs.
pub type Pairs = Vec<(Vec<u8>, Vec<u8>)>;

/// Where a subsystem's keys live in the state table.
pub(crate) fn machine_prefix(name: &str) -> Vec<u8> {
    [b"s/", name.as_bytes(), b"/"].concat()
}

/// The end of the key range that starts with `prefix` (prefixes end in `/`, so `0` follows).
pub(crate) fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    if let Some(last) = end.last_mut() {
        *last += 1;
    }
    end
}

/// A subsystem's keys, writable, inside the apply step of one log entry.
pub struct MachineTable<'a, 't> {
    table: &'a mut StateTable<'t>,
    prefix: Vec<u8>,
}

impl<'a, 't> MachineTable<'a, 't> {
    pub(crate) fn new(table: &'a mut StateTable<'t>, name: &str) -> MachineTable<'a, 't> {
        MachineTable {
            table,
            prefix: machine_prefix(name),
        }
    }

    fn key(&self, key: &[u8]) -> Vec<u8> {
        [self.prefix.as_slice(), key].concat()
    }

    pub fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, DbError> {
        Ok(self
            .table
            .get(self.key(key).as_slice())
            .map_err(db_err)?
            .map(|v| v.value().to_vec()))
    }

    pub fn insert(&mut self, key: &[u8], value: &[u8]) -> Result<(), DbError> {
        let key = self.key(key);
        self.table
            .insert(key.as_slice(), value)
            .map(|_| ())
            .map_err(db_err)
    }

    /// Removes `key`; true if it was there.
    pub fn remove(&mut self, key: &[u8]) -> Result<bool, DbError> {
        let key = self.key(key);
        Ok(self.table.remove(key.as_slice()).map_err(db_err)?.is_some())
    }

    /// As [`MachineView::scan`], on the keys as this entry has changed them so far.
    pub fn scan(
        &self,
        under: &[u8],
        from: &[u8],
        limit: usize,
        newest_first: bool,
    ) -> Result<Pairs, DbError> {
        scan(&*self.table, &self.key(under), from, limit, newest_first)
    }
}

/// A subsystem's keys, read-only, at one applied index (see [`crate::StateView::machine`]).
pub struct MachineView<'v> {
    txn: &'v ReadTransaction,
    prefix: Vec<u8>,
}

impl<'v> MachineView<'v> {
    pub(crate) fn new(txn: &'v ReadTransaction, name: &str) -> MachineView<'v> {
        MachineView {
            txn,
            prefix: machine_prefix(name),
        }
    }

    /// Subsystem `name`'s keys, read-only, in the same snapshot: what another subsystem
    /// publishes for others to check (the jobs' write grants for the fabric).
    pub fn machine(&self, name: &str) -> MachineView<'v> {
        MachineView::new(self.txn, name)
    }

    pub fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, DbError> {
        let t = self.txn.open_table(crate::store::STATE).map_err(db_err)?;
        let key = [self.prefix.as_slice(), key].concat();
        Ok(t.get(key.as_slice())
            .map_err(db_err)?
            .map(|v| v.value().to_vec()))
    }

    /// Up to `limit` pairs whose keys start with `under`, from `under ++ from` on, in key order
    /// (newest first when `newest_first`). Keys are returned without `under`.
    pub fn scan(
        &self,
        under: &[u8],
        from: &[u8],
        limit: usize,
        newest_first: bool,
    ) -> Result<Pairs, DbError> {
        let t = self.txn.open_table(crate::store::STATE).map_err(db_err)?;
        let base = [self.prefix.as_slice(), under].concat();
        scan(&t, &base, from, limit, newest_first)
    }
}

/// What both a subsystem's view and the table an entry is changing can read: one reading
/// function serves `apply` and the queries.
pub trait Records {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, DbError>;
    /// See [`MachineView::scan`].
    fn scan(
        &self,
        under: &[u8],
        from: &[u8],
        limit: usize,
        newest_first: bool,
    ) -> Result<Pairs, DbError>;
}

impl Records for MachineView<'_> {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, DbError> {
        MachineView::get(self, key)
    }
    fn scan(
        &self,
        under: &[u8],
        from: &[u8],
        limit: usize,
        newest_first: bool,
    ) -> Result<Pairs, DbError> {
        MachineView::scan(self, under, from, limit, newest_first)
    }
}

impl Records for MachineTable<'_, '_> {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, DbError> {
        MachineTable::get(self, key)
    }
    fn scan(
        &self,
        under: &[u8],
        from: &[u8],
        limit: usize,
        newest_first: bool,
    ) -> Result<Pairs, DbError> {
        MachineTable::scan(self, under, from, limit, newest_first)
    }
}

/// Up to `limit` pairs of `t` whose keys start with `base`, from `base ++ from` on, in key
/// order (newest first when `newest_first`), keys without `base`.
fn scan(
    t: &impl ReadableTable<&'static [u8], &'static [u8]>,
    base: &[u8],
    from: &[u8],
    limit: usize,
    newest_first: bool,
) -> Result<Pairs, DbError> {
    let start = [base, from].concat();
    let end = prefix_end(base);
    let range = t.range(start.as_slice()..end.as_slice()).map_err(db_err)?;
    let mut out = Vec::new();
    let mut push = |item: Result<_, redb::StorageError>| -> Result<bool, DbError> {
        if out.len() >= limit {
            return Ok(false);
        }
        let (k, v): (redb::AccessGuard<&[u8]>, redb::AccessGuard<&[u8]>) = item.map_err(db_err)?;
        out.push((k.value()[base.len()..].to_vec(), v.value().to_vec()));
        Ok(true)
    };
    if newest_first {
        for item in range.rev() {
            if !push(item)? {
                break;
            }
        }
    } else {
        for item in range {
            if !push(item)? {
                break;
            }
        }
    }
    Ok(out)
}
