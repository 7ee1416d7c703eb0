//! API routes of `noodle run`: submit, list, show, wait for and cancel jobs, stream their
//! output, and upload the chunks of shipped files. Each handler first names the right it needs.
//!
//! Rights: `jobs:run` to submit and cancel, `jobs:read` to see jobs and their output. Token
//! quotas enforced at submission: `cpus` and `gpus` (per job) and `jobs` (jobs of this
//! submitter not yet ended).

use crate::api::{ApiResult, AppState, Refusal, check, parse_body};
use crate::api_control::{bad_request, control_error, plane};
use crate::control::{Actor, Caller, ControlPlane};
use crate::jobs::{JobRuntime, OutputChunk, OutputRequest, info};
use axum::Extension;
use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use noodle_api::{ChunkIds, JobList, JobSubmit, output_frame};
use noodle_caps::Request;
use noodle_control::jobs::{JobCommand, JobFile, JobRecord, JobSpec};
use noodle_control::{Command, Response as Applied};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// Ended jobs `GET /v1/jobs` lists besides the ones that have not ended.
const RECENT_JOBS: usize = 20;
/// Most jobs `GET /v1/jobs?all=true` lists.
const ALL_JOBS_MAX: usize = 100_000;
/// How long a submission waits for the details of nodes that just joined.
const NODE_DETAILS_WAIT: Duration = Duration::from_secs(3);
/// How long a followed job waits in the queue before the follower is told why nothing happens.
const QUEUED_NOTICE_AFTER: Duration = Duration::from_secs(2);
/// Longest `GET /v1/jobs/{id}/wait` holds the request.
const WAIT_MAX: Duration = Duration::from_secs(60);

fn runtime(shared: &AppState) -> Result<&Arc<JobRuntime>, Refusal> {
    shared.jobs.get().ok_or_else(|| {
        Refusal::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "the node is starting; try again in a moment",
        )
    })
}

fn ship_error(e: crate::ship::ShipError) -> Refusal {
    let status = StatusCode::from_u16(e.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    Refusal::new(status, e.to_string())
}

/// A job that ended after the newest ended jobs had moved past it.
fn forgotten(id: u64) -> String {
    format!(
        "job {id} has ended and is no longer kept (the cluster keeps the newest {} ended jobs)",
        noodle_control::jobs::limits::JOBS_KEPT
    )
}

fn no_such_job(id: u64) -> Refusal {
    Refusal::new(StatusCode::NOT_FOUND, format!("there is no job {id}"))
}

fn read_right() -> Request {
    Request::new("jobs", "read")
}

fn run_right() -> Request {
    Request::new("jobs", "run")
}

/// Checks the token's quotas for a new job; a job over them is refused and the denial audited.
fn check_quotas(
    plane: &Arc<ControlPlane>,
    caller: &Caller,
    actor: &Actor,
    spec: &JobSpec,
    target: &str,
) -> Result<(), Refusal> {
    let mut why = None;
    for (name, asked) in [("cpus", spec.cpus), ("gpus", spec.gpus)] {
        if let Some(limit) = actor.quota(name)
            && i64::from(asked) > limit
        {
            why = Some(format!(
                "the job asks for {asked} {name}; the token allows {limit}"
            ));
        }
    }
    if let Some(limit) = actor.quota("jobs") {
        let mine = plane
            .control
            .read_local(|v| v.active_jobs())
            .map_err(control_error)?
            .iter()
            .filter(|j| j.spec.submitter == actor.name)
            .count() as i64;
        if mine >= limit {
            why = Some(format!(
                "{mine} of your jobs have not ended; the token allows {limit} at once"
            ));
        }
    }
    match why {
        None => Ok(()),
        Some(why) => {
            plane.record_denial(caller, "job.submit", target, &run_right(), &why);
            Err(Refusal::new(
                StatusCode::FORBIDDEN,
                format!("denied: {why}"),
            ))
        }
    }
}

pub(crate) async fn submit(
    State(shared): State<AppState>,
    Extension(caller): Extension<Caller>,
    body: Bytes,
) -> ApiResult {
    let req: JobSubmit = parse_body(&body, "job")?;
    let target = req.command.first().cloned().unwrap_or_default();
    let actor = check(&shared, &caller, run_right(), "job.submit", &target)?;
    let plane = plane(&shared)?;
    let jobs = runtime(&shared)?;
    let spec = JobSpec {
        command: req.command,
        cpus: req.cpus,
        mem_bytes: req.mem_bytes,
        gpus: req.gpus,
        labels: req.labels,
        submitter: actor.name.clone(),
        retries: req.retries,
        origin: shared.node_id.clone(),
        files: req
            .files
            .into_iter()
            .map(|f| JobFile {
                name: f.name,
                manifest: f.manifest,
                executable: f.executable,
                bytes: f.bytes,
            })
            .collect(),
    };
    spec.validate().map_err(bad_request)?;
    check_quotas(plane, &caller, &actor, &spec, &target)?;
    let manifests: Vec<String> = spec.files.iter().map(|f| f.manifest.clone()).collect();
    let missing = jobs.shipping.missing(&manifests).map_err(ship_error)?;
    if let Some(m) = missing.first() {
        return Err(bad_request(format!(
            "file manifest {m} is not on this node: upload the file's chunks first"
        )));
    }
    // A job no node could ever run is refused now rather than queued for ever.
    // A job no node could ever run is refused now rather than queued for ever. A node that
    // just joined may not have told us its slots yet: give its details a moment to arrive.
    let probe = crate::jobs::sched_spec(0, &spec);
    let deadline = Instant::now() + NODE_DETAILS_WAIT;
    while let Err(why) = shared.scheduler().submit(probe.clone()) {
        if shared.every_alive_node_described() {
            return Err(bad_request(format!("no node can run this job: {why}")));
        }
        if Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let at_ms = crate::now_ms();
    let submission = rand::random();
    let command = Command::Job(JobCommand::Submit {
        spec: spec.clone(),
        at_ms,
        submission,
    });
    let applied = plane
        .write(&actor, "job.submit", &target, command)
        .await
        .map_err(control_error)?;
    let id = match applied {
        Applied::Created { id } => id,
        Applied::Rejected(why) => return Err(bad_request(why)),
        other => {
            return Err(Refusal::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("the control plane answered {other:?} to a submission"),
            ));
        }
    };
    let record = JobRecord::queued(id, spec, at_ms, submission);
    Ok((StatusCode::CREATED, Json(info(&record))).into_response())
}

#[derive(serde::Deserialize)]
pub(crate) struct ListQuery {
    #[serde(default)]
    all: bool,
}

pub(crate) async fn list(
    State(shared): State<AppState>,
    Extension(caller): Extension<Caller>,
    Query(q): Query<ListQuery>,
) -> ApiResult {
    check(&shared, &caller, read_right(), "job.list", "")?;
    let plane = plane(&shared)?;
    let mut jobs = plane
        .control
        .read(|v| {
            if q.all {
                return v.jobs(0, ALL_JOBS_MAX);
            }
            let mut jobs = v.active_jobs()?;
            let active: std::collections::HashSet<u64> = jobs.iter().map(|j| j.id).collect();
            jobs.extend(
                v.recent_jobs(RECENT_JOBS)?
                    .into_iter()
                    .filter(|j| !active.contains(&j.id)),
            );
            Ok(jobs)
        })
        .await
        .map_err(control_error)?;
    jobs.sort_by_key(|j| j.id);
    Ok(Json(JobList {
        jobs: jobs.iter().map(info).collect(),
    })
    .into_response())
}

async fn read_job(plane: &ControlPlane, id: u64) -> Result<JobRecord, Refusal> {
    plane
        .control
        .read(|v| v.job(id))
        .await
        .map_err(control_error)?
        .ok_or_else(|| no_such_job(id))
}

pub(crate) async fn get(
    State(shared): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<u64>,
) -> ApiResult {
    check(&shared, &caller, read_right(), "job.get", &id.to_string())?;
    let job = read_job(plane(&shared)?, id).await?;
    Ok(Json(info(&job)).into_response())
}

pub(crate) async fn cancel(
    State(shared): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<u64>,
) -> ApiResult {
    let target = format!("job {id}");
    let actor = check(&shared, &caller, run_right(), "job.cancel", &target)?;
    let plane = plane(&shared)?;
    let command = Command::Job(JobCommand::Cancel {
        id,
        at_ms: crate::now_ms(),
    });
    match plane
        .write(&actor, "job.cancel", &target, command)
        .await
        .map_err(control_error)?
    {
        Applied::Done => {}
        Applied::Rejected(why) if why.starts_with("there is no job") => {
            return Err(no_such_job(id));
        }
        Applied::Rejected(why) => return Err(Refusal::new(StatusCode::CONFLICT, why)),
        other => {
            return Err(Refusal::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("the control plane answered {other:?} to a cancellation"),
            ));
        }
    }
    let job = read_job(plane, id).await?;
    Ok(Json(info(&job)).into_response())
}

#[derive(serde::Deserialize)]
pub(crate) struct WaitQuery {
    #[serde(default)]
    timeout_ms: Option<u64>,
}

pub(crate) async fn wait(
    State(shared): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<u64>,
    Query(q): Query<WaitQuery>,
) -> ApiResult {
    check(&shared, &caller, read_right(), "job.wait", &id.to_string())?;
    let plane = plane(&shared)?;
    let timeout = q
        .timeout_ms
        .map_or(WAIT_MAX, Duration::from_millis)
        .min(WAIT_MAX);
    let deadline = Instant::now() + timeout;
    let mut metrics = plane.control.watch();
    let mut job = read_job(plane, id).await?;
    let mut seen = false;
    while !job.state.is_terminal() && Instant::now() < deadline {
        let _ = tokio::time::timeout_at(deadline.into(), metrics.changed()).await;
        match plane.control.read_local(|v| v.job(id)) {
            Ok(Some(j)) => {
                job = j;
                seen = true;
            }
            Ok(None) if seen => return Err(Refusal::new(StatusCode::GONE, forgotten(id))),
            _ => {}
        }
    }
    Ok(Json(info(&job)).into_response())
}

#[derive(serde::Deserialize)]
pub(crate) struct OutputQuery {
    #[serde(default)]
    follow: bool,
}

/// Streams a job's output as frames (`noodle_api::output_frame`), following it across
/// attempts (a lost job run again elsewhere) until the job ends when `follow` is set.
pub(crate) async fn output(
    State(shared): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<u64>,
    Query(q): Query<OutputQuery>,
) -> ApiResult {
    check(
        &shared,
        &caller,
        read_right(),
        "job.output",
        &id.to_string(),
    )?;
    let job = read_job(plane(&shared)?, id).await?;
    // An ended job's output is only where it ran: say so now if that node is gone.
    if job.state.is_terminal()
        && let Some(node) = &job.node
        && matches!(
            shared.node_state(node),
            None | Some(noodle_api::NodeState::Dead)
        )
    {
        return Err(Refusal::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("the output of job {id} is kept on node {node}, which is dead or gone"),
        ));
    }
    let (tx, rx) = mpsc::channel::<Result<Bytes, std::convert::Infallible>>(16);
    tokio::spawn(relay_output(shared.clone(), id, q.follow, tx));
    let body = Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(rx));
    Ok(([(header::CONTENT_TYPE, "application/octet-stream")], body).into_response())
}

type Frames = mpsc::Sender<Result<Bytes, std::convert::Infallible>>;

async fn send_notice(tx: &Frames, text: &str) -> bool {
    let mut out = Vec::new();
    output_frame::encode(output_frame::NOTICE, text.as_bytes(), &mut out);
    tx.send(Ok(Bytes::from(out))).await.is_ok()
}

/// Fetches one attempt's output from the node that has it.
async fn fetch(shared: &AppState, node: &str, req: &OutputRequest) -> Result<OutputChunk, String> {
    if node == shared.node_id {
        let jobs = shared.jobs.get().ok_or("the node is starting")?;
        return crate::jobs::read_output(jobs, req).await;
    }
    let addr = shared
        .peer_addr(node)
        .ok_or_else(|| format!("node {node} is not known here"))?;
    let link = shared.link().ok_or("the node is starting")?;
    let body = postcard::to_stdvec(req).map_err(|e| e.to_string())?;
    let answer = link
        .request(addr, "jobs.output", &body)
        .await
        .map_err(|e| e.to_string())?;
    postcard::from_bytes(&answer).map_err(|_| format!("node {node} sent unreadable output"))
}

/// Waits for the control plane to apply something, or a short while.
async fn settle<T>(metrics: &mut tokio::sync::watch::Receiver<T>) {
    let _ = tokio::time::timeout(Duration::from_millis(250), metrics.changed()).await;
}

async fn relay_output(shared: AppState, id: u64, follow: bool, tx: Frames) {
    let Some(plane) = shared.control.get().cloned() else {
        return;
    };
    let mut metrics = plane.control.watch();
    let mut attempt: Option<(String, u64)> = None;
    let mut offset = 0u64;
    let mut queued_since: Option<Instant> = None;
    let mut said_queued = false;
    let mut seen = false;
    loop {
        if tx.is_closed() {
            return;
        }
        let job = match plane.control.read_local(|v| v.job(id)) {
            Ok(Some(job)) => job,
            Ok(None) if seen => {
                let _ = send_notice(&tx, &forgotten(id)).await;
                return;
            }
            // Not applied here yet (the submission went through the leader), or a read error.
            _ => {
                settle(&mut metrics).await;
                continue;
            }
        };
        seen = true;
        let current = match job.state.placement() {
            Some((node, epoch)) => Some((node.to_string(), epoch)),
            None if job.state.is_terminal() => job.node.clone().map(|n| (n, job.epoch)),
            None => None,
        };
        let Some((node, epoch)) = current else {
            // Queued: not placed yet, or lost and waiting to run again.
            if !follow || job.state.is_terminal() {
                return;
            }
            let waited = queued_since.get_or_insert_with(Instant::now).elapsed();
            if !said_queued && waited >= QUEUED_NOTICE_AFTER {
                said_queued = true;
                let text = format!(
                    "job {id} is queued: no node has the CPUs, memory or GPUs it asks for free yet"
                );
                if !send_notice(&tx, &text).await {
                    return;
                }
            }
            settle(&mut metrics).await;
            continue;
        };
        queued_since = None;
        if attempt.as_ref() != Some(&(node.clone(), epoch)) {
            if let Some((old, _)) = &attempt {
                let text = format!("job {id} was lost on {old}; running it again on {node}");
                if !send_notice(&tx, &text).await {
                    return;
                }
            }
            attempt = Some((node.clone(), epoch));
            offset = 0;
        }
        let req = OutputRequest {
            id,
            epoch,
            offset,
            // Long-poll even once the job has ended: a cancelled job may still write during
            // its grace period, until its log closes.
            wait_ms: if follow { 1000 } else { 0 },
        };
        let chunk = match fetch(&shared, &node, &req).await {
            Ok(c) => c,
            Err(e) => {
                if !follow || job.state.is_terminal() {
                    let _ = send_notice(&tx, &format!("output of job {id} on {node}: {e}")).await;
                    return;
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
        };
        let got = !chunk.frames.is_empty();
        if got {
            offset = chunk.next;
            if tx.send(Ok(Bytes::from(chunk.frames))).await.is_err() {
                return;
            }
        }
        let ended = job.state.is_terminal();
        if chunk.unknown || chunk.closed {
            // Nothing (more) for this attempt: done if the job has ended, else wait for it to
            // start, end or move.
            if ended || !follow {
                return;
            }
            settle(&mut metrics).await;
        } else if !got && !follow {
            return;
        }
    }
}

/// `POST /v1/chunks/missing`.
pub(crate) async fn chunks_missing(
    State(shared): State<AppState>,
    Extension(caller): Extension<Caller>,
    body: Bytes,
) -> ApiResult {
    check(&shared, &caller, run_right(), "chunks.missing", "")?;
    let req: ChunkIds = parse_body(&body, "chunk list")?;
    let ids = runtime(&shared)?
        .shipping
        .missing(&req.ids)
        .map_err(ship_error)?;
    Ok(Json(ChunkIds { ids }).into_response())
}

/// `PUT /v1/chunks/{id}`.
pub(crate) async fn put_chunk(
    State(shared): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    body: Bytes,
) -> ApiResult {
    check(&shared, &caller, run_right(), "chunks.put", &id)?;
    let jobs = runtime(&shared)?.clone();
    tokio::task::spawn_blocking(move || jobs.shipping.put(&id, &body))
        .await
        .map_err(|e| Refusal::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
        .map_err(ship_error)?;
    Ok(StatusCode::NO_CONTENT.into_response())
}
