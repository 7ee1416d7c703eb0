//! The HTTP client the CLI uses to talk to its local node.
//!
//! It finds the node through the data directory: [`crate::API_FILE`] says where the API listens and
//! [`crate::ADMIN_CREDENTIAL_FILE`] holds the credential it presents.

use crate::{
    ADMIN_CREDENTIAL_FILE, API_FILE, ApiError, ApiInfo, Event, EventsResponse, StatusReport,
    TokenRequest, TokenResponse,
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
    #[error("unexpected answer from the node: {0}")]
    Protocol(String),
}

/// A client bound to one node's API.
#[derive(Debug, Clone)]
pub struct Client {
    base: String,
    credential: String,
    http: reqwest::Client,
}

impl Client {
    /// A client for the node whose data directory is `data_dir`.
    pub fn from_data_dir(data_dir: &Path) -> Result<Client, ClientError> {
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
        let info: ApiInfo = serde_json::from_slice(&raw).map_err(|e| ClientError::Corrupt {
            path: api_path.clone(),
            detail: e.to_string(),
        })?;
        let cred_path = data_dir.join(ADMIN_CREDENTIAL_FILE);
        let credential = std::fs::read_to_string(&cred_path)
            .map_err(|source| ClientError::Read {
                path: cred_path,
                source,
            })?
            .trim()
            .to_string();
        Ok(Client::new(&info.url, &credential))
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
        }
    }

    pub fn base_url(&self) -> &str {
        &self.base
    }

    pub async fn status(&self) -> Result<StatusReport, ClientError> {
        self.get_json("/v1/status").await
    }

    pub async fn create_token(&self, req: &TokenRequest) -> Result<TokenResponse, ClientError> {
        let resp = self
            .http
            .post(format!("{}/v1/tokens", self.base))
            .bearer_auth(&self.credential)
            .timeout(Duration::from_secs(10))
            .json(req)
            .send()
            .await
            .map_err(|e| self.unreachable(e))?;
        Self::decode(resp).await
    }

    pub async fn events(&self) -> Result<Vec<Event>, ClientError> {
        let r: EventsResponse = self.get_json("/v1/events").await?;
        Ok(r.events)
    }

    /// Follows the node's event stream (server-sent events) from now on.
    pub async fn follow_events(&self) -> Result<EventStream, ClientError> {
        let resp = self
            .http
            .get(format!("{}/v1/events/stream", self.base))
            .bearer_auth(&self.credential)
            .send()
            .await
            .map_err(|e| self.unreachable(e))?;
        if !resp.status().is_success() {
            return Err(Self::error_of(resp).await);
        }
        Ok(EventStream {
            inner: Box::pin(resp.bytes_stream()),
            buf: Vec::new(),
        })
    }

    async fn get_json<T: serde::de::DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
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

    fn unreachable(&self, e: reqwest::Error) -> ClientError {
        ClientError::Unreachable {
            url: self.base.clone(),
            detail: e.without_url().to_string(),
        }
    }

    async fn decode<T: serde::de::DeserializeOwned>(
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

    async fn error_of(resp: reqwest::Response) -> ClientError {
        let status = resp.status();
        let body = resp.bytes().await.unwrap_or_default();
        match serde_json::from_slice::<ApiError>(&body) {
            Ok(e) => ClientError::Api(e.error),
            Err(_) => ClientError::Api(format!("HTTP {status}")),
        }
    }
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
