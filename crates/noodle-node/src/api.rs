//! The HTTP API (JSON), the dashboard and the metrics endpoint.
//!
//! Deny by default: a request presents either the node's admin credential (allowed everything,
//! and only from this machine) or a capability token (`Authorization: Bearer <token>`); a
//! browser presents a dashboard session (an HttpOnly cookie from `/login?code=...`, the one-time
//! code in the URL `noodle up` and `noodle dashboard` print; see [`crate::session`]), which
//! stands for the local admin and is never the credential. Every handler names the right it
//! needs as its first step and asks the one authoriser ([`noodle_host::api::check`]); denials go
//! to the audit log. No route answers without a credential, `/metrics` included. Subsystems add
//! their own routes; they are behind the same check of who calls.
//!
//! A web page must not act through a browser that holds a session: a request that changes
//! anything is refused when it comes from another origin (its `Origin` header names another
//! site, or another service on this machine) or carries a body a plain HTML form could send.

use crate::cluster::ClusterState;
use crate::control::ControlPlane;
use axum::Extension;
use axum::extract::{ConnectInfo, Path, Query, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use futures_util::{Stream, StreamExt};
use noodle_api::{EventsResponse, JoinTokenList, SESSION_COOKIE, StatusReport, TokenRequest};
use noodle_host::api::{ApiResult, Refusal, Routes, check, control_error, error, parse_body};
use noodle_host::{Authz, Caller, EventBus, Panel, Permission, RunningSubsystem, while_allowed};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio_stream::wrappers::{BroadcastStream, IntervalStream};

/// Longest join-token lifetime the API mints.
const TOKEN_TTL_SECS_MAX: u64 = 30 * 24 * 3600;
/// How often the dashboard stream sends the status and the panels.
const DASHBOARD_PERIOD: Duration = Duration::from_secs(1);

/// What the node's own handlers use.
pub(crate) struct ApiState {
    pub(crate) cluster: Arc<ClusterState>,
    pub(crate) keys: Arc<crate::keys::Keys>,
    pub(crate) events: EventBus,
    pub(crate) authz: Arc<Authz>,
    pub(crate) plane: Arc<ControlPlane>,
    pub(crate) credential: String,
    pub(crate) metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
    pub(crate) subsystems: Vec<Arc<dyn RunningSubsystem>>,
    pub(crate) sessions: Arc<crate::session::Sessions>,
    /// The paths served behind authentication, set when the server starts (`/v1/routes`).
    pub(crate) routes: std::sync::OnceLock<Vec<&'static str>>,
}

type AppState = Arc<ApiState>;

impl ApiState {
    fn status(&self) -> StatusReport {
        self.cluster.status(Some(self.plane.info()))
    }

    /// Checks that `caller` may make `request` (see [`check`]).
    fn check(
        &self,
        caller: &Caller,
        request: Permission,
        action: &str,
        target: &str,
    ) -> Result<noodle_host::Actor, Refusal> {
        check(&self.authz, caller, request, action, target)
    }

    /// The dashboard panels `caller` may see.
    fn panels(&self, caller: &Caller) -> Vec<Panel> {
        self.subsystems
            .iter()
            .filter_map(|s| s.panel(caller))
            .collect()
    }
}

pub(crate) async fn serve(state: AppState, listener: tokio::net::TcpListener) {
    let mut protected = Routes::new()
        .route("/", get(dashboard))
        .route("/v1/status", get(status))
        .route("/v1/routes", get(routes))
        .route("/v1/tokens", get(list_tokens).post(create_token))
        .route("/v1/tokens/{id}", delete(revoke_token))
        .route("/v1/nodes/{node}/remove", post(remove_node))
        .route("/v1/events", get(events))
        .route("/v1/events/kinds", get(event_kinds))
        .route("/v1/events/stream", get(events_stream))
        .route("/v1/dashboard/stream", get(dashboard_stream))
        .route("/v1/dashboard/code", post(dashboard_code))
        .route("/metrics", get(metrics))
        .with_state(state.clone());
    for s in &state.subsystems {
        protected = protected.merge(s.clone().routes());
    }
    let (protected, paths) = protected.into_parts();
    // Set once, before the server answers anything.
    let _ = state.routes.set(paths);
    let app = Router::new()
        .route("/login", get(login))
        .with_state(state.clone())
        .merge(protected.route_layer(middleware::from_fn_with_state(state, identify)))
        .fallback(|| async { error(StatusCode::NOT_FOUND, "no such route") })
        .layer(middleware::from_fn(same_origin_only));
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

/// Compares in constant time by hashing both sides.
fn credential_matches(state: &ApiState, presented: &str) -> bool {
    blake3::hash(presented.as_bytes()) == blake3::hash(state.credential.as_bytes())
}

/// What a request presents: a bearer credential (the admin credential or a token), or a
/// dashboard session cookie.
enum Presented {
    Bearer(String),
    Session(String),
}

fn presented(headers: &HeaderMap) -> Option<Presented> {
    if let Some(value) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    {
        return value
            .strip_prefix("Bearer ")
            .map(|s| Presented::Bearer(s.trim().to_string()));
    }
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == SESSION_COOKIE)
        .map(|(_, v)| Presented::Session(v.to_string()))
}

fn refuse(status: StatusCode, message: &str) -> Response {
    metrics::counter!("noodle_api_denied_total").increment(1);
    error(status, message)
}

/// Tells who is calling: the admin credential or a dashboard session (from this machine only),
/// or a token. What the caller may do is decided per handler.
async fn identify(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    mut request: Request,
    next: Next,
) -> Response {
    let local = peer.ip().is_loopback();
    let caller = match presented(request.headers()) {
        None => {
            return refuse(
                StatusCode::UNAUTHORIZED,
                "missing credential: send `Authorization: Bearer <capability token or admin credential>` or open the URL `noodle dashboard` prints",
            );
        }
        Some(Presented::Session(s)) if local && state.sessions.is_live(&s) => Caller::Admin,
        Some(Presented::Session(_)) => {
            return refuse(
                StatusCode::UNAUTHORIZED,
                "the dashboard session has expired or is unknown here: open the URL `noodle dashboard` prints",
            );
        }
        Some(Presented::Bearer(c)) if credential_matches(&state, &c) => {
            if !local {
                return refuse(
                    StatusCode::UNAUTHORIZED,
                    "the admin credential is accepted only from this machine; remote callers need a capability token (`noodle cap create`)",
                );
            }
            Caller::Admin
        }
        Some(Presented::Bearer(token)) => {
            let caller = Caller::Token(token);
            // A token that is no credential here is refused before any handler reads the
            // request (and so before it could learn anything from a 400).
            if let Err(denied) = state.authz.authenticate(&caller)
                && denied.is_bad_credential()
            {
                let path = request.uri().path().to_string();
                let call = noodle_caps::Request::new("api", "call");
                state
                    .authz
                    .record_denial(&caller, "authenticate", &path, &call, &denied);
                return refuse(StatusCode::UNAUTHORIZED, &format!("denied: {denied}"));
            }
            caller
        }
    };
    request.extensions_mut().insert(caller);
    next.run(request).await
}

/// Refuses what a web page could make a browser send: a request that may change something
/// (not GET, HEAD or OPTIONS) from another origin, or with a body of a type an HTML form can
/// send without asking (`text/plain`, `multipart/form-data`, `application/x-www-form-urlencoded`).
async fn same_origin_only(request: Request, next: Next) -> Response {
    use axum::http::Method;
    let method = request.method();
    if matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS) {
        return next.run(request).await;
    }
    let headers = request.headers();
    if let Some(origin) = headers.get(header::ORIGIN) {
        let ours = headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .map(|host| format!("http://{host}"));
        if origin.to_str().ok() != ours.as_deref() {
            return refuse(
                StatusCode::FORBIDDEN,
                "cross-origin request refused: the API takes changes only from its own pages and from clients that send no Origin",
            );
        }
    }
    let form_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(|v| v.trim().to_ascii_lowercase())
        .is_some_and(|v| {
            matches!(
                v.as_str(),
                "text/plain" | "multipart/form-data" | "application/x-www-form-urlencoded"
            )
        });
    if form_type {
        return refuse(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "send the request body as application/json (or application/octet-stream for chunks)",
        );
    }
    next.run(request).await
}

#[derive(serde::Deserialize)]
struct LoginQuery {
    /// Missing is refused like a wrong one.
    #[serde(default)]
    code: String,
}

/// Trades a one-time login code for a dashboard session.
async fn login(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Query(q): Query<LoginQuery>,
) -> Response {
    if !peer.ip().is_loopback() {
        return refuse(
            StatusCode::UNAUTHORIZED,
            "the dashboard login works only from this machine; remote callers need a capability token",
        );
    }
    let Some(session) = state.sessions.redeem(&q.code) else {
        return refuse(
            StatusCode::UNAUTHORIZED,
            "this login link was used already or has expired: run `noodle dashboard` for a new one",
        );
    };
    let cookie = format!(
        "{SESSION_COOKIE}={session}; HttpOnly; SameSite=Strict; Path=/; Max-Age={}",
        crate::session::SESSION_TTL.as_secs()
    );
    ([(header::SET_COOKIE, cookie)], Redirect::to("/")).into_response()
}

/// `POST /v1/dashboard/code`: a one-time dashboard login link, for the local admin only (the
/// session it opens is the admin's).
async fn dashboard_code(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
) -> ApiResult {
    if !matches!(caller, Caller::Admin) {
        // A token that is no credential here is told so (401) before anything else.
        state.check(&caller, Permission::CLUSTER_READ, "dashboard.code", "")?;
        return Err(Refusal::new(
            StatusCode::FORBIDDEN,
            "only the local admin opens dashboard sessions; a token holder sends its token",
        ));
    }
    let code = state.sessions.issue_code();
    Ok(Json(noodle_api::DashboardLink {
        path: format!("/login?code={code}"),
    })
    .into_response())
}

async fn dashboard(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
) -> ApiResult {
    state.check(&caller, Permission::CLUSTER_READ, "dashboard", "")?;
    let report = state.status();
    let events = state.events.history();
    let panels = state.panels(&caller);
    let styles: Vec<&'static str> = state.subsystems.iter().map(|s| s.panel_style()).collect();
    let page =
        crate::dashboard::render_dashboard(&report, &events, &panels, &styles).map_err(|e| {
            tracing::error!(error = %e, "dashboard render failed");
            Refusal::new(StatusCode::INTERNAL_SERVER_ERROR, "dashboard render failed")
        })?;
    Ok(Html(page).into_response())
}

async fn status(State(state): State<AppState>, Extension(caller): Extension<Caller>) -> ApiResult {
    state.check(&caller, Permission::CLUSTER_READ, "status", "")?;
    Ok(Json(state.status()).into_response())
}

/// The paths this API serves behind authentication; `/login` is its one public route.
async fn routes(State(state): State<AppState>, Extension(caller): Extension<Caller>) -> ApiResult {
    state.check(&caller, Permission::CLUSTER_READ, "routes", "")?;
    Ok(Json(state.routes.get().cloned().unwrap_or_default()).into_response())
}

async fn create_token(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    body: axum::body::Bytes,
) -> ApiResult {
    let actor = state.check(&caller, Permission::CLUSTER_ADMIT, "token.create", "")?;
    let req: TokenRequest = parse_body(&body, "token request")?;
    if req.ttl_secs == 0 || req.ttl_secs > TOKEN_TTL_SECS_MAX {
        return Err(Refusal::new(
            StatusCode::BAD_REQUEST,
            format!("ttl must be between 1 s and {TOKEN_TTL_SECS_MAX} s"),
        ));
    }
    let control = &state.plane.control;
    let token = crate::join::create_token(
        &state.keys,
        &state.cluster,
        control,
        &state.authz,
        &actor,
        &req,
    )
    .await
    .map_err(token_error)?;
    Ok(Json(token).into_response())
}

async fn list_tokens(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
) -> ApiResult {
    state.check(&caller, Permission::CLUSTER_ADMIT, "token.list", "")?;
    let tokens = crate::join::list_tokens(&state.plane.control)
        .await
        .map_err(control_error)?;
    Ok(Json(JoinTokenList { tokens }).into_response())
}

async fn revoke_token(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> ApiResult {
    let actor = state.check(&caller, Permission::CLUSTER_ADMIT, "token.revoke", &id)?;
    match crate::join::revoke_token(&state.plane.control, &state.authz, &actor, &id)
        .await
        .map_err(token_error)?
    {
        Some(revoked) => Ok(Json(revoked).into_response()),
        None => Err(Refusal::new(
            StatusCode::NOT_FOUND,
            format!(
                "no join token {id} (it was used up, revoked or never made; see `noodle token ls`)"
            ),
        )),
    }
}

async fn remove_node(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(node): Path<String>,
) -> ApiResult {
    let actor = state.check(&caller, Permission::CLUSTER_REMOVE, "node.remove", &node)?;
    use crate::removal::RemoveError as E;
    match crate::removal::remove(&state.cluster, &state.authz, &actor, &node).await {
        Ok(removed) => Ok(Json(removed).into_response()),
        Err(E::Invalid(why)) => Err(Refusal::new(StatusCode::BAD_REQUEST, why)),
        Err(E::NotFound(why)) => Err(Refusal::new(StatusCode::NOT_FOUND, why)),
        Err(E::Control(e)) => Err(control_error(e)),
    }
}

fn token_error(e: crate::join::TokenRequestError) -> Refusal {
    use crate::join::TokenRequestError as E;
    match e {
        E::Invalid(why) => Refusal::new(StatusCode::BAD_REQUEST, why),
        E::Control(e) => control_error(e),
        E::Conflict(why) => Refusal::new(StatusCode::CONFLICT, why),
    }
}

async fn events(State(state): State<AppState>, Extension(caller): Extension<Caller>) -> ApiResult {
    state.check(&caller, Permission::CLUSTER_READ, "events", "")?;
    Ok(Json(EventsResponse {
        events: state.events.history(),
    })
    .into_response())
}

/// `GET /v1/events/kinds`: every kind of event this node's subsystems registered.
async fn event_kinds(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
) -> ApiResult {
    state.check(&caller, Permission::CLUSTER_READ, "events", "")?;
    Ok(Json(state.events.kinds()).into_response())
}

fn event_stream(events: &EventBus) -> impl Stream<Item = Result<SseEvent, Infallible>> + use<> {
    BroadcastStream::new(events.subscribe()).filter_map(|e| async move {
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
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
) -> ApiResult {
    state.check(&caller, Permission::CLUSTER_READ, "events", "")?;
    let events = while_allowed(
        event_stream(&state.events),
        state.authz.clone(),
        caller,
        Permission::CLUSTER_READ,
    );
    Ok(Sse::new(events)
        .keep_alive(KeepAlive::default())
        .into_response())
}

async fn dashboard_stream(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
) -> ApiResult {
    state.check(&caller, Permission::CLUSTER_READ, "dashboard", "")?;
    let for_status = state.clone();
    let for_stream = caller.clone();
    // Every second: the panels the caller may see, then the status.
    let statuses =
        IntervalStream::new(tokio::time::interval(DASHBOARD_PERIOD)).flat_map(move |_| {
            let panels = for_status
                .panels(&caller)
                .into_iter()
                .filter_map(|p| SseEvent::default().event("panel").json_data(&p).ok());
            let status = SseEvent::default()
                .event("status")
                .json_data(for_status.status())
                .ok();
            let all: Vec<SseEvent> = panels.chain(status).collect();
            futures_util::stream::iter(all.into_iter().map(Ok::<_, Infallible>))
        });
    let both = futures_util::stream::select(statuses, event_stream(&state.events));
    let both = while_allowed(
        both,
        state.authz.clone(),
        for_stream,
        Permission::CLUSTER_READ,
    );
    Ok(Sse::new(both)
        .keep_alive(KeepAlive::default())
        .into_response())
}

async fn metrics(State(state): State<AppState>, Extension(caller): Extension<Caller>) -> ApiResult {
    state.check(&caller, Permission::CLUSTER_READ, "metrics", "")?;
    match &state.metrics {
        Some(handle) => Ok(handle.render().into_response()),
        None => Err(Refusal::new(
            StatusCode::NOT_FOUND,
            "metrics are not enabled in this process",
        )),
    }
}
