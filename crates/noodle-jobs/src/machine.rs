//! The jobs' part of the replicated state: the durable queue of `noodle run`, as the control
//! plane's state machine for the subsystem `jobs` ([`JobsMachine`]), and a reader over it
//! ([`JobsView`]). Pure: applying the same commands gives the same records on every node.
//!
//! | key | value |
//! | --- | --- |
//! | `j/` + job id (8 bytes, big-endian) | the job record (postcard) |
//! | `q/` + job id | empty: the job has not ended (queued, placed, running) |
//! | `m/next_job` | the next job id |
//! | `m/pruned_below` | ended jobs below this id have been forgotten |
//! | `g/` + node + `\0` + job id | a placed job's `--write` prefixes: [`noodle_fabric::grants`] |

use crate::state::{JobCommand, JobRecord, limits, transition};
use noodle_control::{Applied, DbError, MachineTable, MachineView, Rejection, StateMachine};
use noodle_fabric::grants;

/// The state machine's name, the jobs subsystem's.
pub const NAME: &str = "jobs";

const JOB: &[u8] = b"j/";
const ACTIVE: &[u8] = b"q/";
const NEXT_JOB: &[u8] = b"m/next_job";
const PRUNED_BELOW: &[u8] = b"m/pruned_below";

fn job_key(prefix: &[u8], id: u64) -> Vec<u8> {
    [prefix, &id.to_be_bytes()].concat()
}

fn db(e: impl std::fmt::Display) -> DbError {
    DbError(e.to_string())
}

fn read_u64(bytes: Option<Vec<u8>>) -> Option<u64> {
    bytes
        .and_then(|b| <[u8; 8]>::try_from(b.as_slice()).ok())
        .map(u64::from_be_bytes)
}

/// Encodes a job command for [`noodle_control::Proposal::machine`].
pub fn encode(command: &JobCommand) -> Vec<u8> {
    // Our own in-memory type into a Vec: cannot fail.
    postcard::to_allocvec(command).unwrap_or_default()
}

/// Applies job commands: submissions get the next id, transitions go through
/// [`crate::state::transition`] (fenced by placement epoch), and ended jobs beyond the newest
/// [`limits::JOBS_KEPT`] are forgotten a few at a time.
#[derive(Debug, Default)]
pub struct JobsMachine;

impl StateMachine for JobsMachine {
    fn name(&self) -> &'static str {
        NAME
    }

    fn validate(&self, command: &[u8]) -> Result<(), Rejection> {
        let command: JobCommand = postcard::from_bytes(command)
            .map_err(|e| Rejection(format!("unreadable job command: {e}")))?;
        command.validate().map_err(Rejection)
    }

    /// From a member that is not a voter: a submission or a cancellation needs the person's
    /// `jobs:run`; a report on a job is the node's own (see `may_forward`); placing a job is
    /// the leader's work.
    /// A person's right for what people ask for; a node's own reports; and a cancel of a job
    /// running on the node that forwards it, which is that node's to stop (its local admin
    /// manages its own work).
    fn forwarding(
        &self,
        view: &MachineView<'_>,
        caller: &str,
        command: &[u8],
    ) -> Vec<noodle_control::Needs> {
        use noodle_control::Needs;
        vec![match postcard::from_bytes::<JobCommand>(command) {
            Ok(JobCommand::Cancel { id, .. }) if placed_on(view, id).as_deref() == Some(caller) => {
                Needs::Node
            }
            // The job's fabric prefixes too: its node reads and writes them in its name.
            Ok(JobCommand::Submit { spec, .. }) => {
                return std::iter::once(Needs::right("jobs", "run", None).within(&[
                    ("cpus", i64::from(spec.cpus)),
                    ("gpus", i64::from(spec.gpus)),
                ]))
                .chain(
                    spec.reads
                        .iter()
                        .map(|p| Needs::right("fabric", "read", Some(p))),
                )
                .chain(
                    spec.writes
                        .iter()
                        .map(|p| Needs::right("fabric", "write", Some(p))),
                )
                .collect();
            }
            Ok(JobCommand::Cancel { .. }) => Needs::right("jobs", "run", None),
            Ok(
                JobCommand::Started { .. }
                | JobCommand::Ended { .. }
                | JobCommand::StartFailed { .. }
                | JobCommand::Lost { .. },
            ) => Needs::Node,
            Ok(JobCommand::Place { .. }) | Err(_) => Needs::Voter,
        }]
    }

    /// A report about a job placed on a node (started, ended, could not start, lost by a node
    /// that stopped it itself) comes only from that node.
    fn may_forward(
        &self,
        view: &MachineView<'_>,
        caller: &str,
        command: &[u8],
    ) -> Result<(), Rejection> {
        let command: JobCommand = postcard::from_bytes(command)
            .map_err(|e| Rejection(format!("unreadable job command: {e}")))?;
        let (JobCommand::Started { id, .. }
        | JobCommand::Ended { id, .. }
        | JobCommand::StartFailed { id, .. }
        | JobCommand::Lost { id, .. }) = command
        else {
            return Ok(());
        };
        match placed_on(view, id) {
            Some(node) if node != caller => Err(Rejection(format!(
                "node {caller} may not report on job {id}, which runs on node {node}"
            ))),
            _ => Ok(()),
        }
    }

    fn apply(&self, t: &mut MachineTable<'_, '_>, command: &[u8]) -> Result<Applied, DbError> {
        let command: JobCommand = match postcard::from_bytes(command) {
            Ok(c) => c,
            Err(e) => {
                return Ok(Applied::Rejected(Rejection(format!(
                    "unreadable job command: {e}"
                ))));
            }
        };
        let encode = |job: &JobRecord| postcard::to_allocvec(job).map_err(db);
        let Some(id) = command.job_id() else {
            let JobCommand::Submit { spec, at_ms } = command else {
                return Ok(Applied::Rejected(Rejection("not a submission".into())));
            };
            let id = read_u64(t.get(NEXT_JOB)?).unwrap_or(1);
            let job = JobRecord::queued(id, spec, at_ms);
            t.insert(&job_key(JOB, id), &encode(&job)?)?;
            t.insert(&job_key(ACTIVE, id), &[])?;
            t.insert(NEXT_JOB, &(id + 1).to_be_bytes())?;
            return Ok(Applied::Created(id));
        };
        let Some(bytes) = t.get(&job_key(JOB, id))? else {
            return Ok(Applied::Rejected(Rejection(format!(
                "there is no job {id}"
            ))));
        };
        let mut job: JobRecord = postcard::from_bytes(&bytes).map_err(db)?;
        let before = job.state.placement().map(|(node, _)| node.to_string());
        if let Err(why) = transition(&mut job, &command) {
            return Ok(Applied::Rejected(Rejection(why)));
        }
        t.insert(&job_key(JOB, id), &encode(&job)?)?;
        // The node a job with `--write` is placed on may write there, as long as it is.
        let after = job.state.placement().map(|(node, _)| node);
        if !job.spec.writes.is_empty() && before.as_deref() != after {
            if let Some(node) = &before {
                t.remove(&grants::key(node, id))?;
            }
            if let Some(node) = after {
                t.insert(&grants::key(node, id), &grants::encode(&job.spec.writes))?;
            }
        }
        if job.state.is_terminal() {
            t.remove(&job_key(ACTIVE, id))?;
            // A job the pruning cursor passed while it ran is forgotten as soon as it ends.
            if id < read_u64(t.get(PRUNED_BELOW)?).unwrap_or(1) {
                t.remove(&job_key(JOB, id))?;
            }
            prune(t)?;
        }
        Ok(Applied::Done)
    }
}

/// Forgets ended jobs older than the newest [`limits::JOBS_KEPT`], a few at a time (at most
/// [`limits::JOBS_PRUNED_PER_END`] per ended job), so the state stays bounded however many jobs
/// run. A job that has not ended is kept whatever its age.
fn prune(t: &mut MachineTable<'_, '_>) -> Result<(), DbError> {
    let next = read_u64(t.get(NEXT_JOB)?).unwrap_or(1);
    let mut cursor = read_u64(t.get(PRUNED_BELOW)?).unwrap_or(1);
    let below = next.saturating_sub(limits::JOBS_KEPT);
    let mut steps = 0;
    while cursor < below && steps < limits::JOBS_PRUNED_PER_END {
        if t.get(&job_key(ACTIVE, cursor))?.is_none() {
            t.remove(&job_key(JOB, cursor))?;
        }
        cursor += 1;
        steps += 1;
    }
    t.insert(PRUNED_BELOW, &cursor.to_be_bytes())
}

/// The job records of one consistent view of the replicated state.
pub struct JobsView<'v>(pub MachineView<'v>);

impl JobsView<'_> {
    fn decode(bytes: &[u8]) -> Result<JobRecord, DbError> {
        postcard::from_bytes(bytes).map_err(db)
    }

    pub fn job(&self, id: u64) -> Result<Option<JobRecord>, DbError> {
        self.0
            .get(&job_key(JOB, id))?
            .map(|b| Self::decode(&b))
            .transpose()
    }

    /// Up to `limit` jobs with ids from `from` on, oldest first.
    pub fn jobs(&self, from: u64, limit: usize) -> Result<Vec<JobRecord>, DbError> {
        self.0
            .scan(JOB, &from.to_be_bytes(), limit, false)?
            .iter()
            .map(|(_, v)| Self::decode(v))
            .collect()
    }

    /// Jobs that have not ended (queued, placed or running), oldest first: read through an
    /// index, so the cost does not grow with the jobs that ended long ago.
    pub fn active_jobs(&self) -> Result<Vec<JobRecord>, DbError> {
        let mut out = Vec::new();
        for (id, _) in self.0.scan(ACTIVE, b"", usize::MAX, false)? {
            let id = read_u64(Some(id)).ok_or_else(|| DbError("bad active-job key".into()))?;
            if let Some(job) = self.job(id)? {
                out.push(job);
            }
        }
        Ok(out)
    }

    /// The `limit` newest jobs, newest first.
    pub fn recent_jobs(&self, limit: usize) -> Result<Vec<JobRecord>, DbError> {
        self.0
            .scan(JOB, b"", limit, true)?
            .iter()
            .map(|(_, v)| Self::decode(v))
            .collect()
    }
}

/// The jobs' records in `v`.
pub fn view(v: &noodle_control::StateView) -> JobsView<'_> {
    JobsView(v.machine(NAME))
}

/// The node job `id` is placed on, in the leader's state.
fn placed_on(view: &MachineView<'_>, id: u64) -> Option<String> {
    let bytes = view.get(&job_key(JOB, id)).ok()??;
    let job = postcard::from_bytes::<JobRecord>(&bytes).ok()?;
    job.state.placement().map(|(node, _)| node.to_string())
}
