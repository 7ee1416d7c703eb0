//! The memory fabric's API types and client calls: `noodle put`, `get`, `ls`, `versions`, `rm`
//! and `query` (routes under `/v1/fabric`), and [`download`], which writes an object to a
//! local file one verified chunk at a time.

use crate::{Client, ClientError};
use futures_util::StreamExt;
use noodle_chunks::{ChunkId, Manifest};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::time::Duration;

/// `PUT /v1/fabric/objects/PATH`: make the uploaded file (its manifest) the path's new version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FabricPut {
    /// The manifest's chunk id (hex), uploaded before with [`crate::ChunkRoute::Fabric`].
    pub manifest: String,
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
}

/// One version of one object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FabricObject {
    pub path: String,
    /// The version's id: `WALL_MS.LOGICAL.NODE` (hybrid-logical time and the writing node).
    pub version: String,
    /// False for a removal (`noodle rm`).
    pub exists: bool,
    pub size: u64,
    /// The manifest's chunk id (hex); empty for a removal.
    pub manifest: String,
    pub tags: BTreeMap<String, String>,
    pub creator: String,
    /// The nodes that hold its chunks; none when it is kept in the records.
    pub replicas: Vec<String>,
    /// A small object kept in the cluster's replicated records: every node holds it.
    #[serde(default)]
    pub in_records: bool,
}

/// A list of objects (or of one object's versions).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct FabricList {
    pub objects: Vec<FabricObject>,
}

/// `PUT /v1/fabric/vectors/PATH`: attach an embedding to an object.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FabricVector {
    pub vector: Vec<f32>,
}

/// `POST /v1/fabric/near`: the objects under `prefix` whose embeddings are nearest to
/// `vector` (cosine similarity), at most `k`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FabricNear {
    pub vector: Vec<f32>,
    pub k: u32,
    pub prefix: String,
}

/// One answer of a nearest-vector query.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FabricHit {
    /// Cosine similarity to the query, in [-1, 1]; higher is nearer.
    pub score: f32,
    #[serde(flatten)]
    pub object: FabricObject,
}

/// The answers of a nearest-vector query, best first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct FabricHits {
    pub hits: Vec<FabricHit>,
}

/// `POST /v1/fabric/snapshots`: take a snapshot of a prefix.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FabricSnapshotCreate {
    pub prefix: String,
}

/// A snapshot: every path under `prefix` as it was when it was taken.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FabricSnapshot {
    pub id: u64,
    pub prefix: String,
    pub creator: String,
    pub created_at_ms: u64,
}

/// `GET /v1/fabric/snapshots?prefix=P`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct FabricSnapshots {
    pub snapshots: Vec<FabricSnapshot>,
}

/// `text` for a URL: unreserved characters as they are, `/` kept when `keep_slash`, every
/// other byte percent-encoded.
fn escape(text: &str, keep_slash: bool) -> String {
    // A `.` or `..` segment would be resolved away by URL parsing before the node could refuse
    // it (`/a/../b` would write `/b`): such a path goes with its slashes escaped, as one
    // segment that the node decodes and refuses.
    if keep_slash
        && text.split('/').any(|s| s == "." || s == "..")
        && let Some(rest) = text.strip_prefix('/')
    {
        return format!("/{}", escape(rest, false));
    }
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                out.push(b as char)
            }
            b'/' if keep_slash => out.push('/'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// A query parameter's value, percent-encoded.
pub(crate) fn query_escape(text: &str) -> String {
    escape(text, false)
}

/// Bytes an object may have to be put or read in one request ([`Client::fabric_put_small`],
/// [`Client::fabric_get_small`]); larger ones go by chunks.
pub const INLINE_MAX: usize = 1 << 20;

/// Chunks a download has in flight (each at most 4 MiB).
const GET_AHEAD: usize = 4;

/// Where a node keeps the fabric's chunk files, under its data directory.
pub fn store_dir(data_dir: &Path) -> std::path::PathBuf {
    data_dir.join("fabric").join("chunks")
}

/// How long a put may take: the node answers once two nodes hold the object durably.
const PUT_TIMEOUT: Duration = Duration::from_secs(600);

impl Client {
    /// Makes the uploaded manifest the new version of `path`.
    pub async fn fabric_put(
        &self,
        path: &str,
        put: &FabricPut,
    ) -> Result<FabricObject, ClientError> {
        let resp = self
            .http
            .put(format!(
                "{}/v1/fabric/objects{}",
                self.base,
                escape(path, true)
            ))
            .bearer_auth(&self.credential)
            .timeout(PUT_TIMEOUT)
            .json(put)
            .send()
            .await
            .map_err(|e| self.unreachable(e))?;
        Self::decode(resp).await
    }

    /// Puts a small object (at most [`INLINE_MAX`] bytes) in one request.
    pub async fn fabric_put_small(
        &self,
        path: &str,
        bytes: Vec<u8>,
        tags: &BTreeMap<String, String>,
    ) -> Result<FabricObject, ClientError> {
        let mut url = format!("{}/v1/fabric/data{}", self.base, escape(path, true));
        for (i, (k, v)) in tags.iter().enumerate() {
            let tag = if v.is_empty() {
                k.clone()
            } else {
                format!("{k}={v}")
            };
            url.push(if i == 0 { '?' } else { '&' });
            url.push_str(&format!("tag={}", query_escape(&tag)));
        }
        let resp = self
            .http
            .put(url)
            .bearer_auth(&self.credential)
            .timeout(PUT_TIMEOUT)
            .body(bytes)
            .send()
            .await
            .map_err(|e| self.unreachable(e))?;
        Self::decode(resp).await
    }

    /// A small object's bytes (at most [`INLINE_MAX`]) in one request, every chunk checked by
    /// the node.
    pub async fn fabric_get_small(
        &self,
        path: &str,
        version: Option<&str>,
    ) -> Result<Vec<u8>, ClientError> {
        let mut url = format!("{}/v1/fabric/data{}", self.base, escape(path, true));
        if let Some(v) = version {
            url.push_str(&format!("?version={}", query_escape(v)));
        }
        self.get_bytes(url).await
    }

    /// The version `path` shows now (or `version`).
    pub async fn fabric_object(
        &self,
        path: &str,
        version: Option<&str>,
    ) -> Result<FabricObject, ClientError> {
        let mut url = format!("/v1/fabric/objects{}", escape(path, true));
        if let Some(v) = version {
            url.push_str(&format!("?version={}", query_escape(v)));
        }
        self.get_json(&url).await
    }

    /// One chunk (or the manifest) of a version of `path`.
    pub async fn fabric_chunk(
        &self,
        path: &str,
        version: &str,
        id: &ChunkId,
    ) -> Result<Vec<u8>, ClientError> {
        self.get_bytes(format!(
            "{}/v1/fabric/chunks/{id}?path={}&version={}",
            self.base,
            query_escape(path),
            query_escape(version)
        ))
        .await
    }

    /// Chunk `id` read from the node's own store, if this client is the local admin's and the
    /// file is there and good; `None` sends the caller to the API (which also replaces a bad
    /// copy).
    async fn local_chunk(&self, id: ChunkId) -> Option<Vec<u8>> {
        let file = noodle_chunks::object_path(self.local_store.as_ref()?, &id);
        tokio::task::spawn_blocking(move || {
            let mut bytes = Vec::new();
            std::fs::File::open(file)
                .and_then(|f| {
                    std::io::Read::read_to_end(
                        &mut std::io::Read::take(f, noodle_chunks::MAX_OBJECT_BYTES as u64),
                        &mut bytes,
                    )
                })
                .ok()?;
            (ChunkId::of(&bytes) == id).then_some(bytes)
        })
        .await
        .ok()
        .flatten()
    }

    /// The body of a GET of `url`, as bytes.
    async fn get_bytes(&self, url: String) -> Result<Vec<u8>, ClientError> {
        let resp = self
            .http
            .get(url)
            .bearer_auth(&self.credential)
            .timeout(Duration::from_secs(120))
            .send()
            .await
            .map_err(|e| self.unreachable(e))?;
        if !resp.status().is_success() {
            return Err(Self::error_of(resp).await);
        }
        Ok(resp
            .bytes()
            .await
            .map_err(|e| ClientError::Protocol(e.to_string()))?
            .to_vec())
    }

    /// Removes `path` (a new version that is a removal; the old ones stay).
    pub async fn fabric_remove(&self, path: &str) -> Result<FabricObject, ClientError> {
        let url = format!("/v1/fabric/objects{}", escape(path, true));
        self.send_json::<(), _>(reqwest::Method::DELETE, &url, None)
            .await
    }

    /// The versions of `path`, newest first.
    pub async fn fabric_versions(&self, path: &str) -> Result<FabricList, ClientError> {
        self.get_json(&format!("/v1/fabric/versions{}", escape(path, true)))
            .await
    }

    /// The objects under `prefix`, in path order, after `after`, at most `limit`.
    pub async fn fabric_list(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: u32,
    ) -> Result<FabricList, ClientError> {
        let mut url = format!(
            "/v1/fabric/list?prefix={}&limit={limit}",
            query_escape(prefix)
        );
        if let Some(a) = after {
            url.push_str(&format!("&after={}", query_escape(a)));
        }
        self.get_json(&url).await
    }

    /// The objects under `prefix` whose current version has every tag of `tags` (`k=v`, or `k`
    /// for any value) and was written in `since..until` (ms since 1970, when given), at most
    /// `limit`.
    pub async fn fabric_query(
        &self,
        tags: &[String],
        prefix: &str,
        (since, until): (Option<u64>, Option<u64>),
        limit: u32,
    ) -> Result<FabricList, ClientError> {
        let mut url = format!(
            "/v1/fabric/query?prefix={}&limit={limit}",
            query_escape(prefix)
        );
        if let Some(ms) = since {
            url.push_str(&format!("&since={ms}"));
        }
        if let Some(ms) = until {
            url.push_str(&format!("&until={ms}"));
        }
        for t in tags {
            url.push_str(&format!("&tag={}", query_escape(t)));
        }
        self.get_json(&url).await
    }
}

impl Client {
    /// Attaches `vector` to the object `path`, replacing the one it had.
    pub async fn fabric_set_vector(
        &self,
        path: &str,
        vector: &FabricVector,
    ) -> Result<FabricObject, ClientError> {
        let url = format!("/v1/fabric/vectors{}", escape(path, true));
        self.send_json(reqwest::Method::PUT, &url, Some(vector))
            .await
    }

    /// Takes a snapshot of `prefix`.
    pub async fn fabric_snapshot(&self, prefix: &str) -> Result<FabricSnapshot, ClientError> {
        let body = FabricSnapshotCreate {
            prefix: prefix.to_string(),
        };
        self.send_json(reqwest::Method::POST, "/v1/fabric/snapshots", Some(&body))
            .await
    }

    /// The snapshots of prefixes under `prefix`.
    pub async fn fabric_snapshots(&self, prefix: &str) -> Result<FabricSnapshots, ClientError> {
        self.get_json(&format!(
            "/v1/fabric/snapshots?prefix={}",
            query_escape(prefix)
        ))
        .await
    }

    /// Forgets snapshot `id`.
    pub async fn fabric_snapshot_remove(&self, id: u64) -> Result<FabricSnapshot, ClientError> {
        self.send_json::<(), _>(
            reqwest::Method::DELETE,
            &format!("/v1/fabric/snapshots/{id}"),
            None,
        )
        .await
    }

    /// The version `path` showed in snapshot `id`.
    pub async fn fabric_object_in(
        &self,
        path: &str,
        snapshot: u64,
    ) -> Result<FabricObject, ClientError> {
        self.get_json(&format!(
            "/v1/fabric/objects{}?snapshot={snapshot}",
            escape(path, true)
        ))
        .await
    }

    /// The objects nearest to a query vector.
    pub async fn fabric_near(&self, near: &FabricNear) -> Result<FabricHits, ClientError> {
        self.send_json(reqwest::Method::POST, "/v1/fabric/near", Some(near))
            .await
    }
}

/// Why a download failed.
#[derive(Debug, thiserror::Error)]
pub enum DownloadError {
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error("the node sent a chunk that does not match its id ({0})")]
    Corrupt(ChunkId),
    #[error("the object's manifest is unreadable: {0}")]
    Manifest(String),
    #[error("{path}: {source}")]
    Io {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
}

/// Writes version `object` of its path to the file `dest`, which appears (atomically) only
/// once complete (see [`download_into`]).
pub async fn download(
    client: &Client,
    object: &FabricObject,
    dest: &Path,
    progress: impl Fn(u64, u64),
) -> Result<(), DownloadError> {
    let io = |source| DownloadError::Io {
        path: dest.to_owned(),
        source,
    };
    let dir = dest
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(io)?;
    download_into(client, object, &mut tmp, dest, progress).await?;
    tmp.as_file().sync_all().map_err(io)?;
    tmp.persist(dest).map_err(|e| io(e.error))?;
    Ok(())
}

/// Writes version `object` of its path to `out` (named `name` in errors): the manifest, then
/// each chunk, every one checked against its id, a few chunks in memory at a time. Reports the
/// bytes written so far to `progress`.
pub async fn download_into(
    client: &Client,
    object: &FabricObject,
    out: &mut impl Write,
    name: &Path,
    progress: impl Fn(u64, u64),
) -> Result<(), DownloadError> {
    let io = |source| DownloadError::Io {
        path: name.to_owned(),
        source,
    };
    let manifest_id: ChunkId = object
        .manifest
        .parse()
        .map_err(|e: noodle_chunks::ParseChunkIdError| DownloadError::Manifest(e.to_string()))?;
    let fetch = |id: ChunkId| async move {
        if let Some(bytes) = client.local_chunk(id).await {
            return Ok(bytes);
        }
        let bytes = client
            .fabric_chunk(&object.path, &object.version, &id)
            .await?;
        // Checked off the async threads: a chunk is up to 4 MiB.
        let (bytes, good) = tokio::task::spawn_blocking(move || {
            let good = ChunkId::of(&bytes) == id;
            (bytes, good)
        })
        .await
        .map_err(|e| DownloadError::Io {
            path: name.to_owned(),
            source: std::io::Error::other(e),
        })?;
        if !good {
            return Err(DownloadError::Corrupt(id));
        }
        Ok(bytes)
    };
    let manifest = Manifest::decode(&fetch(manifest_id).await?)
        .map_err(|e| DownloadError::Manifest(e.to_string()))?;
    let total = manifest.size();
    let mut done = 0u64;
    progress(done, total);
    // A few chunks in flight, written in order: at most GET_AHEAD chunks in memory.
    let mut chunks = futures_util::stream::iter(manifest.chunks().iter().map(|(id, _)| fetch(*id)))
        .buffered(GET_AHEAD);
    while let Some(bytes) = chunks.next().await {
        let bytes = bytes?;
        out.write_all(&bytes).map_err(io)?;
        done += bytes.len() as u64;
        progress(done, total);
    }
    out.flush().map_err(io)?;
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// Beside the node, as its admin, chunks come from the node's files (no request: the API
    /// here answers nothing); a bad file is never returned, the API is asked instead.
    #[tokio::test]
    async fn the_local_admin_reads_chunks_from_the_store_and_never_a_bad_one() {
        let dir = tempfile::tempdir().unwrap();
        let info = crate::ApiInfo {
            url: "http://127.0.0.1:1".into(),
            pid: 0,
            node_id: "n1".into(),
        };
        std::fs::write(
            dir.path().join(crate::API_FILE),
            serde_json::to_vec(&info).unwrap(),
        )
        .unwrap();
        std::fs::write(dir.path().join(crate::ADMIN_CREDENTIAL_FILE), "admin").unwrap();
        let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let chunk = ChunkId::of(&data);
        let manifest = Manifest::new(data.len() as u64, vec![(chunk, data.len() as u32)]).unwrap();
        let store = noodle_chunks::Store::open(store_dir(dir.path()), 1 << 30).unwrap();
        store.put(&chunk, &data).unwrap();
        store.put(&manifest.id(), &manifest.encode()).unwrap();
        let object = FabricObject {
            path: "/a".into(),
            version: "1.0.n1".into(),
            exists: true,
            size: data.len() as u64,
            manifest: manifest.id().to_hex(),
            tags: BTreeMap::new(),
            creator: "admin".into(),
            replicas: vec!["n1".into()],
            in_records: false,
        };
        let client = Client::from_data_dir(dir.path()).unwrap();
        let mut out = Vec::new();
        download_into(&client, &object, &mut out, Path::new("a"), |_, _| {})
            .await
            .unwrap();
        assert_eq!(out, data);

        let file = noodle_chunks::object_path(&store_dir(dir.path()), &chunk);
        let mut bad = data.clone();
        bad[7] ^= 1;
        std::fs::write(&file, &bad).unwrap();
        let mut out = Vec::new();
        let err = download_into(&client, &object, &mut out, Path::new("a"), |_, _| {})
            .await
            .unwrap_err();
        assert!(err.to_string().contains("127.0.0.1:1"), "{err}");
        assert!(out.is_empty());
        // A client with a token (not the node's admin) never reads the node's files.
        let with_token = Client::connect(dir.path(), Some("a-token")).unwrap();
        std::fs::write(&file, &data).unwrap();
        assert!(
            download_into(
                &with_token,
                &object,
                &mut Vec::new(),
                Path::new("a"),
                |_, _| {}
            )
            .await
            .is_err()
        );
    }

    #[test]
    fn paths_and_values_are_escaped_for_urls() {
        assert_eq!(escape("/a b/ü?#%", true), "/a%20b/%C3%BC%3F%23%25");
        assert_eq!(query_escape("/m/x=y&z"), "%2Fm%2Fx%3Dy%26z");
        assert_eq!(escape("plain-._~", false), "plain-._~");
    }
}
