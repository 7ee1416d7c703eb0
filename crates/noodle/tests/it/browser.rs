//! What a web page in the operator's browser, or another service on the node's machine, can do
//! with the dashboard: nothing it was not given. The login link carries a one-time code, never
//! the admin credential; the session cookie is not the credential; and a request that changes
//! something is refused when another origin (another site, another port of this machine) sends
//! it or when its body is one an HTML form could send.

use crate::support::Node;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// One HTTP/1.1 request to `addr` (`127.0.0.1:port`): the status and the whole response.
fn http(addr: &str, request: &str) -> (u16, String) {
    let mut tcp = TcpStream::connect(addr).expect("connect to the API");
    tcp.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    tcp.write_all(request.as_bytes()).expect("send");
    let mut response = String::new();
    let _ = tcp.read_to_string(&mut response);
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, response)
}

fn api_addr(node: &Node) -> String {
    let info: noodle_api::ApiInfo =
        serde_json::from_slice(&std::fs::read(node.dir.join("api.json")).expect("api.json"))
            .expect("api.json parses");
    info.url.trim_start_matches("http://").to_string()
}

fn cookie_of(response: &str) -> Option<String> {
    response
        .lines()
        .find(|l| l.to_ascii_lowercase().starts_with("set-cookie:"))
        .and_then(|l| l.split_once(':'))
        .and_then(|(_, v)| v.trim().split(';').next())
        .map(str::to_string)
}

#[test]
fn a_web_page_gets_nothing_from_the_dashboard_session() {
    let node = Node::founder("browser");
    node.wait_ready(Duration::from_secs(10));
    let addr = api_addr(&node);
    let credential = std::fs::read_to_string(node.dir.join("admin.credential"))
        .expect("admin credential")
        .trim()
        .to_string();

    // The link carries a one-time code, not the credential.
    let out = node.cli(&["dashboard"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let url = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(
        !url.contains(&credential),
        "the admin credential is in the URL: {url}"
    );
    let path = url
        .split_once(&addr)
        .map(|(_, p)| p.to_string())
        .expect("the link is to this node's API");
    let login = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    let (status, response) = http(&addr, &login);
    assert_eq!(status, 303, "{response}");
    let cookie = cookie_of(&response).expect("a session cookie");
    assert!(
        !cookie.contains(&credential),
        "the cookie is the credential: {cookie}"
    );
    assert!(response.contains("HttpOnly") && response.contains("SameSite=Strict"));
    // Once only.
    let (status, _) = http(&addr, &login);
    assert_eq!(status, 401, "a login code worked twice");

    // The session reads, like the admin on this machine.
    let get = |headers: &str| {
        http(
            &addr,
            &format!(
                "GET /v1/status HTTP/1.1\r\nHost: {addr}\r\n{headers}Connection: close\r\n\r\n"
            ),
        )
        .0
    };
    assert_eq!(get(&format!("Cookie: {cookie}\r\n")), 200);
    // The credential itself is not a cookie any more.
    assert_eq!(
        get(&format!("Cookie: noodle_session={credential}\r\n")),
        401
    );

    // Changes: from this page, yes; from another origin or as a form, no.
    let set = |headers: &str, content_type: &str| {
        let body = r#"{"value":"x"}"#;
        http(
            &addr,
            &format!(
                "PUT /v1/config/from-a-page HTTP/1.1\r\nHost: {addr}\r\nCookie: {cookie}\r\n{headers}Content-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            ),
        )
        .0
    };
    assert_eq!(
        set(&format!("Origin: http://{addr}\r\n"), "application/json"),
        200
    );
    assert_eq!(
        set("Origin: http://evil.example\r\n", "application/json"),
        403
    );
    // Another service of this machine is another origin too.
    assert_eq!(
        set("Origin: http://127.0.0.1:1\r\n", "application/json"),
        403
    );
    assert_eq!(set("", "text/plain"), 415);
    assert_eq!(set("", "application/x-www-form-urlencoded"), 415);
    // The refused requests changed nothing: the value is the one the page's own request set.
    let value = node.cli(&["config", "get", "from-a-page"]);
    assert!(String::from_utf8_lossy(&value.stdout).contains('x'));
    let audit = node.cli(&["audit", "--json"]);
    let sets = String::from_utf8_lossy(&audit.stdout)
        .matches("\"from-a-page\"")
        .count();
    assert_eq!(sets, 1, "only the page's own change was made");
}
