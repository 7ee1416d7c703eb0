//! Rights, quotas and requests: the words a token is written in.
//!
//! A [`Right`] is `SUBSYSTEM:ACTION[:PREFIX]`; a [`Quota`] is `NAME=VALUE`; a [`Request`] is what
//! one API call wants to do. Every string that can end up inside a Datalog term is checked here
//! against a narrow character set, so that printed block source always parses back (inspection
//! relies on it) and no text can be mistaken for Datalog syntax. This module never touches
//! biscuit: it is the plain model that the token and authoriser modules translate.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::str::FromStr;

/// The action that stands for every action of a subsystem: `config:*`.
pub const ANY_ACTION: &str = "*";
/// Longest subsystem, action or quota name, in bytes.
pub const NAME_BYTES_MAX: usize = 32;
/// Longest resource prefix in a right, in characters.
pub const PREFIX_CHARS_MAX: usize = 256;
/// Longest holder name, in characters.
pub const HOLDER_CHARS_MAX: usize = 128;
/// How much of a bad input is echoed back in an error message.
const ECHO_CHARS_MAX: usize = 64;

/// Why a right, quota or holder was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    #[error(
        "`{input}` is not a right: {reason}; write SUBSYSTEM:ACTION[:PREFIX], e.g. fabric:read:/datasets/"
    )]
    Right { input: String, reason: &'static str },
    #[error("`{input}` is not a quota: {reason}; write NAME=VALUE, e.g. cpus=4")]
    Quota { input: String, reason: &'static str },
    #[error("`{input}` is not a holder name: {reason}")]
    Holder { input: String, reason: &'static str },
}

/// Something a token may allow: an action on a subsystem, optionally only for resources that
/// start with `prefix`.
///
/// A right without a prefix covers every resource of that subsystem and action, and requests
/// that name no resource at all. A right with a prefix covers only requests whose resource
/// starts with it (plain string prefix: callers must normalise paths before asking).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Right {
    pub subsystem: String,
    /// An action name, or [`ANY_ACTION`] for all of them.
    pub action: String,
    pub prefix: Option<String>,
}

/// Whether `path` is `prefix` or lies under it, segment by segment: `/app` covers `/app` and
/// `/app/x` but not `/apple`; `/app/` covers `/app/x`. (Deeper than
/// [`crate::datalog::RESOURCE_SEGMENTS_MAX`] segments, the authoriser refuses.)
pub(crate) fn under(prefix: &str, path: &str) -> bool {
    let Some(rest) = path.strip_prefix(prefix) else {
        return false;
    };
    if rest.is_empty() {
        return true;
    }
    // The slash that ends the prefix's last segment, counted from the start of the path.
    let slashes = prefix.matches('/').count();
    let (at_segment, nth_slash) = if prefix.ends_with('/') {
        (true, slashes)
    } else {
        (rest.starts_with('/'), slashes + 1)
    };
    at_segment && nth_slash <= crate::datalog::RESOURCE_SEGMENTS_MAX
}

impl Right {
    /// A checked right.
    pub fn new(subsystem: &str, action: &str, prefix: Option<&str>) -> Result<Right, SpecError> {
        let right = Right {
            subsystem: subsystem.to_string(),
            action: action.to_string(),
            prefix: prefix.map(str::to_string),
        };
        right.validate()?;
        Ok(right)
    }

    /// Checks the character sets and lengths (fields are public, so a right built by hand is
    /// checked again before it goes into a token).
    pub fn validate(&self) -> Result<(), SpecError> {
        let err = |reason| SpecError::Right {
            input: echo(&self.to_string()),
            reason,
        };
        if !is_name(&self.subsystem) {
            return Err(err(
                "the subsystem must be 1 to 32 characters of a-z, 0-9, - and _",
            ));
        }
        if self.action != ANY_ACTION && !is_name(&self.action) {
            return Err(err(
                "the action must be * or 1 to 32 characters of a-z, 0-9, - and _",
            ));
        }
        if let Some(prefix) = &self.prefix {
            check_text(prefix, PREFIX_CHARS_MAX).map_err(err)?;
        }
        Ok(())
    }

    /// Whether every request this right allows is also allowed by `self`.
    pub fn covers(&self, other: &Right) -> bool {
        self.subsystem == other.subsystem
            && (self.action == ANY_ACTION || self.action == other.action)
            && match (&self.prefix, &other.prefix) {
                (None, _) => true,
                (Some(_), None) => false,
                (Some(mine), Some(theirs)) => under(mine, theirs),
            }
    }

    /// Whether this right alone allows `req` (the model the Datalog rules implement).
    pub fn allows(&self, req: &Request) -> bool {
        self.subsystem == req.subsystem
            && (self.action == ANY_ACTION || self.action == req.action)
            && match (&self.prefix, &req.resource) {
                (None, _) => true,
                (Some(_), None) => false,
                (Some(prefix), Some(resource)) => under(prefix, resource),
            }
    }

    /// The right that allows exactly what both `self` and `other` allow, if anything.
    pub fn intersect(&self, other: &Right) -> Option<Right> {
        if self.subsystem != other.subsystem {
            return None;
        }
        let action = if self.action == other.action || other.action == ANY_ACTION {
            self.action.clone()
        } else if self.action == ANY_ACTION {
            other.action.clone()
        } else {
            return None;
        };
        let prefix = match (&self.prefix, &other.prefix) {
            (None, p) | (p, None) => p.clone(),
            (Some(a), Some(b)) if under(a, b) => Some(b.clone()),
            (Some(a), Some(b)) if under(b, a) => Some(a.clone()),
            _ => return None,
        };
        Some(Right {
            subsystem: self.subsystem.clone(),
            action,
            prefix,
        })
    }

    /// Plain words: "read config", "read fabric under /datasets/", "do anything with jobs".
    pub fn describe(&self) -> String {
        let mut out = if self.action == ANY_ACTION {
            format!("do anything with {}", self.subsystem)
        } else {
            format!("{} {}", self.action, self.subsystem)
        };
        if let Some(prefix) = &self.prefix {
            out.push_str(" under ");
            out.push_str(prefix);
        }
        out
    }
}

impl fmt::Display for Right {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.subsystem, self.action)?;
        if let Some(prefix) = &self.prefix {
            write!(f, ":{prefix}")?;
        }
        Ok(())
    }
}

impl FromStr for Right {
    type Err = SpecError;

    fn from_str(s: &str) -> Result<Right, SpecError> {
        let err = |reason| SpecError::Right {
            input: echo(s),
            reason,
        };
        // The prefix may itself hold colons (`fabric:read:s3://bucket/`), so split twice only.
        let mut parts = s.splitn(3, ':');
        let subsystem = parts.next().unwrap_or_default();
        let action = parts.next().ok_or_else(|| err("it has no action"))?;
        let prefix = parts.next();
        if prefix == Some("") {
            return Err(err("the prefix after the second `:` is empty"));
        }
        Right::new(subsystem, action, prefix)
    }
}

impl Serialize for Right {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Right {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Right, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// A named limit the token carries for the caller to enforce, e.g. `cpus=4`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Quota {
    pub name: String,
    pub value: i64,
}

impl Quota {
    /// Checks the name's character set and that the value is not negative.
    pub fn validate(&self) -> Result<(), SpecError> {
        let err = |reason| SpecError::Quota {
            input: echo(&self.to_string()),
            reason,
        };
        if !is_name(&self.name) {
            return Err(err(
                "the name must be 1 to 32 characters of a-z, 0-9, - and _",
            ));
        }
        if self.value < 0 {
            return Err(err("the value must not be negative"));
        }
        Ok(())
    }
}

impl fmt::Display for Quota {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}={}", self.name, self.value)
    }
}

impl FromStr for Quota {
    type Err = SpecError;

    fn from_str(s: &str) -> Result<Quota, SpecError> {
        let err = |reason| SpecError::Quota {
            input: echo(s),
            reason,
        };
        let (name, value) = s.split_once('=').ok_or_else(|| err("it has no `=`"))?;
        let value: i64 = value
            .parse()
            .map_err(|_| err("the value must be a whole number"))?;
        let quota = Quota {
            name: name.to_string(),
            value,
        };
        quota.validate()?;
        Ok(quota)
    }
}

/// What one API call wants to do: `subsystem:action`, on `resource` when it names one.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Request {
    pub subsystem: String,
    pub action: String,
    pub resource: Option<String>,
}

impl Request {
    /// A request that names no resource.
    pub fn new(subsystem: &str, action: &str) -> Request {
        Request {
            subsystem: subsystem.to_string(),
            action: action.to_string(),
            resource: None,
        }
    }

    /// The same request, on `resource`.
    pub fn on(mut self, resource: &str) -> Request {
        self.resource = Some(resource.to_string());
        self
    }
}

impl fmt::Display for Request {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", echo(&self.subsystem), echo(&self.action))?;
        if let Some(resource) = &self.resource {
            write!(f, " on {}", echo(resource))?;
        }
        Ok(())
    }
}

/// Checks a holder name (same rules as a prefix, shorter).
pub(crate) fn validate_holder(holder: &str) -> Result<(), SpecError> {
    check_text(holder, HOLDER_CHARS_MAX).map_err(|reason| SpecError::Holder {
        input: echo(holder),
        reason,
    })
}

/// `[a-z0-9_-]{1,32}`.
pub(crate) fn is_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= NAME_BYTES_MAX
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

/// Free text that sits inside a Datalog string: printable, no quotes or backslashes, bounded.
fn check_text(s: &str, chars_max: usize) -> Result<(), &'static str> {
    if s.is_empty() {
        return Err("it is empty");
    }
    if s.chars().count() > chars_max {
        return Err("it is too long");
    }
    if s.chars().any(|c| c.is_control() || c == '"' || c == '\\') {
        return Err("it may not hold quotes, backslashes or control characters");
    }
    Ok(())
}

/// A bounded, single-line copy of user input for error messages.
pub(crate) fn echo(s: &str) -> String {
    let mut out: String = s
        .chars()
        .take(ECHO_CHARS_MAX)
        .map(|c| if c.is_control() { '?' } else { c })
        .collect();
    if s.chars().nth(ECHO_CHARS_MAX).is_some() {
        out.push('…');
    }
    out
}
