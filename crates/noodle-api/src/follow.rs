//! Waiting for jobs and following them: long polls that never spin, waiting with a deadline, and
//! [`JobFollow`], which streams a job's output and then says how it ended, falling back to
//! waiting when the output stream breaks.
//!
//! Nothing here prints or picks exit codes; `noodle run`, `noodle wait` and SDKs decide that.

use std::time::{Duration, Instant};

use crate::{Client, ClientError, JobInfo, OutputStream};

/// How long one long poll of [`Client::wait_job`] lasts here; the node answers earlier when the
/// job ends.
pub const WAIT_POLL: Duration = Duration::from_secs(30);

/// A node that answers a long poll sooner than this although the job has not ended is not asked
/// again at once.
const EARLY_ANSWER: Duration = Duration::from_millis(50);
/// The longest pause after such an early answer.
const EARLY_ANSWER_PAUSE: Duration = Duration::from_millis(250);

impl Client {
    /// One [`Client::wait_job`] long poll of at most `timeout`. A node that answers at once
    /// although the job has not ended is not asked again in a tight loop: this call then pauses
    /// (at most 250 ms) before it returns.
    pub async fn poll_job(&self, id: u64, timeout: Duration) -> Result<JobInfo, ClientError> {
        let started = Instant::now();
        let info = self.wait_job(id, timeout).await?;
        if !info.is_done() && started.elapsed() < EARLY_ANSWER {
            tokio::time::sleep(timeout.min(EARLY_ANSWER_PAUSE)).await;
        }
        Ok(info)
    }

    /// Waits until job `id` has ended, or until `timeout` (if any) has passed: returns the job
    /// as it is then; [`JobInfo::is_done`] says which.
    pub async fn wait_job_ended(
        &self,
        id: u64,
        timeout: Option<Duration>,
    ) -> Result<JobInfo, ClientError> {
        let started = Instant::now();
        loop {
            let poll = match timeout {
                Some(t) => t.saturating_sub(started.elapsed()).min(WAIT_POLL),
                None => WAIT_POLL,
            };
            let info = self.poll_job(id, poll).await?;
            if info.is_done() || timeout.is_some_and(|t| started.elapsed() >= t) {
                return Ok(info);
            }
        }
    }
}

/// What [`JobFollow::next`] saw.
#[derive(Debug)]
pub enum JobEvent {
    /// A frame of the job's output: `kind` is one of [`crate::output_frame`]'s kinds (a kind
    /// this client does not know may come from a newer node).
    Output { kind: u8, payload: Vec<u8> },
    /// The output stream broke. The follower goes on waiting for the job to end, without its
    /// output (`noodle logs JOB --follow` reattaches to it).
    OutputLost(ClientError),
    /// The job has ended (boxed: a job is much larger than a frame).
    Ended(Box<JobInfo>),
}

/// Follows one job: its output while the stream lasts (the node ends it when the job ends),
/// then long polls until the job has ended.
pub struct JobFollow {
    client: Client,
    id: u64,
    output: Option<OutputStream>,
}

impl JobFollow {
    /// Follows job `id` without its output: [`JobFollow::next`] answers when the job has
    /// ended. Call [`JobFollow::open_output`] to stream the output too.
    pub fn new(client: Client, id: u64) -> JobFollow {
        JobFollow {
            client,
            id,
            output: None,
        }
    }

    /// The job followed.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Opens the job's live output stream. On an error the follower stays as it was (without
    /// output, it waits for the job to end).
    pub async fn open_output(&mut self) -> Result<(), ClientError> {
        self.output = Some(self.client.job_output(self.id, true).await?);
        Ok(())
    }

    /// The next output frame, a broken output stream, or the job's end. `Err` only when asking
    /// whether the job has ended failed; calling again asks again.
    ///
    /// Cancel-safe: dropping the future (in `tokio::select!`, to hear Ctrl-C) loses no output,
    /// and the next call carries on where this one was.
    pub async fn next(&mut self) -> Result<JobEvent, ClientError> {
        loop {
            match self.output.as_mut() {
                Some(stream) => match stream.next().await {
                    Ok(Some((kind, payload))) => return Ok(JobEvent::Output { kind, payload }),
                    // The node ends the stream when the job has ended.
                    Ok(None) => self.output = None,
                    Err(e) => {
                        self.output = None;
                        return Ok(JobEvent::OutputLost(e));
                    }
                },
                None => {
                    let info = self.client.poll_job(self.id, WAIT_POLL).await?;
                    if info.is_done() {
                        return Ok(JobEvent::Ended(Box::new(info)));
                    }
                }
            }
        }
    }
}
