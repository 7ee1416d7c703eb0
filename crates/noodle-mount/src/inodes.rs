//! The inode table: which fabric path each inode number the kernel holds stands for, how many
//! lookups the kernel owes us (`forget`), what was last known about it, and how many handles
//! are open on it. Sans-IO: time comes in as an argument; nothing here talks to the node.
//!
//! Inode numbers are never reused (a counter from 2; 1 is the root), so a generation number is
//! not needed. The table is bounded: entries the kernel does not hold (no lookups owed, no open
//! handle) are swept once it is full, and a full table of held entries refuses new ones.

use noodle_api::fabric::FabricObject;
use std::collections::HashMap;
use std::time::Instant;

/// The root directory's inode number (FUSE's `FUSE_ROOT_ID`).
pub(crate) const ROOT: u64 = 1;

/// Inodes kept at most. Each costs a path and a few words: about 20 MiB when full.
pub(crate) const INODES_MAX: usize = 100_000;

/// A file or a directory: the only kinds the fabric has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    File,
    Dir,
}

/// One inode.
#[derive(Debug)]
pub(crate) struct Inode {
    /// The fabric path (`/` for the root, `/a/b` for a directory or a file); `None` once
    /// unlinked or replaced while the kernel still held it.
    pub(crate) path: Option<String>,
    pub(crate) kind: Kind,
    /// Lookups the kernel has not forgotten.
    pub(crate) lookups: u64,
    /// Open file or directory handles.
    pub(crate) open: u32,
    /// The last known version (files), and when it was learnt.
    pub(crate) known: Option<(FabricObject, Instant)>,
    /// When the directory was last seen to exist (directories).
    pub(crate) dir_seen: Option<Instant>,
    /// The version whose bytes the kernel's page cache may hold for this inode: an open of
    /// the same version keeps the cache (`FOPEN_KEEP_CACHE`), any other open drops it.
    pub(crate) kernel_version: Option<String>,
    /// Versions open for reading, one entry per handle.
    pub(crate) reading: Vec<String>,
}

impl Inode {
    fn new(path: String, kind: Kind) -> Inode {
        Inode {
            path: Some(path),
            kind,
            lookups: 0,
            open: 0,
            known: None,
            dir_seen: None,
            kernel_version: None,
            reading: Vec::new(),
        }
    }

    /// Whether the kernel holds it or a handle is open on it.
    fn in_use(&self) -> bool {
        self.lookups > 0 || self.open > 0
    }
}

/// Why an inode could not be added.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TableFull;

/// Paths ↔ inode numbers.
#[derive(Debug)]
pub(crate) struct InodeTable {
    inodes: HashMap<u64, Inode>,
    by_path: HashMap<String, u64>,
    next: u64,
    max: usize,
}

impl InodeTable {
    pub(crate) fn new() -> InodeTable {
        InodeTable::with_max(INODES_MAX)
    }

    pub(crate) fn with_max(max: usize) -> InodeTable {
        let mut t = InodeTable {
            inodes: HashMap::new(),
            by_path: HashMap::new(),
            next: ROOT + 1,
            max: max.max(2),
        };
        t.inodes.insert(ROOT, Inode::new("/".into(), Kind::Dir));
        t.by_path.insert("/".into(), ROOT);
        t
    }

    pub(crate) fn len(&self) -> usize {
        self.inodes.len()
    }

    pub(crate) fn get(&self, ino: u64) -> Option<&Inode> {
        self.inodes.get(&ino)
    }

    pub(crate) fn get_mut(&mut self, ino: u64) -> Option<&mut Inode> {
        self.inodes.get_mut(&ino)
    }

    /// The path of a live inode.
    pub(crate) fn path(&self, ino: u64) -> Option<&str> {
        self.inodes.get(&ino)?.path.as_deref()
    }

    pub(crate) fn ino_of(&self, path: &str) -> Option<u64> {
        self.by_path.get(path).copied()
    }

    /// The inode of `path` as a `kind`: the one it has, or a new one. An inode of the other
    /// kind at that path loses it (the path changed kind on another node).
    pub(crate) fn intern(&mut self, path: &str, kind: Kind) -> Result<u64, TableFull> {
        if let Some(ino) = self.ino_of(path) {
            if self.inodes.get(&ino).is_some_and(|i| i.kind == kind) {
                return Ok(ino);
            }
            self.detach(path);
        }
        if self.inodes.len() >= self.max {
            self.sweep();
            if self.inodes.len() >= self.max {
                return Err(TableFull);
            }
        }
        let ino = self.next;
        self.next += 1;
        self.inodes.insert(ino, Inode::new(path.to_string(), kind));
        self.by_path.insert(path.to_string(), ino);
        Ok(ino)
    }

    /// The kernel was handed `ino` once more (a lookup, create or mkdir reply).
    pub(crate) fn looked_up(&mut self, ino: u64) {
        if let Some(i) = self.inodes.get_mut(&ino) {
            i.lookups += 1;
        }
    }

    /// The kernel forgot `n` lookups of `ino`.
    pub(crate) fn forget(&mut self, ino: u64, n: u64) {
        if let Some(i) = self.inodes.get_mut(&ino) {
            i.lookups = i.lookups.saturating_sub(n);
        }
        self.drop_if_gone(ino);
    }

    pub(crate) fn opened(&mut self, ino: u64) {
        if let Some(i) = self.inodes.get_mut(&ino) {
            i.open += 1;
        }
    }

    pub(crate) fn closed(&mut self, ino: u64) {
        if let Some(i) = self.inodes.get_mut(&ino) {
            i.open = i.open.saturating_sub(1);
        }
        self.drop_if_gone(ino);
    }

    /// `path` no longer names its inode (removed, or replaced by a rename); the inode lives on
    /// while the kernel holds it.
    pub(crate) fn detach(&mut self, path: &str) {
        if let Some(ino) = self.by_path.remove(path) {
            if let Some(i) = self.inodes.get_mut(&ino) {
                i.path = None;
            }
            self.drop_if_gone(ino);
        }
    }

    /// Moves the inode at `from` (and, for a directory, every inode under it) to `to`; what
    /// was at `to` is detached.
    pub(crate) fn rename(&mut self, from: &str, to: &str) {
        if from == to {
            return;
        }
        self.detach(to);
        let under_from = format!("{}/", from.trim_end_matches('/'));
        let moved: Vec<(String, u64)> = self
            .by_path
            .iter()
            .filter(|(p, _)| p.as_str() == from || p.starts_with(&under_from))
            .map(|(p, ino)| (p.clone(), *ino))
            .collect();
        for (old, ino) in moved {
            let new = format!("{to}{}", &old[from.len()..]);
            if old != from {
                self.detach(&new);
            }
            self.by_path.remove(&old);
            if let Some(i) = self.inodes.get_mut(&ino) {
                i.path = Some(new.clone());
            }
            self.by_path.insert(new, ino);
        }
    }

    /// Inodes directly under directory `dir` (its path) that match `keep`.
    pub(crate) fn children_where(
        &self,
        dir: &str,
        keep: impl Fn(&Inode) -> bool,
    ) -> Vec<(String, u64, Kind)> {
        let prefix = crate::names::prefix_of(dir);
        self.by_path
            .iter()
            .filter_map(|(p, ino)| {
                let name = p.strip_prefix(&prefix)?;
                if name.is_empty() || name.contains('/') {
                    return None;
                }
                let inode = self.inodes.get(ino)?;
                keep(inode).then(|| (name.to_string(), *ino, inode.kind))
            })
            .collect()
    }

    /// Removes an unlinked inode nobody holds any more.
    fn drop_if_gone(&mut self, ino: u64) {
        if ino == ROOT {
            return;
        }
        let gone = self
            .inodes
            .get(&ino)
            .is_some_and(|i| i.path.is_none() && !i.in_use());
        if gone {
            self.inodes.remove(&ino);
        }
    }

    /// Drops every inode the kernel does not hold and no handle uses.
    fn sweep(&mut self) {
        let idle: Vec<u64> = self
            .inodes
            .iter()
            .filter(|(ino, i)| **ino != ROOT && !i.in_use())
            .map(|(ino, _)| *ino)
            .collect();
        for ino in idle {
            if let Some(i) = self.inodes.remove(&ino)
                && let Some(p) = i.path
                && self.by_path.get(&p) == Some(&ino)
            {
                self.by_path.remove(&p);
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn paths_keep_their_inode_and_a_new_kind_gets_a_new_one() {
        let mut t = InodeTable::new();
        assert_eq!(t.ino_of("/"), Some(ROOT));
        let a = t.intern("/a", Kind::File).unwrap();
        assert_eq!(t.intern("/a", Kind::File).unwrap(), a);
        t.looked_up(a);
        let d = t.intern("/a", Kind::Dir).unwrap();
        assert_ne!(a, d);
        // The kernel still holds the file's inode, but it names nothing now.
        assert_eq!(t.path(a), None);
        assert_eq!(t.path(d), Some("/a"));
        t.forget(a, 1);
        assert!(
            t.get(a).is_none(),
            "an unlinked inode nobody holds is dropped"
        );
    }

    #[test]
    fn an_unlinked_inode_lives_while_held_or_open() {
        let mut t = InodeTable::new();
        let f = t.intern("/f", Kind::File).unwrap();
        t.looked_up(f);
        t.opened(f);
        t.detach("/f");
        assert!(t.get(f).is_some());
        t.forget(f, 1);
        assert!(t.get(f).is_some(), "still open");
        t.closed(f);
        assert!(t.get(f).is_none());
        assert_eq!(t.ino_of("/f"), None);
    }

    #[test]
    fn a_full_table_sweeps_what_the_kernel_does_not_hold() {
        let mut t = InodeTable::with_max(4);
        let held = t.intern("/held", Kind::File).unwrap();
        t.looked_up(held);
        t.intern("/x", Kind::File).unwrap();
        t.intern("/y", Kind::File).unwrap();
        assert_eq!(t.len(), 4);
        let z = t.intern("/z", Kind::File).unwrap();
        assert_eq!(t.ino_of("/x"), None, "swept");
        assert_eq!(t.ino_of("/held"), Some(held));
        assert_eq!(t.ino_of("/z"), Some(z));
        t.looked_up(z);
        let w = t.intern("/w", Kind::File).unwrap();
        t.looked_up(w);
        assert_eq!(t.intern("/v", Kind::File), Err(TableFull));
        // Numbers are never reused.
        assert!(w > z && z > held);
    }

    #[test]
    fn rename_moves_a_directory_and_everything_under_it() {
        let mut t = InodeTable::new();
        let d = t.intern("/d", Kind::Dir).unwrap();
        let f = t.intern("/d/f", Kind::File).unwrap();
        let g = t.intern("/d/e/g", Kind::File).unwrap();
        let other = t.intern("/dd", Kind::File).unwrap();
        let old = t.intern("/n", Kind::File).unwrap();
        t.looked_up(old);
        t.rename("/d", "/n");
        assert_eq!(t.path(d), Some("/n"));
        assert_eq!(t.path(f), Some("/n/f"));
        assert_eq!(t.path(g), Some("/n/e/g"));
        assert_eq!(
            t.path(other),
            Some("/dd"),
            "a sibling with the same start stays"
        );
        assert_eq!(t.path(old), None, "the replaced inode is detached");
        assert_eq!(t.ino_of("/d/f"), None);
        let mut names: Vec<String> = t
            .children_where("/n", |_| true)
            .into_iter()
            .map(|c| c.0)
            .collect();
        names.sort();
        assert_eq!(names, ["f"]);
        assert_eq!(t.children_where("/", |_| true).len(), 2);
    }
}
