//! The HTTP client the CLI uses to talk to its local node.
//!
//! It finds the node through the data directory: [`crate::API_FILE`] says where the API listens and
//! [`crate::ADMIN_CREDENTIAL_FILE`] holds the credential it presents.

use crate::{
    ADMIN_CREDENTIAL_FILE, API_FILE, ApiError, ApiInfo, AuditPage, AuditVerifyReport, CapRequest,
    CapResponse, ChunkIds, ConfigEntry, ConfigList, ConfigValue, Event, EventsResponse, JobInfo,
    JobList, JobSubmit, JoinTokenInfo, JoinTokenList, PolicyEntry, PolicyList, RevokeRequest,
    StatusReport, TokenRequest, TokenResponse, output_frame,
};
use futures_util::StreamExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("no noodle node is running on data directory {0} (start one with `noodle up`)")]
    NotRunning(PathBuf),
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is corrupt: {detail}")]
    Corrupt { path: PathBuf, detail: String },
    #[error("cannot reach the node at {url}: {detail} (is `noodle up` still running?)")]
    Unreachable { url: String, detail: String },
    #[error("the node refused the request: {0}")]
    Api(String),
    /// The credential is none of this cluster's (HTTP 401).
    #[error("the node does not take this credential: {0}")]
    Unauthenticated(String),
    #[error("{0}")]
    NotFound(String),
    #[error("unexpected answer from the node: {0}")]
    Protocol(String),
}

/// A client bound to one node's API.
#[derive(Debug, Clone)]
pub struct Client {
    pub(crate) base: String,
    pub(crate) credential: String,
    pub(crate) http: reqwest::Client,
    /// The node's fabric chunk store, for a client beside the node acting as its admin (which
    /// may read the node's files anyway): chunks are read from there, each checked, rather
    /// than through the API.
    pub(crate) local_store: Option<std::path::PathBuf>,
}

impl Client {
    /// A client for the node whose data directory is `data_dir`.
    pub fn from_data_dir(data_dir: &Path) -> Result<Client, ClientError> {
        let info = read_api_info(data_dir)?;
        let cred_path = data_dir.join(ADMIN_CREDENTIAL_FILE);
        let credential = std::fs::read_to_string(&cred_path)
            .map_err(|source| ClientError::Read {
                path: cred_path,
                source,
            })?
            .trim()
            .to_string();
        Ok(Client {
            local_store: Some(crate::fabric::store_dir(data_dir)),
            ..Client::new(&info.url, &credential)
        })
    }

    /// A client for the node of `data_dir` that acts with a capability `token` if one is given,
    /// else with the node's admin credential.
    pub fn connect(data_dir: &Path, token: Option<&str>) -> Result<Client, ClientError> {
        match token {
            None => Client::from_data_dir(data_dir),
            Some(token) => {
                let info = read_api_info(data_dir)?;
                Ok(Client::new(&info.url, token.trim()))
            }
        }
    }

    /// A client for the API at `base` (`http://127.0.0.1:7071`) with `credential`.
    pub fn new(base: &str, credential: &str) -> Client {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(2))
            .build()
            .unwrap_or_default();
        Client {
            base: base.trim_end_matches('/').to_string(),
            credential: credential.to_string(),
            http,
            local_store: None,
        }
    }

    pub fn base_url(&self) -> &str {
        &self.base
    }

    pub async fn status(&self) -> Result<StatusReport, ClientError> {
        self.get_json("/v1/status").await
    }

    pub async fn create_token(&self, req: &TokenRequest) -> Result<TokenResponse, ClientError> {
        self.send_json(reqwest::Method::POST, "/v1/tokens", Some(req))
            .await
    }

    /// The join tokens the cluster still accepts.
    pub async fn join_tokens(&self) -> Result<JoinTokenList, ClientError> {
        self.get_json("/v1/tokens").await
    }

    /// Revokes a join token (by the id `create_token` and `join_tokens` give).
    pub async fn revoke_join_token(&self, id: &str) -> Result<JoinTokenInfo, ClientError> {
        self.send_json::<(), _>(reqwest::Method::DELETE, &format!("/v1/tokens/{id}"), None)
            .await
    }

    /// Removes a node from the cluster for good; `node` is its id or its (unique) name.
    pub async fn remove_node(&self, node: &str) -> Result<crate::RemovedNode, ClientError> {
        self.send_json::<(), _>(
            reqwest::Method::POST,
            &format!("/v1/nodes/{node}/remove"),
            None,
        )
        .await
    }

    /// A one-time dashboard login link (the local admin only).
    pub async fn dashboard_link(&self) -> Result<crate::DashboardLink, ClientError> {
        self.send_json::<(), _>(reqwest::Method::POST, "/v1/dashboard/code", None)
            .await
    }

    pub async fn config_list(&self) -> Result<ConfigList, ClientError> {
        self.get_json("/v1/config").await
    }

    /// `None` if the key is not set.
    pub async fn config_get(&self, key: &str) -> Result<Option<ConfigEntry>, ClientError> {
        match self.get_json(&format!("/v1/config/{key}")).await {
            Ok(e) => Ok(Some(e)),
            Err(ClientError::NotFound(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    pub async fn config_set(&self, key: &str, value: &str) -> Result<ConfigEntry, ClientError> {
        let body = ConfigValue {
            value: value.to_string(),
        };
        self.send_json(
            reqwest::Method::PUT,
            &format!("/v1/config/{key}"),
            Some(&body),
        )
        .await
    }

    pub async fn config_unset(&self, key: &str) -> Result<ConfigEntry, ClientError> {
        self.send_json::<(), _>(reqwest::Method::DELETE, &format!("/v1/config/{key}"), None)
            .await
    }

    pub async fn cap_create(&self, req: &CapRequest) -> Result<CapResponse, ClientError> {
        self.send_json(reqwest::Method::POST, "/v1/caps", Some(req))
            .await
    }

    pub async fn cap_revoke(&self, id: &str) -> Result<RevokeRequest, ClientError> {
        let body = RevokeRequest { id: id.to_string() };
        self.send_json(reqwest::Method::POST, "/v1/caps/revoke", Some(&body))
            .await
    }

    pub async fn policies(&self) -> Result<PolicyList, ClientError> {
        self.get_json("/v1/policies").await
    }

    pub async fn policy_add(&self, policy: &PolicyEntry) -> Result<PolicyEntry, ClientError> {
        self.send_json(reqwest::Method::POST, "/v1/policies", Some(policy))
            .await
    }

    pub async fn policy_remove(&self, name: &str) -> Result<PolicyEntry, ClientError> {
        self.send_json::<(), _>(
            reqwest::Method::DELETE,
            &format!("/v1/policies/{name}"),
            None,
        )
        .await
    }

    /// Audit entries from sequence number `from` on, at most `limit`.
    pub async fn audit(&self, from: u64, limit: u32) -> Result<AuditPage, ClientError> {
        self.get_json(&format!("/v1/audit?from={from}&limit={limit}"))
            .await
    }

    pub async fn audit_verify(&self) -> Result<AuditVerifyReport, ClientError> {
        self.get_json("/v1/audit/verify").await
    }

    /// Queues a job (`noodle run`).
    pub async fn submit_job(&self, job: &JobSubmit) -> Result<JobInfo, ClientError> {
        self.send_json(reqwest::Method::POST, "/v1/jobs", Some(job))
            .await
    }

    /// Queued and running jobs and the most recent ended ones; `all` lists every job.
    pub async fn jobs(&self, all: bool) -> Result<JobList, ClientError> {
        self.get_json(&format!("/v1/jobs?all={all}")).await
    }

    pub async fn job(&self, id: u64) -> Result<JobInfo, ClientError> {
        self.get_json(&format!("/v1/jobs/{id}")).await
    }

    pub async fn cancel_job(&self, id: u64) -> Result<JobInfo, ClientError> {
        self.send_json::<(), _>(
            reqwest::Method::POST,
            &format!("/v1/jobs/{id}/cancel"),
            None,
        )
        .await
    }

    /// Waits until job `id` has ended (the node answers after at most `timeout`, ended or not).
    pub async fn wait_job(&self, id: u64, timeout: Duration) -> Result<JobInfo, ClientError> {
        let resp = self
            .http
            .get(format!(
                "{}/v1/jobs/{id}/wait?timeout_ms={}",
                self.base,
                timeout.as_millis()
            ))
            .bearer_auth(&self.credential)
            .timeout(timeout + Duration::from_secs(10))
            .send()
            .await
            .map_err(|e| self.unreachable(e))?;
        Self::decode(resp).await
    }

    /// The output of job `id` as it is kept on its node; with `follow`, the stream stays open
    /// and carries new output live until the job ends.
    pub async fn job_output(&self, id: u64, follow: bool) -> Result<OutputStream, ClientError> {
        let path = format!("/v1/jobs/{id}/output?follow={follow}");
        Ok(OutputStream {
            inner: self.get_stream(&path).await?,
            buf: Vec::new(),
        })
    }

    /// Which of these chunks the node does not have yet, for `to`.
    pub async fn chunks_missing(
        &self,
        to: &ChunkRoute,
        ids: Vec<String>,
    ) -> Result<Vec<String>, ClientError> {
        let r: ChunkIds = self
            .send_json(
                reqwest::Method::POST,
                &to.url("missing"),
                Some(&ChunkIds { ids }),
            )
            .await?;
        Ok(r.ids)
    }

    /// Stores one chunk (or manifest) on the node, for `to`; the node checks that `id` is its
    /// blake3.
    pub async fn put_chunk(
        &self,
        to: &ChunkRoute,
        id: &str,
        bytes: Vec<u8>,
    ) -> Result<(), ClientError> {
        let resp = self
            .http
            .put(format!("{}{}", self.base, to.url(id)))
            .bearer_auth(&self.credential)
            .timeout(Duration::from_secs(60))
            .body(bytes)
            .send()
            .await
            .map_err(|e| self.unreachable(e))?;
        if !resp.status().is_success() {
            return Err(Self::error_of(resp).await);
        }
        Ok(())
    }

    pub(crate) async fn send_json<B: serde::Serialize, T: serde::de::DeserializeOwned>(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&B>,
    ) -> Result<T, ClientError> {
        let mut req = self
            .http
            .request(method, format!("{}{}", self.base, path))
            .bearer_auth(&self.credential)
            .timeout(Duration::from_secs(15));
        if let Some(body) = body {
            req = req.json(body);
        }
        let resp = req.send().await.map_err(|e| self.unreachable(e))?;
        Self::decode(resp).await
    }

    pub async fn events(&self) -> Result<Vec<Event>, ClientError> {
        let r: EventsResponse = self.get_json("/v1/events").await?;
        Ok(r.events)
    }

    /// Follows the node's event stream (server-sent events) from now on.
    pub async fn follow_events(&self) -> Result<EventStream, ClientError> {
        Ok(EventStream {
            inner: self.get_stream("/v1/events/stream").await?,
            buf: Vec::new(),
        })
    }

    /// A `GET` whose answer is read as it arrives, without a deadline.
    async fn get_stream(&self, path: &str) -> Result<ByteStream, ClientError> {
        let resp = self
            .http
            .get(format!("{}{}", self.base, path))
            .bearer_auth(&self.credential)
            .send()
            .await
            .map_err(|e| self.unreachable(e))?;
        if !resp.status().is_success() {
            return Err(Self::error_of(resp).await);
        }
        Ok(Box::pin(resp.bytes_stream()))
    }

    pub(crate) async fn get_json<T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
    ) -> Result<T, ClientError> {
        let resp = self
            .http
            .get(format!("{}{}", self.base, path))
            .bearer_auth(&self.credential)
            .timeout(Duration::from_secs(10))
            .send()
            .await
            .map_err(|e| self.unreachable(e))?;
        Self::decode(resp).await
    }

    pub(crate) fn unreachable(&self, e: reqwest::Error) -> ClientError {
        ClientError::Unreachable {
            url: self.base.clone(),
            detail: e.without_url().to_string(),
        }
    }

    pub(crate) async fn decode<T: serde::de::DeserializeOwned>(
        resp: reqwest::Response,
    ) -> Result<T, ClientError> {
        if !resp.status().is_success() {
            return Err(Self::error_of(resp).await);
        }
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| ClientError::Protocol(e.to_string()))?;
        serde_json::from_slice(&bytes).map_err(|e| ClientError::Protocol(e.to_string()))
    }

    pub(crate) async fn error_of(resp: reqwest::Response) -> ClientError {
        let status = resp.status();
        let body = resp.bytes().await.unwrap_or_default();
        match serde_json::from_slice::<ApiError>(&body) {
            Ok(e) if status == reqwest::StatusCode::NOT_FOUND => ClientError::NotFound(e.error),
            Ok(e) if status == reqwest::StatusCode::UNAUTHORIZED => {
                ClientError::Unauthenticated(e.error)
            }
            Ok(e) => ClientError::Api(e.error),
            Err(_) => ClientError::Api(format!("HTTP {status}")),
        }
    }
}

/// Where the node of `data_dir` serves its API.
fn read_api_info(data_dir: &Path) -> Result<ApiInfo, ClientError> {
    let api_path = data_dir.join(API_FILE);
    let raw = match std::fs::read(&api_path) {
        Ok(raw) => raw,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(ClientError::NotRunning(data_dir.to_path_buf()));
        }
        Err(source) => {
            return Err(ClientError::Read {
                path: api_path,
                source,
            });
        }
    };
    serde_json::from_slice(&raw).map_err(|e| ClientError::Corrupt {
        path: api_path,
        detail: e.to_string(),
    })
}

type ByteStream =
    std::pin::Pin<Box<dyn futures_util::Stream<Item = reqwest::Result<bytes::Bytes>> + Send>>;

/// Events as they arrive from `GET /v1/events/stream`.
pub struct EventStream {
    inner: ByteStream,
    buf: Vec<u8>,
}

impl EventStream {
    /// The next event; `Ok(None)` when the node closed the stream.
    pub async fn next(&mut self) -> Result<Option<Event>, ClientError> {
        /// A single SSE message is far smaller than this; a longer line means a broken stream.
        const LINE_BYTES_MAX: usize = 1 << 20;
        loop {
            while let Some(pos) = self.buf.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=pos).collect();
                let line = String::from_utf8_lossy(&line);
                if let Some(data) = line.trim_end().strip_prefix("data:") {
                    let event: Event = serde_json::from_str(data.trim())
                        .map_err(|e| ClientError::Protocol(e.to_string()))?;
                    return Ok(Some(event));
                }
            }
            if self.buf.len() > LINE_BYTES_MAX {
                return Err(ClientError::Protocol("event line too long".into()));
            }
            match self.inner.next().await {
                Some(Ok(chunk)) => self.buf.extend_from_slice(&chunk),
                Some(Err(e)) => return Err(ClientError::Protocol(e.to_string())),
                None => return Ok(None),
            }
        }
    }
}

/// Frames of `GET /v1/jobs/{id}/output` as they arrive (see [`output_frame`]).
pub struct OutputStream {
    inner: ByteStream,
    buf: Vec<u8>,
}

impl OutputStream {
    /// The next frame: `(kind, payload)`; `Ok(None)` when the node ended the stream.
    pub async fn next(&mut self) -> Result<Option<(u8, Vec<u8>)>, ClientError> {
        loop {
            match output_frame::decode(&self.buf).map_err(ClientError::Protocol)? {
                Some((kind, payload, used)) => {
                    let payload = payload.to_vec();
                    self.buf.drain(..used);
                    return Ok(Some((kind, payload)));
                }
                None => match self.inner.next().await {
                    Some(Ok(chunk)) => self.buf.extend_from_slice(&chunk),
                    Some(Err(e)) => return Err(ClientError::Protocol(e.to_string())),
                    None if self.buf.is_empty() => return Ok(None),
                    None => return Err(ClientError::Protocol("output ended mid-frame".into())),
                },
            }
        }
    }
}

/// Where uploaded chunks go: a job's files (`/v1/chunks`, right `jobs:run`), or an object of
/// the fabric (`/v1/fabric/chunks`, right `fabric:write` on its path).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChunkRoute {
    Jobs,
    Fabric { path: String },
}

impl ChunkRoute {
    /// The route of `tail` (`missing`, or a chunk id).
    fn url(&self, tail: &str) -> String {
        match self {
            ChunkRoute::Jobs => format!("/v1/chunks/{tail}"),
            ChunkRoute::Fabric { path } => {
                format!(
                    "/v1/fabric/chunks/{tail}?path={}",
                    crate::fabric::query_escape(path)
                )
            }
        }
    }
}
