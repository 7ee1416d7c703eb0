//! The fabric's part of the replicated state, as the control plane's state machine `fabric`
//! ([`FabricMachine`]), and a reader over it ([`FabricView`]). Metadata only: which versions
//! a path has, their manifests (by chunk id), sizes, tags and the nodes that hold their
//! chunks. Pure: the same commands give the same records on every node.
//!
//! | key | value |
//! | --- | --- |
//! | `v/` + path + `\0` + version id | a [`Version`] (postcard); every version, tombstones too |
//! | `h/` + path | the [`VersionId`] the path shows now (the newest, tombstone or not) |
//! | `t/` + tag key + `\0` + tag value + `\0` + path | empty: the path's current version has the tag |
//! | `e/` + path | the path's embedding (postcard `Vec<f32>`), until the path is removed |
//! | `d/` + namespace | the dimension of the namespace's embeddings (u32, big-endian) |
//! | `c/` + change number (u64, big-endian) | a path whose embedding changed (the last [`limits::VECTOR_CHANGES_KEPT`]) |
//! | `m/vectors` | the number of the last embedding change |
//! | `n/` + path + `\0` + version id | the version's write number (u64, big-endian): when it was applied |
//! | `m/writes` | the number of the last version written |
//! | `s/` + snapshot id (u64, big-endian) | a [`Snapshot`] (postcard) |
//! | `m/snapshots` | the last snapshot id |
//! | `m/kept` | the bytes of the small objects kept in the records (u64, big-endian) |
//!
//! A snapshot of a prefix shows, for each path under it, the version the path showed when
//! the snapshot was taken: the newest of the versions whose write number is at most the
//! snapshot's. (Versions written before write numbers existed count as written at 0.)
//!
//! A small object (at most [`limits::KEPT_BYTES_MAX`] bytes) may be kept in the records
//! themselves ([`Content::bytes`]): it is then as durable as the entry that wrote it (on a
//! majority of the voters once committed), every node holds it, and its write costs no chunk
//! files and no copy. `m/kept` counts these bytes; a writer keeps the total near
//! [`limits::KEPT_TOTAL_MAX`] by storing larger amounts in chunks instead.
//!
//! Versions are ordered by [`VersionId`] (hybrid-logical time, then the writing node), so two
//! nodes writing one path at once both keep their version, and every node agrees on which one
//! the path shows.

use crate::grants;
use crate::hlc::Hlc;
use crate::path::{ObjectPath, Prefix};
use noodle_control::{Applied, DbError, MachineTable, MachineView, Needs, Rejection, StateMachine};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The state machine's name, the fabric subsystem's.
pub const NAME: &str = "fabric";

const VERSION: &[u8] = b"v/";
const HEAD: &[u8] = b"h/";
const TAG: &[u8] = b"t/";
const EMBEDDING: &[u8] = b"e/";
const DIMENSION: &[u8] = b"d/";
const CHANGE: &[u8] = b"c/";
const CHANGES: &[u8] = b"m/vectors";
const WRITE_NUMBER: &[u8] = b"n/";
const WRITES: &[u8] = b"m/writes";
const SNAPSHOT: &[u8] = b"s/";
const SNAPSHOTS: &[u8] = b"m/snapshots";
const KEPT: &[u8] = b"m/kept";

/// Bounds on what a command may carry.
pub mod limits {
    pub const TAGS_MAX: usize = 32;
    pub const TAG_KEY_BYTES_MAX: usize = 64;
    pub const TAG_VALUE_BYTES_MAX: usize = 256;
    pub const REPLICAS_MAX: usize = 16;
    pub const NODE_ID_BYTES_MAX: usize = 128;
    pub const CREATOR_BYTES_MAX: usize = 256;
    /// Versions one read returns at most.
    pub const VERSIONS_LISTED_MAX: usize = 1000;
    /// Embedding changes remembered, for nodes to bring their index up to date; a node
    /// further behind rebuilds it from the embeddings.
    pub const VECTOR_CHANGES_KEPT: u64 = 4096;
    /// Versions one `Forget` names at most.
    pub const FORGET_MAX: usize = 1000;
    /// Snapshots kept at once, at most.
    pub const SNAPSHOTS_MAX: usize = 10_000;
    /// The largest object kept in the records rather than in chunks.
    pub const KEPT_BYTES_MAX: usize = 16 << 10;
    /// Bytes of objects kept in the records that writers aim to stay under (they check it
    /// before writing, so concurrent writes can pass it by a few objects): every node holds
    /// them all, and a new node receives them with the records.
    pub const KEPT_TOTAL_MAX: u64 = 64 << 20;
    /// How far concurrent writes may take the total past [`KEPT_TOTAL_MAX`]; a write beyond
    /// is refused.
    pub const KEPT_OVER_MAX: u64 = 16 << 20;
}

/// Which version: its time, then the node that wrote it (ties between nodes).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct VersionId {
    pub hlc: Hlc,
    pub node: String,
}

impl VersionId {
    fn key(&self) -> Vec<u8> {
        [&self.hlc.to_key()[..], self.node.as_bytes()].concat()
    }
}

/// What a version holds: an object's content, or nothing (a tombstone: `rm`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Content {
    /// The chunk id of the object's manifest (`noodle_chunks::Manifest`).
    pub manifest: [u8; 32],
    pub size: u64,
    /// Nodes that hold every chunk of it; none when the bytes are kept in the records.
    pub replicas: Vec<String>,
    /// A small object's bytes, kept in the records (see the module documentation); its
    /// manifest is then [`manifest_of`] them and no node stores its chunks.
    #[serde(with = "serde_bytes")]
    pub bytes: Option<Vec<u8>>,
}

/// The manifest a store gives `bytes` of one chunk at most (no chunk when empty).
pub fn manifest_of(bytes: &[u8]) -> noodle_chunks::Manifest {
    let chunks = if bytes.is_empty() {
        Vec::new()
    } else {
        vec![(noodle_chunks::ChunkId::of(bytes), bytes.len() as u32)]
    };
    // One chunk of at most KEPT_BYTES_MAX: within every bound `Manifest::new` checks.
    noodle_chunks::Manifest::new(bytes.len() as u64, chunks)
        .unwrap_or_else(|e| unreachable!("a manifest of one small chunk: {e}"))
}

/// One version of one path. Immutable once written, except for where its chunks are.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Version {
    pub id: VersionId,
    /// Who wrote it (the audit actor).
    pub creator: String,
    pub tags: BTreeMap<String, String>,
    /// `None`: the path was removed at this version.
    pub content: Option<Content>,
}

/// A change to the fabric's metadata.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum FabricCommand {
    /// A new version of `path` (content or tombstone), once its chunks are durable where
    /// `content.replicas` says.
    Write { path: String, version: Version },
    /// Where the chunks of a version are now (after repair).
    SetReplicas {
        path: String,
        id: VersionId,
        replicas: Vec<String>,
    },
    /// Attaches an embedding to the object `path` (which must exist), replacing its old one.
    /// Every embedding of a namespace (a path's first segment) has one dimension.
    SetVector { path: String, vector: Vec<f32> },
    /// Takes a snapshot of `prefix`; answered with its id.
    Snapshot {
        prefix: String,
        creator: String,
        at_ms: u64,
    },
    /// Forgets a snapshot (its versions may then be collected).
    RemoveSnapshot { id: u64 },
    /// Forgets old versions of `path` (the retention policy, on the leader): never the one
    /// the path shows, never one a snapshot shows; those are skipped.
    Forget { path: String, ids: Vec<VersionId> },
}

/// A prefix as it was at one moment: every path under it shows the version it showed then.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    pub id: u64,
    pub prefix: String,
    /// Versions written up to this write number are in it.
    pub writes: u64,
    pub creator: String,
    pub at_ms: u64,
}

/// Encodes a command for [`noodle_control::Proposal::machine`].
pub fn encode(command: &FabricCommand) -> Vec<u8> {
    // Our own in-memory type into a Vec: cannot fail.
    postcard::to_allocvec(command).unwrap_or_default()
}

fn db(e: impl std::fmt::Display) -> DbError {
    DbError(e.to_string())
}

fn version_key(path: &str, id: &VersionId) -> Vec<u8> {
    [VERSION, path.as_bytes(), b"\0", &id.key()].concat()
}

fn head_key(path: &str) -> Vec<u8> {
    [HEAD, path.as_bytes()].concat()
}

fn tag_key(key: &str, value: &str, path: &str) -> Vec<u8> {
    [
        TAG,
        key.as_bytes(),
        b"\0",
        value.as_bytes(),
        b"\0",
        path.as_bytes(),
    ]
    .concat()
}

fn check_replicas(replicas: &[String]) -> Result<(), String> {
    if replicas.len() > limits::REPLICAS_MAX
        || replicas
            .iter()
            .any(|r| r.is_empty() || r.len() > limits::NODE_ID_BYTES_MAX)
    {
        return Err(format!(
            "at most {} replicas, each a node id of 1 to {} bytes",
            limits::REPLICAS_MAX,
            limits::NODE_ID_BYTES_MAX
        ));
    }
    Ok(())
}

fn check_node(node: &str) -> Result<(), String> {
    if node.is_empty() || node.len() > limits::NODE_ID_BYTES_MAX {
        return Err("a version's node id must be 1 to 128 bytes".into());
    }
    Ok(())
}

/// Checks a tag's key and value.
pub fn check_tag(key: &str, value: &str) -> Result<(), String> {
    let bad = |s: &str| s.contains('\0') || s.chars().any(char::is_control);
    if key.is_empty() || key.len() > limits::TAG_KEY_BYTES_MAX || bad(key) || key.contains('=') {
        return Err(format!(
            "a tag key is 1 to {} bytes without `=` or control characters",
            limits::TAG_KEY_BYTES_MAX
        ));
    }
    if value.len() > limits::TAG_VALUE_BYTES_MAX || bad(value) {
        return Err(format!(
            "a tag value is at most {} bytes without control characters",
            limits::TAG_VALUE_BYTES_MAX
        ));
    }
    Ok(())
}

fn check(command: &FabricCommand) -> Result<(), String> {
    match command {
        FabricCommand::Write { path, version } => {
            ObjectPath::parse(path).map_err(|e| e.to_string())?;
            check_node(&version.id.node)?;
            if version.creator.len() > limits::CREATOR_BYTES_MAX {
                return Err("a version's creator is at most 256 bytes".into());
            }
            if version.tags.len() > limits::TAGS_MAX {
                return Err(format!("at most {} tags", limits::TAGS_MAX));
            }
            for (k, v) in &version.tags {
                check_tag(k, v)?;
            }
            if let Some(content) = &version.content {
                check_replicas(&content.replicas)?;
                match &content.bytes {
                    None if content.replicas.is_empty() => {
                        return Err("a version with content is held by at least one node".into());
                    }
                    None => {}
                    Some(bytes) => {
                        if bytes.len() > limits::KEPT_BYTES_MAX {
                            return Err(format!(
                                "an object kept in the records is at most {} bytes",
                                limits::KEPT_BYTES_MAX
                            ));
                        }
                        if bytes.len() as u64 != content.size
                            || manifest_of(bytes).id().0 != content.manifest
                            || !content.replicas.is_empty()
                        {
                            return Err(
                                "an object kept in the records has the size and manifest of \
                                 its bytes, and no replicas"
                                    .into(),
                            );
                        }
                    }
                }
            } else if !version.tags.is_empty() {
                return Err("a removal carries no tags".into());
            }
            Ok(())
        }
        FabricCommand::SetReplicas { path, id, replicas } => {
            ObjectPath::parse(path).map_err(|e| e.to_string())?;
            check_node(&id.node)?;
            check_replicas(replicas)
        }
        FabricCommand::SetVector { path, vector } => {
            ObjectPath::parse(path).map_err(|e| e.to_string())?;
            crate::vector::check(vector).map_err(|e| e.to_string())
        }
        FabricCommand::Snapshot {
            prefix, creator, ..
        } => {
            Prefix::parse(prefix).map_err(|e| e.to_string())?;
            if creator.len() > limits::CREATOR_BYTES_MAX {
                return Err("a snapshot's creator is at most 256 bytes".into());
            }
            Ok(())
        }
        FabricCommand::RemoveSnapshot { .. } => Ok(()),
        FabricCommand::Forget { path, ids } => {
            ObjectPath::parse(path).map_err(|e| e.to_string())?;
            if ids.len() > limits::FORGET_MAX {
                return Err(format!(
                    "at most {} versions forgotten at once",
                    limits::FORGET_MAX
                ));
            }
            Ok(())
        }
    }
}

fn decode(command: &[u8]) -> Result<FabricCommand, Rejection> {
    postcard::from_bytes(command).map_err(|e| Rejection(format!("unreadable fabric command: {e}")))
}

fn read_version(bytes: &[u8]) -> Result<Version, DbError> {
    postcard::from_bytes(bytes).map_err(db)
}

/// Applies fabric commands; see the module documentation for the keys.
#[derive(Debug, Default)]
pub struct FabricMachine;

impl StateMachine for FabricMachine {
    fn name(&self) -> &'static str {
        NAME
    }

    fn validate(&self, command: &[u8]) -> Result<(), Rejection> {
        check(&decode(command)?).map_err(Rejection)
    }

    /// From a node that is not a voter: a new version only with a person's token that may
    /// write its path, or under a prefix a job placed on the node may write
    /// ([`crate::grants`]); where a version's copies are, from the node that wrote it, with no
    /// token (its own bookkeeping).
    fn forwarding(&self, view: &MachineView<'_>, caller: &str, command: &[u8]) -> Vec<Needs> {
        vec![match decode(command) {
            // A job placed on the node, given `--write` by someone who had the right.
            Ok(FabricCommand::Write { path, .. })
                if grants::granted(&view.machine(grants::HOLDER), caller, &path) =>
            {
                Needs::Node
            }
            Ok(FabricCommand::Write { path, .. }) => Needs::right("fabric", "write", Some(&path)),
            Ok(FabricCommand::SetVector { path, .. })
            | Ok(FabricCommand::Snapshot { prefix: path, .. }) => {
                Needs::right("fabric", "write", Some(&path))
            }
            Ok(FabricCommand::RemoveSnapshot { id }) => {
                let prefix = FabricView {
                    view: view.machine(NAME),
                }
                .snapshot(id)
                .ok()
                .flatten()
                .map_or_else(|| "/".to_string(), |s| s.prefix);
                Needs::right("fabric", "write", Some(&prefix))
            }
            Ok(FabricCommand::SetReplicas { .. }) => Needs::Node,
            Ok(FabricCommand::Forget { .. }) | Err(_) => Needs::Voter,
        }]
    }

    /// A node writes versions, and records their copies, in its own name only.
    fn may_forward(
        &self,
        _view: &MachineView<'_>,
        caller: &str,
        command: &[u8],
    ) -> Result<(), Rejection> {
        let writer = match decode(command)? {
            FabricCommand::Write { version, .. } => version.id.node,
            FabricCommand::SetReplicas { id, .. } => id.node,
            FabricCommand::SetVector { .. }
            | FabricCommand::Snapshot { .. }
            | FabricCommand::RemoveSnapshot { .. }
            | FabricCommand::Forget { .. } => return Ok(()),
        };
        if writer != caller {
            return Err(Rejection(format!(
                "node {caller} may not write a version in the name of node {writer}"
            )));
        }
        Ok(())
    }

    fn apply(&self, t: &mut MachineTable<'_, '_>, command: &[u8]) -> Result<Applied, DbError> {
        let command = match decode(command) {
            Ok(c) => c,
            Err(e) => return Ok(Applied::Rejected(e)),
        };
        if let Err(e) = check(&command) {
            return Ok(Applied::Rejected(Rejection(e)));
        }
        match command {
            FabricCommand::Write { path, version } => {
                let key = version_key(&path, &version.id);
                if t.get(&key)?.is_some() {
                    // Written already (a proposal sent again): versions are immutable.
                    return Ok(Applied::Done);
                }
                let kept = kept_len(&version);
                if kept > 0 {
                    let total = read_u64(t.get(KEPT)?).saturating_add(kept);
                    if total > limits::KEPT_TOTAL_MAX + limits::KEPT_OVER_MAX {
                        return Ok(Applied::Rejected(Rejection(format!(
                            "the records keep {} bytes of small objects already: store it in \
                             chunks",
                            total - kept
                        ))));
                    }
                    t.insert(KEPT, &total.to_be_bytes())?;
                }
                t.insert(&key, &postcard::to_allocvec(&version).map_err(db)?)?;
                let n = read_u64(t.get(WRITES)?) + 1;
                t.insert(WRITES, &n.to_be_bytes())?;
                t.insert(&number_key(&path, &version.id), &n.to_be_bytes())?;
                let head = match t.get(&head_key(&path))? {
                    Some(b) => Some(postcard::from_bytes::<VersionId>(&b).map_err(db)?),
                    None => None,
                };
                // The path shows the newest version; an older one arriving late is kept but
                // does not take the path back.
                if head.as_ref().is_none_or(|h| version.id > *h) {
                    if let Some(old) = head
                        && let Some(bytes) = t.get(&version_key(&path, &old))?
                    {
                        for (k, v) in read_version(&bytes)?.tags {
                            t.remove(&tag_key(&k, &v, &path))?;
                        }
                    }
                    for (k, v) in &version.tags {
                        t.insert(&tag_key(k, v, &path), &[])?;
                    }
                    if version.content.is_none() && t.remove(&embedding_key(&path))? {
                        vector_changed(t, &path)?;
                    }
                    t.insert(
                        &head_key(&path),
                        &postcard::to_allocvec(&version.id).map_err(db)?,
                    )?;
                }
                Ok(Applied::Done)
            }
            FabricCommand::SetReplicas { path, id, replicas } => {
                let key = version_key(&path, &id);
                let Some(bytes) = t.get(&key)? else {
                    return Ok(Applied::Rejected(Rejection(format!(
                        "{path} has no version {}.{} of node {}",
                        id.hlc.wall_ms, id.hlc.logical, id.node
                    ))));
                };
                let mut version = read_version(&bytes)?;
                let Some(content) = version.content.as_mut() else {
                    return Ok(Applied::Rejected(Rejection(format!(
                        "that version of {path} is a removal: it has no chunks"
                    ))));
                };
                if content.bytes.is_some() {
                    return Ok(Applied::Rejected(Rejection(format!(
                        "that version of {path} is kept in the records: it has no chunks"
                    ))));
                }
                if replicas.is_empty() {
                    return Ok(Applied::Rejected(Rejection(
                        "a version with content is held by at least one node".into(),
                    )));
                }
                content.replicas = replicas;
                t.insert(&key, &postcard::to_allocvec(&version).map_err(db)?)?;
                Ok(Applied::Done)
            }
            FabricCommand::SetVector { path, vector } => {
                let Ok(object) = ObjectPath::parse(&path) else {
                    return Ok(Applied::Rejected(Rejection("bad path".into())));
                };
                if !exists(t, &object)? {
                    return Ok(Applied::Rejected(Rejection(format!(
                        "there is no {path} to attach a vector to: put the object first"
                    ))));
                }
                let namespace = crate::vector::namespace(&path).unwrap_or_default();
                let dim_key = [DIMENSION, namespace.as_bytes()].concat();
                let dim = vector.len() as u32;
                match t
                    .get(&dim_key)?
                    .and_then(|b| <[u8; 4]>::try_from(b.as_slice()).ok())
                {
                    Some(d) if u32::from_be_bytes(d) != dim => {
                        return Ok(Applied::Rejected(Rejection(format!(
                            "a vector of dimension {dim}: the vectors under /{namespace}/ have dimension {}",
                            u32::from_be_bytes(d)
                        ))));
                    }
                    Some(_) => {}
                    None => t.insert(&dim_key, &dim.to_be_bytes())?,
                }
                t.insert(
                    &embedding_key(&path),
                    &postcard::to_allocvec(&vector).map_err(db)?,
                )?;
                vector_changed(t, &path)?;
                Ok(Applied::Done)
            }
            FabricCommand::Snapshot {
                prefix,
                creator,
                at_ms,
            } => {
                if snapshots_in(&*t, limits::SNAPSHOTS_MAX)?.len() >= limits::SNAPSHOTS_MAX {
                    return Ok(Applied::Rejected(Rejection(format!(
                        "{} snapshots exist, the most there may be: remove some first",
                        limits::SNAPSHOTS_MAX
                    ))));
                }
                let id = read_u64(t.get(SNAPSHOTS)?) + 1;
                let snapshot = Snapshot {
                    id,
                    prefix,
                    writes: read_u64(t.get(WRITES)?),
                    creator,
                    at_ms,
                };
                t.insert(SNAPSHOTS, &id.to_be_bytes())?;
                t.insert(
                    &snapshot_key(id),
                    &postcard::to_allocvec(&snapshot).map_err(db)?,
                )?;
                Ok(Applied::Created(id))
            }
            FabricCommand::RemoveSnapshot { id } => {
                if !t.remove(&snapshot_key(id))? {
                    return Ok(Applied::Rejected(Rejection(format!(
                        "there is no snapshot {id}"
                    ))));
                }
                Ok(Applied::Done)
            }
            FabricCommand::Forget { path, ids } => {
                let Ok(object) = ObjectPath::parse(&path) else {
                    return Ok(Applied::Rejected(Rejection("bad path".into())));
                };
                let head = t.get(&head_key(&path))?;
                let mut held = Vec::new();
                for snap in snapshots_in(&*t, limits::SNAPSHOTS_MAX)? {
                    if object.as_str().starts_with(&snap.prefix)
                        && let Some(v) = version_at_in(&*t, &object, &snap)?
                    {
                        held.push(v.id);
                    }
                }
                for id in ids {
                    let is_head = head.as_deref().is_some_and(|h| {
                        postcard::from_bytes::<VersionId>(h).ok() == Some(id.clone())
                    });
                    if is_head || held.contains(&id) {
                        continue;
                    }
                    if let Some(bytes) = t.get(&version_key(&path, &id))? {
                        let kept = kept_len(&read_version(&bytes)?);
                        if kept > 0 {
                            let total = read_u64(t.get(KEPT)?).saturating_sub(kept);
                            t.insert(KEPT, &total.to_be_bytes())?;
                        }
                    }
                    t.remove(&version_key(&path, &id))?;
                    t.remove(&number_key(&path, &id))?;
                }
                Ok(Applied::Done)
            }
        }
    }
}

fn snapshots_in(r: &dyn noodle_control::Records, limit: usize) -> Result<Vec<Snapshot>, DbError> {
    r.scan(SNAPSHOT, b"", limit, false)?
        .iter()
        .map(|(_, v)| postcard::from_bytes(v).map_err(db))
        .collect()
}

fn versions_in(
    r: &dyn noodle_control::Records,
    path: &ObjectPath,
    limit: usize,
) -> Result<Vec<Version>, DbError> {
    let under = [VERSION, path.as_str().as_bytes(), b"\0"].concat();
    let limit = limit.min(limits::VERSIONS_LISTED_MAX);
    r.scan(&under, b"", limit, true)?
        .iter()
        .map(|(_, v)| read_version(v))
        .collect()
}

fn version_at_in(
    r: &dyn noodle_control::Records,
    path: &ObjectPath,
    snapshot: &Snapshot,
) -> Result<Option<Version>, DbError> {
    for version in versions_in(r, path, limits::VERSIONS_LISTED_MAX)? {
        let written = read_u64(r.get(&number_key(path.as_str(), &version.id))?);
        if written <= snapshot.writes {
            return Ok(Some(version));
        }
    }
    Ok(None)
}

/// The bytes `version` keeps in the records.
fn kept_len(version: &Version) -> u64 {
    version
        .content
        .as_ref()
        .and_then(|c| c.bytes.as_ref())
        .map_or(0, |b| b.len() as u64)
}

fn number_key(path: &str, id: &VersionId) -> Vec<u8> {
    [WRITE_NUMBER, path.as_bytes(), b"\0", &id.key()].concat()
}

fn snapshot_key(id: u64) -> Vec<u8> {
    [SNAPSHOT, &id.to_be_bytes()[..]].concat()
}

/// Whether `path` shows an object (not a removal) in `t`.
fn exists(t: &MachineTable<'_, '_>, path: &ObjectPath) -> Result<bool, DbError> {
    let Some(id) = t.get(&head_key(path.as_str()))? else {
        return Ok(false);
    };
    let id: VersionId = postcard::from_bytes(&id).map_err(db)?;
    Ok(match t.get(&version_key(path.as_str(), &id))? {
        Some(b) => read_version(&b)?.content.is_some(),
        None => false,
    })
}

fn embedding_key(path: &str) -> Vec<u8> {
    [EMBEDDING, path.as_bytes()].concat()
}

fn read_u64(bytes: Option<Vec<u8>>) -> u64 {
    bytes
        .and_then(|b| <[u8; 8]>::try_from(b.as_slice()).ok())
        .map_or(0, u64::from_be_bytes)
}

/// Records that `path`'s embedding changed, forgetting the change
/// [`limits::VECTOR_CHANGES_KEPT`] before it.
fn vector_changed(t: &mut MachineTable<'_, '_>, path: &str) -> Result<(), DbError> {
    let n = read_u64(t.get(CHANGES)?) + 1;
    t.insert(CHANGES, &n.to_be_bytes())?;
    t.insert(&[CHANGE, &n.to_be_bytes()].concat(), path.as_bytes())?;
    if let Some(old) = n.checked_sub(limits::VECTOR_CHANGES_KEPT) {
        t.remove(&[CHANGE, &old.to_be_bytes()].concat())?;
    }
    Ok(())
}

/// Reads the fabric's records at one applied index.
pub struct FabricView<'v> {
    view: MachineView<'v>,
}

/// The fabric's records in `state`.
pub fn view<'v>(state: &'v noodle_control::StateView) -> FabricView<'v> {
    FabricView {
        view: state.machine(NAME),
    }
}

impl FabricView<'_> {
    /// Snapshot `id`, if it exists.
    pub fn snapshot(&self, id: u64) -> Result<Option<Snapshot>, DbError> {
        self.view
            .get(&snapshot_key(id))?
            .map(|b| postcard::from_bytes(&b).map_err(db))
            .transpose()
    }

    /// The snapshots, oldest first, at most `limit`.
    pub fn snapshots(&self, limit: usize) -> Result<Vec<Snapshot>, DbError> {
        snapshots_in(&self.view, limit)
    }

    /// The version `path` showed when `snapshot` was taken (a removal included), if any.
    pub fn version_at(
        &self,
        path: &ObjectPath,
        snapshot: &Snapshot,
    ) -> Result<Option<Version>, DbError> {
        version_at_in(&self.view, path, snapshot)
    }

    /// The bytes of the small objects kept in the records ([`Content::bytes`]).
    pub fn kept_bytes(&self) -> Result<u64, DbError> {
        Ok(read_u64(self.view.get(KEPT)?))
    }

    /// The number of the last embedding change (0: none yet).
    pub fn vector_changes(&self) -> Result<u64, DbError> {
        Ok(read_u64(self.view.get(CHANGES)?))
    }

    /// The paths whose embeddings changed after change `after`, with the change numbers, at
    /// most `limit`; `None` if changes after `after` were forgotten already (then rebuild).
    pub fn vector_changes_after(
        &self,
        after: u64,
        limit: usize,
    ) -> Result<Option<Vec<(u64, String)>>, DbError> {
        let page = self
            .view
            .scan(CHANGE, &(after + 1).to_be_bytes(), limit, false)?;
        let changes: Vec<(u64, String)> = page
            .into_iter()
            .map(|(k, v)| (read_u64(Some(k)), String::from_utf8_lossy(&v).into_owned()))
            .collect();
        let last = self.vector_changes()?;
        if last > after && changes.first().is_none_or(|(n, _)| *n != after + 1) {
            return Ok(None);
        }
        Ok(Some(changes))
    }

    /// `path`'s embedding, if it has one.
    pub fn vector(&self, path: &str) -> Result<Option<Vec<f32>>, DbError> {
        self.view
            .get(&embedding_key(path))?
            .map(|b| postcard::from_bytes(&b).map_err(db))
            .transpose()
    }

    /// Embeddings in path order after `after` (exclusive; empty: from the start), at most
    /// `limit`.
    pub fn vectors(&self, after: &str, limit: usize) -> Result<Vec<(String, Vec<f32>)>, DbError> {
        let from = if after.is_empty() {
            Vec::new()
        } else {
            [after.as_bytes(), b"\0"].concat()
        };
        self.view
            .scan(EMBEDDING, &from, limit, false)?
            .into_iter()
            .map(|(k, v)| {
                Ok((
                    String::from_utf8_lossy(&k).into_owned(),
                    postcard::from_bytes(&v).map_err(db)?,
                ))
            })
            .collect()
    }

    /// The version `path` shows now, unless it was removed.
    pub fn head(&self, path: &ObjectPath) -> Result<Option<Version>, DbError> {
        let Some(id) = self.view.get(&head_key(path.as_str()))? else {
            return Ok(None);
        };
        let id: VersionId = postcard::from_bytes(&id).map_err(db)?;
        Ok(self.version(path, &id)?.filter(|v| v.content.is_some()))
    }

    /// Versions of every path in key order after `after` (a key this returned, or empty),
    /// at most `limit`, with their keys: how repair walks the whole fabric a page at a time.
    pub fn all_versions(
        &self,
        after: &[u8],
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, ObjectPath, Version)>, DbError> {
        let from = if after.is_empty() {
            Vec::new()
        } else {
            [after, b"\0"].concat()
        };
        let mut out = Vec::new();
        for (key, value) in self.view.scan(VERSION, &from, limit, false)? {
            let path = key.split(|b| *b == 0).next().unwrap_or_default();
            let Ok(path) = ObjectPath::parse(&String::from_utf8_lossy(path)) else {
                continue;
            };
            out.push((key, path, read_version(&value)?));
        }
        Ok(out)
    }

    /// Version `id` of `path` (a removal included), unless it was never written or was
    /// forgotten.
    pub fn version(&self, path: &ObjectPath, id: &VersionId) -> Result<Option<Version>, DbError> {
        match self.view.get(&version_key(path.as_str(), id))? {
            Some(b) => Ok(Some(read_version(&b)?)),
            None => Ok(None),
        }
    }

    /// A path's versions, newest first (removals included), at most `limit`.
    pub fn versions(&self, path: &ObjectPath, limit: usize) -> Result<Vec<Version>, DbError> {
        versions_in(&self.view, path, limit)
    }

    /// The objects under `prefix` (not removed), in path order, after `after` if given, at
    /// most `limit`.
    pub fn list(
        &self,
        prefix: &Prefix,
        after: Option<&ObjectPath>,
        limit: usize,
    ) -> Result<Vec<(ObjectPath, Version)>, DbError> {
        let under = [HEAD, prefix.as_str().as_bytes()].concat();
        let mut out = Vec::new();
        let mut from: Vec<u8> = after
            .map(|a| {
                let rest = a.as_str().strip_prefix(prefix.as_str()).unwrap_or_default();
                [rest.as_bytes(), b"\0"].concat()
            })
            .unwrap_or_default();
        // Removed paths are skipped, so read in pages until `limit` objects are found.
        loop {
            let page = self.view.scan(&under, &from, limit.max(16), false)?;
            let done = page.len() < limit.max(16);
            for (rest, _) in &page {
                let text = format!("{prefix}{}", String::from_utf8_lossy(rest));
                let Ok(path) = ObjectPath::parse(&text) else {
                    continue;
                };
                if let Some(v) = self.head(&path)? {
                    out.push((path, v));
                    if out.len() >= limit {
                        return Ok(out);
                    }
                }
            }
            match page.last() {
                Some((last, _)) if !done => from = [last.as_slice(), b"\0"].concat(),
                _ => return Ok(out),
            }
        }
    }

    /// Paths whose current version has tag `key` (with `value`, if given), under `prefix`, in
    /// path order, at most `limit`.
    pub fn tagged(
        &self,
        key: &str,
        value: Option<&str>,
        prefix: &Prefix,
        limit: usize,
    ) -> Result<Vec<ObjectPath>, DbError> {
        let under = match value {
            Some(v) => [TAG, key.as_bytes(), b"\0", v.as_bytes(), b"\0"].concat(),
            None => [TAG, key.as_bytes(), b"\0"].concat(),
        };
        let mut out = Vec::new();
        let mut from = Vec::new();
        loop {
            let page = self.view.scan(&under, &from, 256, false)?;
            for (rest, _) in &page {
                // `value \0 path` when only the key was given, else `path`.
                let path = match value {
                    Some(_) => rest.as_slice(),
                    None => rest.splitn(2, |b| *b == 0).nth(1).unwrap_or_default(),
                };
                if let Ok(path) = ObjectPath::parse(&String::from_utf8_lossy(path))
                    && path.is_under(prefix)
                {
                    out.push(path);
                    if out.len() >= limit {
                        return Ok(out);
                    }
                }
            }
            match page.last() {
                Some((last, _)) if page.len() == 256 => from = [last.as_slice(), b"\0"].concat(),
                _ => return Ok(out),
            }
        }
    }
}
