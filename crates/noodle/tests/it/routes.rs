//! Every route of the API, from the node's own list of them, refuses a caller without a
//! credential and a caller with a wrong one: a route added later cannot be forgotten.

use crate::control::cap_create;
use crate::support::Node;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// One HTTP/1.1 request: the status.
fn status_of(addr: &str, method: &str, path: &str, auth: &str) -> u16 {
    let mut tcp = TcpStream::connect(addr).expect("connect to the API");
    tcp.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Content-Type: application/json\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{{}}"
    );
    tcp.write_all(request.as_bytes()).expect("send");
    // The status line is enough (a stream would not end).
    let mut head = [0u8; 12];
    let _ = tcp.read_exact(&mut head);
    String::from_utf8_lossy(&head)
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

pub(crate) fn body_of(addr: &str, path: &str, auth: &str) -> String {
    let mut tcp = TcpStream::connect(addr).expect("connect to the API");
    tcp.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Connection: close\r\n\r\n");
    tcp.write_all(request.as_bytes()).expect("send");
    let mut response = String::new();
    let _ = tcp.read_to_string(&mut response);
    response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_string())
        .unwrap_or_default()
}

pub(crate) fn api_addr(node: &Node) -> String {
    let info: noodle_api::ApiInfo =
        serde_json::from_slice(&std::fs::read(node.dir.join("api.json")).expect("api.json"))
            .expect("api.json parses");
    info.url.trim_start_matches("http://").to_string()
}

/// A concrete path for a route pattern (`/v1/jobs/{id}` → `/v1/jobs/1`).
fn concrete(pattern: &str) -> String {
    pattern
        .split('/')
        .map(|seg| match seg {
            s if s.starts_with("{*") => "a/b",
            s if s.starts_with('{') => "1",
            s => s,
        })
        .collect::<Vec<_>>()
        .join("/")
}

#[test]
fn every_route_refuses_a_missing_or_wrong_credential() {
    let node = Node::founder("routes");
    node.wait_ready(Duration::from_secs(15));
    let addr = api_addr(&node);
    let credential = std::fs::read_to_string(node.dir.join("admin.credential"))
        .expect("admin credential")
        .trim()
        .to_string();
    let body = body_of(
        &addr,
        "/v1/routes",
        &format!("Authorization: Bearer {credential}\r\n"),
    );
    let routes: Vec<String> = serde_json::from_str(&body).expect("the route list");
    // The list is the real one: the node's routes, its control plane's and the jobs
    // subsystem's are all there.
    for known in [
        "/",
        "/v1/status",
        "/v1/config/{*key}",
        "/v1/jobs/{id}",
        "/v1/chunks/{id}",
    ] {
        assert!(
            routes.iter().any(|r| r == known),
            "{known} not in {routes:?}"
        );
    }

    // A token of another cluster is a wrong credential too.
    let other = Node::founder("elsewhere");
    other.wait_ready(Duration::from_secs(15));
    let foreign = cap_create(&other, &["--allow", "cluster:read", "--ttl", "1h"]).token;

    let wrong = [
        String::new(),
        "Authorization: Bearer not-a-credential\r\n".to_string(),
        format!("Authorization: Bearer {credential}x\r\n"),
        format!("Authorization: Bearer {foreign}\r\n"),
        format!("Cookie: {}=not-a-session\r\n", noodle_api::SESSION_COOKIE),
    ];
    for route in &routes {
        let path = concrete(route);
        for auth in &wrong {
            let answers: Vec<(&str, u16)> = ["GET", "POST", "PUT", "DELETE"]
                .into_iter()
                .map(|m| (m, status_of(&addr, m, &path, auth)))
                .collect();
            // 405: the route has no such method (and says nothing more).
            assert!(
                answers.iter().all(|(_, s)| *s == 401 || *s == 405)
                    && answers.iter().any(|(_, s)| *s == 401),
                "{route} with {auth:?}: {answers:?}"
            );
        }
    }
    // The one public route, the browser's login, wants a valid one-time code.
    assert_eq!(status_of(&addr, "GET", "/login?code=nope", ""), 401);
    assert_eq!(status_of(&addr, "GET", "/login", ""), 401);
}
