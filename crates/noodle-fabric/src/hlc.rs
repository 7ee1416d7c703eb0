//! Hybrid logical clock: versions are ordered by (wall milliseconds, logical counter, node),
//! which follows real time where clocks agree and never goes backwards where they do not.
//! Sans-IO: the caller passes the wall time in.

use serde::{Deserialize, Serialize};

/// One point of hybrid-logical time. Ordered by wall time, then counter; ties between nodes
/// are broken by whoever compares (the fabric orders versions by `(Hlc, node id)`).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
pub struct Hlc {
    pub wall_ms: u64,
    pub logical: u32,
}

impl Hlc {
    /// Big-endian bytes that sort like the time (for store keys).
    pub fn to_key(self) -> [u8; 12] {
        let mut key = [0u8; 12];
        key[..8].copy_from_slice(&self.wall_ms.to_be_bytes());
        key[8..].copy_from_slice(&self.logical.to_be_bytes());
        key
    }

    pub fn from_key(key: &[u8]) -> Option<Hlc> {
        let wall = <[u8; 8]>::try_from(key.get(..8)?).ok()?;
        let logical = <[u8; 4]>::try_from(key.get(8..12)?).ok()?;
        Some(Hlc {
            wall_ms: u64::from_be_bytes(wall),
            logical: u32::from_be_bytes(logical),
        })
    }
}

/// One node's clock.
#[derive(Debug, Default)]
pub struct HlcClock {
    last: Hlc,
}

impl HlcClock {
    /// A time for a local event at wall time `now_ms`: later than every time this clock gave
    /// or saw.
    pub fn tick(&mut self, now_ms: u64) -> Hlc {
        self.last = if now_ms > self.last.wall_ms {
            Hlc {
                wall_ms: now_ms,
                logical: 0,
            }
        } else {
            self.bump(self.last.wall_ms)
        };
        self.last
    }

    /// Takes in a time seen elsewhere (a version another node wrote), so that what this node
    /// writes next is ordered after it.
    pub fn observe(&mut self, seen: Hlc) {
        if seen > self.last {
            self.last = seen;
        }
    }

    fn bump(&self, wall_ms: u64) -> Hlc {
        match self.last.logical.checked_add(1) {
            Some(logical) => Hlc { wall_ms, logical },
            // Four billion events in one millisecond: move on to the next one.
            None => Hlc {
                wall_ms: wall_ms.saturating_add(1),
                logical: 0,
            },
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn follows_the_wall_clock_and_never_goes_back() {
        let mut c = HlcClock::default();
        assert_eq!(
            c.tick(100),
            Hlc {
                wall_ms: 100,
                logical: 0
            }
        );
        assert_eq!(
            c.tick(100),
            Hlc {
                wall_ms: 100,
                logical: 1
            }
        );
        // The wall clock stepped back: the counter moves on instead.
        assert_eq!(
            c.tick(50),
            Hlc {
                wall_ms: 100,
                logical: 2
            }
        );
        assert_eq!(
            c.tick(200),
            Hlc {
                wall_ms: 200,
                logical: 0
            }
        );
        // A time from a node whose clock is ahead: ours follows it.
        c.observe(Hlc {
            wall_ms: 900,
            logical: 7,
        });
        assert_eq!(
            c.tick(201),
            Hlc {
                wall_ms: 900,
                logical: 8
            }
        );
        let near_end = Hlc {
            wall_ms: 5,
            logical: u32::MAX,
        };
        let mut c = HlcClock { last: near_end };
        assert_eq!(
            c.tick(1),
            Hlc {
                wall_ms: 6,
                logical: 0
            }
        );
    }

    proptest! {
        #[test]
        fn ticks_strictly_increase_and_keys_sort_like_times(
            steps in proptest::collection::vec((0u64..1_000, proptest::option::of((0u64..2_000, 0u32..10))), 1..200)
        ) {
            let mut c = HlcClock::default();
            let mut last = Hlc::default();
            for (now, seen) in steps {
                if let Some((wall_ms, logical)) = seen {
                    c.observe(Hlc { wall_ms, logical });
                }
                let t = c.tick(now);
                prop_assert!(t > last);
                prop_assert!(t.to_key() > last.to_key());
                prop_assert_eq!(Hlc::from_key(&t.to_key()), Some(t));
                last = t;
            }
        }
    }
}
