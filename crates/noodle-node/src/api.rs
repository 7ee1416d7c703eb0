//! The HTTP API (JSON), the dashboard and the metrics endpoint, all behind the admin credential.
//!
//! Clients send `Authorization: Bearer <credential>`; the browser gets the same credential as an
//! HttpOnly cookie from `/login?token=...` (the URL `noodle up` prints). No route answers without
//! one of them, `/metrics` included.

use crate::node::Shared;
use axum::extract::{Query, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures_util::{Stream, StreamExt};
use noodle_api::{ApiError, EventsResponse, SESSION_COOKIE, TokenRequest};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;
use tokio_stream::wrappers::{BroadcastStream, IntervalStream};

/// Longest join-token lifetime the API mints.
const TOKEN_TTL_SECS_MAX: u64 = 30 * 24 * 3600;

type AppState = Arc<Shared>;

pub(crate) async fn serve(shared: Arc<Shared>, listener: tokio::net::TcpListener) {
    let protected = Router::new()
        .route("/", get(dashboard))
        .route("/v1/status", get(status))
        .route("/v1/tokens", post(create_token))
        .route("/v1/events", get(events))
        .route("/v1/events/stream", get(events_stream))
        .route("/v1/dashboard/stream", get(dashboard_stream))
        .route("/metrics", get(metrics))
        .route_layer(middleware::from_fn_with_state(shared.clone(), authorise));
    let app = Router::new()
        .route("/login", get(login))
        .merge(protected)
        .fallback(|| async { error(StatusCode::NOT_FOUND, "no such route") })
        .with_state(shared);
    if let Err(e) = axum::serve(listener, app).await {
        tracing::error!(error = %e, "API server stopped");
    }
}

fn error(status: StatusCode, message: &str) -> Response {
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

async fn authorise(State(shared): State<AppState>, request: Request, next: Next) -> Response {
    match presented_credential(request.headers()) {
        Some(c) if credential_matches(&shared, &c) => next.run(request).await,
        presented => {
            metrics::counter!("noodle_api_denied_total").increment(1);
            let why = if presented.is_some() {
                "wrong credential"
            } else {
                "missing credential: send `Authorization: Bearer <admin credential>` or open the URL `noodle up` printed"
            };
            error(StatusCode::UNAUTHORIZED, why)
        }
    }
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

async fn dashboard(State(shared): State<AppState>) -> Response {
    let report = shared.status();
    let events = shared.events.history();
    match crate::dashboard::render_dashboard(&report, &events) {
        Ok(page) => Html(page).into_response(),
        Err(e) => {
            tracing::error!(error = %e, "dashboard render failed");
            error(StatusCode::INTERNAL_SERVER_ERROR, "dashboard render failed")
        }
    }
}

async fn status(State(shared): State<AppState>) -> Response {
    Json(shared.status()).into_response()
}

async fn create_token(State(shared): State<AppState>, body: axum::body::Bytes) -> Response {
    let req: TokenRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return error(StatusCode::BAD_REQUEST, &format!("bad token request: {e}")),
    };
    if req.ttl_secs == 0 || req.ttl_secs > TOKEN_TTL_SECS_MAX {
        return error(
            StatusCode::BAD_REQUEST,
            &format!("ttl must be between 1 s and {TOKEN_TTL_SECS_MAX} s"),
        );
    }
    Json(shared.create_token(&req)).into_response()
}

async fn events(State(shared): State<AppState>) -> Response {
    Json(EventsResponse {
        events: shared.events.history(),
    })
    .into_response()
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

async fn events_stream(State(shared): State<AppState>) -> impl IntoResponse {
    Sse::new(event_stream(&shared)).keep_alive(KeepAlive::default())
}

async fn dashboard_stream(State(shared): State<AppState>) -> impl IntoResponse {
    let for_status = shared.clone();
    let statuses =
        IntervalStream::new(tokio::time::interval(Duration::from_secs(1))).filter_map(move |_| {
            let report = for_status.status();
            async move {
                SseEvent::default()
                    .event("status")
                    .json_data(&report)
                    .ok()
                    .map(Ok)
            }
        });
    Sse::new(futures_util::stream::select(
        statuses,
        event_stream(&shared),
    ))
    .keep_alive(KeepAlive::default())
}

async fn metrics(State(shared): State<AppState>) -> Response {
    match &shared.metrics {
        Some(handle) => handle.render().into_response(),
        None => error(
            StatusCode::NOT_FOUND,
            "metrics are not enabled in this process",
        ),
    }
}
