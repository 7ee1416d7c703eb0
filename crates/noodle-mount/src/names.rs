//! Names and listings, sans-IO: a directory entry's name as a fabric path, a version's time,
//! the entries directly under a directory from the fabric's flat listing pages, and the mount
//! points of `/proc/self/mountinfo`.

use noodle_api::fabric::FabricObject;
use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::path::PathBuf;

/// Longest name of one entry, in bytes (the fabric's segment limit, Linux's `NAME_MAX`).
pub(crate) const NAME_BYTES_MAX: usize = 255;
/// Longest fabric path, in bytes.
pub(crate) const PATH_BYTES_MAX: usize = 4096;

/// Why a name cannot be a fabric path segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NameError {
    /// Not UTF-8, empty, `.`/`..`, or with a control character.
    Invalid,
    /// Longer than a segment or a path may be.
    TooLong,
}

/// The prefix covering what is under directory `dir`: `/` for the root, `/a/` for `/a`.
pub(crate) fn prefix_of(dir: &str) -> String {
    if dir.ends_with('/') {
        dir.to_string()
    } else {
        format!("{dir}/")
    }
}

/// The parent directory of `path` (`/` for a top-level entry) and the entry's name.
pub(crate) fn split(path: &str) -> (&str, &str) {
    match path.rfind('/') {
        Some(0) => ("/", &path[1..]),
        Some(i) => (&path[..i], &path[i + 1..]),
        None => ("/", path),
    }
}

/// The fabric path of entry `name` in directory `dir`, checked against the fabric's rules.
pub(crate) fn child_path(dir: &str, name: &OsStr) -> Result<String, NameError> {
    let name = name.to_str().ok_or(NameError::Invalid)?;
    if name.is_empty() || name == "." || name == ".." || name.contains('/') {
        return Err(NameError::Invalid);
    }
    if name.chars().any(char::is_control) {
        return Err(NameError::Invalid);
    }
    if name.len() > NAME_BYTES_MAX {
        return Err(NameError::TooLong);
    }
    let path = format!("{}{name}", prefix_of(dir));
    if path.len() > PATH_BYTES_MAX {
        return Err(NameError::TooLong);
    }
    Ok(path)
}

/// A version's time in milliseconds since the Unix epoch: the `WALL_MS` of
/// `WALL_MS.LOGICAL.NODE`, 0 when it is not one.
pub(crate) fn version_ms(version: &str) -> u64 {
    version
        .split('.')
        .next()
        .and_then(|w| w.parse().ok())
        .unwrap_or(0)
}

/// One entry of a directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Child {
    File(FabricObject),
    Dir,
}

/// The entries directly under a prefix, gathered from the fabric's flat listing (every path
/// under the prefix, in path order), page by page. A subdirectory is skipped over in one step:
/// the next page starts after everything under it.
#[derive(Debug)]
pub(crate) struct Children {
    prefix: String,
    pub(crate) entries: BTreeMap<String, Child>,
}

impl Children {
    pub(crate) fn new(prefix: &str) -> Children {
        Children {
            prefix: prefix.to_string(),
            entries: BTreeMap::new(),
        }
    }

    /// Takes one page (`full`: it had as many objects as asked for, so more may follow) and
    /// says where the next page starts (`after`), or `None` when the listing is complete.
    /// `previous` is the `after` this page was asked with.
    pub(crate) fn add_page(
        &mut self,
        objects: &[FabricObject],
        full: bool,
        previous: Option<&str>,
    ) -> Option<String> {
        let mut last_dir: Option<String> = None;
        for o in objects {
            let Some(rest) = o.path.strip_prefix(&self.prefix) else {
                continue;
            };
            match rest.split_once('/') {
                None if !rest.is_empty() => {
                    // A file and a directory of the same name: the file shows.
                    self.entries
                        .insert(rest.to_string(), Child::File(o.clone()));
                    last_dir = None;
                }
                None => {}
                Some((dir, _)) => {
                    self.entries.entry(dir.to_string()).or_insert(Child::Dir);
                    last_dir = Some(dir.to_string());
                }
            }
        }
        if !full {
            return None;
        }
        let last = objects.last().map(|o| o.path.clone())?;
        // After the last object; or, if it was inside a subdirectory, after everything under
        // that subdirectory: U+10FFFF sorts after every character a path can hold.
        let next = match last_dir {
            Some(dir) => {
                let skip = format!("{}{dir}/\u{10FFFF}", self.prefix);
                if skip.len() <= PATH_BYTES_MAX && previous != Some(skip.as_str()) {
                    skip
                } else {
                    last
                }
            }
            None => last,
        };
        // A page that cannot move the listing on ends it (never loop).
        (previous != Some(next.as_str())).then_some(next)
    }
}

/// The mount points in the text of `/proc/self/mountinfo` (its fifth field, with the octal
/// escapes of spaces, tabs, newlines and backslashes undone).
pub(crate) fn mount_points(mountinfo: &str) -> Vec<PathBuf> {
    mountinfo
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(|field| PathBuf::from(unescape_octal(field)))
        .collect()
}

fn unescape_octal(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 3 < bytes.len()
            && bytes[i + 1..i + 4]
                .iter()
                .all(|b| (b'0'..=b'7').contains(b))
        {
            let v = (bytes[i + 1] - b'0') * 64 + (bytes[i + 2] - b'0') * 8 + (bytes[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn object(path: &str) -> FabricObject {
        FabricObject {
            path: path.into(),
            version: "1700000000123.0.n1".into(),
            exists: true,
            size: 1,
            manifest: "m".into(),
            tags: Default::default(),
            creator: "c".into(),
            replicas: vec![],
            in_records: false,
        }
    }

    #[test]
    fn names_become_fabric_paths_or_are_refused() {
        assert_eq!(child_path("/", OsStr::new("a")), Ok("/a".into()));
        assert_eq!(child_path("/a/b", OsStr::new("c d")), Ok("/a/b/c d".into()));
        for bad in ["", ".", "..", "a\nb", "x/y"] {
            assert_eq!(
                child_path("/", OsStr::new(bad)),
                Err(NameError::Invalid),
                "{bad:?}"
            );
        }
        let long = "x".repeat(256);
        assert_eq!(child_path("/", OsStr::new(&long)), Err(NameError::TooLong));
        let deep = format!("/{}", "d/".repeat(2047));
        assert_eq!(
            child_path(deep.trim_end_matches('/'), OsStr::new("abc")),
            Err(NameError::TooLong)
        );
        use std::os::unix::ffi::OsStrExt;
        assert_eq!(
            child_path("/", OsStr::from_bytes(b"\xff")),
            Err(NameError::Invalid)
        );
        assert_eq!(split("/a"), ("/", "a"));
        assert_eq!(split("/a/b/c"), ("/a/b", "c"));
        assert_eq!(prefix_of("/"), "/");
        assert_eq!(prefix_of("/a"), "/a/");
    }

    #[test]
    fn a_version_time_is_its_wall_clock_part() {
        assert_eq!(version_ms("1700000000123.4.node-x"), 1_700_000_000_123);
        assert_eq!(version_ms("garbage"), 0);
    }

    #[test]
    fn children_are_files_and_subdirectories_skipped_in_one_step() {
        let mut c = Children::new("/m/");
        let page = [object("/m/a"), object("/m/d/1"), object("/m/d/2")];
        let next = c.add_page(&page, true, None);
        assert_eq!(next.as_deref(), Some("/m/d/\u{10FFFF}"));
        let next2 = c.add_page(&[object("/m/e"), object("/m/f/x")], false, next.as_deref());
        assert_eq!(next2, None);
        let names: Vec<(&str, bool)> = c
            .entries
            .iter()
            .map(|(n, k)| (n.as_str(), matches!(k, Child::Dir)))
            .collect();
        assert_eq!(
            names,
            [("a", false), ("d", true), ("e", false), ("f", true)]
        );
        // A page ending on a file continues after it; one that cannot move on ends.
        let mut c = Children::new("/");
        assert_eq!(
            c.add_page(&[object("/x")], true, None).as_deref(),
            Some("/x")
        );
        assert_eq!(c.add_page(&[object("/x")], true, Some("/x")), None);
        // A file and a directory of one name: the file shows.
        let mut c = Children::new("/");
        c.add_page(&[object("/k"), object("/k/inner")], false, None);
        assert!(matches!(c.entries.get("k"), Some(Child::File(_))));
    }

    #[test]
    fn mount_points_are_read_with_their_escapes() {
        let info = "22 1 0:21 / /proc rw,nosuid - proc proc rw\n\
                    98 22 0:50 / /tmp/my\\040dir rw - fuse.noodle noodle rw,user_id=0\n";
        assert_eq!(
            mount_points(info),
            [PathBuf::from("/proc"), PathBuf::from("/tmp/my dir")]
        );
    }
}
