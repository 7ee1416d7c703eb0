//! Wire and HTTP types of the node API (the serde boundary) and the client the CLI, SDKs and
//! agents use: [`Client`] (one call per route), [`JobFollow`] (a job's output, then its end) and
//! [`upload`] (shipping a local file as chunks the node lacks).
//!
//! Every type here is part of a public contract: `noodle status --json`, the dashboard and scripts
//! read these field names. Add fields; never rename or remove one. This crate must never depend on
//! the node's internals, and never prints: progress goes to callbacks.

mod client;
pub mod fabric;
mod follow;
pub mod format;
pub mod upload;

pub use client::{ChunkRoute, Client, ClientError, EventStream, OutputStream};
pub use follow::{JobEvent, JobFollow, WAIT_POLL};

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Name of the file in the data directory that holds the node's API address.
pub const API_FILE: &str = "api.json";
/// Name of the file in the data directory that holds the admin credential (mode 0600).
pub const ADMIN_CREDENTIAL_FILE: &str = "admin.credential";
/// Cookie of a dashboard session (opened with a one-time login code, never the credential).
pub const SESSION_COOKIE: &str = "noodle_session";

/// `POST /v1/dashboard/code`: where a browser on this machine logs in once.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct DashboardLink {
    /// `/login?code=...`, relative to the API's address.
    pub path: String,
}

/// What a node writes to [`API_FILE`] once its API is listening.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ApiInfo {
    /// `http://127.0.0.1:7071`, no trailing slash.
    pub url: String,
    pub pid: u32,
    pub node_id: String,
}

/// Liveness of a node as this node's membership view sees it.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[serde(rename_all = "lowercase")]
pub enum NodeState {
    Alive,
    Suspect,
    Dead,
}

impl NodeState {
    pub fn as_str(self) -> &'static str {
        match self {
            NodeState::Alive => "alive",
            NodeState::Suspect => "suspect",
            NodeState::Dead => "dead",
        }
    }
}

/// One GPU of a node.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct GpuInfo {
    pub index: u32,
    pub name: String,
    pub mem_total_bytes: u64,
    pub vendor: String,
}

/// The resources a node reports about itself; measured locally and gossiped.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Resources {
    pub cpus: u32,
    pub mem_total_bytes: u64,
    pub mem_available_bytes: u64,
    /// One-minute load average.
    pub load_1m: f64,
    pub disk_total_bytes: u64,
    pub disk_free_bytes: u64,
    pub gpus: Vec<GpuInfo>,
}

/// One node of `noodle status`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct NodeStatus {
    pub id: String,
    pub name: String,
    /// The cluster (QUIC) address peers reach this node on.
    pub addr: String,
    pub state: NodeState,
    /// True for the node that answered this status request.
    pub is_self: bool,
    pub cpus: u32,
    /// CPU slots the node offers to jobs.
    #[serde(default)]
    pub slots: u32,
    pub mem_total_bytes: u64,
    pub mem_available_bytes: u64,
    pub load_1m: f64,
    pub disk_total_bytes: u64,
    pub disk_free_bytes: u64,
    /// Number of GPUs; details in `gpu_list`.
    pub gpus: u32,
    pub gpu_list: Vec<GpuInfo>,
    pub labels: BTreeMap<String, String>,
    pub version: String,
    /// Unix milliseconds at which this node's information was last produced by the node itself.
    pub updated_at_ms: u64,
}

/// One directed link: measured by `from` towards `peer`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LinkStatus {
    pub from: String,
    pub peer: String,
    pub rtt_us: u64,
    /// Negotiated TLS key-exchange group, e.g. `X25519MLKEM768`.
    pub kx_group: String,
}

/// Cluster totals over alive nodes.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Totals {
    pub nodes_alive: u32,
    pub nodes_suspect: u32,
    pub nodes_dead: u32,
    pub cpus: u32,
    pub mem_total_bytes: u64,
    pub mem_available_bytes: u64,
    pub gpus: u32,
}

/// `GET /v1/status` and `noodle status --json`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct StatusReport {
    pub cluster_id: String,
    /// Node id of the node that answered.
    #[serde(rename = "self")]
    pub self_id: String,
    pub totals: Totals,
    pub nodes: Vec<NodeStatus>,
    pub links: Vec<LinkStatus>,
    /// The control plane as this node sees it; absent while it starts.
    pub control: Option<ControlInfo>,
}

/// The Raft control plane in `noodle status`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ControlInfo {
    /// Node id of the leader, if one is known.
    pub leader: Option<String>,
    pub voters: Vec<String>,
    pub learners: Vec<String>,
    pub term: u64,
    /// Index of the last applied entry on the answering node.
    pub commit_index: u64,
    /// This node's role: `leader`, `follower`, `candidate`, `learner`, `shutdown`, or
    /// `failed` (its member stopped after a storage error and restarts once the disk allows).
    pub role: String,
    /// Why this node's member stopped, while it is `failed`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// One configuration key (`noodle config`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ConfigEntry {
    pub key: String,
    pub value: String,
}

/// `GET /v1/config`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ConfigList {
    pub entries: Vec<ConfigEntry>,
}

/// `PUT /v1/config/{key}`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ConfigValue {
    pub value: String,
}

/// `POST /v1/tokens`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct TokenRequest {
    pub ttl_secs: u64,
    /// Leave seed addresses out: the joiner must find the cluster by mDNS.
    pub no_addresses: bool,
    /// How many nodes may join with it (default 1).
    #[serde(default = "one")]
    pub uses: u32,
}

fn one() -> u32 {
    1
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct TokenResponse {
    pub token: String,
    /// The token's id, for `noodle token ls` and `noodle token revoke`.
    pub id: String,
    pub uses: u32,
    pub expires_at_unix: u64,
    pub seeds: Vec<String>,
}

/// A node removed from the cluster (`POST /v1/nodes/{node}/remove`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RemovedNode {
    pub id: String,
    pub name: String,
}

/// A join token the cluster still accepts (`GET /v1/tokens`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct JoinTokenInfo {
    pub id: String,
    pub uses_left: u32,
    pub expires_at_unix: u64,
    pub created_at_ms: u64,
    /// Who created it (an audit actor name).
    pub created_by: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct JoinTokenList {
    pub tokens: Vec<JoinTokenInfo>,
}

/// Kind of a cluster event.
/// What an event is about: `node_joined`, `job_ended`, ... A subsystem names its own kinds
/// (and registers them with the node); the node's own are the constants here. Serialised as
/// its name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct EventKind(std::borrow::Cow<'static, str>);

impl EventKind {
    pub const NODE_STARTED: EventKind = EventKind::new("node_started");
    pub const NODE_JOINED: EventKind = EventKind::new("node_joined");
    pub const NODE_SUSPECTED: EventKind = EventKind::new("node_suspected");
    pub const NODE_DEAD: EventKind = EventKind::new("node_dead");
    pub const NODE_REJOINED: EventKind = EventKind::new("node_rejoined");
    pub const LINK_UP: EventKind = EventKind::new("link_up");
    pub const LINK_DOWN: EventKind = EventKind::new("link_down");
    pub const JOIN_ADMITTED: EventKind = EventKind::new("join_admitted");
    pub const JOIN_REFUSED: EventKind = EventKind::new("join_refused");
    pub const NODE_REMOVED: EventKind = EventKind::new("node_removed");

    /// A kind named `name` (lower-case words joined by `_`, starting with the subsystem's).
    pub const fn new(name: &'static str) -> EventKind {
        EventKind(std::borrow::Cow::Borrowed(name))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for EventKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// One event of the local event bus.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Event {
    /// Per-node sequence number, starting at 1.
    pub seq: u64,
    pub at_ms: u64,
    pub kind: EventKind,
    /// The node the event is about.
    pub node: String,
    pub detail: String,
}

/// `GET /v1/events`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct EventsResponse {
    pub events: Vec<Event>,
}

/// Body of every non-2xx API answer.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ApiError {
    pub error: String,
}

/// `POST /v1/caps`: mint a capability token.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct CapRequest {
    /// `SUBSYSTEM:ACTION[:PREFIX]`, e.g. `config:read`, `fabric:read:/datasets/`.
    pub allow: Vec<String>,
    /// `NAME=VALUE`, e.g. `cpus=4`.
    pub quotas: Vec<String>,
    pub ttl_secs: u64,
    /// Who the token is for (shown in the audit log).
    pub holder: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct CapResponse {
    pub token: String,
    /// Revocation id (`noodle cap revoke ID`).
    pub id: String,
    pub expires_at_unix: u64,
}

/// `POST /v1/caps/revoke`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RevokeRequest {
    pub id: String,
}

/// One cluster policy.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PolicyEntry {
    pub name: String,
    /// Datalog source.
    pub source: String,
}

/// `GET /v1/policies`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PolicyList {
    pub policies: Vec<PolicyEntry>,
}

/// One audit-log entry (`noodle audit --json`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct AuditEntry {
    pub seq: u64,
    pub at_ms: u64,
    pub actor: String,
    pub action: String,
    pub target: String,
    pub right: String,
    /// `allowed`, `denied` or `failed`.
    pub outcome: String,
    pub reason: Option<String>,
    /// blake3 chain hash, hex.
    pub hash: String,
}

/// `GET /v1/audit?from=SEQ&limit=N`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct AuditPage {
    pub entries: Vec<AuditEntry>,
    /// Sequence number of the newest entry.
    pub head_seq: u64,
}

/// `GET /v1/audit/verify`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct AuditVerifyReport {
    pub ok: bool,
    pub entries: u64,
    pub checkpoints: u64,
    pub head_seq: u64,
    pub head_hash: String,
    pub last_checkpoint_seq: Option<u64>,
    /// What failed, naming the first entry or checkpoint that does not verify.
    pub error: Option<String>,
    /// Sequence number of the first entry that does not verify.
    pub bad_seq: Option<u64>,
}

/// A file shipped with a job (`noodle run --file`, or the program itself when it is a local
/// path). The CLI first stores its chunks on the local node (`/v1/chunks`); the executing node
/// fetches the chunks it lacks from the submitting node and caches them.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct JobFile {
    /// Where the file appears, relative to the job's working directory (`my_program`,
    /// `data.csv`); no `..`, not absolute.
    pub name: String,
    /// Id (hex) of the file's chunk manifest.
    pub manifest: String,
    pub executable: bool,
    pub bytes: u64,
}

/// `POST /v1/jobs`: what `noodle run` submits.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct JobSubmit {
    /// Program and arguments; a shipped program is named by its [`JobFile::name`] as `./NAME`.
    pub command: Vec<String>,
    /// CPU slots; 1 unless the job says otherwise.
    pub cpus: u32,
    pub mem_bytes: u64,
    pub gpus: u32,
    /// Node labels the job needs (all must match).
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// How many times the job is run again if its node dies.
    #[serde(default)]
    pub retries: u32,
    #[serde(default)]
    pub files: Vec<JobFile>,
    /// Fabric prefixes whose objects the job finds under `$NOODLE_FABRIC` (`--read`).
    #[serde(default)]
    pub reads: Vec<String>,
    /// The fabric prefix that what the job leaves in `$NOODLE_OUT` becomes versions under
    /// when it ends (`--write`; at most one).
    #[serde(default)]
    pub writes: Vec<String>,
}

/// One job (`noodle jobs --json`, `GET /v1/jobs/{id}`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct JobInfo {
    pub id: u64,
    /// `queued`, `placed`, `running`, `succeeded`, `failed`, `cancelled` or `lost`.
    pub state: String,
    /// The node of the latest placement.
    pub node: Option<String>,
    pub exit_code: Option<i32>,
    pub command: Vec<String>,
    /// UTC, RFC 3339 with milliseconds.
    pub submitted_at: String,
    pub started_at: Option<String>,
    pub ended_at: Option<String>,
    pub submitted_at_ms: u64,
    pub started_at_ms: Option<u64>,
    pub ended_at_ms: Option<u64>,
    pub cpus: u32,
    pub mem_bytes: u64,
    pub gpus: u32,
    pub labels: BTreeMap<String, String>,
    pub submitter: String,
    pub retries_left: u32,
    /// Fencing epoch of the latest placement (0: never placed).
    pub epoch: u64,
    /// Why the job failed before or instead of running (`no such program on node X`).
    pub error: Option<String>,
}

impl JobInfo {
    /// True once the job can no longer change.
    pub fn is_done(&self) -> bool {
        matches!(
            self.state.as_str(),
            "succeeded" | "failed" | "cancelled" | "lost"
        )
    }
}

/// `GET /v1/jobs[?all=true]`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct JobList {
    pub jobs: Vec<JobInfo>,
}

/// Kinds of frame in `GET /v1/jobs/{id}/output`: each frame is one kind byte, a big-endian
/// `u32` length and that many bytes.
pub mod output_frame {
    /// Bytes the job wrote to standard output.
    pub const STDOUT: u8 = 1;
    /// Bytes the job wrote to standard error.
    pub const STDERR: u8 = 2;
    /// A line from noodle itself (UTF-8): output dropped past the bound, the job lost and run
    /// again elsewhere, ...
    pub const NOTICE: u8 = 3;
    /// Bytes of a frame header.
    pub const HEADER_BYTES: usize = 5;
    /// Largest frame payload.
    pub const PAYLOAD_MAX: usize = 1 << 20;

    /// Appends one frame to `out`.
    pub fn encode(kind: u8, payload: &[u8], out: &mut Vec<u8>) {
        out.push(kind);
        out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        out.extend_from_slice(payload);
    }

    /// One decoded frame: `(kind, payload, bytes used)`.
    pub type Frame<'a> = (u8, &'a [u8], usize);

    /// The first whole frame of `buf`; `Ok(None)` if more bytes are needed; `Err` for a length
    /// over [`PAYLOAD_MAX`].
    pub fn decode(buf: &[u8]) -> Result<Option<Frame<'_>>, String> {
        if buf.len() < HEADER_BYTES {
            return Ok(None);
        }
        let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
        if len > PAYLOAD_MAX {
            return Err(format!(
                "output frame of {len} bytes (at most {PAYLOAD_MAX})"
            ));
        }
        if buf.len() < HEADER_BYTES + len {
            return Ok(None);
        }
        Ok(Some((
            buf[0],
            &buf[HEADER_BYTES..HEADER_BYTES + len],
            HEADER_BYTES + len,
        )))
    }
}

/// `POST /v1/chunks/missing`: which of these chunk ids (hex) the node lacks.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ChunkIds {
    pub ids: Vec<String>,
}
