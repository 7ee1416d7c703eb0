//! How denials reach the audit log without letting a caller grow it at will: within a window,
//! the first denial of each (actor, action, right, reason) is recorded at once and the repeats
//! are counted, then recorded as one entry with their count when the window ends. At most
//! [`DenialBook::KEYS_MAX`] distinct keys are tracked per window; denials beyond them are
//! counted together. So a node writes at most `2 × KEYS_MAX + 1` denial records per window,
//! whatever it is sent. Sans-IO: the caller passes the time.

use std::collections::HashMap;

/// What makes two denials the same for the audit log.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct DenialKey {
    pub(crate) actor: String,
    pub(crate) action: String,
    pub(crate) right: String,
    pub(crate) reason: String,
}

/// What to do with one denial.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Note {
    /// The first of its kind in this window: record it now.
    Record,
    /// A repeat (or one beyond the tracked keys): counted, recorded when the window ends.
    Counted,
}

/// What a window that ended leaves to record.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Ended {
    /// Keys with the number of repeats not yet recorded (and the first target seen).
    pub(crate) repeats: Vec<(DenialKey, String, u64)>,
    /// Denials of keys beyond [`DenialBook::KEYS_MAX`].
    pub(crate) untracked: u64,
}

#[derive(Debug, Default)]
pub(crate) struct DenialBook {
    window_start_ms: u64,
    /// Key -> (first target, repeats since the first).
    seen: HashMap<DenialKey, (String, u64)>,
    untracked: u64,
}

impl DenialBook {
    pub(crate) const WINDOW_MS: u64 = 60_000;
    pub(crate) const KEYS_MAX: usize = 64;

    /// Notes a denial at `now_ms`; if that ended a window, what it left is returned too.
    pub(crate) fn note(&mut self, key: DenialKey, target: &str, now_ms: u64) -> (Note, Ended) {
        let ended = self.roll(now_ms);
        let tracked = self.seen.len();
        let note = match self.seen.get_mut(&key) {
            Some((_, repeats)) => {
                *repeats += 1;
                Note::Counted
            }
            None if tracked >= Self::KEYS_MAX => {
                self.untracked += 1;
                Note::Counted
            }
            None => {
                self.seen.insert(key, (target.to_string(), 0));
                Note::Record
            }
        };
        (note, ended)
    }

    /// Ends the window if it is over at `now_ms`, returning what is left to record.
    pub(crate) fn roll(&mut self, now_ms: u64) -> Ended {
        if now_ms.saturating_sub(self.window_start_ms) < Self::WINDOW_MS {
            return Ended::default();
        }
        self.window_start_ms = now_ms;
        let mut repeats: Vec<(DenialKey, String, u64)> = self
            .seen
            .drain()
            .filter(|(_, (_, n))| *n > 0)
            .map(|(k, (target, n))| (k, target, n))
            .collect();
        repeats.sort_by(|a, b| a.0.actor.cmp(&b.0.actor).then(a.0.action.cmp(&b.0.action)));
        Ended {
            repeats,
            untracked: std::mem::take(&mut self.untracked),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn key(actor: &str) -> DenialKey {
        DenialKey {
            actor: actor.into(),
            action: "config.set".into(),
            right: "config:write".into(),
            reason: "token was revoked".into(),
        }
    }

    #[test]
    fn repeats_are_counted_and_recorded_once_when_the_window_ends() {
        let mut book = DenialBook::default();
        let t0 = DenialBook::WINDOW_MS;
        assert_eq!(
            book.note(key("a"), "k", t0),
            (Note::Record, Ended::default())
        );
        for i in 1..100 {
            assert_eq!(book.note(key("a"), "k", t0 + i).0, Note::Counted);
        }
        assert_eq!(book.note(key("b"), "k", t0 + 100).0, Note::Record);
        assert_eq!(book.roll(t0 + DenialBook::WINDOW_MS - 1), Ended::default());
        let ended = book.roll(t0 + DenialBook::WINDOW_MS);
        assert_eq!(ended.repeats, vec![(key("a"), "k".to_string(), 99)]);
        assert_eq!(ended.untracked, 0);
        // A new window: the first is recorded again.
        assert_eq!(
            book.note(key("a"), "k", t0 + DenialBook::WINDOW_MS + 1).0,
            Note::Record
        );
    }

    #[test]
    fn distinct_keys_beyond_the_bound_are_counted_together() {
        let mut book = DenialBook::default();
        let t0 = DenialBook::WINDOW_MS;
        let mut recorded = 0;
        for i in 0..1000 {
            if book.note(key(&format!("unverified token {i}")), "k", t0).0 == Note::Record {
                recorded += 1;
            }
        }
        assert_eq!(recorded, DenialBook::KEYS_MAX);
        let ended = book.roll(t0 + DenialBook::WINDOW_MS);
        assert!(ended.repeats.is_empty());
        assert_eq!(ended.untracked, 1000 - DenialBook::KEYS_MAX as u64);
        assert!(book.seen.is_empty());
    }
}
