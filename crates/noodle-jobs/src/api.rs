//! API routes of `noodle run`: submit, list, show, wait for and cancel jobs, stream their
//! output, and upload the chunks of shipped files. Each handler first names the right it needs.
//!
//! Rights: `jobs:run` to submit and cancel, `jobs:read` to see jobs and their output. Token
//! quotas enforced at submission: `cpus` and `gpus` (per job) and `jobs` (jobs of this
//! submitter not yet ended).

use crate::machine::{self, JobsView};
use crate::output::{OutputPiece, OutputRequest, PIECES_QUEUED};
use crate::state::{JobCommand, JobFile, JobRecord, JobSpec, limits};
use crate::subsystem::{JobsService, READ, RUN, info, reachable};
use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::{get, post, put};
use axum::{Extension, Json};
use noodle_api::{ChunkIds, JobList, JobSubmit, output_frame};
use noodle_control::{DbError, Proposal, Response as Applied};
use noodle_host::api::{ApiResult, Refusal, Routes, bad_request, check, control_error, parse_body};
use noodle_host::{Actor, Caller};
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
/// How long the output relay waits for the control plane to apply something before it looks
/// at the job again.
const SETTLE: Duration = Duration::from_millis(250);
/// Pause before the relay asks again for output whose node did not answer.
const RETRY_PAUSE: Duration = Duration::from_millis(500);

type AppState = Arc<JobsService>;

/// The routes of the jobs subsystem.
pub(crate) fn routes(state: AppState) -> Routes {
    Routes::new()
        .route("/v1/jobs", get(list).post(submit))
        .route("/v1/jobs/{id}", get(get_job))
        .route("/v1/jobs/{id}/cancel", post(cancel))
        .route("/v1/jobs/{id}/wait", get(wait))
        .route("/v1/jobs/{id}/output", get(output))
        .route("/v1/chunks/missing", post(chunks_missing))
        .route(
            "/v1/chunks/{id}",
            put(put_chunk).layer(axum::extract::DefaultBodyLimit::max(
                noodle_chunks::MAX_MANIFEST_BYTES.max(noodle_chunks::MAX_CHUNK_BYTES),
            )),
        )
        .with_state(state)
}

fn ship_error(e: noodle_fabric::chunks::StoreError) -> Refusal {
    let status = StatusCode::from_u16(e.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    Refusal::new(status, e.to_string())
}

/// A job that ended after the newest ended jobs had moved past it.
fn forgotten(id: u64) -> String {
    format!(
        "job {id} has ended and is no longer kept (the cluster keeps the newest {} ended jobs)",
        limits::JOBS_KEPT
    )
}

fn no_such_job(id: u64) -> Refusal {
    Refusal::new(StatusCode::NOT_FOUND, format!("there is no job {id}"))
}

impl JobsService {
    /// Checks that `caller` may make `request` (see [`check`]).
    fn check(
        &self,
        caller: &Caller,
        request: impl Into<noodle_host::Request>,
        action: &str,
        target: &str,
    ) -> Result<Actor, Refusal> {
        check(&self.host.authz, caller, request, action, target)
    }

    /// Reads this node's copy of the job records.
    fn read_local<T>(
        &self,
        f: impl FnOnce(&JobsView<'_>) -> Result<T, DbError>,
    ) -> Result<T, Refusal> {
        self.host
            .control
            .read_local(|v| f(&machine::view(v)))
            .map_err(control_error)
    }

    /// A linearizable read of the job records.
    async fn read<T>(
        &self,
        f: impl FnOnce(&JobsView<'_>) -> Result<T, DbError>,
    ) -> Result<T, Refusal> {
        self.host
            .control
            .read(|v| f(&machine::view(v)))
            .await
            .map_err(control_error)
    }

    async fn read_job(&self, id: u64) -> Result<JobRecord, Refusal> {
        self.read(|v| v.job(id))
            .await?
            .ok_or_else(|| no_such_job(id))
    }

    /// Proposes an authorised job command with its audit record.
    async fn write(
        &self,
        actor: &Actor,
        action: &str,
        target: &str,
        command: &JobCommand,
    ) -> Result<Applied, Refusal> {
        let mut proposal = Proposal::machine(machine::NAME, machine::encode(command));
        proposal.audit = Some(noodle_audit::Record::new(
            noodle_host::now_ms(),
            actor.name.clone(),
            action,
            target,
            actor.right.clone(),
            noodle_audit::Outcome::Allowed,
        ));
        self.host
            .authz
            .propose(actor, proposal)
            .await
            .map_err(control_error)
    }
}

/// Checks the token's quotas for a new job; a job over them is refused and the denial audited.
fn check_quotas(
    state: &JobsService,
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
        let mine = state
            .read_local(|v| v.active_jobs())?
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
            state
                .host
                .authz
                .record_denial(caller, "job.submit", target, &RUN.into(), &why);
            Err(Refusal::new(
                StatusCode::FORBIDDEN,
                format!("denied: {why}"),
            ))
        }
    }
}

async fn submit(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    body: Bytes,
) -> ApiResult {
    let req: JobSubmit = parse_body(&body, "job")?;
    let target = req.command.first().cloned().unwrap_or_default();
    let actor = state.check(&caller, RUN, "job.submit", &target)?;
    let spec = JobSpec {
        command: req.command,
        cpus: req.cpus,
        mem_bytes: req.mem_bytes,
        gpus: req.gpus,
        labels: req.labels,
        submitter: actor.name.clone(),
        retries: req.retries,
        origin: state.host.node_id.clone(),
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
        held: state.runtime.fabric.holdings(&req.reads),
        reads: req.reads,
        writes: req.writes,
    };
    spec.validate().map_err(bad_request)?;
    check_quotas(&state, &caller, &actor, &spec, &target)?;
    // The job's node reads and writes these in its own name: the submitter must hold them.
    for p in &spec.reads {
        state.check(&caller, noodle_fabric::READ.on(p), "job.submit", p)?;
    }
    for p in &spec.writes {
        state.check(&caller, noodle_fabric::WRITE.on(p), "job.submit", p)?;
    }
    let manifests: Vec<String> = spec.files.iter().map(|f| f.manifest.clone()).collect();
    let missing = state
        .runtime
        .shipping
        .missing(&manifests)
        .map_err(ship_error)?;
    if let Some(m) = missing.first() {
        return Err(bad_request(format!(
            "file manifest {m} is not on this node: upload the file's chunks first"
        )));
    }
    // A job no node could ever run is refused now rather than queued for ever. A node that
    // just joined may not have told us its slots yet: give its details a moment to arrive.
    let probe = crate::engine::sched_spec(0, &spec);
    let deadline = Instant::now() + NODE_DETAILS_WAIT;
    let cluster = state.host.cluster.as_ref();
    while let Err(why) = crate::runtime::scheduler(cluster).submit(probe.clone()) {
        if cluster.every_alive_node_described() {
            return Err(bad_request(format!("no node can run this job: {why}")));
        }
        if Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let at_ms = noodle_host::now_ms();
    let command = JobCommand::Submit {
        spec: spec.clone(),
        at_ms,
    };
    let id = match state.write(&actor, "job.submit", &target, &command).await? {
        Applied::Created { id } => id,
        Applied::Rejected(why) => return Err(bad_request(why)),
        other => {
            return Err(Refusal::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("the control plane answered {other:?} to a submission"),
            ));
        }
    };
    let record = JobRecord::queued(id, spec, at_ms);
    Ok((StatusCode::CREATED, Json(info(&record))).into_response())
}

#[derive(serde::Deserialize)]
struct ListQuery {
    #[serde(default)]
    all: bool,
}

async fn list(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Query(q): Query<ListQuery>,
) -> ApiResult {
    state.check(&caller, READ, "job.list", "")?;
    let mut jobs = state
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
        .await?;
    jobs.sort_by_key(|j| j.id);
    Ok(Json(JobList {
        jobs: jobs.iter().map(info).collect(),
    })
    .into_response())
}

async fn get_job(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<u64>,
) -> ApiResult {
    state.check(&caller, READ, "job.get", &id.to_string())?;
    let job = state.read_job(id).await?;
    Ok(Json(info(&job)).into_response())
}

async fn cancel(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<u64>,
) -> ApiResult {
    let target = format!("job {id}");
    let actor = state.check(&caller, RUN, "job.cancel", &target)?;
    let command = JobCommand::Cancel {
        id,
        at_ms: noodle_host::now_ms(),
    };
    match state.write(&actor, "job.cancel", &target, &command).await? {
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
    let job = state.read_job(id).await?;
    Ok(Json(info(&job)).into_response())
}

#[derive(serde::Deserialize)]
struct WaitQuery {
    #[serde(default)]
    timeout_ms: Option<u64>,
}

async fn wait(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<u64>,
    Query(q): Query<WaitQuery>,
) -> ApiResult {
    state.check(&caller, READ, "job.wait", &id.to_string())?;
    let timeout = q
        .timeout_ms
        .map_or(WAIT_MAX, Duration::from_millis)
        .min(WAIT_MAX);
    let deadline = Instant::now() + timeout;
    let mut metrics = state.host.control.watch();
    let mut job = state.read_job(id).await?;
    let mut seen = false;
    while !job.state.is_terminal() && Instant::now() < deadline {
        let _ = tokio::time::timeout_at(deadline.into(), metrics.changed()).await;
        match state.read_local(|v| v.job(id)) {
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
struct OutputQuery {
    #[serde(default)]
    follow: bool,
}

/// Streams a job's output as frames (`noodle_api::output_frame`), following it across
/// attempts (a lost job run again elsewhere) until the job ends when `follow` is set.
async fn output(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<u64>,
    Query(q): Query<OutputQuery>,
) -> ApiResult {
    state.check(&caller, READ, "job.output", &id.to_string())?;
    let job = state.read_job(id).await?;
    // An ended job's output is only where it ran: say so now if that node is gone.
    if job.state.is_terminal()
        && let Some(node) = &job.node
        && !reachable(state.host.cluster.node_state(node))
    {
        return Err(Refusal::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("the output of job {id} is kept on node {node}, which is dead or gone"),
        ));
    }
    let (tx, rx) = mpsc::channel::<Result<Bytes, std::convert::Infallible>>(PIECES_QUEUED);
    tokio::spawn(relay_output(state.clone(), id, q.follow, tx));
    let frames = noodle_host::while_allowed(
        tokio_stream::wrappers::ReceiverStream::new(rx),
        state.host.authz.clone(),
        caller,
        READ,
    );
    let body = Body::from_stream(frames);
    Ok(([(header::CONTENT_TYPE, "application/octet-stream")], body).into_response())
}

type Frames = mpsc::Sender<Result<Bytes, std::convert::Infallible>>;

async fn send_notice(tx: &Frames, text: &str) -> bool {
    let mut out = Vec::new();
    output_frame::encode(output_frame::NOTICE, text.as_bytes(), &mut out);
    tx.send(Ok(Bytes::from(out))).await.is_ok()
}

/// The pieces of one attempt's output from `offset` on, from the node that has them.
fn open_attempt(
    state: &JobsService,
    node: &str,
    req: OutputRequest,
) -> Result<mpsc::Receiver<Result<OutputPiece, String>>, String> {
    let (tx, rx) = mpsc::channel(PIECES_QUEUED);
    if node == state.host.node_id {
        let log = state.runtime.output_log(req.id, req.epoch);
        tokio::spawn(crate::output::produce(log, req, tx));
    } else {
        let addr = state
            .host
            .cluster
            .peer_addr(node)
            .ok_or_else(|| format!("node {node} is not known here"))?;
        let link = state.host.link.clone();
        tokio::spawn(async move { crate::output::fetch(&link, addr, req, tx).await });
    }
    Ok(rx)
}

/// Where the relay reads output from.
struct Reading {
    node: String,
    epoch: u64,
    offset: u64,
    pieces: Option<mpsc::Receiver<Result<OutputPiece, String>>>,
}

/// Relays a job's output into `tx`: the current attempt's, from a stream of pieces that its
/// node sends as the job writes; a new attempt (the job was lost and placed again) starts
/// over with a notice. Ends when the job has ended and its output is all sent, when not
/// following and what is written is sent, or when the reader goes away.
async fn relay_output(state: AppState, id: u64, follow: bool, tx: Frames) {
    let mut metrics = state.host.control.watch();
    let mut reading: Option<Reading> = None;
    let mut queued_since: Option<Instant> = None;
    let mut said_queued = false;
    let mut seen = false;
    loop {
        if tx.is_closed() {
            return;
        }
        let job = match state.read_local(|v| v.job(id)) {
            Ok(Some(job)) => job,
            Ok(None) if seen => {
                let _ = send_notice(&tx, &forgotten(id)).await;
                return;
            }
            // Not applied here yet (the submission went through the leader), or a read error.
            _ => {
                let _ = tokio::time::timeout(SETTLE, metrics.changed()).await;
                continue;
            }
        };
        seen = true;
        let ended = job.state.is_terminal();
        let current = match job.state.placement() {
            Some((node, epoch)) => Some((node.to_string(), epoch)),
            None if ended => job.node.clone().map(|n| (n, job.epoch)),
            None => None,
        };
        let Some((node, epoch)) = current else {
            // Queued: not placed yet, or lost and waiting to run again.
            if !follow || ended {
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
            let _ = tokio::time::timeout(SETTLE, metrics.changed()).await;
            continue;
        };
        queued_since = None;
        if reading
            .as_ref()
            .is_none_or(|r| (r.node.as_str(), r.epoch) != (node.as_str(), epoch))
        {
            if let Some(old) = &reading {
                let text = format!(
                    "job {id} was lost on {}; running it again on {node}",
                    old.node
                );
                if !send_notice(&tx, &text).await {
                    return;
                }
            }
            reading = Some(Reading {
                node: node.clone(),
                epoch,
                offset: 0,
                pieces: None,
            });
        }
        let Some(r) = reading.as_mut() else { continue };
        if r.pieces.is_none() {
            // Follow even once the job has ended: a cancelled job may still write during its
            // grace period, until its log closes.
            let req = OutputRequest {
                id,
                epoch,
                offset: r.offset,
                follow,
            };
            match open_attempt(&state, &node, req) {
                Ok(pieces) => r.pieces = Some(pieces),
                Err(e) => {
                    if !follow || ended {
                        let _ =
                            send_notice(&tx, &format!("output of job {id} on {node}: {e}")).await;
                        return;
                    }
                    tokio::time::sleep(RETRY_PAUSE).await;
                    continue;
                }
            }
        }
        let Some(pieces) = r.pieces.as_mut() else {
            continue;
        };
        tokio::select! {
            piece = pieces.recv() => match piece {
                Some(Ok(piece)) => {
                    if !piece.frames.is_empty() {
                        r.offset = piece.next;
                        if tx.send(Ok(Bytes::from(piece.frames))).await.is_err() {
                            return;
                        }
                    }
                    if piece.unknown || piece.closed {
                        // Nothing (more) for this attempt: done if the job has ended, else
                        // wait for it to start, end or move.
                        r.pieces = None;
                        if ended || !follow {
                            return;
                        }
                        let _ = tokio::time::timeout(SETTLE, metrics.changed()).await;
                    }
                }
                Some(Err(e)) => {
                    r.pieces = None;
                    if !follow || ended {
                        let _ = send_notice(&tx, &format!("output of job {id} on {node}: {e}")).await;
                        return;
                    }
                    tokio::time::sleep(RETRY_PAUSE).await;
                }
                // The stream ended without closing the attempt: what is written is sent.
                None => {
                    r.pieces = None;
                    if !follow {
                        return;
                    }
                    tokio::time::sleep(RETRY_PAUSE).await;
                }
            },
            // The job may have moved or ended: look again, keeping the stream.
            _ = metrics.changed() => {}
        }
    }
}

/// `POST /v1/chunks/missing`.
async fn chunks_missing(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    body: Bytes,
) -> ApiResult {
    state.check(&caller, RUN, "chunks.missing", "")?;
    let req: ChunkIds = parse_body(&body, "chunk list")?;
    let ids = state
        .runtime
        .shipping
        .missing(&req.ids)
        .map_err(ship_error)?;
    Ok(Json(ChunkIds { ids }).into_response())
}

/// `PUT /v1/chunks/{id}`.
async fn put_chunk(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    body: Bytes,
) -> ApiResult {
    state.check(&caller, RUN, "chunks.put", &id)?;
    let runtime = state.runtime.clone();
    tokio::task::spawn_blocking(move || runtime.shipping.put(&id, &body))
        .await
        .map_err(|e| Refusal::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
        .map_err(ship_error)?;
    Ok(StatusCode::NO_CONTENT.into_response())
}
