//! Job records in the replicated state: the durable queue behind `noodle run`.
//!
//! Every transition is a [`JobCommand`] applied by the control plane's state machine through
//! [`transition`], so no job is lost when any node dies. A placement gets a fresh fencing
//! epoch; an executor reports with the epoch it was given, and a report with any other epoch
//! is refused: a stale executor (partitioned away, its job since declared lost and run
//! elsewhere) can never overwrite the outcome.
//!
//! This module is pure data and pure functions: it must never read a clock (times are chosen
//! by the proposer and carried in the commands), do I/O, or depend on the control plane. The
//! records are stored with postcard: enum variants are only ever appended, never reordered or
//! removed, and fields are never reordered.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// What a job asks for (the scheduler's input).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobSpec {
    /// Program and arguments.
    pub command: Vec<String>,
    pub cpus: u32,
    pub mem_bytes: u64,
    pub gpus: u32,
    /// Node labels the job needs (`k=v`, all must match).
    pub labels: BTreeMap<String, String>,
    /// Who submitted it (the audit actor).
    pub submitter: String,
    /// How many times a lost job is run again.
    pub retries: u32,
    /// The node it was submitted on: files are fetched from there, output streams back there.
    pub origin: String,
    /// Files shipped into the job's working directory.
    pub files: Vec<JobFile>,
    /// Fabric prefixes the job reads: their objects are in `$NOODLE_FABRIC` before it starts
    /// (the submitter had `fabric:read` on each).
    pub reads: Vec<String>,
    /// The fabric prefix the job's output (`$NOODLE_OUT`) becomes versions under when it
    /// ends (the submitter had `fabric:write` on it); at most one.
    pub writes: Vec<String>,
    /// Where the `--read` inputs were at submission: (node, bytes), for placing the job near
    /// them; at most [`noodle_fabric::HOLDERS_MAX`].
    pub held: Vec<(String, u64)>,
}

/// A file the executing node fetches from the origin's chunk store before it starts the job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobFile {
    /// Path relative to the job's working directory.
    pub name: String,
    /// Hex id of the file's chunk manifest.
    pub manifest: String,
    pub executable: bool,
    pub bytes: u64,
}

/// Where a job is in its life. Append variants at the end only.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum JobState {
    Queued,
    Placed { node: String, epoch: u64 },
    Running { node: String, epoch: u64 },
    Succeeded { exit_code: i32 },
    Failed { exit_code: i32 },
    Cancelled,
    Lost,
}

impl JobState {
    pub fn is_terminal(&self) -> bool {
        matches!(
            self,
            JobState::Succeeded { .. }
                | JobState::Failed { .. }
                | JobState::Cancelled
                | JobState::Lost
        )
    }

    /// The placement this state holds, if any: (node, epoch).
    pub fn placement(&self) -> Option<(&str, u64)> {
        match self {
            JobState::Placed { node, epoch } | JobState::Running { node, epoch } => {
                Some((node, *epoch))
            }
            _ => None,
        }
    }
}

impl std::fmt::Display for JobState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            JobState::Queued => write!(f, "queued"),
            JobState::Placed { node, .. } => write!(f, "placed on {node}"),
            JobState::Running { node, .. } => write!(f, "running on {node}"),
            JobState::Succeeded { .. } => write!(f, "succeeded"),
            JobState::Failed { exit_code } => write!(f, "failed (exit {exit_code})"),
            JobState::Cancelled => write!(f, "cancelled"),
            JobState::Lost => write!(f, "lost"),
        }
    }
}

/// One job as the control plane keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobRecord {
    pub id: u64,
    pub spec: JobSpec,
    pub state: JobState,
    /// The last fencing epoch handed out (0: never placed).
    pub epoch: u64,
    /// Runs left after a loss.
    pub retries_left: u32,
    /// The node of the latest placement.
    pub node: Option<String>,
    pub exit_code: Option<i32>,
    pub submitted_at_ms: u64,
    pub started_at_ms: Option<u64>,
    pub ended_at_ms: Option<u64>,
    /// Why the job could not run (`no such program `foo` on node b`).
    pub error: Option<String>,
}

impl JobRecord {
    /// A job as it is right after its submission.
    pub fn queued(id: u64, spec: JobSpec, submitted_at_ms: u64) -> JobRecord {
        JobRecord {
            id,
            retries_left: spec.retries,
            spec,
            state: JobState::Queued,
            epoch: 0,
            node: None,
            exit_code: None,
            submitted_at_ms,
            started_at_ms: None,
            ended_at_ms: None,
            error: None,
        }
    }
}

/// A job transition. Times are chosen by the proposer. Append variants at the end only.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum JobCommand {
    /// Queues a job; the control plane answers with its id. Applying a submission exactly
    /// once (a forwarded proposal retried after a lost answer) is the control plane's
    /// business, done the same way for every command, not a job field.
    Submit {
        spec: JobSpec,
        at_ms: u64,
    },
    /// The scheduler put a queued job on `node`; a new fencing epoch starts.
    Place {
        id: u64,
        node: String,
    },
    /// The executor holding `epoch` started the process.
    Started {
        id: u64,
        epoch: u64,
        at_ms: u64,
    },
    /// The executor holding `epoch` saw the process end.
    Ended {
        id: u64,
        epoch: u64,
        exit_code: i32,
        at_ms: u64,
    },
    /// The node holding `epoch` is gone: run the job again if it has retries, else it is lost.
    Lost {
        id: u64,
        epoch: u64,
        at_ms: u64,
    },
    Cancel {
        id: u64,
        at_ms: u64,
    },
    /// The executor holding `epoch` could not start the job (no such program, a shipped file
    /// could not be fetched): the job fails with `exit_code` and `error`, without a retry.
    StartFailed {
        id: u64,
        epoch: u64,
        exit_code: i32,
        error: String,
        at_ms: u64,
    },
}

/// Applies `command` to `job`, or says why it is refused (the control plane answers the
/// proposer with that text); a refused command changes nothing. [`JobCommand::Submit`] is
/// refused here: creating a record is [`JobRecord::queued`], done by the control plane.
pub(crate) fn transition(job: &mut JobRecord, command: &JobCommand) -> Result<(), String> {
    let id = job.id;
    let fenced = |job: &JobRecord, epoch: u64| -> Result<(), String> {
        match job.state.placement() {
            Some((_, current)) if current == epoch => Ok(()),
            _ => Err(format!(
                "job {id}: report from a stale executor (epoch {epoch}; the job is {} at epoch {})",
                job.state, job.epoch
            )),
        }
    };
    match command {
        JobCommand::Submit { .. } => return Err(format!("job {id} exists already")),
        JobCommand::Place { node, .. } => {
            if job.state != JobState::Queued {
                return Err(format!("job {id} is not queued ({})", job.state));
            }
            job.epoch += 1;
            job.node = Some(node.clone());
            job.state = JobState::Placed {
                node: node.clone(),
                epoch: job.epoch,
            };
        }
        JobCommand::Started { epoch, at_ms, .. } => {
            fenced(job, *epoch)?;
            let Some((node, _)) = job.state.placement() else {
                return Err(format!("job {id} is not placed"));
            };
            job.state = JobState::Running {
                node: node.to_string(),
                epoch: *epoch,
            };
            job.started_at_ms = Some(*at_ms);
        }
        JobCommand::Ended {
            epoch,
            exit_code,
            at_ms,
            ..
        } => {
            fenced(job, *epoch)?;
            job.exit_code = Some(*exit_code);
            job.ended_at_ms = Some(*at_ms);
            job.state = if *exit_code == 0 {
                JobState::Succeeded { exit_code: 0 }
            } else {
                JobState::Failed {
                    exit_code: *exit_code,
                }
            };
        }
        JobCommand::Lost { epoch, at_ms, .. } => {
            fenced(job, *epoch)?;
            if job.retries_left > 0 {
                job.retries_left -= 1;
                job.state = JobState::Queued;
            } else {
                job.state = JobState::Lost;
                job.ended_at_ms = Some(*at_ms);
            }
        }
        JobCommand::StartFailed {
            epoch,
            exit_code,
            error,
            at_ms,
            ..
        } => {
            fenced(job, *epoch)?;
            job.exit_code = Some(*exit_code);
            job.ended_at_ms = Some(*at_ms);
            job.error = Some(error.clone());
            job.state = JobState::Failed {
                exit_code: *exit_code,
            };
        }
        JobCommand::Cancel { at_ms, .. } => {
            if job.state.is_terminal() {
                return Err(format!("job {id} has already ended ({})", job.state));
            }
            job.state = JobState::Cancelled;
            job.ended_at_ms = Some(*at_ms);
        }
    }
    Ok(())
}

/// Bounds of a job submission.
pub mod limits {
    pub const ARGS_MAX: usize = 1024;
    pub const COMMAND_BYTES_MAX: usize = 64 << 10;
    pub const FILES_MAX: usize = 64;
    /// Fabric prefixes one job reads, at most.
    pub const READS_MAX: usize = 16;
    pub const FILE_NAME_BYTES_MAX: usize = 1024;
    pub const LABELS_MAX: usize = 32;
    pub const NAME_BYTES_MAX: usize = 256;
    pub const ERROR_BYTES_MAX: usize = 4096;
    /// Ended jobs the state keeps (the newest); older ended jobs are forgotten.
    pub const JOBS_KEPT: u64 = 10_000;
    /// Old jobs looked at (and forgotten if ended) each time a job ends.
    pub const JOBS_PRUNED_PER_END: u64 = 4;
}

impl JobSpec {
    /// Checks the bounds of a submission (the API and the state machine both check).
    pub(crate) fn validate(&self) -> Result<(), String> {
        use limits::*;
        if self.command.is_empty() || self.command[0].is_empty() {
            return Err("a job needs a program to run".into());
        }
        let bytes: usize = self.command.iter().map(|a| a.len() + 1).sum();
        if self.command.len() > ARGS_MAX || bytes > COMMAND_BYTES_MAX {
            return Err(format!(
                "the command line is {} arguments, {bytes} bytes; the limit is {ARGS_MAX} arguments, {COMMAND_BYTES_MAX} bytes",
                self.command.len()
            ));
        }
        if self.command.iter().any(|a| a.contains('\0')) {
            return Err("a command argument contains a NUL byte".into());
        }
        if self.cpus == 0 {
            return Err("a job needs at least 1 CPU".into());
        }
        if self.labels.len() > LABELS_MAX {
            return Err(format!("at most {LABELS_MAX} labels"));
        }
        if self.files.len() > FILES_MAX {
            return Err(format!("at most {FILES_MAX} files per job"));
        }
        for f in &self.files {
            validate_file_name(&f.name)?;
            if f.manifest.len() != 64 || !f.manifest.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(format!("file {:?}: bad manifest id", f.name));
            }
        }
        if self.reads.len() > READS_MAX {
            return Err(format!("at most {READS_MAX} --read prefixes"));
        }
        if self.writes.len() > 1 {
            return Err("at most one --write prefix: the job's $NOODLE_OUT becomes it".into());
        }
        if self.held.len() > noodle_fabric::HOLDERS_MAX
            || self.held.iter().any(|(n, _)| n.len() > NAME_BYTES_MAX)
        {
            return Err("too many input holders, or a holder's name too long".into());
        }
        for p in self.reads.iter().chain(&self.writes) {
            noodle_fabric::Prefix::parse(p).map_err(|e| format!("fabric prefix {p:?}: {e}"))?;
        }
        if self.submitter.len() > NAME_BYTES_MAX || self.origin.len() > NAME_BYTES_MAX {
            return Err("submitter or origin name too long".into());
        }
        Ok(())
    }
}

/// A shipped file's name: a relative path without `..`, empty or absolute parts.
pub(crate) fn validate_file_name(name: &str) -> Result<(), String> {
    let bad = name.is_empty()
        || name.len() > limits::FILE_NAME_BYTES_MAX
        || name.starts_with('/')
        || name.contains('\0')
        || name
            .split('/')
            .any(|part| part.is_empty() || part == "." || part == "..");
    if bad {
        return Err(format!(
            "file name {name:?} must be a relative path without `.`, `..` or empty parts"
        ));
    }
    Ok(())
}

impl JobCommand {
    /// Checks the bounds of a transition.
    pub(crate) fn validate(&self) -> Result<(), String> {
        match self {
            JobCommand::Submit { spec, .. } => spec.validate(),
            JobCommand::Place { node, .. } if node.len() > limits::NAME_BYTES_MAX => {
                Err("node name too long".into())
            }
            JobCommand::StartFailed { error, .. } if error.len() > limits::ERROR_BYTES_MAX => {
                Err("error text too long".into())
            }
            _ => Ok(()),
        }
    }

    /// The placement epoch an executor's report (start, end, loss) carries.
    pub fn epoch(&self) -> Option<u64> {
        match self {
            JobCommand::Started { epoch, .. }
            | JobCommand::Ended { epoch, .. }
            | JobCommand::Lost { epoch, .. }
            | JobCommand::StartFailed { epoch, .. } => Some(*epoch),
            JobCommand::Submit { .. } | JobCommand::Place { .. } | JobCommand::Cancel { .. } => {
                None
            }
        }
    }

    /// The job a transition is about (`None` for a submission).
    pub fn job_id(&self) -> Option<u64> {
        match self {
            JobCommand::Submit { .. } => None,
            JobCommand::Place { id, .. }
            | JobCommand::Started { id, .. }
            | JobCommand::Ended { id, .. }
            | JobCommand::Lost { id, .. }
            | JobCommand::Cancel { id, .. }
            | JobCommand::StartFailed { id, .. } => Some(*id),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn record() -> JobRecord {
        JobRecord {
            id: 7,
            spec: JobSpec {
                command: vec!["true".into()],
                cpus: 1,
                mem_bytes: 0,
                gpus: 0,
                labels: BTreeMap::new(),
                submitter: "admin@a".into(),
                retries: 1,
                origin: "a".into(),
                files: Vec::new(),
                reads: Vec::new(),
                writes: Vec::new(),
                held: Vec::new(),
            },
            state: JobState::Queued,
            epoch: 0,
            retries_left: 1,
            node: None,
            exit_code: None,
            submitted_at_ms: 1,
            started_at_ms: None,
            ended_at_ms: None,
            error: None,
        }
    }

    fn place(node: &str) -> JobCommand {
        JobCommand::Place {
            id: 7,
            node: node.into(),
        }
    }

    #[test]
    fn a_lost_job_runs_again_and_the_stale_executor_is_fenced_off() {
        let mut j = record();
        transition(&mut j, &place("a")).unwrap();
        transition(
            &mut j,
            &JobCommand::Started {
                id: 7,
                epoch: 1,
                at_ms: 2,
            },
        )
        .unwrap();
        transition(
            &mut j,
            &JobCommand::Lost {
                id: 7,
                epoch: 1,
                at_ms: 3,
            },
        )
        .unwrap();
        assert_eq!(j.state, JobState::Queued);
        transition(&mut j, &place("b")).unwrap();
        assert_eq!(j.epoch, 2);
        // The first executor comes back late: its result is refused, nothing changes.
        let before = j.clone();
        let late = JobCommand::Ended {
            id: 7,
            epoch: 1,
            exit_code: 0,
            at_ms: 9,
        };
        assert!(
            transition(&mut j, &late)
                .unwrap_err()
                .contains("stale executor")
        );
        assert_eq!(j, before);
        transition(
            &mut j,
            &JobCommand::Ended {
                id: 7,
                epoch: 2,
                exit_code: 3,
                at_ms: 10,
            },
        )
        .unwrap();
        assert_eq!(j.state, JobState::Failed { exit_code: 3 });
        assert_eq!(j.node.as_deref(), Some("b"));
    }

    #[test]
    fn without_retries_a_lost_job_ends_lost() {
        let mut j = record();
        j.retries_left = 0;
        transition(&mut j, &place("a")).unwrap();
        transition(
            &mut j,
            &JobCommand::Lost {
                id: 7,
                epoch: 1,
                at_ms: 3,
            },
        )
        .unwrap();
        assert_eq!(j.state, JobState::Lost);
        assert!(transition(&mut j, &place("b")).is_err());
        assert!(transition(&mut j, &JobCommand::Cancel { id: 7, at_ms: 4 }).is_err());
    }

    #[test]
    fn only_a_queued_job_is_placed_and_reports_need_a_placement() {
        let mut j = record();
        let stale = JobCommand::Started {
            id: 7,
            epoch: 0,
            at_ms: 1,
        };
        assert!(transition(&mut j, &stale).is_err());
        transition(&mut j, &place("a")).unwrap();
        assert!(transition(&mut j, &place("b")).is_err(), "placed twice");
        transition(&mut j, &JobCommand::Cancel { id: 7, at_ms: 2 }).unwrap();
        assert_eq!(j.state, JobState::Cancelled);
        let after = JobCommand::Ended {
            id: 7,
            epoch: 1,
            exit_code: 0,
            at_ms: 3,
        };
        assert!(
            transition(&mut j, &after).is_err(),
            "a cancelled job stays cancelled"
        );
    }
}
