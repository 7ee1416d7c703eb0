//! `noodle node remove`: threat model point 4. A node's stolen data directory (its certificate
//! and key) is refused by every other node once the node is removed.

use crate::support::{Node, cluster, eventually};
use bytes::Bytes;
use noodle_link::{
    JoinPeer, Link, LinkConfig, LinkEvent, Peer, RemoteError, Service, ServiceFuture, TlsMaterial,
};
use rustls::pki_types::CertificateDer;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// The attacker's side: answers nothing.
struct Mute;

impl Service for Mute {
    fn call(&self, _: Peer, _: &str, _: Bytes) -> ServiceFuture {
        Box::pin(async { Err(RemoteError::new(RemoteError::NOT_FOUND, "mute")) })
    }
    fn join(&self, _: JoinPeer, _: Bytes) -> ServiceFuture {
        Box::pin(async { Err(RemoteError::new(RemoteError::NOT_FOUND, "mute")) })
    }
    fn datagram(&self, _: &Peer, _: Bytes) {}
    fn event(&self, _: LinkEvent) {}
}

/// A link made from a node's data directory, as a thief who copied it would make one.
fn stolen_link(dir: &std::path::Path) -> Link {
    let read = |name: &str| std::fs::read(dir.join(name)).unwrap();
    let key =
        noodle_security::NodeKey::from_pem(&String::from_utf8(read("node.key")).unwrap()).unwrap();
    let tls = TlsMaterial {
        ca: CertificateDer::from(read("ca.crt")),
        cert: CertificateDer::from(read("node.crt")),
        key: key.private_key_der(),
    };
    Link::bind(
        LinkConfig::new("127.0.0.1:0".parse().unwrap()),
        &tls,
        Arc::new(Mute),
    )
    .unwrap()
}

fn addr_of(node: &Node) -> SocketAddr {
    let me = node
        .status()
        .unwrap()
        .nodes
        .into_iter()
        .find(|n| n.is_self)
        .unwrap();
    me.addr.parse().unwrap()
}

/// After `noodle node remove`, every other node refuses the removed node's links (checked with
/// its stolen certificate and key, which worked just before), forgets it, takes it out of the
/// control plane, and says so in its events. Removing a node that does not exist, or the node
/// one asks, is one clear error.
#[test]
fn a_removed_node_is_refused_by_every_other_node() {
    let nodes = cluster(4);
    // Four nodes: three voters and a learner; the learner's directory is the stolen one.
    let learner = eventually(
        Duration::from_secs(30),
        "three voters and a learner",
        || {
            let c = nodes[0].status()?.control?;
            (c.voters.len() == 3 && c.learners.len() == 1).then(|| c.learners[0].clone())
        },
    );
    let victim = nodes.iter().position(|n| n.node_id() == learner).unwrap();
    let victim_id = nodes[victim].node_id();
    let others: Vec<&Node> = nodes
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != victim)
        .map(|(_, n)| n)
        .collect();
    let addrs: Vec<SocketAddr> = others.iter().map(|n| addr_of(n)).collect();

    let rt = tokio::runtime::Runtime::new().unwrap();
    let thief = rt.block_on(async { stolen_link(&nodes[victim].dir) });
    let ping = |addr: SocketAddr| rt.block_on(thief.request(addr, "node.ping", b"hi"));
    for addr in &addrs {
        assert_eq!(&ping(*addr).unwrap()[..], b"hi", "before removal, {addr}");
    }

    // Bad input first: nothing is removed.
    let out = others[0].cli(&["node", "remove", "no-such-node"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no node `no-such-node`"));
    let own = others[0].node_id();
    let out = others[0].cli(&["node", "remove", &own]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot remove itself"));

    let out = others[0].cli(&["node", "remove", &victim_id, "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let removed: noodle_api::RemovedNode = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(removed.id, victim_id);

    for (node, addr) in others.iter().zip(&addrs) {
        eventually(
            Duration::from_secs(10),
            "the stolen identity refused",
            || ping(*addr).is_err().then_some(()),
        );
        eventually(
            Duration::from_secs(10),
            "the removed node forgotten",
            || {
                let s = node.status()?;
                let control = s.control?;
                let gone = s.nodes.iter().all(|n| n.id != victim_id)
                    && !control.voters.contains(&victim_id)
                    && !control.learners.contains(&victim_id);
                gone.then_some(())
            },
        );
        let events = node.cli(&["events", "--json"]);
        let events = String::from_utf8_lossy(&events.stdout).to_string();
        assert!(
            events
                .lines()
                .any(|l| l.contains("node_removed") && l.contains(&victim_id)),
            "{events}"
        );
    }
    // Refused for good: a fresh connection from the stolen directory gets nowhere either.
    for addr in &addrs {
        let err = ping(*addr).unwrap_err();
        assert!(
            matches!(
                err,
                noodle_link::LinkError::Connect { .. } | noodle_link::LinkError::Connection { .. }
            ),
            "{err}"
        );
    }
    // The audit log names who removed it.
    let audit = others[0].cli(&["audit", "--json"]);
    let audit = String::from_utf8_lossy(&audit.stdout).to_string();
    assert!(
        audit.contains("node.remove") && audit.contains(&victim_id),
        "{audit}"
    );
}
