//! What every subsystem's HTTP handlers share: one way to refuse a request and one way to ask
//! the authoriser. A handler names the right it needs as its first step ([`check`]).

use crate::authz::{Actor, Authz, Caller};
use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use noodle_api::ApiError;
use noodle_caps::Request;
use noodle_control::ControlError;

/// A request the API turns down: one status and one message, answered as [`ApiError`].
#[derive(Debug)]
pub struct Refusal {
    pub status: StatusCode,
    pub message: String,
}

impl Refusal {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Refusal {
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
pub type ApiResult = Result<Response, Refusal>;

pub fn error(status: StatusCode, message: &str) -> Response {
    (
        status,
        Json(ApiError {
            error: message.to_string(),
        }),
    )
        .into_response()
}

pub fn bad_request(message: impl Into<String>) -> Refusal {
    Refusal::new(StatusCode::BAD_REQUEST, message)
}

/// The answer to a control-plane failure.
pub fn control_error(e: ControlError) -> Refusal {
    let status = match &e {
        ControlError::Rejected(_) => StatusCode::BAD_REQUEST,
        ControlError::NoLeader(_) | ControlError::Indeterminate(_) | ControlError::Failed(_) => {
            StatusCode::SERVICE_UNAVAILABLE
        }
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    Refusal::new(status, e.to_string())
}

/// Parses a JSON request body; `what` names it in the error.
pub fn parse_body<T: serde::de::DeserializeOwned>(body: &[u8], what: &str) -> Result<T, Refusal> {
    serde_json::from_slice(body).map_err(|e| bad_request(format!("bad {what}: {e}")))
}

/// Checks that `caller` may make `request`; a denial is answered with 401 when the token is no
/// credential here (unreadable, another cluster's, expired, revoked), else 403, and recorded in
/// the audit log under `action` and `target`.
pub fn check(
    authz: &Authz,
    caller: &Caller,
    request: impl Into<Request>,
    action: &str,
    target: &str,
) -> Result<Actor, Refusal> {
    authz
        .check(caller, request, action, target)
        .map_err(|denied| {
            let status = if denied.is_bad_credential() {
                StatusCode::UNAUTHORIZED
            } else {
                StatusCode::FORBIDDEN
            };
            Refusal::new(status, format!("denied: {denied}"))
        })
}

/// HTTP routes with the list of their paths: what a subsystem (and the node) hands the API
/// server. Every path here is served behind the node's authentication; the node serves the
/// list at `/v1/routes`, so a test can ask each one for a credential and no route is forgotten.
pub struct Routes<S = ()> {
    router: axum::Router<S>,
    paths: Vec<&'static str>,
}

impl<S: Clone + Send + Sync + 'static> Routes<S> {
    pub fn new() -> Routes<S> {
        Routes {
            router: axum::Router::new(),
            paths: Vec::new(),
        }
    }

    /// Serves `path` (axum syntax: `/v1/jobs/{id}`) with `method_router`.
    pub fn route(
        mut self,
        path: &'static str,
        method_router: axum::routing::MethodRouter<S>,
    ) -> Self {
        self.router = self.router.route(path, method_router);
        self.paths.push(path);
        self
    }

    /// Gives the routes their state.
    pub fn with_state<S2>(self, state: S) -> Routes<S2> {
        Routes {
            router: self.router.with_state(state),
            paths: self.paths,
        }
    }
}

impl<S: Clone + Send + Sync + 'static> Default for Routes<S> {
    fn default() -> Self {
        Routes::new()
    }
}

impl Routes {
    /// Adds `other`'s routes.
    pub fn merge(mut self, other: Routes) -> Routes {
        self.router = self.router.merge(other.router);
        self.paths.extend(other.paths);
        self
    }

    /// The router and the paths it serves.
    pub fn into_parts(self) -> (axum::Router, Vec<&'static str>) {
        (self.router, self.paths)
    }
}
