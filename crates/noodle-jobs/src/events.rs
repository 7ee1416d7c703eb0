//! Job transitions as events on the node's bus: `job_submitted`, `job_started`, `job_ended`,
//! `job_lost`, each reported in order even when several transitions of one job were applied
//! between two looks (a short job can be submitted, run and end in between).

use crate::state::{JobRecord, JobState};
use noodle_api::EventKind;
use noodle_host::EventBus;
use std::collections::HashMap;

pub const JOB_SUBMITTED: EventKind = EventKind::new("job_submitted");
pub const JOB_STARTED: EventKind = EventKind::new("job_started");
pub const JOB_ENDED: EventKind = EventKind::new("job_ended");
pub const JOB_LOST: EventKind = EventKind::new("job_lost");
/// The kinds the jobs subsystem registers.
pub const EVENT_KINDS: [EventKind; 4] = [JOB_SUBMITTED, JOB_STARTED, JOB_ENDED, JOB_LOST];

/// Longest command shown in an event.
const COMMAND_CHARS_MAX: usize = 80;

/// What the loop last saw of the jobs.
pub(crate) struct Seen {
    /// States of the jobs that had not ended.
    active: HashMap<u64, JobState>,
    /// Ids below this were all seen.
    next_id: u64,
}

impl Seen {
    pub(crate) fn new(active: &[JobRecord], newest: u64) -> Seen {
        Seen {
            active: active.iter().map(|j| (j.id, j.state.clone())).collect(),
            next_id: newest + 1,
        }
    }

    /// Emits the transitions since the last look: `active` are the jobs that have not ended,
    /// `newest` the newest job id, `lookup` reads any job.
    pub(crate) fn emit(
        &mut self,
        events: &EventBus,
        active: &[JobRecord],
        newest: u64,
        lookup: &dyn Fn(u64) -> Option<JobRecord>,
    ) {
        let now: HashMap<u64, &JobRecord> = active.iter().map(|j| (j.id, j)).collect();
        // Jobs that were active, and jobs submitted since the last look that already ended.
        let mut ended: Vec<u64> = self
            .active
            .keys()
            .copied()
            .chain(self.next_id..=newest)
            .filter(|id| !now.contains_key(id))
            .collect();
        ended.sort_unstable();
        ended.dedup();
        let mut changed: Vec<(u64, JobRecord, Option<JobState>)> = Vec::new();
        for id in ended {
            if let Some(job) = lookup(id) {
                changed.push((id, job, self.active.get(&id).cloned()));
            }
        }
        for job in active {
            changed.push((job.id, job.clone(), self.active.get(&job.id).cloned()));
        }
        changed.sort_by_key(|(id, _, _)| *id);
        for (id, job, before) in changed {
            emit_job(events, id, &job, before.as_ref(), id >= self.next_id);
        }
        self.active = active.iter().map(|j| (j.id, j.state.clone())).collect();
        self.next_id = self.next_id.max(newest + 1);
    }
}

/// The events of one job that was `before` at the last look and is `job` now.
fn emit_job(events: &EventBus, id: u64, job: &JobRecord, before: Option<&JobState>, new: bool) {
    let command = short(&job.spec.command.join(" "));
    let node = job.node.clone().unwrap_or_default();
    if before.is_none() && new {
        let what = format!("job {id} by {}: {command}", job.spec.submitter);
        events.emit(JOB_SUBMITTED, &job.spec.origin, what);
    }
    let was_running = matches!(before, Some(JobState::Running { .. }));
    let started = match &job.state {
        JobState::Running { .. } => true,
        s if s.is_terminal() => job.started_at_ms.is_some(),
        _ => false,
    };
    if started && !was_running {
        events.emit(JOB_STARTED, &node, format!("job {id} on {node}: {command}"));
    }
    let lost_then_queued = job.state == JobState::Queued
        && matches!(
            before,
            Some(JobState::Placed { .. } | JobState::Running { .. })
        );
    if lost_then_queued {
        let what = format!(
            "job {id} lost on {node}; running it again ({} retries left)",
            job.retries_left
        );
        events.emit(JOB_LOST, &node, what);
    }
    let end = match &job.state {
        JobState::Succeeded { .. } => Some((JOB_ENDED, "succeeded".to_string())),
        JobState::Failed { exit_code } => Some((
            JOB_ENDED,
            match &job.error {
                Some(e) => format!("failed: {e}"),
                None => format!("failed (exit {exit_code})"),
            },
        )),
        JobState::Cancelled => Some((JOB_ENDED, "cancelled".to_string())),
        JobState::Lost => Some((JOB_LOST, "lost (no retries left)".to_string())),
        _ => None,
    };
    if let Some((kind, what)) = end {
        events.emit(kind, &node, format!("job {id} {what}"));
    }
}

fn short(s: &str) -> String {
    if s.len() <= COMMAND_CHARS_MAX {
        return s.to_string();
    }
    let mut end = COMMAND_CHARS_MAX;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}
