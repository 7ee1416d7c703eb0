//! What a subsystem may know of the cluster (membership and the gossiped node table) and of
//! time. Both are traits so that a subsystem's logic can run against a simulated cluster and
//! clock.

use noodle_api::NodeState;
use noodle_discovery::NodeInfo;
use std::collections::HashSet;
use std::net::SocketAddr;

/// The cluster as this node sees it: eventually consistent (gossip), never authoritative for
/// anything the control plane decides.
pub trait ClusterView: Send + Sync + 'static {
    /// This node's id.
    fn node_id(&self) -> &str;
    /// Ids of the nodes this node sees alive, itself included.
    fn alive_node_ids(&self) -> HashSet<String>;
    /// How this node's membership view sees node `id` (`None`: not a member it knows).
    fn node_state(&self, id: &str) -> Option<NodeState>;
    /// The cluster address of node `id`, as gossiped.
    fn peer_addr(&self, id: &str) -> Option<SocketAddr>;
    /// Every gossiped entry (resources, labels, links, job slots) with how this node's
    /// membership view sees that node.
    fn nodes(&self) -> Vec<(NodeInfo, NodeState)>;
    /// Indices of this node's own GPUs.
    fn own_gpu_indices(&self) -> Vec<u32>;
    /// True when every alive member's gossiped entry has arrived.
    fn every_alive_node_described(&self) -> bool;
}

/// Time, as a subsystem reads it.
pub trait Clock: Send + Sync + 'static {
    /// Unix time in milliseconds (for records and logs).
    fn now_ms(&self) -> u64;
    /// Milliseconds of a clock that never goes back (for leases and timeouts).
    fn monotonic_ms(&self) -> u64;
}

/// The machine's clocks.
#[derive(Debug, Clone, Copy)]
pub struct SystemClock {
    start: std::time::Instant,
}

impl Default for SystemClock {
    fn default() -> Self {
        SystemClock {
            start: std::time::Instant::now(),
        }
    }
}

impl Clock for SystemClock {
    fn now_ms(&self) -> u64 {
        crate::now_ms()
    }
    fn monotonic_ms(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }
}
