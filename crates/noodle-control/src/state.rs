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
//! | `j/` | job id (8 bytes, big-endian) | job record |
//! | `q/` | job id (8 bytes, big-endian) | empty: the job has not ended (queued, placed, running) |
//! | `u/` | submission number (8 bytes, big-endian) | the job id it created |
//! | `m/` | `root_key`, `chain`, `next_job`, `jobs_pruned_below` | capability root key, audit chain head, next job id, the job-pruning cursor |
//!
//! [`apply`] is a pure function of the table and the proposal: every node computes the same
//! state and the same audit chain from the same log.

use crate::jobs::{self, JobCommand, JobRecord};
use crate::store::{DbError, STATE, db_err};
use crate::types::{Command, Proposal, Response, limits};
use noodle_audit::{Chain, Checkpoint, Entry as AuditEntry};
use redb::{ReadTransaction, ReadableTable, Table};
use std::collections::BTreeMap;

const CONFIG: &[u8] = b"c/";
const REGISTER: &[u8] = b"r/";
const REVOKED: &[u8] = b"v/";
const POLICY: &[u8] = b"p/";
const NODE: &[u8] = b"n/";
const AUDIT: &[u8] = b"a/";
const CHECKPOINT: &[u8] = b"k/";
const JOB: &[u8] = b"j/";
const ACTIVE_JOB: &[u8] = b"q/";
const SUBMISSION: &[u8] = b"u/";
const NEXT_JOB: &[u8] = b"m/next_job";
const JOBS_PRUNED_BELOW: &[u8] = b"m/jobs_pruned_below";
const ROOT_KEY: &[u8] = b"m/root_key";
const CHAIN: &[u8] = b"m/chain";

fn key(prefix: &[u8], name: &[u8]) -> Vec<u8> {
    [prefix, name].concat()
}

fn seq_key(prefix: &[u8], seq: u64) -> Vec<u8> {
    key(prefix, &seq.to_be_bytes())
}

/// The end of the key range that starts with `prefix` (prefixes end in `/`, so `0` follows).
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    if let Some(last) = end.last_mut() {
        *last += 1;
    }
    end
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

/// Applies one proposal. Errors are storage failures only; an invalid command is answered with
/// [`Response::Rejected`] and changes nothing but the audit chain.
pub(crate) fn apply(t: &mut StateTable<'_>, p: Proposal) -> Result<Response, DbError> {
    // A submission applied before: the same answer, and nothing else (no second audit entry).
    if let Command::Job(JobCommand::Submit { submission, .. }) = &p.command
        && let Some(id) = get(t, &seq_key(SUBMISSION, *submission))?
        && let Ok(id) = <[u8; 8]>::try_from(id.as_slice())
    {
        return Ok(Response::Created {
            id: u64::from_be_bytes(id),
        });
    }
    if let Command::Batch(ps) = p.command {
        if ps.iter().any(|p| matches!(p.command, Command::Batch(_))) {
            return Ok(Response::Rejected("a batch may not contain a batch".into()));
        }
        return Ok(Response::Batch(
            ps.into_iter()
                .map(|p| apply(t, p))
                .collect::<Result<_, _>>()?,
        ));
    }
    let response = match p.command.validate() {
        Err(reason) => Response::Rejected(reason),
        Ok(()) => apply_command(t, p.command)?,
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
    Ok(response)
}

fn apply_command(t: &mut StateTable<'_>, command: Command) -> Result<Response, DbError> {
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
        Command::Revoke { id } => put(t, key(REVOKED, id.as_bytes()), &[])?,
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
        Command::Job(job) => return apply_job(t, job),
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

fn apply_job(t: &mut StateTable<'_>, command: JobCommand) -> Result<Response, DbError> {
    let encode = |job: &JobRecord| postcard::to_allocvec(job).map_err(db_err);
    let Some(id) = command.job_id() else {
        let JobCommand::Submit {
            spec,
            at_ms,
            submission,
        } = command
        else {
            return Ok(Response::Rejected("not a submission".into()));
        };
        let id = get(t, NEXT_JOB)?
            .and_then(|b| <[u8; 8]>::try_from(b.as_slice()).ok())
            .map_or(1, u64::from_be_bytes);
        let job = JobRecord::queued(id, spec, at_ms, submission);
        t.insert(seq_key(JOB, id).as_slice(), encode(&job)?.as_slice())
            .map_err(db_err)?;
        t.insert(seq_key(ACTIVE_JOB, id).as_slice(), [].as_slice())
            .map_err(db_err)?;
        t.insert(
            seq_key(SUBMISSION, submission).as_slice(),
            id.to_be_bytes().as_slice(),
        )
        .map_err(db_err)?;
        t.insert(NEXT_JOB, (id + 1).to_be_bytes().as_slice())
            .map_err(db_err)?;
        return Ok(Response::Created { id });
    };
    let Some(bytes) = get(t, &seq_key(JOB, id))? else {
        return Ok(Response::Rejected(format!("there is no job {id}")));
    };
    let mut job: JobRecord = postcard::from_bytes(&bytes).map_err(db_err)?;
    if let Err(why) = jobs::transition(&mut job, &command) {
        return Ok(Response::Rejected(why));
    }
    t.insert(seq_key(JOB, id).as_slice(), encode(&job)?.as_slice())
        .map_err(db_err)?;
    if job.state.is_terminal() {
        t.remove(seq_key(ACTIVE_JOB, id).as_slice())
            .map_err(db_err)?;
        // A job the pruning cursor passed while it ran is forgotten as soon as it ends.
        if id < read_u64(t, JOBS_PRUNED_BELOW)?.unwrap_or(1) {
            forget_job(t, &job)?;
        }
        prune_jobs(t)?;
    }
    Ok(Response::Done)
}

fn forget_job(t: &mut StateTable<'_>, job: &JobRecord) -> Result<(), DbError> {
    t.remove(seq_key(JOB, job.id).as_slice()).map_err(db_err)?;
    t.remove(seq_key(SUBMISSION, job.submission).as_slice())
        .map_err(db_err)?;
    Ok(())
}

fn read_u64(t: &StateTable<'_>, k: &[u8]) -> Result<Option<u64>, DbError> {
    Ok(get(t, k)?
        .and_then(|b| <[u8; 8]>::try_from(b.as_slice()).ok())
        .map(u64::from_be_bytes))
}

/// Forgets ended jobs older than the newest [`jobs::limits::JOBS_KEPT`], a few at a time (at most
/// [`jobs::limits::JOBS_PRUNED_PER_END`] per ended job), so the state stays bounded however many jobs
/// run. A job that has not ended is kept whatever its age.
fn prune_jobs(t: &mut StateTable<'_>) -> Result<(), DbError> {
    let next = read_u64(t, NEXT_JOB)?.unwrap_or(1);
    let mut cursor = read_u64(t, JOBS_PRUNED_BELOW)?.unwrap_or(1);
    let below = next.saturating_sub(jobs::limits::JOBS_KEPT);
    let mut steps = 0;
    while cursor < below && steps < jobs::limits::JOBS_PRUNED_PER_END {
        if get(t, &seq_key(ACTIVE_JOB, cursor))?.is_none()
            && let Some(bytes) = get(t, &seq_key(JOB, cursor))?
        {
            forget_job(t, &postcard::from_bytes(&bytes).map_err(db_err)?)?;
        }
        cursor += 1;
        steps += 1;
    }
    t.insert(JOBS_PRUNED_BELOW, cursor.to_be_bytes().as_slice())
        .map_err(db_err)?;
    Ok(())
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

    pub fn is_revoked(&self, id: &str) -> Result<bool, DbError> {
        Ok(self.get(&key(REVOKED, id.as_bytes()))?.is_some())
    }

    pub fn revoked(&self) -> Result<Vec<String>, DbError> {
        Ok(self.names(REVOKED)?.into_iter().map(|(k, _)| k).collect())
    }

    /// Policies as (name, Datalog source), by name.
    pub fn policies(&self) -> Result<Vec<(String, String)>, DbError> {
        Ok(self
            .names(POLICY)?
            .into_iter()
            .map(|(k, v)| (k, String::from_utf8_lossy(&v).into_owned()))
            .collect())
    }

    pub fn root_key(&self) -> Result<Option<Vec<u8>>, DbError> {
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

    pub fn job(&self, id: u64) -> Result<Option<JobRecord>, DbError> {
        self.get(&seq_key(JOB, id))?
            .map(|b| postcard::from_bytes(&b).map_err(db_err))
            .transpose()
    }

    /// Up to `limit` jobs with ids from `from` on, oldest first.
    pub fn jobs(&self, from: u64, limit: usize) -> Result<Vec<JobRecord>, DbError> {
        self.scan(JOB, &from.to_be_bytes(), limit)?
            .into_iter()
            .map(|(_, v)| postcard::from_bytes(&v).map_err(db_err))
            .collect()
    }

    /// Jobs that have not ended (queued, placed or running), oldest first: read through an
    /// index, so the cost does not grow with the jobs that ended long ago.
    pub fn active_jobs(&self) -> Result<Vec<JobRecord>, DbError> {
        let mut out = Vec::new();
        for (id, _) in self.scan(ACTIVE_JOB, b"", usize::MAX)? {
            let id = <[u8; 8]>::try_from(id.as_slice())
                .map_err(|_| DbError("bad active-job key".into()))?;
            if let Some(job) = self.job(u64::from_be_bytes(id))? {
                out.push(job);
            }
        }
        Ok(out)
    }

    /// The `limit` newest jobs, newest first.
    pub fn recent_jobs(&self, limit: usize) -> Result<Vec<JobRecord>, DbError> {
        let t = self.txn.open_table(STATE).map_err(db_err)?;
        let end = prefix_end(JOB);
        let mut out = Vec::new();
        for item in t.range(JOB..end.as_slice()).map_err(db_err)?.rev() {
            if out.len() >= limit {
                break;
            }
            let (_, v) = item.map_err(db_err)?;
            out.push(postcard::from_bytes(v.value()).map_err(db_err)?);
        }
        Ok(out)
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
