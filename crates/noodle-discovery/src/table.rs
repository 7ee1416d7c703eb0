//! The gossiped node table: what every node says about itself, merged by version.
//!
//! Each node is the only writer of its own entry and raises its version on every change, so
//! merging is "keep the higher version" and any two tables that exchanged entries agree. The
//! exchange is push-pull: a [`SyncMessage`] carries the sender's entries and the answer carries
//! those the receiver has newer or the sender lacks.

use noodle_api::Resources;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::SocketAddr;

/// Bounds on what one entry and one table may hold.
pub const NODES_MAX: usize = 1024;
pub const LABELS_MAX: usize = 32;
pub const LINKS_MAX: usize = 256;
const NAME_CHARS_MAX: usize = 64;
/// An Ed25519 signature.
const SIGNATURE_BYTES_MAX: usize = 64;
const LABEL_KEY_CHARS_MAX: usize = 63;
const LABEL_VALUE_CHARS_MAX: usize = 255;

/// One measured link, from the entry's node to `peer`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LinkSample {
    pub peer: String,
    pub rtt_us: u64,
    pub kx_group: String,
}

/// What a node says about itself.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeInfo {
    pub id: String,
    pub name: String,
    pub addr: SocketAddr,
    pub version: u64,
    pub software: String,
    pub resources: Resources,
    pub labels: BTreeMap<String, String>,
    pub links: Vec<LinkSample>,
    /// Incarnation of the node's control-plane identity (raised when its local state was lost).
    pub control_incarnation: u64,
    /// CPU slots the node offers to jobs (`noodle up --slots`).
    pub job_slots: u32,
    /// False while the node's control-plane member is stopped after a storage error: the
    /// leader then counts it as down (and replaces it if it stays down).
    pub control_up: bool,
    /// The node's signature over the rest of the entry ([`NodeInfo::signed_bytes`]): only the
    /// node itself can make a version of its entry that others take.
    pub signature: Vec<u8>,
}

impl NodeInfo {
    /// What the node signs: the entry without its signature.
    pub fn signed_bytes(&self) -> Vec<u8> {
        let unsigned = NodeInfo {
            signature: Vec::new(),
            ..self.clone()
        };
        // Serialising plain data into a Vec cannot fail.
        postcard::to_stdvec(&unsigned).unwrap_or_default()
    }
}

/// Request and answer of one push-pull round.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SyncMessage {
    pub entries: Vec<NodeInfo>,
}

/// Checks a user label; the same rule applies to `--label` and to entries from the network.
pub fn validate_label(key: &str, value: &str) -> Result<(), LabelError> {
    check_label(key, value).map_err(LabelError)
}

/// Why a label was refused: one line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct LabelError(pub String);

fn check_label(key: &str, value: &str) -> Result<(), String> {
    let key_ok = !key.is_empty()
        && key.len() <= LABEL_KEY_CHARS_MAX
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'/'));
    if !key_ok {
        return Err(format!(
            "label key `{key}` must be 1-{LABEL_KEY_CHARS_MAX} characters of a-z, 0-9, `.`, `_`, `-`, `/`"
        ));
    }
    if value.len() > LABEL_VALUE_CHARS_MAX || value.chars().any(char::is_control) {
        return Err(format!(
            "label value for `{key}` must be at most {LABEL_VALUE_CHARS_MAX} printable characters"
        ));
    }
    Ok(())
}

fn validate(info: &NodeInfo) -> Result<(), String> {
    if info.id.is_empty() || info.id.len() > 63 {
        return Err("bad node id".into());
    }
    if info.signature.len() > SIGNATURE_BYTES_MAX {
        return Err("signature too long".into());
    }
    if info.name.len() > NAME_CHARS_MAX || info.software.len() > NAME_CHARS_MAX {
        return Err("name too long".into());
    }
    if info.labels.len() > LABELS_MAX || info.links.len() > LINKS_MAX {
        return Err("too many labels or links".into());
    }
    for (k, v) in &info.labels {
        check_label(k, v)?;
    }
    Ok(())
}

/// The table of node entries, this node's own included.
#[derive(Debug)]
pub struct NodeTable {
    me: String,
    nodes: BTreeMap<String, NodeInfo>,
}

impl NodeTable {
    pub fn new(me: NodeInfo) -> NodeTable {
        let id = me.id.clone();
        let mut nodes = BTreeMap::new();
        nodes.insert(id.clone(), me);
        NodeTable { me: id, nodes }
    }

    pub fn me(&self) -> &NodeInfo {
        // The own entry is inserted in `new` and never removed.
        &self.nodes[&self.me]
    }

    /// Changes this node's own entry and raises its version above both the old version and
    /// `now_ms`, so that versions keep growing across restarts.
    pub fn update_me(&mut self, now_ms: u64, change: impl FnOnce(&mut NodeInfo)) {
        if let Some(me) = self.nodes.get_mut(&self.me) {
            change(me);
            me.version = (me.version + 1).max(now_ms);
        }
    }

    /// Lets `seal` finish this node's own entry without raising its version: its signature,
    /// made after every change (and after `merge` moved the version).
    pub fn seal_me(&mut self, seal: impl FnOnce(&mut NodeInfo)) {
        if let Some(me) = self.nodes.get_mut(&self.me) {
            seal(me);
        }
    }

    pub fn get(&self, id: &str) -> Option<&NodeInfo> {
        self.nodes.get(id)
    }

    pub fn iter(&self) -> impl Iterator<Item = &NodeInfo> {
        self.nodes.values()
    }

    pub fn entries(&self) -> Vec<NodeInfo> {
        self.nodes.values().cloned().collect()
    }

    /// Merges entries from a peer; returns the ids that changed. Invalid entries are skipped,
    /// and so are those `authentic` refuses (asked only of entries that would be taken: it
    /// checks the node's signature). An entry about this node that is newer than ours means we
    /// restarted with an older clock: our version jumps past it.
    pub fn merge(
        &mut self,
        entries: Vec<NodeInfo>,
        authentic: impl Fn(&NodeInfo) -> bool,
    ) -> Vec<String> {
        let mut changed = Vec::new();
        for entry in entries {
            if let Err(e) = validate(&entry) {
                tracing::debug!(node = %entry.id, error = %e, "skipping invalid node entry");
                continue;
            }
            if entry.id == self.me {
                if let Some(me) = self.nodes.get_mut(&self.me)
                    && entry.version >= me.version
                    && entry.version < u64::MAX
                    && authentic(&entry)
                {
                    me.version = entry.version + 1;
                }
                continue;
            }
            let newer = match self.nodes.get(&entry.id) {
                Some(old) => entry.version > old.version,
                None => self.nodes.len() < NODES_MAX,
            };
            if newer && !authentic(&entry) {
                tracing::debug!(node = %entry.id, "skipping a node entry its node did not sign");
                continue;
            }
            if newer {
                changed.push(entry.id.clone());
                self.nodes.insert(entry.id.clone(), entry);
            }
        }
        changed
    }

    /// Entries the sender of `theirs` lacks or has older versions of.
    pub fn newer_than(&self, theirs: &[NodeInfo]) -> Vec<NodeInfo> {
        let versions: BTreeMap<&str, u64> =
            theirs.iter().map(|e| (e.id.as_str(), e.version)).collect();
        self.nodes
            .values()
            .filter(|e| versions.get(e.id.as_str()).is_none_or(|v| *v < e.version))
            .cloned()
            .collect()
    }

    /// Forgets a node (for example one removed by an operator).
    pub fn remove(&mut self, id: &str) {
        if id != self.me {
            self.nodes.remove(id);
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn info(id: &str, version: u64) -> NodeInfo {
        NodeInfo {
            id: id.into(),
            name: id.into(),
            addr: "127.0.0.1:7070".parse().unwrap(),
            version,
            software: "test".into(),
            resources: Resources::default(),
            labels: BTreeMap::new(),
            links: vec![],
            control_incarnation: 0,
            job_slots: 1,
            control_up: true,
            signature: Vec::new(),
        }
    }

    fn any(_: &NodeInfo) -> bool {
        true
    }

    #[test]
    fn push_pull_converges() {
        let mut a = NodeTable::new(info("a", 1));
        let mut b = NodeTable::new(info("b", 1));
        let mut c = NodeTable::new(info("c", 1));
        // a <-> b, then b <-> c: c learns a through b.
        let answer = b.newer_than(&a.entries());
        b.merge(a.entries(), any);
        a.merge(answer, any);
        let answer = c.newer_than(&b.entries());
        c.merge(b.entries(), any);
        b.merge(answer, any);
        assert_eq!(c.entries().len(), 3);
        assert_eq!(b.entries().len(), 3);
        a.update_me(50, |me| me.name = "renamed".into());
        assert_eq!(a.me().version, 50);
        assert_eq!(c.merge(a.entries(), any), vec!["a".to_string()]);
        assert_eq!(c.get("a").unwrap().name, "renamed");
        // Old versions change nothing.
        assert!(c.merge(vec![info("a", 3)], any).is_empty());
    }

    #[test]
    fn own_entry_is_never_overwritten_but_version_moves_past() {
        let mut a = NodeTable::new(info("a", 5));
        let mut stale = info("a", 9);
        stale.name = "impostor".into();
        a.merge(vec![stale], any);
        assert_eq!(a.me().name, "a");
        assert_eq!(a.me().version, 10);
    }

    #[test]
    fn entries_the_check_refuses_are_skipped_and_never_pin_our_version() {
        let mut a = NodeTable::new(info("a", 5));
        let signed_by_b = |e: &NodeInfo| e.signature == b"b";
        let mut forged = info("b", 7);
        forged.signature = b"c".to_vec();
        assert!(a.merge(vec![forged], signed_by_b).is_empty());
        let mut real = info("b", 7);
        real.signature = b"b".to_vec();
        assert_eq!(a.merge(vec![real], signed_by_b), vec!["b".to_string()]);
        // A forged entry about us cannot move our version to the end.
        a.merge(vec![info("a", u64::MAX)], any);
        a.merge(vec![info("a", 100)], |_| false);
        assert_eq!(a.me().version, 5);
    }

    #[test]
    fn invalid_entries_are_skipped() {
        let mut a = NodeTable::new(info("a", 1));
        let mut bad = info("b", 1);
        bad.labels.insert("bad key".into(), "v".into());
        let mut long = info("c", 1);
        long.id = "x".repeat(100);
        assert!(a.merge(vec![bad, long], any).is_empty());
    }

    #[test]
    fn labels_are_checked() {
        let cases = [
            ("zone", "eu-1", true),
            ("gpu/kind", "a100", true),
            ("", "x", false),
            ("Has Space", "x", false),
            ("k", "line\nbreak", false),
        ];
        for (k, v, ok) in cases {
            assert_eq!(validate_label(k, v).is_ok(), ok, "{k}={v}");
        }
    }
}
