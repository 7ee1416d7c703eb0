//! The dashboard in a real browser: a three-node cluster, the first node's page opened in headless
//! Chromium through the one-click login URL that `noodle dashboard` prints. The page must list every
//! node and go live (its script got a status message over `/v1/dashboard/stream` and set
//! `data-live="1"` on `<body>`), without a script error. Then jobs submitted with `noodle run
//! --detach` must show up in the jobs panel without a reload (a hostile command as text, a running
//! job holding one of its node's slots), and a cancelled job as cancelled.
//!
//! Chromium is driven over the DevTools protocol on `--remote-debugging-pipe` (JSON messages ended
//! by NUL on fds 3 and 4), not with `--dump-dom`: with `--virtual-time-budget`, the page's open
//! EventSource is a network fetch that never completes, so virtual time never advances and Chromium
//! never dumps (seen with Chromium 156: still waiting after 60 s); without it, the DOM is dumped at
//! the load event, which races the first status message (seen both ways). Over the pipe the test
//! polls the live DOM until it is right, under a hard deadline.
//!
//! Chromium is not optional: when it is missing the test fails and says how to install it. Every
//! wait is bounded, and the browser's whole process group is killed when the test ends.

use crate::support::{Node, cluster_with};
use serde_json::{Value, json};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, sync_channel};
use std::time::{Duration, Instant};

/// Everything the browser does, from start to close, must fit in this.
const BROWSER_DEADLINE: Duration = Duration::from_secs(150);
/// The page must show every node and be live this long after navigation (status comes every 1 s).
const LIVE_WITHIN: Duration = Duration::from_secs(30);
/// A job change must show in the jobs panel this long after the CLI returned (jobs come every
/// 1 s; a job starts within a scheduling round).
const JOB_SHOWN_WITHIN: Duration = Duration::from_secs(30);
/// CPU slots each node offers (`noodle up --slots`), so that the usage shown is known.
const SLOTS: &str = "2";
/// Between two looks at the DOM.
const POLL_INTERVAL: Duration = Duration::from_millis(100);
/// Messages from the browser waiting to be read; the reader blocks beyond this.
const MESSAGES_QUEUED_MAX: usize = 1024;
/// Protocol messages longer than this are a broken browser, not a page (a screenshot is ~200 KiB).
const MESSAGE_BYTES_MAX: u64 = 64 << 20;
/// Viewport of the page, and so of the screenshot.
const WINDOW_WIDTH: u32 = 1400;
const WINDOW_HEIGHT: u32 = 900;
/// Set to a file path to keep the screenshot of the live page there (it is always taken).
const SCREENSHOT_ENV: &str = "NOODLE_DASHBOARD_SCREENSHOT";

#[test]
fn dashboard_in_chromium_lists_every_node_and_goes_live() {
    // Before starting anything: a missing browser is a setup problem with a one-line fix.
    let chromium = find_chromium();

    let nodes = cluster_with(3, &["--slots", SLOTS]);
    let ids: Vec<String> = nodes.iter().map(Node::node_id).collect();
    let out = nodes[0].cli(&["dashboard"]);
    assert!(
        out.status.success(),
        "noodle dashboard failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let url = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(
        url.starts_with("http://127.0.0.1:") && url.contains("/login?code="),
        "unexpected dashboard URL: {url}"
    );

    let mut browser = Browser::launch(&chromium);
    let page = browser.open(&url);
    let started = Instant::now();

    // The last DOM seen, and what is still missing from it.
    let mut dom = String::new();
    let mut missing = vec!["the page".to_string()];
    while started.elapsed() < crate::support::patient(LIVE_WITHIN) {
        if let Some(html) = browser.outer_html(&page) {
            missing = what_is_missing(&html, &ids);
            dom = html;
            if missing.is_empty() {
                break;
            }
        }
        std::thread::sleep(POLL_INTERVAL);
    }
    let took = started.elapsed();
    assert!(
        missing.is_empty(),
        "the dashboard in Chromium still lacks {missing:?} after {took:?}\n\
         script errors: {:?}\nDOM:\n{dom}\nchromium log:\n{}\nnode-0 log:\n{}",
        browser.script_errors,
        browser.log_tail(),
        nodes[0].logs()
    );
    eprintln!("dashboard: every node shown and live {took:?} after navigation");

    // A reload would clear this: it shows that what follows came over the stream.
    browser.evaluate(&page, "window.noodleNotReloaded = true");
    jobs_show_live(&mut browser, &page, &nodes[0]);
    storage_shows_live(&mut browser, &page, &nodes[0]);

    let png = browser.screenshot(&page);
    assert!(
        png.starts_with(b"\x89PNG\r\n\x1a\n") && png.len() > 1024,
        "Chromium returned no PNG screenshot ({} bytes)",
        png.len()
    );
    if let Some(path) = std::env::var_os(SCREENSHOT_ENV) {
        std::fs::write(&path, &png).expect("write the screenshot");
        eprintln!("dashboard: screenshot in {}", Path::new(&path).display());
    }

    // Errors are collected as they come; look only now so that late ones count too.
    assert!(
        browser.script_errors.is_empty(),
        "the dashboard page reported errors: {:#?}",
        browser.script_errors
    );
    browser.close();
}

/// Puts an object on `node` and watches the storage panel count it without a reload.
fn storage_shows_live(browser: &mut Browser, page: &Page, node: &Node) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let file = tmp.path().join("f");
    std::fs::write(&file, vec![7u8; 3 << 20]).expect("write");
    let out = node.cli(&["put", file.to_str().expect("utf-8"), "/dash/f"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let expression = "(() => { const o = document.getElementById('f-objects'); \
                      const b = document.getElementById('f-bytes'); \
                      return o && b ? o.textContent + ' ' + b.textContent : ''; })()";
    let started = Instant::now();
    let mut last = String::new();
    while started.elapsed() < crate::support::patient(JOB_SHOWN_WITHIN) {
        last = browser
            .evaluate(page, expression)
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        if last == "1 3.0 MiB" {
            return;
        }
        std::thread::sleep(POLL_INTERVAL);
    }
    panic!("the storage panel did not count the object: last seen {last:?}");
}

/// Submits jobs on `node` and watches the jobs panel follow them without a reload.
fn jobs_show_live(browser: &mut Browser, page: &Page, node: &Node) {
    // A command is the user's text: it must appear as text, never as markup (an `<img>` that
    // ran its handler would also report a console error).
    let hostile = "exit 3 # <img src=x onerror=console.error(document.domain)>";
    let bad = detach(node, &["sh", "-c", hostile]);
    let seen = wait_for_job(browser, page, bad, "the hostile job shown as failed", |j| {
        j.state == "failed" && j.cell(3) == "3" && j.cell(4).contains(hostile)
    });
    assert_eq!(seen.images, 0, "a job command became markup: {seen:?}");

    let id = detach(node, &["sleep", "30"]);
    let seen = wait_for_job(
        browser,
        page,
        id,
        "the job shown running, holding 1 slot",
        |j| j.state == "running" && !j.node.is_empty() && j.usage == format!("1/{SLOTS}"),
    );
    assert_eq!(seen.cell(0), id.to_string(), "{seen:?}");
    assert_eq!(seen.cell(4), "sleep 30", "{seen:?}");
    assert_eq!(seen.running, "1", "{seen:?}");
    assert!(seen.cell(5).ends_with(" UTC"), "no start time: {seen:?}");
    // The page shows the node that the API says runs the job.
    let api = node.cli(&["jobs", "--json"]);
    assert!(
        api.status.success(),
        "noodle jobs: {}",
        String::from_utf8_lossy(&api.stderr)
    );
    let list: noodle_api::JobList = serde_json::from_slice(&api.stdout).expect("jobs --json");
    let listed = list
        .jobs
        .iter()
        .find(|j| j.id == id)
        .expect("the job is listed");
    assert_eq!(listed.node.as_deref(), Some(seen.node.as_str()), "{seen:?}");
    eprintln!("dashboard: job {id} shown running on {}", seen.node);

    let out = node.cli(&["cancel", &id.to_string()]);
    assert!(
        out.status.success(),
        "noodle cancel: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let running_on = seen.node;
    let seen = wait_for_job(
        browser,
        page,
        id,
        "the job shown cancelled, its slot free",
        |j| j.state == "cancelled" && j.node == running_on && j.usage == format!("0/{SLOTS}"),
    );
    assert!(seen.cell(6).ends_with(" UTC"), "no end time: {seen:?}");
}

/// `noodle run --detach ARGS` on `node`: the job id.
fn detach(node: &Node, args: &[&str]) -> u64 {
    let mut all = vec!["run", "--detach", "--"];
    all.extend_from_slice(args);
    let out = node.cli(&all);
    assert!(
        out.status.success(),
        "noodle run --detach: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    text.trim()
        .parse()
        .unwrap_or_else(|_| panic!("noodle run --detach printed {text:?}, not a job id"))
}

/// One job's row in the jobs panel, as the live DOM shows it.
#[derive(Debug, serde::Deserialize)]
struct JobSeen {
    /// `data-state` of the row; empty while there is no row.
    state: String,
    /// Text of each cell: id, state, node, exit code, command, started, ended.
    cells: Vec<String>,
    /// `data-node` of the row: the node id.
    node: String,
    /// The slots used / offered shown for that node.
    usage: String,
    /// The running count.
    running: String,
    /// `<img>` elements in the jobs and events panels (none is ours).
    images: usize,
    /// False if the page was loaded again.
    not_reloaded: bool,
}

impl JobSeen {
    fn cell(&self, index: usize) -> &str {
        self.cells.get(index).map_or("", String::as_str)
    }
}

/// Polls the jobs panel until job `id`'s row satisfies `done` (and the page was not reloaded).
fn wait_for_job(
    browser: &mut Browser,
    page: &Page,
    id: u64,
    what: &str,
    done: impl Fn(&JobSeen) -> bool,
) -> JobSeen {
    let expression = format!(
        r#"(() => {{
  const row = document.querySelector('#jobs-body tr[data-job-id="{id}"]');
  const node = row ? row.dataset.node : '';
  const usage = node
    ? document.querySelector('#jobs-usage [data-usage-node="' + CSS.escape(node) + '"] .slots')
    : null;
  return {{
    state: row ? row.dataset.state : '',
    cells: row ? Array.from(row.cells, (c) => c.textContent) : [],
    node: node,
    usage: usage ? usage.textContent : '',
    running: document.getElementById('j-running').textContent,
    images: document.querySelectorAll('#jobs-panel img, #events-panel img').length,
    not_reloaded: window.noodleNotReloaded === true,
  }};
}})()"#
    );
    let started = Instant::now();
    let mut last = None;
    while started.elapsed() < crate::support::patient(JOB_SHOWN_WITHIN) {
        let seen = browser
            .evaluate(page, &expression)
            .and_then(|v| serde_json::from_value::<JobSeen>(v).ok());
        if let Some(seen) = seen {
            assert!(seen.not_reloaded, "the page was reloaded: {seen:?}");
            if done(&seen) {
                eprintln!(
                    "dashboard: {what} {:?} after the command",
                    started.elapsed()
                );
                return seen;
            }
            last = Some(seen);
        }
        std::thread::sleep(POLL_INTERVAL);
    }
    let panel = browser
        .evaluate(page, "document.getElementById('jobs-panel').outerHTML")
        .unwrap_or_default();
    panic!(
        "the jobs panel did not show {what} (job {id}) within {JOB_SHOWN_WITHIN:?}; last seen: \
         {last:?}\nscript errors: {:?}\njobs panel:\n{panel}",
        browser.script_errors,
    );
}

/// What the dashboard DOM still lacks: a `data-node-id` row per node, `data-live="1"` on body
/// and the control-plane line.
fn what_is_missing(html: &str, ids: &[String]) -> Vec<String> {
    let mut missing: Vec<String> = ids
        .iter()
        .filter(|id| !html.contains(&format!("data-node-id=\"{id}\"")))
        .map(|id| format!("a row for node {id}"))
        .collect();
    // Serialised attribute values escape `>`, so the first one after `<body` ends the tag.
    let body_tag = html
        .find("<body")
        .and_then(|start| html[start..].find('>').map(|end| &html[start..start + end]));
    if !body_tag.is_some_and(|tag| tag.contains("data-live=\"1\"")) {
        missing.push(format!("data-live=\"1\" on body (body tag: {body_tag:?})"));
    }
    // The control-plane line, kept live by the script: three voters and a leader.
    let control = html
        .find("id=\"c-summary\">")
        .map(|start| &html[start..])
        .and_then(|rest| rest.find("</span>").map(|end| &rest[..end]));
    if !control.is_some_and(|c| c.contains("leader ") && c.matches(", ").count() == 2) {
        missing.push(format!(
            "a control-plane line with a leader and 3 voters ({control:?})"
        ));
    }
    missing
}

/// The `chromium` on PATH, or a failure that says how to install it.
fn find_chromium() -> PathBuf {
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join("chromium"))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "chromium is not installed (not on PATH): this test needs it. \
                 Run `scripts/install-test-deps.sh` as root to install the test dependencies."
            )
        })
}

/// One headless Chromium, spoken to over the DevTools pipe. Its process group is killed on drop.
struct Browser {
    child: Child,
    /// The browser's fd 3: it reads protocol messages from here.
    to_browser: ChildStdin,
    /// The browser's fd 4, split into messages by a reader thread.
    from_browser: Receiver<Value>,
    next_id: u64,
    deadline: Instant,
    /// Uncaught exceptions, `console.error` calls and error log entries of the page.
    script_errors: Vec<String>,
    log_path: PathBuf,
    /// Holds the fresh profile (`--user-data-dir`) and the browser's log.
    _tmp: tempfile::TempDir,
}

/// A page (tab) of the browser: the DevTools session attached to it.
struct Page {
    session: String,
}

impl Browser {
    fn launch(chromium: &Path) -> Browser {
        let tmp = tempfile::tempdir().expect("tempdir");
        let profile = tmp.path().join("profile");
        let log_path = tmp.path().join("chromium.log");
        let log = std::fs::File::create(&log_path).expect("chromium log file");
        // The flags of a headless Chromium as root on an offline machine: no sandbox (root), no
        // GPU, and none of the background connections that the closed network would refuse.
        let flags = [
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
            "--remote-debugging-pipe",
            &format!("--window-size={WINDOW_WIDTH},{WINDOW_HEIGHT}"),
            &format!("--user-data-dir={}", profile.display()),
            "about:blank",
        ];
        // The pipe protocol wants fds 3 and 4; the shell moves our stdin and stdout pipes there
        // (std cannot without unsafe code) and then becomes the browser.
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(r#"exec "$0" "$@" 3<&0 4>&1 0</dev/null 1>&2"#)
            .arg(chromium)
            .args(flags)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(log)
            // Its own process group, so that every process it starts can be killed at the end.
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", chromium.display()));
        let to_browser = child.stdin.take().expect("piped stdin");
        let reader = BufReader::new(child.stdout.take().expect("piped stdout"));
        let (tx, from_browser) = sync_channel(MESSAGES_QUEUED_MAX);
        std::thread::spawn(move || read_messages(reader, &tx));
        Browser {
            child,
            to_browser,
            from_browser,
            next_id: 0,
            deadline: Instant::now() + crate::support::patient(BROWSER_DEADLINE),
            script_errors: Vec::new(),
            log_path,
            _tmp: tmp,
        }
    }

    /// Opens a new tab, watches it for errors, and starts loading `url` in it.
    fn open(&mut self, url: &str) -> Page {
        let target = self.call_ok(None, "Target.createTarget", json!({ "url": "about:blank" }));
        let target_id = target["targetId"].as_str().expect("targetId").to_string();
        let attached = self.call_ok(
            None,
            "Target.attachToTarget",
            json!({ "targetId": target_id, "flatten": true }),
        );
        let page = Page {
            session: attached["sessionId"]
                .as_str()
                .expect("sessionId")
                .to_string(),
        };
        let session = Some(page.session.as_str());
        self.call_ok(session, "Runtime.enable", json!({}));
        self.call_ok(session, "Log.enable", json!({}));
        self.call_ok(
            session,
            "Emulation.setDeviceMetricsOverride",
            json!({
                "width": WINDOW_WIDTH,
                "height": WINDOW_HEIGHT,
                "deviceScaleFactor": 1,
                "mobile": false,
            }),
        );
        let navigated = self.call_ok(session, "Page.navigate", json!({ "url": url }));
        if let Some(error) = navigated.get("errorText") {
            self.fail(&format!("navigating to the dashboard failed: {error}"));
        }
        page
    }

    /// The page's serialised DOM, or `None` while there is no document to read (still loading).
    fn outer_html(&mut self, page: &Page) -> Option<String> {
        let result = self
            .call(
                Some(&page.session),
                "Runtime.evaluate",
                json!({ "expression": "document.documentElement.outerHTML", "returnByValue": true }),
            )
            .ok()?;
        result["result"]["value"].as_str().map(str::to_string)
    }

    /// The value of a script expression in the page, or `None` if it threw or the page is
    /// still loading.
    fn evaluate(&mut self, page: &Page, expression: &str) -> Option<Value> {
        let result = self
            .call(
                Some(&page.session),
                "Runtime.evaluate",
                json!({ "expression": expression, "returnByValue": true }),
            )
            .ok()?;
        if result.get("exceptionDetails").is_some() {
            return None;
        }
        result.get("result")?.get("value").cloned()
    }

    /// A PNG of the page's viewport.
    fn screenshot(&mut self, page: &Page) -> Vec<u8> {
        let shot = self.call_ok(
            Some(&page.session),
            "Page.captureScreenshot",
            json!({ "format": "png" }),
        );
        base64_decode(shot["data"].as_str().expect("screenshot data"))
    }

    /// Asks the browser to exit; the drop kills whatever is left.
    fn close(mut self) {
        let _ = self.call(None, "Browser.close", json!({}));
    }

    fn call_ok(&mut self, session: Option<&str>, method: &str, params: Value) -> Value {
        self.call(session, method, params)
            .unwrap_or_else(|error| self.fail(&format!("{method} failed: {error}")))
    }

    /// Sends one command and waits for its answer (`Err` carries a protocol error), noting the
    /// events that arrive meanwhile. Fails the test when the browser is gone or past the deadline.
    fn call(&mut self, session: Option<&str>, method: &str, params: Value) -> Result<Value, Value> {
        self.next_id += 1;
        let id = self.next_id;
        let mut message = json!({ "id": id, "method": method, "params": params });
        if let Some(session) = session {
            message["sessionId"] = json!(session);
        }
        let mut bytes = serde_json::to_vec(&message).expect("serialise a command");
        bytes.push(0);
        if let Err(e) = self
            .to_browser
            .write_all(&bytes)
            .and_then(|()| self.to_browser.flush())
        {
            self.fail(&format!("sending {method} to chromium: {e}"));
        }
        loop {
            let left = self.deadline.saturating_duration_since(Instant::now());
            match self.from_browser.recv_timeout(left) {
                Ok(reply) if reply["id"] == json!(id) => {
                    return match reply.get("error") {
                        Some(error) => Err(error.clone()),
                        None => Ok(reply["result"].clone()),
                    };
                }
                Ok(event) => self.note_event(&event),
                Err(RecvTimeoutError::Timeout) => self.fail(&format!(
                    "chromium did not answer {method} within the {BROWSER_DEADLINE:?} deadline"
                )),
                Err(RecvTimeoutError::Disconnected) => self.fail(&format!(
                    "chromium closed the pipe (crashed?) during {method}"
                )),
            }
        }
    }

    fn note_event(&mut self, event: &Value) {
        let params = &event["params"];
        let error = match event["method"].as_str() {
            Some("Runtime.exceptionThrown") => {
                let details = &params["exceptionDetails"];
                let description = details["exception"]["description"]
                    .as_str()
                    .or(details["text"].as_str())
                    .unwrap_or("?");
                Some(format!(
                    "uncaught exception at line {}: {description}",
                    details["lineNumber"]
                ))
            }
            Some("Runtime.consoleAPICalled") if params["type"] == "error" => {
                Some(format!("console.error: {}", params["args"]))
            }
            Some("Log.entryAdded") if params["entry"]["level"] == "error" => Some(format!(
                "{} error: {} ({})",
                params["entry"]["source"], params["entry"]["text"], params["entry"]["url"]
            )),
            _ => None,
        };
        self.script_errors.extend(error);
    }

    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(&self.log_path).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    fn fail(&self, what: &str) -> ! {
        panic!("{what}\nchromium log:\n{}", self.log_tail())
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // The browser may have left renderers and helpers behind: kill the whole group it leads.
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.child.id())])
            .stderr(Stdio::null())
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Splits the browser's output into NUL-ended JSON messages until it closes the pipe.
fn read_messages(mut reader: impl BufRead, to_test: &SyncSender<Value>) {
    let mut buf = Vec::new();
    loop {
        buf.clear();
        match Read::take(&mut reader, MESSAGE_BYTES_MAX).read_until(0, &mut buf) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        if buf.last() != Some(&0) {
            return; // Cut off by the pipe closing or by the size bound: nothing more to trust.
        }
        buf.pop();
        let Ok(message) = serde_json::from_slice::<Value>(&buf) else {
            return;
        };
        if to_test.send(message).is_err() {
            return;
        }
    }
}

/// Standard base64 (with `=` padding), as the protocol sends binary data.
fn base64_decode(text: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(text.len() / 4 * 3);
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in text.bytes() {
        let value = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            b'=' => break,
            _ => panic!("not base64: byte {c}"),
        };
        acc = (acc << 6) | u32::from(value);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push(u8::try_from((acc >> bits) & 0xff).expect("masked to a byte"));
            acc &= (1 << bits) - 1;
        }
    }
    out
}

#[test]
fn base64_decodes() {
    assert_eq!(base64_decode(""), b"");
    assert_eq!(base64_decode("Zg=="), b"f");
    assert_eq!(base64_decode("Zm8="), b"fo");
    assert_eq!(base64_decode("Zm9v"), b"foo");
    assert_eq!(base64_decode("iVBORw0KGgo="), b"\x89PNG\r\n\x1a\n");
}
