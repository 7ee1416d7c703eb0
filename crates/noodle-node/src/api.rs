//! The HTTP API (JSON), the dashboard and the metrics endpoint.
//!
//! Deny by default: a request presents either the node's admin credential (allowed everything,
//! and only from this machine) or a capability token (`Authorization: Bearer <token>`); the
//! browser gets the admin credential as an HttpOnly cookie from `/login?token=...` (the URL
//! `noodle up` prints). Every handler names the right it needs as its first step and asks the
//! one authoriser ([`crate::control::ControlPlane::authorise`]); denials go to the audit log.
//! No route answers without a credential, `/metrics` included.

use crate::control::{Actor, Caller};
use crate::node::Shared;
use axum::Extension;
use axum::extract::{ConnectInfo, Query, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures_util::{Stream, StreamExt};
use noodle_api::{ApiError, EventsResponse, SESSION_COOKIE, TokenRequest};
use noodle_caps::Request as CapRequest;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio_stream::wrappers::{BroadcastStream, IntervalStream};

/// Longest join-token lifetime the API mints.
const TOKEN_TTL_SECS_MAX: u64 = 30 * 24 * 3600;

pub(crate) type AppState = Arc<Shared>;

pub(crate) async fn serve(shared: Arc<Shared>, listener: tokio::net::TcpListener) {
    let protected = Router::new()
        .route("/", get(dashboard))
        .route("/v1/status", get(status))
        .route("/v1/tokens", post(create_token))
        .route("/v1/events", get(events))
        .route("/v1/events/stream", get(events_stream))
        .route("/v1/dashboard/stream", get(dashboard_stream))
        .route("/metrics", get(metrics))
        .route("/v1/config", get(crate::api_control::config_list))
        .route(
            "/v1/config/{*key}",
            get(crate::api_control::config_get)
                .put(crate::api_control::config_set)
                .delete(crate::api_control::config_unset),
        )
        .route("/v1/caps", post(crate::api_control::cap_create))
        .route("/v1/caps/revoke", post(crate::api_control::cap_revoke))
        .route(
            "/v1/policies",
            get(crate::api_control::policy_list).post(crate::api_control::policy_add),
        )
        .route(
            "/v1/policies/{name}",
            axum::routing::delete(crate::api_control::policy_remove),
        )
        .route("/v1/audit", get(crate::api_control::audit))
        .route("/v1/audit/verify", get(crate::api_control::audit_verify))
        .route(
            "/v1/jobs",
            get(crate::api_jobs::list).post(crate::api_jobs::submit),
        )
        .route("/v1/jobs/{id}", get(crate::api_jobs::get))
        .route("/v1/jobs/{id}/cancel", post(crate::api_jobs::cancel))
        .route("/v1/jobs/{id}/wait", get(crate::api_jobs::wait))
        .route("/v1/jobs/{id}/output", get(crate::api_jobs::output))
        .route("/v1/chunks/missing", post(crate::api_jobs::chunks_missing))
        .route(
            "/v1/chunks/{id}",
            axum::routing::put(crate::api_jobs::put_chunk).layer(
                axum::extract::DefaultBodyLimit::max(
                    noodle_chunks::MAX_MANIFEST_BYTES.max(noodle_chunks::MAX_CHUNK_BYTES),
                ),
            ),
        )
        .route_layer(middleware::from_fn_with_state(shared.clone(), identify));
    let app = Router::new()
        .route("/login", get(login))
        .merge(protected)
        .fallback(|| async { error(StatusCode::NOT_FOUND, "no such route") })
        .with_state(shared);
    let app = app.into_make_service_with_connect_info::<SocketAddr>();
    // Small answers (the end of a streamed body, an SSE event) must not wait for the client's
    // delayed ACK (Nagle): about 40 ms each on Linux.
    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "TCP_NODELAY on an API connection");
        }
    });
    if let Err(e) = axum::serve(listener, app).await {
        tracing::error!(error = %e, "API server stopped");
    }
}

/// A request the API turns down: one status and one message, answered as [`ApiError`].
#[derive(Debug)]
pub(crate) struct Refusal {
    status: StatusCode,
    message: String,
}

impl Refusal {
    pub(crate) fn new(status: StatusCode, message: impl Into<String>) -> Refusal {
        Refusal {
            status,
            message: message.into(),
        }
    }
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        error(self.status, &self.message)
    }
}

/// What a handler answers: its response, or why not.
pub(crate) type ApiResult = Result<Response, Refusal>;

pub(crate) fn error(status: StatusCode, message: &str) -> Response {
    (
        status,
        Json(ApiError {
            error: message.to_string(),
        }),
    )
        .into_response()
}

/// Compares in constant time by hashing both sides.
fn credential_matches(shared: &Shared, presented: &str) -> bool {
    blake3::hash(presented.as_bytes()) == blake3::hash(shared.credential.as_bytes())
}

fn presented_credential(headers: &HeaderMap) -> Option<String> {
    if let Some(value) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    {
        return value.strip_prefix("Bearer ").map(|s| s.trim().to_string());
    }
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == SESSION_COOKIE)
        .map(|(_, v)| v.to_string())
}

/// Tells who is calling: the admin credential (from this machine only) or a token. What the
/// caller may do is decided per handler by [`check`].
async fn identify(
    State(shared): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    mut request: Request,
    next: Next,
) -> Response {
    let caller = match presented_credential(request.headers()) {
        None => {
            metrics::counter!("noodle_api_denied_total").increment(1);
            return error(
                StatusCode::UNAUTHORIZED,
                "missing credential: send `Authorization: Bearer <capability token or admin credential>` or open the URL `noodle up` printed",
            );
        }
        Some(c) if credential_matches(&shared, &c) => {
            if !peer.ip().is_loopback() {
                metrics::counter!("noodle_api_denied_total").increment(1);
                return error(
                    StatusCode::UNAUTHORIZED,
                    "the admin credential is accepted only from this machine; remote callers need a capability token (`noodle cap create`)",
                );
            }
            Caller::Admin
        }
        Some(token) => Caller::Token(token),
    };
    request.extensions_mut().insert(caller);
    next.run(request).await
}

/// Checks that `caller` may make `request`; a denial is answered with 403 and recorded in the
/// audit log under `action` and `target`.
pub(crate) fn check(
    shared: &Shared,
    caller: &Caller,
    request: CapRequest,
    action: &str,
    target: &str,
) -> Result<Actor, Refusal> {
    let Some(plane) = shared.control.get() else {
        return match caller {
            Caller::Admin => Ok(Actor {
                name: "admin".into(),
                right: String::new(),
                quotas: Vec::new(),
            }),
            Caller::Token(_) => Err(Refusal::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "the control plane is starting; try again in a moment",
            )),
        };
    };
    plane.authorise(caller, &request).map_err(|denied| {
        metrics::counter!("noodle_api_denied_total").increment(1);
        plane.record_denial(caller, action, target, &request, &denied);
        Refusal::new(StatusCode::FORBIDDEN, format!("denied: {denied}"))
    })
}

/// The right every read-only cluster view (status, events, dashboard, metrics) needs.
fn cluster_read() -> CapRequest {
    CapRequest::new("cluster", "read")
}

#[derive(serde::Deserialize)]
struct LoginQuery {
    token: String,
}

async fn login(State(shared): State<AppState>, Query(q): Query<LoginQuery>) -> Response {
    if !credential_matches(&shared, &q.token) {
        metrics::counter!("noodle_api_denied_total").increment(1);
        return error(StatusCode::UNAUTHORIZED, "wrong credential");
    }
    let cookie = format!(
        "{SESSION_COOKIE}={}; HttpOnly; SameSite=Strict; Path=/",
        q.token
    );
    ([(header::SET_COOKIE, cookie)], Redirect::to("/")).into_response()
}

async fn dashboard(
    State(shared): State<AppState>,
    Extension(caller): Extension<Caller>,
) -> ApiResult {
    check(&shared, &caller, cluster_read(), "dashboard", "")?;
    let report = shared.status();
    let events = shared.events.history();
    let jobs = crate::dashboard::jobs_panel_for(&shared, &caller);
    let page = crate::dashboard::render_dashboard(&report, &events, &jobs).map_err(|e| {
        tracing::error!(error = %e, "dashboard render failed");
        Refusal::new(StatusCode::INTERNAL_SERVER_ERROR, "dashboard render failed")
    })?;
    Ok(Html(page).into_response())
}

async fn status(State(shared): State<AppState>, Extension(caller): Extension<Caller>) -> ApiResult {
    check(&shared, &caller, cluster_read(), "status", "")?;
    Ok(Json(shared.status()).into_response())
}

async fn create_token(
    State(shared): State<AppState>,
    Extension(caller): Extension<Caller>,
    body: axum::body::Bytes,
) -> ApiResult {
    let admit = CapRequest::new("cluster", "admit");
    check(&shared, &caller, admit, "token.create", "")?;
    let req: TokenRequest = parse_body(&body, "token request")?;
    if req.ttl_secs == 0 || req.ttl_secs > TOKEN_TTL_SECS_MAX {
        return Err(Refusal::new(
            StatusCode::BAD_REQUEST,
            format!("ttl must be between 1 s and {TOKEN_TTL_SECS_MAX} s"),
        ));
    }
    Ok(Json(shared.create_token(&req)).into_response())
}

/// Parses a JSON request body; `what` names it in the error.
pub(crate) fn parse_body<T: serde::de::DeserializeOwned>(
    body: &[u8],
    what: &str,
) -> Result<T, Refusal> {
    serde_json::from_slice(body)
        .map_err(|e| Refusal::new(StatusCode::BAD_REQUEST, format!("bad {what}: {e}")))
}

async fn events(State(shared): State<AppState>, Extension(caller): Extension<Caller>) -> ApiResult {
    check(&shared, &caller, cluster_read(), "events", "")?;
    Ok(Json(EventsResponse {
        events: shared.events.history(),
    })
    .into_response())
}

fn event_stream(shared: &Shared) -> impl Stream<Item = Result<SseEvent, Infallible>> + use<> {
    BroadcastStream::new(shared.events.subscribe()).filter_map(|e| async move {
        // A lagging subscriber skips what it missed.
        let e = e.ok()?;
        SseEvent::default()
            .event("event")
            .json_data(&e)
            .ok()
            .map(Ok)
    })
}

async fn events_stream(
    State(shared): State<AppState>,
    Extension(caller): Extension<Caller>,
) -> ApiResult {
    check(&shared, &caller, cluster_read(), "events", "")?;
    Ok(Sse::new(event_stream(&shared))
        .keep_alive(KeepAlive::default())
        .into_response())
}

async fn dashboard_stream(
    State(shared): State<AppState>,
    Extension(caller): Extension<Caller>,
) -> ApiResult {
    check(&shared, &caller, cluster_read(), "dashboard", "")?;
    // Decided once, as the other rights of a stream are.
    let show_jobs = crate::dashboard::may_read_jobs(&shared, &caller);
    let for_status = shared.clone();
    // Every second: the jobs (when the caller may see them), then the status.
    let statuses =
        IntervalStream::new(tokio::time::interval(Duration::from_secs(1))).flat_map(move |_| {
            let jobs = show_jobs
                .then(|| crate::dashboard::jobs_snapshot(&for_status))
                .flatten()
                .and_then(|jobs| SseEvent::default().event("jobs").json_data(&jobs).ok());
            let status = SseEvent::default()
                .event("status")
                .json_data(for_status.status())
                .ok();
            futures_util::stream::iter(jobs.into_iter().chain(status).map(Ok::<_, Infallible>))
        });
    Ok(Sse::new(futures_util::stream::select(
        statuses,
        event_stream(&shared),
    ))
    .keep_alive(KeepAlive::default())
    .into_response())
}

async fn metrics(
    State(shared): State<AppState>,
    Extension(caller): Extension<Caller>,
) -> ApiResult {
    check(&shared, &caller, cluster_read(), "metrics", "")?;
    match &shared.metrics {
        Some(handle) => Ok(handle.render().into_response()),
        None => Err(Refusal::new(
            StatusCode::NOT_FOUND,
            "metrics are not enabled in this process",
        )),
    }
}
