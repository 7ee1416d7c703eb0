//! Browser sessions for the dashboard, kept apart from the admin credential.
//!
//! `noodle up` and `noodle dashboard` print a URL with a one-time login code (never the admin
//! credential). `/login?code=` trades the code, once and within [`CODE_TTL`], for a session: a
//! random id in an HttpOnly, SameSite=Strict cookie that expires after [`SESSION_TTL`]. A
//! session stands for the local admin and, like the credential, only from this machine. Codes
//! and sessions live in memory: a restart logs every browser out.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long a login code may wait to be used.
pub(crate) const CODE_TTL: Duration = Duration::from_secs(15 * 60);
/// How long a dashboard session lasts.
pub(crate) const SESSION_TTL: Duration = Duration::from_secs(12 * 3600);
/// Codes and sessions kept at most (the oldest go first).
const CODES_MAX: usize = 64;
const SESSIONS_MAX: usize = 256;

#[derive(Default)]
struct Kept {
    codes: HashMap<[u8; 32], Instant>,
    sessions: HashMap<[u8; 32], Instant>,
}

/// Login codes and sessions of this node.
#[derive(Default)]
pub(crate) struct Sessions {
    kept: Mutex<Kept>,
}

fn random_secret() -> String {
    hex::encode(rand::random::<[u8; 32]>())
}

/// The table key of a secret: its hash, so a lookup takes the same time whatever it matches.
fn key(secret: &str) -> [u8; 32] {
    *blake3::hash(secret.as_bytes()).as_bytes()
}

/// Keeps at most `max` entries, dropping expired ones and then the soonest to expire.
fn bound(map: &mut HashMap<[u8; 32], Instant>, max: usize, now: Instant) {
    map.retain(|_, until| *until > now);
    while map.len() >= max {
        let Some(oldest) = map.iter().min_by_key(|(_, until)| **until).map(|(k, _)| *k) else {
            return;
        };
        map.remove(&oldest);
    }
}

impl Sessions {
    fn lock(&self) -> std::sync::MutexGuard<'_, Kept> {
        self.kept.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A new one-time login code.
    pub(crate) fn issue_code(&self) -> String {
        let code = random_secret();
        let now = Instant::now();
        let mut kept = self.lock();
        bound(&mut kept.codes, CODES_MAX, now);
        kept.codes.insert(key(&code), now + CODE_TTL);
        code
    }

    /// Trades a login code for a new session id; `None` for a code that is unknown, used or
    /// expired.
    pub(crate) fn redeem(&self, code: &str) -> Option<String> {
        let now = Instant::now();
        let mut kept = self.lock();
        let until = kept.codes.remove(&key(code))?;
        if until <= now {
            return None;
        }
        let session = random_secret();
        bound(&mut kept.sessions, SESSIONS_MAX, now);
        kept.sessions.insert(key(&session), now + SESSION_TTL);
        Some(session)
    }

    /// Whether `session` is a live session.
    pub(crate) fn is_live(&self, session: &str) -> bool {
        let now = Instant::now();
        self.lock()
            .sessions
            .get(&key(session))
            .is_some_and(|until| *until > now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_code_is_used_once_and_its_session_is_not_the_code() {
        let s = Sessions::default();
        let code = s.issue_code();
        let session = s.redeem(&code).expect("a fresh code");
        assert_ne!(session, code);
        assert!(s.is_live(&session));
        assert!(!s.is_live(&code), "a code is not a session");
        assert!(s.redeem(&code).is_none(), "a code works once");
        assert!(s.redeem("made-up").is_none());
        assert!(!s.is_live("made-up"));
    }

    #[test]
    fn codes_and_sessions_are_bounded() {
        let s = Sessions::default();
        let codes: Vec<String> = (0..CODES_MAX * 2).map(|_| s.issue_code()).collect();
        assert!(s.lock().codes.len() <= CODES_MAX);
        let sessions: Vec<String> = codes.iter().filter_map(|c| s.redeem(c)).collect();
        assert!(!sessions.is_empty());
        assert!(s.lock().sessions.len() <= SESSIONS_MAX);
    }
}
