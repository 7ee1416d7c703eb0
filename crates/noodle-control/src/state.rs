//! The replicated state: one redb table of byte keys, one prefix per kind of record.
//!
//! | prefix | key | value |
//! | --- | --- | --- |
//! | `c/` | config key | value (UTF-8) |
//! | `r/` | register key | bytes |
//! | `v/` | revocation id | empty |
//! | `p/` | policy name | Datalog source |
//! | `n/` | node id | ed25519 audit key (32 bytes) |
//! | `a/` | sequence (8 bytes, big-endian) | encoded audit entry |
//! | `k/` | sequence (8 bytes, big-endian) | encoded audit checkpoint |
//! | `e/` | log-entry sequence (8 bytes, big-endian) | the ids of that entry's proposals and the answers they got (postcard `Vec<(u128, Response)>`) |
//! | `s/<name>/` | the subsystem's own keys | its values (see [`crate::StateMachine`]) |
//! | `m/` | `root_public`, `chain`, `answers` | the capability root key's public half (`root_key`: the private key older versions kept), audit chain head, which `e/` records are kept and how many ids they hold |
//!
//! [`apply`] is a pure function of the table and the proposal: every node computes the same
//! state and the same audit chain from the same log.
//!
//! **Exactly once.** Every proposal carries a random id. The first time an id is applied its
//! answer is kept (`e/`, in the order applied); a later copy of it (the proposer resent it after
//! a lost answer, or to a new leader after the old one died) changes nothing and gets that
//! answer again. The answers of one log entry (a batch of up to a thousand proposals under
//! load) are one record, so remembering costs a write per entry, not per proposal. The newest
//! [`PROPOSAL_IDS_KEPT`] ids are kept (whole records: the oldest go first): far more than a
//! proposer can have in flight within its request deadline, which is the window in which it
//! resends. The store finds an id through an index in memory ([`Answers`]), rebuilt from `e/`
//! when the database is opened or a snapshot installed.

use crate::machine::{Applied, MachineTable, Machines, prefix_end};
use crate::store::{DbError, STATE, db_err};
use crate::types::{Command, Proposal, Response, limits};
use noodle_audit::{Chain, Checkpoint, Entry as AuditEntry};
use redb::{ReadTransaction, ReadableTable, Table};
use std::collections::{BTreeMap, HashMap};

const CONFIG: &[u8] = b"c/";
const REGISTER: &[u8] = b"r/";
const REVOKED: &[u8] = b"v/";
const REMOVED: &[u8] = b"x/";
const POLICY: &[u8] = b"p/";
const NODE: &[u8] = b"n/";
const AUDIT: &[u8] = b"a/";
const CHECKPOINT: &[u8] = b"k/";
const APPLIED_ID: &[u8] = b"e/";
const ROOT_KEY: &[u8] = b"m/root_key";
const ROOT_PUBLIC: &[u8] = b"m/root_public";
const CHAIN: &[u8] = b"m/chain";
/// The audit log's entries up to this sequence number were pruned (at a checkpoint).
const AUDIT_PRUNED: &[u8] = b"m/audit_pruned";

/// Most audit entries one [`Command::PruneAudit`] removes, so an apply stays short.
pub const AUDIT_PRUNE_ENTRIES_MAX: u64 = 4096;
const ANSWERS: &[u8] = b"m/answers";

/// Proposal ids the state remembers (the newest), with their answers.
pub const PROPOSAL_IDS_KEPT: u64 = 100_000;

fn key(prefix: &[u8], name: &[u8]) -> Vec<u8> {
    [prefix, name].concat()
}

fn seq_key(prefix: &[u8], seq: u64) -> Vec<u8> {
    key(prefix, &seq.to_be_bytes())
}

/// Key/value pairs of the state table.
type Pairs = Vec<(Vec<u8>, Vec<u8>)>;

type StateTable<'t> = Table<'t, &'static [u8], &'static [u8]>;

fn get(
    t: &impl ReadableTable<&'static [u8], &'static [u8]>,
    k: &[u8],
) -> Result<Option<Vec<u8>>, DbError> {
    Ok(t.get(k).map_err(db_err)?.map(|v| v.value().to_vec()))
}

fn chain(t: &impl ReadableTable<&'static [u8], &'static [u8]>) -> Result<Chain, DbError> {
    match get(t, CHAIN)? {
        Some(b) => postcard::from_bytes(&b).map_err(db_err),
        None => Ok(Chain::new()),
    }
}

/// Where each remembered proposal id was applied: a cache of `e/`, which is the truth.
#[derive(Debug, Default)]
pub(crate) struct Answers {
    /// Proposal id -> the `e/` record that holds its answer.
    by_id: HashMap<u128, u64>,
    loaded: bool,
}

impl Answers {
    /// Forgets everything (the state was replaced or the database reopened): the next apply
    /// reads `e/` again.
    pub(crate) fn invalidate(&mut self) {
        self.by_id.clear();
        self.loaded = false;
    }
}

/// Which `e/` records are kept (`first..next`) and how many ids they hold.
#[derive(Debug, Default, Clone, Copy, serde::Serialize, serde::Deserialize)]
struct Kept {
    first: u64,
    next: u64,
    ids: u64,
}

type EntryAnswers = Vec<(u128, Response)>;

/// One apply step's view of the remembered answers (a step applies one or more log entries).
pub(crate) struct Applying<'a> {
    pub(crate) machines: &'a Machines,
    answers: &'a mut Answers,
    kept: Kept,
    /// Ids of records written in this step (not in `answers` until the step commits).
    added: HashMap<u128, u64>,
    /// The answers of the entry being applied, and where each id is in it.
    entry: EntryAnswers,
    in_entry: HashMap<u128, usize>,
}

impl<'a> Applying<'a> {
    /// Starts an apply step on `t`, loading the index of answers if it is not loaded.
    pub(crate) fn begin(
        t: &StateTable<'_>,
        machines: &'a Machines,
        answers: &'a mut Answers,
    ) -> Result<Applying<'a>, DbError> {
        if !answers.loaded {
            answers.by_id.clear();
            let end = prefix_end(APPLIED_ID);
            for item in t.range(APPLIED_ID..end.as_slice()).map_err(db_err)? {
                let (k, v) = item.map_err(db_err)?;
                let seq = record_seq(k.value())?;
                for (id, _) in decode_record(v.value())? {
                    answers.by_id.insert(id, seq);
                }
            }
            answers.loaded = true;
        }
        let kept = match get(t, ANSWERS)? {
            Some(b) => postcard::from_bytes(&b).map_err(db_err)?,
            None => Kept::default(),
        };
        Ok(Applying {
            machines,
            answers,
            kept,
            added: HashMap::new(),
            entry: Vec::new(),
            in_entry: HashMap::new(),
        })
    }

    /// Ends a log entry: its answers become one record, and the oldest records go while more
    /// than [`PROPOSAL_IDS_KEPT`] ids are kept.
    pub(crate) fn end_entry(&mut self, t: &mut StateTable<'_>) -> Result<(), DbError> {
        if self.entry.is_empty() {
            return Ok(());
        }
        let entry = std::mem::take(&mut self.entry);
        self.in_entry.clear();
        let seq = self.kept.next;
        let record = postcard::to_allocvec(&entry).map_err(db_err)?;
        t.insert(seq_key(APPLIED_ID, seq).as_slice(), record.as_slice())
            .map_err(db_err)?;
        self.added.extend(entry.iter().map(|(id, _)| (*id, seq)));
        self.kept.next = seq + 1;
        self.kept.ids += entry.len() as u64;
        while self.kept.ids > PROPOSAL_IDS_KEPT && self.kept.first < seq {
            let first = seq_key(APPLIED_ID, self.kept.first);
            if let Some(old) = t.remove(first.as_slice()).map_err(db_err)? {
                let forgotten = decode_record(old.value())?.len() as u64;
                self.kept.ids = self.kept.ids.saturating_sub(forgotten);
            }
            self.kept.first += 1;
        }
        let kept = postcard::to_allocvec(&self.kept).map_err(db_err)?;
        t.insert(ANSWERS, kept.as_slice()).map_err(db_err)?;
        Ok(())
    }

    /// Ends the step, once its transaction has committed: its ids join the index, and the
    /// index drops ids the state no longer keeps.
    pub(crate) fn commit(self) {
        let Applying {
            answers,
            added,
            kept,
            ..
        } = self;
        answers.by_id.extend(added);
        if answers.by_id.len() as u64 > 2 * PROPOSAL_IDS_KEPT {
            answers.by_id.retain(|_, seq| *seq >= kept.first);
        }
    }

    /// The answer `id` got, if it was applied and is still kept.
    fn answered(&self, t: &StateTable<'_>, id: u128) -> Result<Option<Response>, DbError> {
        if let Some(&at) = self.in_entry.get(&id) {
            return Ok(self.entry.get(at).map(|(_, answer)| answer.clone()));
        }
        let Some(seq) = self
            .added
            .get(&id)
            .or_else(|| self.answers.by_id.get(&id))
            .copied()
            .filter(|seq| *seq >= self.kept.first)
        else {
            return Ok(None);
        };
        let Some(record) = get(t, &seq_key(APPLIED_ID, seq))? else {
            return Ok(None);
        };
        Ok(decode_record(&record)?
            .into_iter()
            .find(|(i, _)| *i == id)
            .map(|(_, answer)| answer))
    }

    /// Keeps `response` as the answer to `id` (written when the entry ends).
    fn remember(&mut self, id: u128, response: &Response) {
        self.in_entry.insert(id, self.entry.len());
        self.entry.push((id, response.clone()));
    }
}

fn record_seq(key: &[u8]) -> Result<u64, DbError> {
    key.get(APPLIED_ID.len()..)
        .and_then(|b| <[u8; 8]>::try_from(b).ok())
        .map(u64::from_be_bytes)
        .ok_or_else(|| DbError("bad key of an applied-proposals record".into()))
}

fn decode_record(bytes: &[u8]) -> Result<EntryAnswers, DbError> {
    postcard::from_bytes(bytes).map_err(db_err)
}

/// Applies the proposal of one log entry and records its answers.
pub(crate) fn apply_entry(
    t: &mut StateTable<'_>,
    ctx: &mut Applying<'_>,
    p: Proposal,
) -> Result<Response, DbError> {
    let response = apply(t, ctx, p)?;
    ctx.end_entry(t)?;
    Ok(response)
}

/// Applies one proposal. Errors are storage failures only; an invalid command is answered with
/// [`Response::Rejected`] and changes nothing but the audit chain.
fn apply(t: &mut StateTable<'_>, ctx: &mut Applying<'_>, p: Proposal) -> Result<Response, DbError> {
    if let Command::Batch(ps) = p.command {
        if ps.iter().any(|p| matches!(p.command, Command::Batch(_))) {
            return Ok(Response::Rejected("a batch may not contain a batch".into()));
        }
        return Ok(Response::Batch(
            ps.into_iter()
                .map(|p| apply(t, ctx, p))
                .collect::<Result<_, _>>()?,
        ));
    }
    // Applied before: the same answer, and nothing else (no second audit entry).
    if let Some(answer) = ctx.answered(t, p.id)? {
        return Ok(answer);
    }
    let response = match p.command.validate() {
        Err(reason) => Response::Rejected(reason.0),
        Ok(()) => apply_command(t, ctx.machines, p.command)?,
    };
    if let Some(mut record) = p.audit {
        match &response {
            Response::Rejected(reason) => {
                record.outcome = noodle_audit::Outcome::Failed {
                    reason: reason.clone(),
                }
            }
            Response::CasFailed { .. } => {
                record.outcome = noodle_audit::Outcome::Failed {
                    reason: "the value had changed".into(),
                }
            }
            Response::Done | Response::Batch(_) | Response::Created { .. } => {}
        }
        let mut c = chain(t)?;
        let entry = c.append(record);
        t.insert(
            seq_key(AUDIT, entry.seq).as_slice(),
            entry.encode().as_slice(),
        )
        .map_err(db_err)?;
        let c = postcard::to_allocvec(&c).map_err(db_err)?;
        t.insert(CHAIN, c.as_slice()).map_err(db_err)?;
    }
    ctx.remember(p.id, &response);
    Ok(response)
}

fn apply_command(
    t: &mut StateTable<'_>,
    machines: &Machines,
    command: Command,
) -> Result<Response, DbError> {
    let put = |t: &mut StateTable<'_>, k: Vec<u8>, v: &[u8]| -> Result<(), DbError> {
        t.insert(k.as_slice(), v).map(|_| ()).map_err(db_err)
    };
    match command {
        Command::Nothing => {}
        Command::ConfigSet { key: k, value } => {
            put(t, key(CONFIG, k.as_bytes()), value.as_bytes())?
        }
        Command::ConfigUnset { key: k } => {
            t.remove(key(CONFIG, k.as_bytes()).as_slice())
                .map_err(db_err)?;
        }
        Command::Cas {
            key: k,
            expected,
            new,
        } => {
            let k = key(REGISTER, k.as_bytes());
            let current = get(t, &k)?;
            if current != expected {
                return Ok(Response::CasFailed { current });
            }
            match new {
                Some(v) => put(t, k, &v)?,
                None => {
                    t.remove(k.as_slice()).map_err(db_err)?;
                }
            }
        }
        Command::SetRootKey { key: root } => {
            if get(t, ROOT_KEY)?.is_none() {
                put(t, ROOT_KEY.to_vec(), &root)?;
            }
        }
        Command::SetRootPublicKey { key: public } => {
            if get(t, ROOT_PUBLIC)?.is_none() {
                put(t, ROOT_PUBLIC.to_vec(), &public)?;
            }
            t.remove(ROOT_KEY).map_err(db_err)?;
        }
        Command::Revoke { id } => put(t, key(REVOKED, id.as_bytes()), &[])?,
        Command::RemoveNode { node_id } => put(t, key(REMOVED, node_id.as_bytes()), &[])?,
        Command::PruneAudit { upto_seq } => {
            let pruned = get(t, AUDIT_PRUNED)?
                .and_then(|b| <[u8; 8]>::try_from(b.as_slice()).ok())
                .map_or(0, u64::from_be_bytes);
            if upto_seq <= pruned || upto_seq - pruned > AUDIT_PRUNE_ENTRIES_MAX {
                return Ok(Response::Rejected(format!(
                    "the audit log is pruned up to #{pruned}; a prune goes at most {AUDIT_PRUNE_ENTRIES_MAX} entries further"
                )));
            }
            if get(t, &seq_key(CHECKPOINT, upto_seq))?.is_none() {
                return Ok(Response::Rejected(format!(
                    "no signed checkpoint at #{upto_seq} to prune the audit log at"
                )));
            }
            for seq in pruned + 1..=upto_seq {
                t.remove(seq_key(AUDIT, seq).as_slice()).map_err(db_err)?;
            }
            // The checkpoints before the new anchor vouch for nothing that is kept.
            let below: Vec<Vec<u8>> = t
                .range(seq_key(CHECKPOINT, 0).as_slice()..seq_key(CHECKPOINT, upto_seq).as_slice())
                .map_err(db_err)?
                .map(|item| item.map(|(k, _)| k.value().to_vec()).map_err(db_err))
                .collect::<Result<_, _>>()?;
            for k in below {
                t.remove(k.as_slice()).map_err(db_err)?;
            }
            put(t, AUDIT_PRUNED.to_vec(), &upto_seq.to_be_bytes())?;
        }
        Command::PolicySet { name, source } => {
            let k = key(POLICY, name.as_bytes());
            let count = t
                .range(POLICY..prefix_end(POLICY).as_slice())
                .map_err(db_err)?
                .count();
            if get(t, &k)?.is_none() && count >= limits::POLICIES_MAX {
                return Ok(Response::Rejected(format!(
                    "the cluster already has {} policies, the limit",
                    limits::POLICIES_MAX
                )));
            }
            put(t, k, source.as_bytes())?;
        }
        Command::PolicyRemove { name } => {
            if t.remove(key(POLICY, name.as_bytes()).as_slice())
                .map_err(db_err)?
                .is_none()
            {
                return Ok(Response::Rejected(format!(
                    "there is no policy named {name:?}"
                )));
            }
        }
        Command::RegisterNode { node_id, audit_key } => {
            put(t, key(NODE, node_id.as_bytes()), &audit_key)?
        }
        // Handled by `apply`.
        Command::Batch(_) => {}
        Command::Machine { name, command } => {
            let machine = match machines.get(&name) {
                Ok(m) => m,
                Err(why) => return Ok(Response::Rejected(why.0)),
            };
            if let Err(why) = machine.validate(&command) {
                return Ok(Response::Rejected(why.0));
            }
            return Ok(
                match machine.apply(&mut MachineTable::new(t, &name), &command)? {
                    Applied::Done => Response::Done,
                    Applied::Created(id) => Response::Created { id },
                    Applied::Rejected(why) => Response::Rejected(why.0),
                },
            );
        }
        Command::Checkpoint(cp) => {
            let head = chain(t)?;
            if cp.upto_seq == 0 || cp.upto_seq > head.head().0 {
                return Ok(Response::Rejected(format!(
                    "checkpoint at entry {} is beyond the end of the audit log",
                    cp.upto_seq
                )));
            }
            put(t, seq_key(CHECKPOINT, cp.upto_seq), &cp.encode())?;
        }
    }
    Ok(Response::Done)
}

/// The whole replicated state as snapshot bytes.
pub(crate) fn dump(txn: &ReadTransaction) -> Result<Vec<u8>, DbError> {
    let t = txn.open_table(STATE).map_err(db_err)?;
    let mut pairs: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
    for item in t.iter().map_err(db_err)? {
        let (k, v) = item.map_err(db_err)?;
        pairs.push((k.value().to_vec(), v.value().to_vec()));
    }
    postcard::to_allocvec(&pairs).map_err(db_err)
}

/// Replaces the whole replicated state with a snapshot's.
pub(crate) fn restore(t: &mut StateTable<'_>, data: &[u8]) -> Result<(), DbError> {
    let pairs: Vec<(Vec<u8>, Vec<u8>)> = postcard::from_bytes(data).map_err(db_err)?;
    t.retain(|_, _| false).map_err(db_err)?;
    for (k, v) in pairs {
        t.insert(k.as_slice(), v.as_slice()).map_err(db_err)?;
    }
    Ok(())
}

/// A consistent read-only view of the replicated state at one applied index.
pub struct StateView {
    txn: ReadTransaction,
}

impl StateView {
    pub(crate) fn new(txn: ReadTransaction) -> StateView {
        StateView { txn }
    }

    fn get(&self, k: &[u8]) -> Result<Option<Vec<u8>>, DbError> {
        let t = self.txn.open_table(STATE).map_err(db_err)?;
        get(&t, k)
    }

    fn scan(&self, prefix: &[u8], from: &[u8], limit: usize) -> Result<Pairs, DbError> {
        let t = self.txn.open_table(STATE).map_err(db_err)?;
        let start = key(prefix, from);
        let end = prefix_end(prefix);
        let mut out = Vec::new();
        for item in t.range(start.as_slice()..end.as_slice()).map_err(db_err)? {
            if out.len() >= limit {
                break;
            }
            let (k, v) = item.map_err(db_err)?;
            out.push((k.value()[prefix.len()..].to_vec(), v.value().to_vec()));
        }
        Ok(out)
    }

    fn names(&self, prefix: &[u8]) -> Result<Vec<(String, Vec<u8>)>, DbError> {
        Ok(self
            .scan(prefix, b"", usize::MAX)?
            .into_iter()
            .map(|(k, v)| (String::from_utf8_lossy(&k).into_owned(), v))
            .collect())
    }

    pub fn config_get(&self, k: &str) -> Result<Option<String>, DbError> {
        Ok(self
            .get(&key(CONFIG, k.as_bytes()))?
            .map(|v| String::from_utf8_lossy(&v).into_owned()))
    }

    pub fn config_list(&self) -> Result<Vec<(String, String)>, DbError> {
        Ok(self
            .names(CONFIG)?
            .into_iter()
            .map(|(k, v)| (k, String::from_utf8_lossy(&v).into_owned()))
            .collect())
    }

    pub fn register(&self, k: &str) -> Result<Option<Vec<u8>>, DbError> {
        self.get(&key(REGISTER, k.as_bytes()))
    }

    /// The registers whose key starts with `prefix`, as (the rest of the key, value), by key.
    pub fn registers(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, DbError> {
        self.names(&key(REGISTER, prefix.as_bytes()))
    }

    pub fn is_revoked(&self, id: &str) -> Result<bool, DbError> {
        Ok(self.get(&key(REVOKED, id.as_bytes()))?.is_some())
    }

    pub fn revoked(&self) -> Result<Vec<String>, DbError> {
        Ok(self.names(REVOKED)?.into_iter().map(|(k, _)| k).collect())
    }

    /// The nodes removed from the cluster (their base node ids).
    pub fn removed_nodes(&self) -> Result<std::collections::BTreeSet<String>, DbError> {
        Ok(self.names(REMOVED)?.into_iter().map(|(k, _)| k).collect())
    }

    /// Policies as (name, Datalog source), by name.
    pub fn policies(&self) -> Result<Vec<(String, String)>, DbError> {
        Ok(self
            .names(POLICY)?
            .into_iter()
            .map(|(k, v)| (k, String::from_utf8_lossy(&v).into_owned()))
            .collect())
    }

    /// The public half of the capability root key, which every node verifies tokens with.
    pub fn root_public_key(&self) -> Result<Option<Vec<u8>>, DbError> {
        self.get(ROOT_PUBLIC)
    }

    /// The private root key a cluster made by an older version stored here, until the leader
    /// moves it into its voters' files ([`Command::SetRootPublicKey`]).
    pub fn legacy_root_key(&self) -> Result<Option<Vec<u8>>, DbError> {
        self.get(ROOT_KEY)
    }

    /// Each node's audit checkpoint key.
    pub fn node_keys(&self) -> Result<BTreeMap<String, [u8; 32]>, DbError> {
        Ok(self
            .names(NODE)?
            .into_iter()
            .filter_map(|(k, v)| Some((k, <[u8; 32]>::try_from(v.as_slice()).ok()?)))
            .collect())
    }

    pub fn audit_chain(&self) -> Result<Chain, DbError> {
        let t = self.txn.open_table(STATE).map_err(db_err)?;
        chain(&t)
    }

    /// Up to `limit` audit entries from sequence number `from` on, undecoded.
    pub fn audit_raw(&self, from: u64, limit: usize) -> Result<Vec<(u64, Vec<u8>)>, DbError> {
        Ok(self
            .scan(AUDIT, &from.to_be_bytes(), limit)?
            .into_iter()
            .filter_map(|(k, v)| Some((u64::from_be_bytes(k.try_into().ok()?), v)))
            .collect())
    }

    /// Up to `limit` audit entries from sequence number `from` on. An entry that does not
    /// decode is an error naming it: `noodle audit verify` reports it as the first bad entry.
    pub fn audit_entries(&self, from: u64, limit: usize) -> Result<Vec<AuditEntry>, DbError> {
        self.audit_raw(from, limit)?
            .into_iter()
            .map(|(seq, v)| {
                AuditEntry::decode(&v).map_err(|e| DbError(format!("audit entry {seq}: {e}")))
            })
            .collect()
    }

    /// Subsystem `name`'s keys (see [`crate::StateMachine`]).
    pub fn machine(&self, name: &str) -> crate::MachineView<'_> {
        crate::MachineView::new(&self.txn, name)
    }

    /// The audit log's entries up to this sequence number were pruned (0: none).
    pub fn audit_pruned(&self) -> Result<u64, DbError> {
        Ok(self
            .get(AUDIT_PRUNED)?
            .and_then(|b| <[u8; 8]>::try_from(b.as_slice()).ok())
            .map_or(0, u64::from_be_bytes))
    }

    /// The newest audit checkpoint, without reading the others.
    pub fn last_checkpoint(&self) -> Result<Option<Checkpoint>, DbError> {
        let t = self.txn.open_table(STATE).map_err(db_err)?;
        let end = prefix_end(CHECKPOINT);
        let last = t
            .range(CHECKPOINT..end.as_slice())
            .map_err(db_err)?
            .next_back()
            .transpose()
            .map_err(db_err)?;
        last.map(|(_, v)| {
            Checkpoint::decode(v.value()).map_err(|e| DbError(format!("audit checkpoint: {e}")))
        })
        .transpose()
    }

    pub fn checkpoints(&self) -> Result<Vec<Checkpoint>, DbError> {
        self.scan(CHECKPOINT, b"", usize::MAX)?
            .into_iter()
            .map(|(seq, v)| {
                Checkpoint::decode(&v)
                    .map_err(|e| DbError(format!("audit checkpoint {seq:?}: {e}")))
            })
            .collect()
    }
}
