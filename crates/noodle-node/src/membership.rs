//! The membership loop (drives the SWIM state machine: datagrams and timers in, sends and timers
//! out; membership changes become events) and the gossip loop (measures resources and links,
//! publishes them in our node-table entry, and exchanges the table with a few peers a second).

use crate::cluster::ClusterState;
use crate::datadir::{ClusterFile, DataDir, PeerRecord};
use bytes::Bytes;
use noodle_api::{EventKind, NodeState};
use noodle_discovery::{Effect, LinkSample, MemberId, Membership, SyncMessage, Timer};
use noodle_host::{EventBus, now_ms};
use noodle_link::Link;
use rand::seq::SliceRandom;
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// Inputs the membership loop waits for, at most.
pub(crate) const MEMBERSHIP_QUEUE_MAX: usize = 4096;
/// How many peers one gossip round talks to.
const GOSSIP_FANOUT: usize = 3;
const GOSSIP_PERIOD: Duration = Duration::from_secs(1);
const PEERS_SAVED_MAX: usize = 64;
/// The node's own request method for a gossip round.
pub(crate) const GOSSIP_SYNC: &str = "gossip.sync";

pub(crate) enum MembershipInput {
    Datagram(Bytes),
    Timer(Timer),
    Announce(String, SocketAddr),
    Leave(oneshot::Sender<()>),
}

/// What both loops use.
pub(crate) struct Gossip {
    pub(crate) cluster: Arc<ClusterState>,
    pub(crate) link: Link,
    pub(crate) events: EventBus,
    pub(crate) tx: mpsc::Sender<MembershipInput>,
    pub(crate) data_dir: Arc<DataDir>,
}

/// Answers the gossip round of the node `from`: merges its entries, answers with what we know
/// newer.
pub(crate) fn answer_sync(cluster: &ClusterState, from: &str, body: &[u8]) -> Option<Vec<u8>> {
    let msg: SyncMessage = postcard::from_bytes(body).ok()?;
    let entries = cluster.exchange(from, msg.entries);
    postcard::to_stdvec(&SyncMessage { entries }).ok()
}

/// Owns the SWIM state machine: feeds it datagrams and timers, carries out its effects, and
/// turns membership changes into events.
pub(crate) async fn membership_loop(
    g: Arc<Gossip>,
    mut membership: Membership,
    mut rx: mpsc::Receiver<MembershipInput>,
) {
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    let mut previous: HashMap<String, (NodeState, u64)> = HashMap::new();
    let mut ever_seen: HashSet<String> = HashSet::new();
    let mut leaving: Option<oneshot::Sender<()>> = None;
    loop {
        tokio::select! {
            input = rx.recv() => match input {
                None => break,
                Some(MembershipInput::Datagram(data)) => {
                    if let Err(e) = membership.handle_datagram(&data) {
                        metrics::counter!("noodle_gossip_bad_packets_total").increment(1);
                        tracing::trace!(error = %e, "gossip packet dropped");
                    }
                }
                Some(MembershipInput::Timer(timer)) => membership.handle_timer(timer),
                Some(MembershipInput::Announce(id, addr)) => membership.announce(&id, addr),
                Some(MembershipInput::Leave(done)) => {
                    membership.leave();
                    leaving = Some(done);
                }
            },
            _ = tick.tick() => observe(&g, &membership, &mut previous, &mut ever_seen),
        }
        for effect in membership.effects() {
            match effect {
                Effect::Send(addr, data) => g.link.send_datagram(addr, data),
                Effect::Schedule(after, timer) => {
                    let tx = g.tx.clone();
                    tokio::spawn(async move {
                        tokio::time::sleep(after).await;
                        let _ = tx.send(MembershipInput::Timer(timer)).await;
                    });
                }
            }
        }
        if let Some(done) = leaving.take() {
            // Let the leave notices go out before the caller closes the link.
            tokio::time::sleep(Duration::from_millis(100)).await;
            let _ = done.send(());
            break;
        }
    }
}

fn observe(
    g: &Gossip,
    membership: &Membership,
    previous: &mut HashMap<String, (NodeState, u64)>,
    ever_seen: &mut HashSet<String>,
) {
    let mut current: HashMap<String, (MemberId, NodeState)> = HashMap::new();
    for (m, state) in membership.members() {
        let newer = current
            .get(&m.node_id)
            .is_none_or(|(old, _)| m.bump > old.bump);
        if newer {
            current.insert(m.node_id.clone(), (m, state));
        }
    }
    for (id, (m, state)) in &current {
        let before = previous.get(id).copied();
        let event = match (before, *state) {
            (None, NodeState::Alive | NodeState::Suspect) => Some(if ever_seen.contains(id) {
                EventKind::NODE_REJOINED
            } else {
                EventKind::NODE_JOINED
            }),
            (Some((NodeState::Dead, _)), NodeState::Alive) => Some(EventKind::NODE_REJOINED),
            (Some((_, bump)), NodeState::Alive) if bump != m.bump => Some(EventKind::NODE_REJOINED),
            (Some((NodeState::Alive, _)), NodeState::Suspect) => Some(EventKind::NODE_SUSPECTED),
            (Some((old, _)), NodeState::Dead) if old != NodeState::Dead => {
                Some(EventKind::NODE_DEAD)
            }
            _ => None,
        };
        if let Some(kind) = event {
            let dead = kind == EventKind::NODE_DEAD;
            g.events
                .emit(kind, id, format!("{} incarnation {}", m.addr, m.bump));
            if dead {
                g.link.disconnect(m.addr);
            }
        }
        if *state != NodeState::Dead {
            ever_seen.insert(id.clone());
        }
    }
    *previous = current
        .iter()
        .map(|(id, (m, s))| (id.clone(), (*s, m.bump)))
        .collect();
    g.cluster.set_members(current);
}

/// Once a second: measure resources and links, publish them in our entry, exchange the node
/// table with a few random peers, re-announce when alone, and remember peers for restarts.
pub(crate) async fn gossip_loop(
    g: Arc<Gossip>,
    mut probe: noodle_mesh::ResourceProbe,
    mut known_peers: Vec<PeerRecord>,
) {
    let mut tick = tokio::time::interval(GOSSIP_PERIOD);
    let mut round: u64 = 0;
    for p in &known_peers {
        let _ =
            g.tx.send(MembershipInput::Announce(p.id.clone(), p.addr))
                .await;
    }
    loop {
        tick.tick().await;
        round += 1;
        let resources = probe.sample();
        let samples: Vec<LinkSample> = g
            .link
            .links()
            .iter()
            .filter_map(|l| {
                Some(LinkSample {
                    peer: l.peer_id.clone()?,
                    rtt_us: l.rtt.as_micros() as u64,
                    kx_group: l.kx_group.clone(),
                })
            })
            .collect();
        g.cluster.update_me(now_ms(), |me| {
            me.resources = resources;
            me.links = samples;
        });
        let alive = g.cluster.live_members();
        let mut targets: Vec<SocketAddr> = alive.iter().map(|(_, a)| *a).collect();
        targets.shuffle(&mut rand::rng());
        targets.truncate(GOSSIP_FANOUT);
        let request = postcard::to_stdvec(&SyncMessage {
            entries: g.cluster.entries(),
        })
        .unwrap_or_default();
        for addr in targets {
            let g = g.clone();
            let request = request.clone();
            tokio::spawn(async move {
                match g.link.request(addr, GOSSIP_SYNC, &request).await {
                    Ok(answer) => match postcard::from_bytes::<SyncMessage>(&answer) {
                        Ok(msg) => g.cluster.merge(msg.entries),
                        Err(_) => {
                            metrics::counter!("noodle_gossip_bad_messages_total").increment(1);
                        }
                    },
                    Err(e) => tracing::debug!(%addr, error = %e, "gossip round failed"),
                }
            });
        }
        if alive.is_empty() && round.is_multiple_of(2) {
            for p in &known_peers {
                let _ =
                    g.tx.try_send(MembershipInput::Announce(p.id.clone(), p.addr));
            }
        }
        if round.is_multiple_of(5) && !alive.is_empty() {
            let mut peers: Vec<PeerRecord> = alive
                .into_iter()
                .map(|(id, addr)| PeerRecord { id, addr })
                .collect();
            peers.truncate(PEERS_SAVED_MAX);
            if peers != known_peers {
                let file = ClusterFile {
                    cluster_id: g.cluster.cluster_id.clone(),
                    peers: peers.clone(),
                };
                match g.data_dir.write_json("cluster.json", &file, false) {
                    Ok(()) => known_peers = peers,
                    Err(e) => tracing::warn!(error = %e, "cannot save peer list"),
                }
            }
        }
    }
}
