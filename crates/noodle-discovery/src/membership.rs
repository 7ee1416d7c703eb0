//! SWIM membership: a thin sans-IO shell around foca.
//!
//! The identity of a member is its node id; `bump` (the start time of the process, in
//! milliseconds) tells incarnations of the same node apart, so a node restarted on the same data
//! directory replaces its old self instead of being refused as a dead member.

use bytes::Bytes;
use foca::{AccumulatingRuntime, Config, Foca, NoCustomBroadcast, PostcardCodec, State};
use noodle_api::NodeState;
use rand::SeedableRng;
use rand::rngs::StdRng;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::num::{NonZeroU8, NonZeroUsize};
use std::time::Duration;

pub type Timer = foca::Timer<MemberId>;

/// A member as SWIM knows it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct MemberId {
    pub node_id: String,
    pub addr: SocketAddr,
    pub bump: u64,
}

impl foca::Identity for MemberId {
    type Addr = String;

    fn renew(&self) -> Option<Self> {
        Some(MemberId {
            bump: self.bump.wrapping_add(1),
            ..self.clone()
        })
    }

    fn addr(&self) -> String {
        self.node_id.clone()
    }

    fn win_addr_conflict(&self, adversary: &Self) -> bool {
        self.bump > adversary.bump
    }
}

/// Failure-detector timing. The defaults mark a crashed node dead within about 3 s on a LAN.
#[derive(Debug, Clone)]
pub struct MembershipConfig {
    /// How often one peer is probed.
    pub probe_period: Duration,
    /// How long to wait for a direct answer before asking others to probe.
    pub probe_rtt: Duration,
    /// How long a suspect has to refute before it is declared dead.
    pub suspect_to_down_after: Duration,
    /// Largest gossip datagram; must fit a QUIC datagram on the path.
    pub max_packet_bytes: usize,
}

impl Default for MembershipConfig {
    fn default() -> Self {
        MembershipConfig {
            probe_period: Duration::from_millis(500),
            probe_rtt: Duration::from_millis(200),
            suspect_to_down_after: Duration::from_millis(1500),
            max_packet_bytes: 1100,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum MembershipError {
    #[error("invalid membership configuration: {0}")]
    Config(String),
    #[error("gossip packet refused: {0}")]
    Packet(String),
}

/// What the caller must do after feeding the state machine.
#[derive(Debug)]
pub enum Effect {
    Send(SocketAddr, Bytes),
    Schedule(Duration, Timer),
}

pub struct Membership {
    foca: Foca<MemberId, PostcardCodec, StdRng, NoCustomBroadcast>,
    runtime: AccumulatingRuntime<MemberId>,
}

impl Membership {
    pub fn new(
        me: MemberId,
        cfg: &MembershipConfig,
        rng_seed: u64,
    ) -> Result<Membership, MembershipError> {
        if cfg.probe_rtt >= cfg.probe_period || cfg.probe_rtt.is_zero() {
            return Err(MembershipError::Config(
                "probe rtt must be non-zero and shorter than the probe period".into(),
            ));
        }
        let nz =
            |n: usize| NonZeroUsize::new(n).ok_or_else(|| MembershipError::Config("zero".into()));
        let mut config = Config::new_lan(std::num::NonZeroU32::MIN.saturating_add(15));
        config.probe_period = cfg.probe_period;
        config.probe_rtt = cfg.probe_rtt;
        config.suspect_to_down_after = cfg.suspect_to_down_after;
        config.max_packet_size = nz(cfg.max_packet_bytes)?;
        config.max_transmissions = NonZeroU8::new(8).unwrap_or(NonZeroU8::MIN);
        config.periodic_announce = Some(foca::PeriodicParams {
            frequency: Duration::from_secs(10),
            num_members: nz(1)?,
        });
        config.periodic_announce_to_down_members = Some(foca::PeriodicParams {
            frequency: Duration::from_secs(3),
            num_members: nz(2)?,
        });
        config.periodic_gossip = Some(foca::PeriodicParams {
            frequency: Duration::from_millis(200),
            num_members: nz(3)?,
        });
        let foca = Foca::new(me, config, StdRng::seed_from_u64(rng_seed), PostcardCodec);
        Ok(Membership {
            foca,
            runtime: AccumulatingRuntime::new(),
        })
    }

    pub fn identity(&self) -> &MemberId {
        self.foca.identity()
    }

    /// Asks node `node_id` at `addr` to let us in. Its current `bump` need not be known: foca
    /// accepts an announce addressed to any incarnation of the node.
    pub fn announce(&mut self, node_id: &str, addr: SocketAddr) {
        let dst = MemberId {
            node_id: node_id.to_string(),
            addr,
            bump: 0,
        };
        if let Err(e) = self.foca.announce(dst, &mut self.runtime) {
            tracing::debug!(%addr, error = %e, "announce failed");
        }
    }

    pub fn handle_datagram(&mut self, data: &[u8]) -> Result<(), MembershipError> {
        self.foca
            .handle_data(data, &mut self.runtime)
            .map_err(|e| MembershipError::Packet(e.to_string()))
    }

    pub fn handle_timer(&mut self, timer: Timer) {
        if let Err(e) = self.foca.handle_timer(timer, &mut self.runtime) {
            tracing::debug!(error = %e, "membership timer");
        }
    }

    /// Tells the others we are leaving on purpose.
    pub fn leave(&mut self) {
        if let Err(e) = self.foca.leave_cluster(&mut self.runtime) {
            tracing::debug!(error = %e, "leave");
        }
    }

    /// Drains what the state machine asked for since the last call.
    pub fn effects(&mut self) -> Vec<Effect> {
        let mut out = Vec::new();
        while let Some((dst, data)) = self.runtime.to_send() {
            out.push(Effect::Send(dst.addr, data));
        }
        while let Some((after, timer)) = self.runtime.to_schedule() {
            out.push(Effect::Schedule(after, timer));
        }
        while let Some(n) = self.runtime.to_notify() {
            tracing::debug!(notification = ?n, "membership");
        }
        out
    }

    /// Every member this node knows of (not itself), with its state.
    pub fn members(&self) -> Vec<(MemberId, NodeState)> {
        self.foca
            .iter_membership_state()
            .map(|m| {
                let state = match m.state() {
                    State::Alive => NodeState::Alive,
                    State::Suspect => NodeState::Suspect,
                    State::Down => NodeState::Dead,
                };
                (m.id().clone(), state)
            })
            .collect()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::cmp::Reverse;
    use std::collections::{BTreeMap, BinaryHeap};

    /// Drives `n` members in one thread with a virtual clock: datagrams arrive instantly unless
    /// their sender or receiver is crashed.
    struct Sim {
        nodes: Vec<Membership>,
        crashed: Vec<bool>,
        now: Duration,
        timers: BinaryHeap<Reverse<(Duration, u64, usize)>>,
        pending: BTreeMap<u64, Timer>,
        seq: u64,
    }

    impl Sim {
        fn new(n: usize) -> Sim {
            let cfg = MembershipConfig::default();
            let nodes = (0..n)
                .map(|i| {
                    let id = MemberId {
                        node_id: format!("n{i}"),
                        addr: format!("127.0.0.1:{}", 7000 + i).parse().unwrap(),
                        bump: 1,
                    };
                    Membership::new(id, &cfg, i as u64).unwrap()
                })
                .collect();
            Sim {
                nodes,
                crashed: vec![false; n],
                now: Duration::ZERO,
                timers: BinaryHeap::new(),
                pending: BTreeMap::new(),
                seq: 0,
            }
        }

        fn index_of(&self, addr: SocketAddr) -> Option<usize> {
            self.nodes.iter().position(|m| m.identity().addr == addr)
        }

        fn flush(&mut self, mut i: usize) {
            let mut queue = vec![i];
            while let Some(from) = queue.pop() {
                i = from;
                for effect in self.nodes[i].effects() {
                    match effect {
                        Effect::Send(addr, data) => {
                            if let Some(j) = self.index_of(addr)
                                && !self.crashed[i]
                                && !self.crashed[j]
                            {
                                let _ = self.nodes[j].handle_datagram(&data);
                                queue.push(j);
                            }
                        }
                        Effect::Schedule(after, timer) => {
                            self.seq += 1;
                            self.pending.insert(self.seq, timer);
                            self.timers.push(Reverse((self.now + after, self.seq, i)));
                        }
                    }
                }
            }
        }

        fn run_until(&mut self, until: Duration) {
            while let Some(Reverse((at, seq, i))) = self.timers.peek().copied() {
                if at > until {
                    break;
                }
                self.timers.pop();
                self.now = at;
                if let Some(timer) = self.pending.remove(&seq)
                    && !self.crashed[i]
                {
                    self.nodes[i].handle_timer(timer);
                    self.flush(i);
                }
            }
            self.now = until;
        }

        fn state_of(&self, viewer: usize, node: usize) -> Option<NodeState> {
            let id = format!("n{node}");
            self.nodes[viewer]
                .members()
                .into_iter()
                .find(|(m, _)| m.node_id == id)
                .map(|(_, s)| s)
        }
    }

    #[test]
    fn members_join_and_a_crash_is_detected_within_5s() {
        let mut sim = Sim::new(3);
        for i in 1..3 {
            let seed = sim.nodes[0].identity().addr;
            sim.nodes[i].announce("n0", seed);
            sim.flush(i);
        }
        sim.run_until(Duration::from_secs(2));
        for v in 0..3 {
            for n in 0..3 {
                if v != n {
                    assert_eq!(sim.state_of(v, n), Some(NodeState::Alive), "{v} sees {n}");
                }
            }
        }
        sim.crashed[2] = true;
        let crashed_at = sim.now;
        sim.run_until(crashed_at + Duration::from_secs(4));
        assert_eq!(sim.state_of(0, 2), Some(NodeState::Dead));
        assert_eq!(sim.state_of(1, 2), Some(NodeState::Dead));
        assert_eq!(sim.state_of(0, 1), Some(NodeState::Alive));
    }

    #[test]
    fn a_restarted_node_replaces_its_old_incarnation() {
        let mut sim = Sim::new(2);
        let seed = sim.nodes[0].identity().addr;
        sim.nodes[1].announce("n0", seed);
        sim.flush(1);
        sim.run_until(Duration::from_secs(1));
        sim.crashed[1] = true;
        sim.run_until(Duration::from_secs(5));
        assert_eq!(sim.state_of(0, 1), Some(NodeState::Dead));
        // Same node id, later bump: a restart on the same data directory.
        let mut id = sim.nodes[1].identity().clone();
        id.bump += 1000;
        sim.nodes[1] = Membership::new(id, &MembershipConfig::default(), 99).unwrap();
        sim.crashed[1] = false;
        sim.nodes[1].announce("n0", seed);
        sim.flush(1);
        sim.run_until(Duration::from_secs(7));
        assert_eq!(sim.state_of(0, 1), Some(NodeState::Alive));
        assert_eq!(sim.nodes[0].members().len(), 1, "old incarnation is gone");
    }

    #[test]
    fn garbage_is_refused_without_changing_state() {
        let mut m = Membership::new(
            MemberId {
                node_id: "a".into(),
                addr: "127.0.0.1:1".parse().unwrap(),
                bump: 1,
            },
            &MembershipConfig::default(),
            1,
        )
        .unwrap();
        assert!(m.handle_datagram(b"\xff\xff garbage").is_err());
        assert!(m.handle_datagram(&[0u8; 5000]).is_err());
        assert!(m.members().is_empty());
    }
}
