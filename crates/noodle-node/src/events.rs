//! The local event bus: a bounded history plus live subscribers.

use noodle_api::{Event, EventKind};
use std::collections::VecDeque;
use std::sync::Mutex;
use tokio::sync::broadcast;

const HISTORY_MAX: usize = 1000;
const SUBSCRIBER_BACKLOG_MAX: usize = 1024;

pub(crate) struct EventBus {
    history: Mutex<(u64, VecDeque<Event>)>,
    live: broadcast::Sender<Event>,
}

impl Default for EventBus {
    fn default() -> Self {
        EventBus {
            history: Mutex::new((0, VecDeque::new())),
            live: broadcast::channel(SUBSCRIBER_BACKLOG_MAX).0,
        }
    }
}

impl EventBus {
    pub(crate) fn emit(&self, kind: EventKind, node: &str, detail: impl Into<String>) {
        let event = {
            let mut h = self.history.lock().unwrap_or_else(|e| e.into_inner());
            h.0 += 1;
            let event = Event {
                seq: h.0,
                at_ms: crate::now_ms(),
                kind,
                node: node.to_string(),
                detail: detail.into(),
            };
            if h.1.len() == HISTORY_MAX {
                h.1.pop_front();
            }
            h.1.push_back(event.clone());
            event
        };
        tracing::info!(kind = kind.as_str(), node = %event.node, detail = %event.detail, "event");
        // No subscriber is fine; a slow one misses events (it sees a lag) rather than block us.
        let _ = self.live.send(event);
    }

    pub(crate) fn history(&self) -> Vec<Event> {
        let h = self.history.lock().unwrap_or_else(|e| e.into_inner());
        h.1.iter().cloned().collect()
    }

    pub(crate) fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.live.subscribe()
    }
}
