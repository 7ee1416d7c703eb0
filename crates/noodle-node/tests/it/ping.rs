//! `ping`: a whole subsystem in one file. It registers a cluster RPC method (`ping.echo`), an
//! HTTP route (`POST /v1/ping/{node}`, right `ping:send`), an event kind (`ping_received`),
//! a replicated state machine (a counter of pings) and a dashboard panel, all through
//! `noodle-host`; the node only gets it in the list it starts with.

use axum::Extension;
use axum::extract::{Path, State};
use axum::response::IntoResponse;
use axum::routing::post;
use bytes::Bytes;
use noodle_api::{EventKind, TokenRequest};
use noodle_control::{
    Applied, DbError, MachineTable, Proposal, Rejection, Response as Answer, StateMachine,
};
use noodle_host::api::{ApiResult, Refusal, check, control_error};
use noodle_host::{
    Caller, Host, Panel, Permission, RunningSubsystem, StartError, Subsystem, SubsystemFuture,
};
use noodle_link::Peer;
use noodle_link::ServiceFuture;
use noodle_node::{NodeConfig, RunningNode};
use std::path::Path as FsPath;
use std::sync::Arc;
use std::time::Duration;

const SEND: Permission = Permission::new("ping", "send");
const RECEIVED: EventKind = EventKind::new("ping_received");
const ECHO: &str = "ping.echo";

/// Counts pings in the replicated state: every command adds one to key `n`.
struct Counter;

impl StateMachine for Counter {
    fn name(&self) -> &'static str {
        "ping"
    }
    fn validate(&self, command: &[u8]) -> Result<(), Rejection> {
        match command {
            b"one" => Ok(()),
            _ => Err(Rejection("a ping counts one".into())),
        }
    }
    fn apply(&self, t: &mut MachineTable<'_, '_>, _command: &[u8]) -> Result<Applied, DbError> {
        let n = t
            .get(b"n")?
            .and_then(|b| <[u8; 8]>::try_from(b.as_slice()).ok())
            .map_or(0, u64::from_be_bytes)
            + 1;
        t.insert(b"n", &n.to_be_bytes())?;
        Ok(Applied::Created(n))
    }
}

struct Ping;

impl Subsystem for Ping {
    fn name(&self) -> &'static str {
        "ping"
    }
    fn state_machine(&self) -> Option<Arc<dyn StateMachine>> {
        Some(Arc::new(Counter))
    }
    fn event_kinds(&self) -> Vec<EventKind> {
        vec![RECEIVED]
    }
    fn start(
        self: Box<Self>,
        host: Host,
    ) -> SubsystemFuture<Result<Arc<dyn RunningSubsystem>, StartError>> {
        Box::pin(async move { Ok(Arc::new(Running { host }) as Arc<dyn RunningSubsystem>) })
    }
}

struct Running {
    host: Host,
}

impl RunningSubsystem for Running {
    fn name(&self) -> &'static str {
        "ping"
    }
    fn rpc_prefixes(&self) -> &'static [&'static str] {
        &["ping."]
    }
    fn call(&self, from: Peer, method: &str, body: Bytes) -> ServiceFuture {
        if method != ECHO {
            return noodle_host::not_found(method);
        }
        self.host.events.emit(
            RECEIVED,
            &self.host.node_id,
            format!("{} bytes from {}", body.len(), from.node_id),
        );
        let mut echo = body.to_vec();
        echo.reverse();
        Box::pin(async move { Ok(echo) })
    }
    fn routes(self: Arc<Self>) -> noodle_host::api::Routes {
        noodle_host::api::Routes::new()
            .route("/v1/ping", axum::routing::get(count))
            .route("/v1/ping/{node}", post(send))
            .with_state(self)
    }
    fn panel(&self, _caller: &Caller) -> Option<Panel> {
        Some(Panel {
            id: "ping",
            html: r#"<section class="panel" data-panel="ping"><h2>Ping</h2></section>"#.into(),
        })
    }
}

/// The pings counted so far, as this node's copy of the replicated state has them.
async fn count(
    State(ping): State<Arc<Running>>,
    Extension(caller): Extension<Caller>,
) -> ApiResult {
    check(
        &ping.host.authz,
        &caller,
        Permission::CLUSTER_READ,
        "ping.count",
        "",
    )?;
    let n = ping
        .host
        .control
        .read_local(|v| v.machine("ping").get(b"n"))
        .map_err(control_error)?
        .and_then(|b| <[u8; 8]>::try_from(b.as_slice()).ok())
        .map_or(0, u64::from_be_bytes);
    Ok(n.to_string().into_response())
}

/// Pings `node` over the link with the request body, counts it in the replicated state, and
/// answers `<echo> <count>`.
async fn send(
    State(ping): State<Arc<Running>>,
    Extension(caller): Extension<Caller>,
    Path(node): Path<String>,
    body: Bytes,
) -> ApiResult {
    check(&ping.host.authz, &caller, SEND, "ping.send", &node)?;
    let addr = ping
        .host
        .cluster
        .peer_addr(&node)
        .ok_or_else(|| Refusal::new(axum::http::StatusCode::NOT_FOUND, "no such node"))?;
    let echo = ping
        .host
        .link
        .request(addr, ECHO, &body)
        .await
        .map_err(|e| Refusal::new(axum::http::StatusCode::BAD_GATEWAY, e.to_string()))?;
    let count = match ping
        .host
        .control
        .propose(Proposal::machine("ping", b"one".to_vec()))
        .await
        .map_err(control_error)?
    {
        Answer::Created { id } => id,
        other => {
            return Err(Refusal::new(
                axum::http::StatusCode::INTERNAL_SERVER_ERROR,
                format!("{other:?}"),
            ));
        }
    };
    Ok(format!("{} {count}", String::from_utf8_lossy(&echo)).into_response())
}

fn config(dir: &FsPath, join: Option<String>) -> NodeConfig {
    let mut cfg = NodeConfig::new(dir.to_path_buf());
    cfg.listen = "127.0.0.1:0".parse().expect("address");
    cfg.api = "127.0.0.1:0".parse().expect("address");
    cfg.mdns = false;
    cfg.join = join;
    cfg
}

async fn start(dir: &FsPath, join: Option<String>) -> RunningNode {
    noodle_node::start(config(dir, join), vec![Box::new(Ping)], None)
        .await
        .expect("node starts")
}

fn credential(dir: &FsPath) -> String {
    std::fs::read_to_string(dir.join("admin.credential"))
        .expect("admin credential")
        .trim()
        .to_string()
}

/// Polls `check` every 50 ms until it holds; a liveness bound of a minute.
async fn eventually(what: &str, mut check: impl AsyncFnMut() -> bool) {
    for _ in 0..1200 {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for {what}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subsystem_from_outside_the_node_registers_rpc_route_event_and_state() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (da, db) = (tmp.path().join("a"), tmp.path().join("b"));
    let a = start(&da, None).await;
    let admin_a = noodle_api::Client::new(a.api_url(), &credential(&da));
    let token = admin_a
        .create_token(&TokenRequest {
            ttl_secs: 600,
            no_addresses: false,
            uses: 1,
        })
        .await
        .expect("join token");
    let b = start(&db, Some(token.token)).await;
    let admin_b = noodle_api::Client::new(b.api_url(), &credential(&db));
    let b_id = b.node_id().to_string();
    // Alive, and its gossiped entry (its address) arrived.
    eventually("b gossiped to a", async || {
        admin_a.status().await.is_ok_and(|s| {
            s.nodes.iter().any(|n| {
                n.id == b_id && n.state == noodle_api::NodeState::Alive && !n.version.is_empty()
            })
        })
    })
    .await;

    let http = reqwest::Client::new();
    let ping = |credential: Option<String>| {
        let mut req = http
            .post(format!("{}/v1/ping/{b_id}", a.api_url()))
            .body("hello");
        if let Some(c) = credential {
            req = req.bearer_auth(c);
        }
        req.send()
    };
    // The route: through the same door as every other route.
    let answer = ping(Some(credential(&da))).await.expect("ping");
    let status = answer.status();
    assert_eq!(
        (status.as_u16(), answer.text().await.expect("body")),
        (200, "olleh 1".to_string())
    );
    let answer = ping(Some(credential(&da))).await.expect("ping");
    assert_eq!(answer.text().await.expect("body"), "olleh 2");
    // No credential, and a token without `ping:send`: refused, the denial audited.
    assert_eq!(ping(None).await.expect("ping").status(), 401);
    let narrow = admin_a
        .cap_create(&noodle_api::CapRequest {
            allow: vec!["cluster:read".into()],
            quotas: Vec::new(),
            ttl_secs: 600,
            holder: Some("mallory".into()),
        })
        .await
        .expect("token");
    assert_eq!(ping(Some(narrow.token)).await.expect("ping").status(), 403);

    // The event kind: registered on both nodes, emitted on the one the RPC reached.
    for (node, dir) in [(&a, &da), (&b, &db)] {
        let kinds: Vec<String> = http
            .get(format!("{}/v1/events/kinds", node.api_url()))
            .bearer_auth(credential(dir))
            .send()
            .await
            .expect("kinds")
            .json()
            .await
            .expect("json");
        assert!(kinds.contains(&"ping_received".to_string()), "{kinds:?}");
        assert!(kinds.contains(&"node_joined".to_string()), "{kinds:?}");
    }
    let events = admin_b.events().await.expect("events");
    let received: Vec<_> = events.iter().filter(|e| e.kind == RECEIVED).collect();
    assert_eq!(received.len(), 2, "{events:?}");
    // The handler learns the caller's verified node id, not just its address.
    let a_id = a.node_id().to_string();
    assert!(
        received
            .iter()
            .all(|e| e.detail.ends_with(&format!("from {a_id}"))),
        "{received:?}"
    );
    // The state machine: the count is replicated to b.
    eventually("the count replicated to b", async || {
        let count = http
            .get(format!("{}/v1/ping", b.api_url()))
            .bearer_auth(credential(&db))
            .send()
            .await;
        match count {
            Ok(r) => r.text().await.is_ok_and(|t| t == "2"),
            Err(_) => false,
        }
    })
    .await;
    let audit = admin_a.audit(1, 1000).await.expect("audit");
    assert!(
        audit
            .entries
            .iter()
            .any(|e| e.action == "ping.send" && e.outcome == "denied"),
        "the denial is audited"
    );
    // The panel: on the dashboard.
    let page = http
        .get(format!("{}/", a.api_url()))
        .bearer_auth(credential(&da))
        .send()
        .await
        .expect("dashboard")
        .text()
        .await
        .expect("page");
    assert!(page.contains(r#"data-panel="ping""#));
    b.shutdown().await;
    a.shutdown().await;
}
