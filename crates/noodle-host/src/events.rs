//! The local event bus: a bounded history plus live subscribers. Subsystems register the kinds
//! of event they emit when the node starts them.

use noodle_api::{Event, EventKind};
use std::collections::{BTreeSet, VecDeque};
use std::sync::{Arc, Mutex};
use tokio::sync::broadcast;

const HISTORY_MAX: usize = 1000;
const SUBSCRIBER_BACKLOG_MAX: usize = 1024;
/// Event kinds one node knows, at most.
const KINDS_MAX: usize = 256;

struct History {
    seq: u64,
    events: VecDeque<Event>,
    kinds: BTreeSet<EventKind>,
}

/// The node's event bus. Cheap to clone.
#[derive(Clone)]
pub struct EventBus {
    history: Arc<Mutex<History>>,
    live: broadcast::Sender<Event>,
}

impl Default for EventBus {
    fn default() -> Self {
        EventBus {
            history: Arc::new(Mutex::new(History {
                seq: 0,
                events: VecDeque::new(),
                kinds: BTreeSet::new(),
            })),
            live: broadcast::channel(SUBSCRIBER_BACKLOG_MAX).0,
        }
    }
}

impl EventBus {
    fn lock(&self) -> std::sync::MutexGuard<'_, History> {
        self.history.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Makes `kinds` known (what `GET /v1/events/kinds` lists).
    pub fn register(&self, kinds: impl IntoIterator<Item = EventKind>) {
        let mut h = self.lock();
        for kind in kinds {
            if h.kinds.len() < KINDS_MAX {
                h.kinds.insert(kind);
            }
        }
    }

    /// The kinds registered so far.
    pub fn kinds(&self) -> Vec<EventKind> {
        self.lock().kinds.iter().cloned().collect()
    }

    pub fn emit(&self, kind: EventKind, node: &str, detail: impl Into<String>) {
        let event = {
            let mut h = self.lock();
            if !h.kinds.contains(&kind) {
                // A bug in the subsystem that emits it; the event still goes out.
                metrics::counter!("noodle_events_unregistered_total").increment(1);
                tracing::debug!(kind = kind.as_str(), "event of a kind nobody registered");
            }
            h.seq += 1;
            let event = Event {
                seq: h.seq,
                at_ms: crate::now_ms(),
                kind,
                node: node.to_string(),
                detail: detail.into(),
            };
            if h.events.len() == HISTORY_MAX {
                h.events.pop_front();
            }
            h.events.push_back(event.clone());
            event
        };
        tracing::info!(kind = event.kind.as_str(), node = %event.node, detail = %event.detail, "event");
        // No subscriber is fine; a slow one misses events (it sees a lag) rather than block us.
        let _ = self.live.send(event);
    }

    pub fn history(&self) -> Vec<Event> {
        self.lock().events.iter().cloned().collect()
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.live.subscribe()
    }
}
