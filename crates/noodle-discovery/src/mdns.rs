//! mDNS on the LAN: each node advertises `_noodle._udp.local.` with its cluster id; a joiner
//! that has only a token browses for nodes of the token's cluster.

use mdns_sd::{ServiceDaemon, ServiceEvent, ServiceInfo};
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::Duration;

pub const SERVICE_TYPE: &str = "_noodle._udp.local.";

#[derive(Debug, thiserror::Error)]
pub enum MdnsError {
    #[error("mDNS: {0}")]
    Mdns(#[from] mdns_sd::Error),
}

/// The mDNS responder and browser of one node.
pub struct Mdns {
    daemon: ServiceDaemon,
}

impl Mdns {
    pub fn start() -> Result<Mdns, MdnsError> {
        Ok(Mdns {
            daemon: ServiceDaemon::new()?,
        })
    }

    /// Advertises this node: instance `node_id`, TXT `cid` = cluster id, on every interface.
    pub fn advertise(&self, cluster_id: &str, node_id: &str, port: u16) -> Result<(), MdnsError> {
        let props = [("cid", cluster_id), ("id", node_id)];
        let info = ServiceInfo::new(
            SERVICE_TYPE,
            node_id,
            &format!("{node_id}.local."),
            "",
            port,
            &props[..],
        )?
        .enable_addr_auto();
        self.daemon.register(info)?;
        Ok(())
    }

    /// Browses for members of `cluster_id` for at most `timeout`; returns early, after a short
    /// grace period for more answers, once at least one is found.
    pub async fn browse(&self, cluster_id: &str, timeout: Duration) -> Vec<SocketAddr> {
        const GRACE: Duration = Duration::from_millis(500);
        let receiver = match self.daemon.browse(SERVICE_TYPE) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "mDNS browse failed");
                return Vec::new();
            }
        };
        let mut found = BTreeSet::new();
        let mut deadline = tokio::time::Instant::now() + timeout;
        loop {
            let event = match tokio::time::timeout_at(deadline, receiver.recv_async()).await {
                Ok(Ok(event)) => event,
                _ => break,
            };
            if let ServiceEvent::ServiceResolved(service) = event {
                if service.get_property_val_str("cid") != Some(cluster_id) {
                    continue;
                }
                let before = found.len();
                for ip in service.get_addresses() {
                    found.insert(SocketAddr::new(ip.to_ip_addr(), service.get_port()));
                }
                if before == 0 && !found.is_empty() {
                    deadline = deadline.min(tokio::time::Instant::now() + GRACE);
                }
            }
        }
        let _ = self.daemon.stop_browse(SERVICE_TYPE);
        found.into_iter().collect()
    }

    pub fn shutdown(&self) {
        let _ = self.daemon.shutdown();
    }
}
