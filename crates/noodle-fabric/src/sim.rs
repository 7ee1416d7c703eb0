//! A deterministic simulation of replication and repair ([`crate::replication`]): nodes that
//! crash, lose their disks and hold corrupt copies, while clients write and the leader
//! repairs. It checks what the fabric promises:
//!
//! 1. a write is acknowledged only once [`crate::replication::ack_copies`] nodes hold it
//!    durably;
//! 2. while one fault at a time happens (a crash, a lost disk, a corrupt copy; the next only
//!    once repair has made up for the last), no acknowledged version is ever lost;
//! 3. after the faults, repair brings every version back to R good copies on distinct live
//!    nodes;
//! 4. with every version at R copies, R - 1 nodes may lose their disks at once and nothing is
//!    lost; repair then restores R copies on the nodes that replace them.
//!
//! # What is modelled
//!
//! Virtual milliseconds in one event loop. A version is one unit (its chunks travel together
//! to the same nodes). A write goes to the R placed nodes at once and each copy becomes
//! durable 1-80 ms later unless its node crashes first; crashes lose what was not durable. A
//! crashed node comes back 0.2-6 s later with its disk; a lost disk's node is replaced by an
//! empty node 0.5-4 s later. The leader runs repair every 250 ms over the live nodes, treating
//! a node down longer than 2 s as gone; a copy takes 5-150 ms and fails if either end is down
//! or the source's copy is no longer good. Corruption is found when a copy is read or
//! scrubbed (at once here).
//!
//! # What is not
//!
//! Chunks within a version, the control plane (the leader's record of replicas is exact),
//! disk space, RTT-ordered sources, and throttling.
//!
//! # Determinism
//!
//! One seeded SplitMix64 drawn in event order; ordered maps only. The same seed gives the same
//! [`SimReport::fingerprint`].

use crate::placement::Candidate;
use crate::replication::{PutPlan, ack_copies, plan_repair};
use noodle_chunks::ChunkId;
use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};

/// What a run simulates.
#[derive(Debug, Clone)]
pub struct SimOptions {
    pub nodes: usize,
    pub replicas: usize,
    /// Versions written while the faults happen.
    pub writes: u32,
    /// Durable copies a write waits for; `None`: the real rule ([`ack_copies`]). `Some(1)`
    /// plants the bug the run must catch.
    pub ack_override: Option<usize>,
}

impl Default for SimOptions {
    fn default() -> SimOptions {
        SimOptions {
            nodes: 5,
            replicas: 3,
            writes: 150,
            ack_override: None,
        }
    }
}

/// What a run saw.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SimReport {
    pub acknowledged: u32,
    pub faults: u32,
    pub copies_repaired: u32,
    /// A hash of every event, to compare two runs of one seed.
    pub fingerprint: u64,
}

/// A broken promise, with the seed and the events before it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("seed {seed}: {what}\nlast events:\n{trace}")]
pub struct SimFailure {
    pub seed: u64,
    pub what: String,
    pub trace: String,
}

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo + 1)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Copy {
    Writing,
    Durable,
    Corrupt,
}

#[derive(Debug, Default)]
struct Node {
    up: bool,
    down_since: u64,
    copies: BTreeMap<u32, Copy>,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Event {
    Write(u32),
    Durable {
        node: String,
        version: u32,
    },
    Copied {
        from: String,
        to: String,
        version: u32,
    },
    Fault,
    Restart(String),
    Replace(String),
    Repair,
}

struct Sim {
    opts: SimOptions,
    seed: u64,
    rng: Rng,
    now: u64,
    queue: BinaryHeap<Reverse<(u64, u64, Event)>>,
    seq: u64,
    nodes: BTreeMap<String, Node>,
    next_node: u32,
    /// The leader's record: acknowledged versions and their replicas.
    acked: BTreeMap<u32, Vec<String>>,
    plans: BTreeMap<u32, PutPlan>,
    /// A fault is in flight until repair has made up for it (promise 2).
    fault_in_flight: bool,
    faults_on: bool,
    copying: BTreeSet<(u32, String)>,
    report: SimReport,
    trace: Vec<String>,
}

const REPAIR_MS: u64 = 250;
/// How long repair may take after the faults, in virtual time, before the run fails.
const HEAL_MS_MAX: u64 = 120_000;
const GONE_AFTER_MS: u64 = 2000;

fn manifest(version: u32) -> ChunkId {
    ChunkId::of(&version.to_le_bytes())
}

impl Sim {
    fn log(&mut self, line: String) {
        self.report.fingerprint =
            self.report
                .fingerprint
                .rotate_left(5)
                .wrapping_add(u64::from_le_bytes(
                    blake3::hash(line.as_bytes()).as_bytes()[..8]
                        .try_into()
                        .unwrap_or_default(),
                ));
        self.trace.push(format!("{:>7} {line}", self.now));
        if self.trace.len() > 60 {
            self.trace.remove(0);
        }
    }

    fn fail(&self, what: String) -> SimFailure {
        SimFailure {
            seed: self.seed,
            what,
            trace: self.trace.join("\n"),
        }
    }

    fn at(&mut self, after: u64, event: Event) {
        self.seq += 1;
        self.queue
            .push(Reverse((self.now + after, self.seq, event)));
    }

    fn new_node(&mut self) -> String {
        let name = format!("n{}", self.next_node);
        self.next_node += 1;
        self.nodes.insert(
            name.clone(),
            Node {
                up: true,
                ..Node::default()
            },
        );
        name
    }

    fn live(&self) -> Vec<Candidate> {
        self.nodes
            .iter()
            .filter(|(_, n)| n.up)
            .map(|(name, _)| Candidate {
                node: name.clone(),
                free_bytes: 1 << 40,
                domain: None,
            })
            .collect()
    }

    fn durable_on(&self, version: u32) -> BTreeSet<String> {
        self.nodes
            .iter()
            .filter(|(_, n)| n.copies.get(&version) == Some(&Copy::Durable))
            .map(|(name, _)| name.clone())
            .collect()
    }

    /// Good copies on nodes that are up (sources and holders for repair): a node down longer
    /// than the grace counts as gone.
    fn good_live(&self, version: u32) -> Vec<String> {
        self.nodes
            .iter()
            .filter(|(_, n)| n.up || self.now - n.down_since < GONE_AFTER_MS)
            .filter(|(_, n)| n.copies.get(&version) == Some(&Copy::Durable))
            .map(|(name, _)| name.clone())
            .collect()
    }

    fn check_not_lost(&self) -> Result<(), SimFailure> {
        for version in self.acked.keys() {
            if self.durable_on(*version).is_empty() {
                return Err(self.fail(format!(
                    "acknowledged version {version} has no good copy left"
                )));
            }
        }
        Ok(())
    }

    fn at_full_strength(&self) -> bool {
        self.acked.keys().all(|v| {
            let good: BTreeSet<String> = self
                .durable_on(*v)
                .into_iter()
                .filter(|n| self.nodes.get(n).is_some_and(|n| n.up))
                .collect();
            good.len() >= self.opts.replicas.min(self.nodes.len())
        })
    }

    fn step(&mut self, event: Event) -> Result<(), SimFailure> {
        match event {
            Event::Write(version) => {
                let Some(mut plan) =
                    PutPlan::new(&manifest(version), &self.live(), self.opts.replicas, None)
                else {
                    return Ok(());
                };
                if let Some(ack) = self.opts.ack_override {
                    plan.ack_after = ack;
                }
                self.log(format!("write v{version} to {:?}", plan.targets));
                for t in plan.targets.clone() {
                    if let Some(n) = self.nodes.get_mut(&t) {
                        n.copies.insert(version, Copy::Writing);
                    }
                    let after = self.rng.range(1, 80);
                    self.at(after, Event::Durable { node: t, version });
                }
                self.plans.insert(version, plan);
            }
            Event::Durable { node, version } => {
                let Some(n) = self.nodes.get_mut(&node) else {
                    return Ok(());
                };
                if !n.up || n.copies.get(&version) != Some(&Copy::Writing) {
                    return Ok(());
                }
                n.copies.insert(version, Copy::Durable);
                self.log(format!("v{version} durable on {node}"));
                let durable = self.durable_on(version);
                if !self.acked.contains_key(&version)
                    && let Some(plan) = self.plans.get(&version)
                    && plan.acknowledged(&durable)
                {
                    let want = ack_copies(self.opts.replicas.min(self.nodes.len()));
                    if durable.len() < want {
                        return Err(self.fail(format!(
                            "version {version} acknowledged with {} durable copies, not {want}",
                            durable.len()
                        )));
                    }
                    let replicas = plan.targets.clone();
                    self.acked.insert(version, replicas);
                    self.report.acknowledged += 1;
                    self.log(format!("v{version} acknowledged"));
                }
            }
            Event::Copied { from, to, version } => {
                self.copying.remove(&(version, to.clone()));
                let source_good = self
                    .nodes
                    .get(&from)
                    .is_some_and(|n| n.up && n.copies.get(&version) == Some(&Copy::Durable));
                let Some(target) = self.nodes.get_mut(&to) else {
                    return Ok(());
                };
                if source_good && target.up {
                    target.copies.insert(version, Copy::Durable);
                    self.report.copies_repaired += 1;
                    self.log(format!("v{version} copied {from} -> {to}"));
                }
            }
            Event::Fault => self.fault(),
            Event::Restart(node) => {
                if let Some(n) = self.nodes.get_mut(&node) {
                    n.up = true;
                    self.log(format!("{node} back"));
                }
            }
            Event::Replace(node) => {
                self.nodes.remove(&node);
                let new = self.new_node();
                self.log(format!("{node} replaced by {new}"));
            }
            Event::Repair => {
                self.repair();
                if self.fault_in_flight
                    && self.at_full_strength()
                    && self.nodes.values().all(|n| n.up)
                {
                    self.fault_in_flight = false;
                }
                self.at(REPAIR_MS, Event::Repair);
            }
        }
        Ok(())
    }

    fn fault(&mut self) {
        if self.faults_on {
            let after = self.rng.range(300, 3000);
            self.at(after, Event::Fault);
        }
        if self.fault_in_flight || !self.faults_on {
            return;
        }
        let names: Vec<String> = self.nodes.keys().cloned().collect();
        let victim = names[(self.rng.next() % names.len() as u64) as usize].clone();
        self.fault_in_flight = true;
        self.report.faults += 1;
        match self.rng.next() % 3 {
            0 => {
                let now = self.now;
                if let Some(n) = self.nodes.get_mut(&victim) {
                    n.up = false;
                    n.down_since = now;
                    n.copies.retain(|_, c| *c != Copy::Writing);
                }
                self.log(format!("{victim} crashes"));
                let after = self.rng.range(200, 6000);
                self.at(after, Event::Restart(victim));
            }
            1 => {
                let now = self.now;
                if let Some(n) = self.nodes.get_mut(&victim) {
                    n.up = false;
                    n.down_since = now;
                    n.copies.clear();
                }
                self.log(format!("{victim} loses its disk"));
                let after = self.rng.range(500, 4000);
                self.at(after, Event::Replace(victim));
            }
            _ => {
                let held: Vec<u32> = self.nodes[&victim]
                    .copies
                    .iter()
                    .filter(|(_, c)| **c == Copy::Durable)
                    .map(|(v, _)| *v)
                    .collect();
                if held.is_empty() {
                    self.fault_in_flight = false;
                    return;
                }
                let v = held[(self.rng.next() % held.len() as u64) as usize];
                if let Some(n) = self.nodes.get_mut(&victim) {
                    n.copies.insert(v, Copy::Corrupt);
                }
                self.log(format!("v{v} corrupt on {victim}"));
            }
        }
    }

    fn repair(&mut self) {
        let live = self.live();
        let versions: Vec<u32> = self.acked.keys().copied().collect();
        for version in versions {
            let good: Vec<String> = self
                .good_live(version)
                .into_iter()
                .filter(|n| self.nodes.get(n).is_some_and(|n| n.up))
                .collect();
            let plan = plan_repair(&manifest(version), &good, &live, self.opts.replicas);
            for copy in plan.copies {
                if !self.copying.insert((version, copy.to.clone())) {
                    continue;
                }
                // A corrupt copy is replaced, not kept.
                if let Some(n) = self.nodes.get_mut(&copy.to) {
                    n.copies.remove(&version);
                }
                let after = self.rng.range(5, 150);
                self.at(
                    after,
                    Event::Copied {
                        from: copy.from,
                        to: copy.to,
                        version,
                    },
                );
            }
            self.acked.insert(version, plan.replicas);
        }
    }

    /// Runs until `until` (virtual ms), or with `None` until repair has nothing left to do,
    /// failing if that takes longer than [`HEAL_MS_MAX`].
    fn run_until_quiet(&mut self, until: Option<u64>) -> Result<(), SimFailure> {
        let deadline = self.now + HEAL_MS_MAX;
        while let Some(Reverse((t, _, event))) = self.queue.pop() {
            if until.is_some_and(|u| t > u) {
                self.queue.push(Reverse((t, 0, event)));
                return Ok(());
            }
            if until.is_none() && t > deadline {
                return Err(self.fail(format!(
                    "repair still not done {} s after the faults",
                    HEAL_MS_MAX / 1000
                )));
            }
            self.now = t;
            // Only faults, replacements and repair (which drops a corrupt copy it replaces)
            // take copies away: check after those.
            let takes_copies = matches!(event, Event::Fault | Event::Replace(_) | Event::Repair);
            let repair = event == Event::Repair;
            self.step(event)?;
            if takes_copies {
                self.check_not_lost()?;
            }
            // Once healed and repaired, only the repair timer is left: stop.
            if repair
                && !self.faults_on
                && self.copying.is_empty()
                && self
                    .queue
                    .iter()
                    .all(|Reverse((_, _, e))| *e == Event::Repair)
                && self.at_full_strength()
            {
                self.queue.clear();
            }
        }
        Ok(())
    }
}

/// Runs one seed; `Err` names the broken promise.
pub fn run(seed: u64, opts: &SimOptions) -> Result<SimReport, SimFailure> {
    let mut sim = Sim {
        opts: opts.clone(),
        seed,
        rng: Rng(seed),
        now: 0,
        queue: BinaryHeap::new(),
        seq: 0,
        nodes: BTreeMap::new(),
        next_node: 0,
        acked: BTreeMap::new(),
        plans: BTreeMap::new(),
        fault_in_flight: false,
        faults_on: true,
        copying: BTreeSet::new(),
        report: SimReport::default(),
        trace: Vec::new(),
    };
    for _ in 0..opts.nodes {
        sim.new_node();
    }
    let mut t = 0;
    for v in 0..opts.writes {
        t += sim.rng.range(5, 120);
        sim.seq += 1;
        sim.queue.push(Reverse((t, sim.seq, Event::Write(v))));
    }
    sim.at(100, Event::Fault);
    sim.at(REPAIR_MS, Event::Repair);
    // Promise 2 while the writes and the faults go on.
    sim.run_until_quiet(Some(t + 1000))?;
    // Promise 3: heal, let repair finish.
    sim.faults_on = false;
    sim.queue
        .retain(|Reverse((_, _, e))| !matches!(e, Event::Fault));
    sim.run_until_quiet(None)?;
    if !sim.at_full_strength() {
        return Err(sim.fail("repair did not restore every version's copies".into()));
    }
    // Promise 4: R - 1 disks at once, then their replacements.
    let r = opts.replicas.min(sim.nodes.len());
    let victims: Vec<String> = sim
        .nodes
        .keys()
        .take(r.saturating_sub(1))
        .cloned()
        .collect();
    for victim in victims {
        if let Some(n) = sim.nodes.get_mut(&victim) {
            n.up = false;
            n.copies.clear();
        }
        sim.log(format!("{victim} loses its disk (with others)"));
        sim.at(1, Event::Replace(victim));
    }
    sim.check_not_lost()?;
    sim.at(REPAIR_MS, Event::Repair);
    sim.run_until_quiet(None)?;
    if !sim.at_full_strength() {
        return Err(sim.fail("repair did not restore copies after R - 1 lost disks".into()));
    }
    Ok(sim.report)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn many_seeds_keep_every_acknowledged_version() {
        let opts = SimOptions::default();
        let mut acknowledged = 0;
        let mut repaired = 0;
        for seed in 0..120 {
            let report = run(seed, &opts).unwrap_or_else(|e| panic!("{e}"));
            acknowledged += report.acknowledged;
            repaired += report.copies_repaired;
        }
        // The runs did something: most writes acknowledged, many copies repaired.
        assert!(acknowledged > 120 * 100, "{acknowledged}");
        assert!(repaired > 1000, "{repaired}");
    }

    #[test]
    fn a_seed_replays_exactly() {
        let opts = SimOptions::default();
        assert_eq!(run(7, &opts).unwrap(), run(7, &opts).unwrap());
        assert_ne!(
            run(7, &opts).unwrap().fingerprint,
            run(8, &opts).unwrap().fingerprint
        );
    }

    #[test]
    fn acknowledging_after_one_copy_is_caught() {
        let planted = SimOptions {
            ack_override: Some(1),
            ..SimOptions::default()
        };
        let caught = (0..100)
            .filter(|seed| run(*seed, &planted).is_err())
            .count();
        assert!(caught > 0, "the planted bug went unnoticed in 100 seeds");
        let e = (0..100).find_map(|seed| run(seed, &planted).err()).unwrap();
        assert!(e.what.contains("acknowledged with 1 durable"), "{e}");
    }
}
