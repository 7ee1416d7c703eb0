//! Bounds on what a peer costs before and after it proves who it is: connections in their
//! handshake (or a joiner's one request) at once, in all and per source address, and member
//! connections per node. Counting only; the link decides what to do with a refusal.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

/// Connections in their handshake, or serving a joiner's request, at once.
pub const HANDSHAKES_MAX: usize = 64;
/// The same, from one source address.
pub const HANDSHAKES_PER_SOURCE_MAX: usize = 8;

#[derive(Debug, Default)]
struct Counts {
    total: usize,
    per_source: HashMap<IpAddr, usize>,
}

/// Counts connections that have not proven a member certificate yet.
#[derive(Debug, Default, Clone)]
pub(crate) struct Handshakes {
    counts: Arc<Mutex<Counts>>,
}

/// One admitted handshake; dropping it gives its place back.
#[derive(Debug)]
pub(crate) struct HandshakeSlot {
    counts: Arc<Mutex<Counts>>,
    source: IpAddr,
}

impl Handshakes {
    /// A place for a handshake from `source`, unless that would pass a bound.
    pub(crate) fn admit(&self, source: IpAddr) -> Option<HandshakeSlot> {
        let mut c = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        let here = c.per_source.get(&source).copied().unwrap_or(0);
        if c.total >= HANDSHAKES_MAX || here >= HANDSHAKES_PER_SOURCE_MAX {
            return None;
        }
        c.total += 1;
        c.per_source.insert(source, here + 1);
        Some(HandshakeSlot {
            counts: self.counts.clone(),
            source,
        })
    }
}

impl Drop for HandshakeSlot {
    fn drop(&mut self) {
        let mut c = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        c.total = c.total.saturating_sub(1);
        if let Some(n) = c.per_source.get_mut(&self.source) {
            *n -= 1;
            if *n == 0 {
                c.per_source.remove(&self.source);
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn bounds_per_source_and_in_all_and_places_come_back() {
        let h = Handshakes::default();
        let a: IpAddr = [10, 0, 0, 1].into();
        let mine: Vec<_> = (0..HANDSHAKES_PER_SOURCE_MAX)
            .map(|_| h.admit(a).unwrap())
            .collect();
        assert!(h.admit(a).is_none(), "over the per-source bound");
        let others: Vec<_> = (0..HANDSHAKES_MAX - HANDSHAKES_PER_SOURCE_MAX)
            .map(|i| {
                h.admit(IpAddr::from([10, 1, (i / 250) as u8, (i % 250) as u8]))
                    .unwrap()
            })
            .collect();
        assert!(h.admit([10, 9, 9, 9].into()).is_none(), "over the total");
        drop(mine);
        assert!(h.admit(a).is_some(), "places come back");
        drop(others);
        assert!(h.counts.lock().unwrap().per_source.is_empty());
    }
}
