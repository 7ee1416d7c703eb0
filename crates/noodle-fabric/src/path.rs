//! Fabric paths: `/models/resnet.bin`, and prefixes that end with `/` (`/models/`).
//!
//! A path is absolute, its segments are separated by single `/`, and no segment is empty, `.`
//! or `..`, holds a NUL or a control character, or is longer than a file name may be. So a
//! path names one object however it is written, and a prefix covers whole segments: `/app/`
//! covers `/app/x`, never `/apple`.

use std::fmt;

/// Longest path, in bytes (Linux's `PATH_MAX`).
pub const PATH_BYTES_MAX: usize = 4096;
/// Longest segment, in bytes (Linux's `NAME_MAX`).
pub const SEGMENT_BYTES_MAX: usize = 255;

/// Why a path is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("a fabric path starts with `/`")]
    NotAbsolute,
    #[error("a fabric path is at most {PATH_BYTES_MAX} bytes")]
    TooLong,
    #[error("a fabric path has no empty segments (`//`)")]
    EmptySegment,
    #[error("a fabric path has no `.` or `..` segments")]
    DotSegment,
    #[error("a segment of a fabric path is at most {SEGMENT_BYTES_MAX} bytes")]
    SegmentTooLong,
    #[error("a fabric path holds no NUL or control characters")]
    ControlCharacter,
    #[error("an object's path does not end with `/` (that is a prefix)")]
    IsPrefix,
    #[error("a prefix ends with `/`")]
    NotPrefix,
}

/// The path of an object: absolute, at least one segment, no trailing `/`.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectPath(String);

/// A prefix: `/`, or a path ending with `/`.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Prefix(String);

/// Checks every segment of `/a/b/c` (leading `/` present, no trailing one).
fn check_segments(body: &str) -> Result<(), PathError> {
    for segment in body.split('/') {
        if segment.is_empty() {
            return Err(PathError::EmptySegment);
        }
        if segment == "." || segment == ".." {
            return Err(PathError::DotSegment);
        }
        if segment.len() > SEGMENT_BYTES_MAX {
            return Err(PathError::SegmentTooLong);
        }
        if segment.chars().any(char::is_control) {
            return Err(PathError::ControlCharacter);
        }
    }
    Ok(())
}

fn check_common(text: &str) -> Result<&str, PathError> {
    if text.len() > PATH_BYTES_MAX {
        return Err(PathError::TooLong);
    }
    text.strip_prefix('/').ok_or(PathError::NotAbsolute)
}

impl ObjectPath {
    pub fn parse(text: &str) -> Result<ObjectPath, PathError> {
        let body = check_common(text)?;
        if body.is_empty() || body.ends_with('/') {
            return Err(PathError::IsPrefix);
        }
        check_segments(body)?;
        Ok(ObjectPath(text.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether `prefix` covers this path.
    pub fn is_under(&self, prefix: &Prefix) -> bool {
        self.0.starts_with(prefix.as_str())
    }

    /// The last segment.
    pub fn name(&self) -> &str {
        self.0.rsplit('/').next().unwrap_or_default()
    }

    /// The prefix this object is directly in (`/a/b` is in `/a/`).
    pub fn parent(&self) -> Prefix {
        let end = self.0.rfind('/').map_or(0, |i| i + 1);
        Prefix(self.0[..end].to_string())
    }
}

impl Prefix {
    /// The root prefix, `/`, which covers every path.
    pub fn root() -> Prefix {
        Prefix("/".into())
    }

    pub fn parse(text: &str) -> Result<Prefix, PathError> {
        let body = check_common(text)?;
        if body.is_empty() {
            return Ok(Prefix::root());
        }
        let body = body.strip_suffix('/').ok_or(PathError::NotPrefix)?;
        check_segments(body)?;
        Ok(Prefix(text.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ObjectPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for ObjectPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ObjectPath({:?})", self.0)
    }
}

impl fmt::Display for Prefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Prefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Prefix({:?})", self.0)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn objects_are_absolute_segments_without_dots_or_empties() {
        let long_segment = format!("/{}", "a".repeat(256));
        let long_path = "/a".repeat(2049);
        let cases: &[(&str, Result<(), PathError>)] = &[
            ("/models/resnet.bin", Ok(())),
            ("/a", Ok(())),
            ("/ünïcødé/名前", Ok(())),
            ("/a b/c", Ok(())),
            ("models/x", Err(PathError::NotAbsolute)),
            ("", Err(PathError::NotAbsolute)),
            ("/", Err(PathError::IsPrefix)),
            ("/models/", Err(PathError::IsPrefix)),
            ("//x", Err(PathError::EmptySegment)),
            ("/a//b", Err(PathError::EmptySegment)),
            ("/a/./b", Err(PathError::DotSegment)),
            ("/a/../b", Err(PathError::DotSegment)),
            ("/..", Err(PathError::DotSegment)),
            ("/a\0b", Err(PathError::ControlCharacter)),
            ("/a\nb", Err(PathError::ControlCharacter)),
            (&long_segment, Err(PathError::SegmentTooLong)),
            (&long_path, Err(PathError::TooLong)),
        ];
        for (text, want) in cases {
            assert_eq!(
                ObjectPath::parse(text).map(|_| ()),
                *want,
                "{:?}",
                &text[..text.len().min(40)]
            );
        }
    }

    #[test]
    fn prefixes_end_with_a_slash_and_cover_whole_segments() {
        assert_eq!(Prefix::parse("/").unwrap(), Prefix::root());
        assert_eq!(Prefix::parse("/app"), Err(PathError::NotPrefix));
        assert_eq!(Prefix::parse("/a//"), Err(PathError::EmptySegment));
        assert_eq!(Prefix::parse("/../"), Err(PathError::DotSegment));
        let app = Prefix::parse("/app/").unwrap();
        assert!(ObjectPath::parse("/app/x").unwrap().is_under(&app));
        assert!(ObjectPath::parse("/app/x/y").unwrap().is_under(&app));
        assert!(!ObjectPath::parse("/apple").unwrap().is_under(&app));
        assert!(
            ObjectPath::parse("/apple")
                .unwrap()
                .is_under(&Prefix::root())
        );
        let p = ObjectPath::parse("/a/b/c.bin").unwrap();
        assert_eq!(p.name(), "c.bin");
        assert_eq!(p.parent().as_str(), "/a/b/");
        assert_eq!(ObjectPath::parse("/x").unwrap().parent(), Prefix::root());
    }

    proptest! {
        #[test]
        fn parsing_never_panics_and_what_parses_round_trips(s in "\\PC{0,64}") {
            if let Ok(p) = ObjectPath::parse(&s) {
                prop_assert_eq!(ObjectPath::parse(p.as_str()).unwrap(), p.clone());
                prop_assert!(p.is_under(&p.parent()));
            }
            let _ = Prefix::parse(&s);
        }
    }
}
