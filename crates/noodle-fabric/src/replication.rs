//! Replication and repair, sans-IO: which nodes a new version goes to, when its write is
//! acknowledged, and what to copy where when copies are missing or bad.
//!
//! An object version's chunks go to the same R nodes ([`crate::placement::place`] on the
//! version's manifest id), so a version's replicas are one list of nodes. A write sends the
//! chunks to all R at once and is acknowledged once [`ack_copies`] of them hold every chunk
//! durably (fsynced); the rest finish in the background, and repair makes up for any that
//! fail. Repair keeps every good copy where it is and adds copies on the best-placed live
//! nodes that lack one, each copied from a node that has a good one.

use crate::placement::{Candidate, place, place_from};
use noodle_chunks::ChunkId;
use std::collections::BTreeSet;

/// Copies a version has once repaired, unless told otherwise: three, or every node of a
/// smaller cluster.
pub const REPLICAS_DEFAULT: usize = 3;

/// How many durable copies a write waits for before it is acknowledged: two, or one on a
/// cluster of one.
pub fn ack_copies(r: usize) -> usize {
    r.clamp(1, 2)
}

/// Where a new version goes and when its write is acknowledged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PutPlan {
    /// The nodes to write, best first.
    pub targets: Vec<String>,
    /// Durable copies to wait for.
    pub ack_after: usize,
}

impl PutPlan {
    /// The plan for the version whose manifest is `manifest`, with `r` copies, over the nodes
    /// that can take it now, the `writer` (which holds it already) first if it can. `None`
    /// when no node can.
    pub fn new(
        manifest: &ChunkId,
        candidates: &[Candidate],
        r: usize,
        writer: Option<&str>,
    ) -> Option<PutPlan> {
        let targets = place_from(manifest, candidates, r.max(1), writer);
        if targets.is_empty() {
            return None;
        }
        let ack_after = ack_copies(targets.len());
        Some(PutPlan { targets, ack_after })
    }

    /// Whether the write may be acknowledged, given the targets that hold it durably.
    pub fn acknowledged(&self, durable: &BTreeSet<String>) -> bool {
        self.targets.iter().filter(|t| durable.contains(*t)).count() >= self.ack_after
    }
}

/// One copy to make: `to` fetches the version's chunks from `from`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Copy {
    pub from: String,
    pub to: String,
}

/// What repair does for one version.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RepairPlan {
    pub copies: Vec<Copy>,
    /// The replicas to record once the copies are made: the good ones and the new ones.
    pub replicas: Vec<String>,
}

/// The repair of the version with manifest `manifest` whose good copies are on `good` (live
/// nodes whose copy verified), towards `r` copies over `candidates` (the live nodes that can
/// take more). Sources are taken from `good` in the order given (nearest first); nothing is
/// planned when no good copy is left (the version is lost) or none is missing.
pub fn plan_repair(
    manifest: &ChunkId,
    good: &[String],
    candidates: &[Candidate],
    r: usize,
) -> RepairPlan {
    let holders: BTreeSet<&String> = good.iter().collect();
    if good.is_empty() || holders.len() >= r {
        return RepairPlan {
            copies: Vec::new(),
            replicas: good.to_vec(),
        };
    }
    let free: Vec<Candidate> = candidates
        .iter()
        .filter(|c| !holders.contains(&c.node))
        .cloned()
        .collect();
    let wanted = r - holders.len();
    let new = place(manifest, &free, wanted);
    let copies = new
        .iter()
        .enumerate()
        .map(|(i, to)| Copy {
            from: good[i % good.len()].clone(),
            to: to.clone(),
        })
        .collect();
    let mut replicas = good.to_vec();
    replicas.extend(new);
    RepairPlan { copies, replicas }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn nodes(n: usize) -> Vec<Candidate> {
        (0..n)
            .map(|i| Candidate {
                node: format!("n{i}"),
                free_bytes: 1 << 30,
                domain: None,
            })
            .collect()
    }

    #[test]
    fn a_write_goes_to_r_nodes_and_waits_for_two() {
        let m = ChunkId::of(b"manifest");
        let plan = PutPlan::new(&m, &nodes(5), 3, None).unwrap();
        assert_eq!(plan.targets.len(), 3);
        assert_eq!(plan.ack_after, 2);
        let mut durable = BTreeSet::new();
        durable.insert(plan.targets[2].clone());
        assert!(!plan.acknowledged(&durable));
        durable.insert("not-a-target".to_string());
        assert!(!plan.acknowledged(&durable), "only targets count");
        durable.insert(plan.targets[0].clone());
        assert!(plan.acknowledged(&durable));
        // One node: one copy is all there can be.
        let one = PutPlan::new(&m, &nodes(1), 3, None).unwrap();
        assert_eq!((one.targets.len(), one.ack_after), (1, 1));
        assert_eq!(PutPlan::new(&m, &[], 3, None), None);
        // The writer holds it already: it is a target, the others placed as before.
        for writer in ["n0", "n3", "n4"] {
            let from = PutPlan::new(&m, &nodes(5), 3, Some(writer)).unwrap();
            assert_eq!(from.targets[0], writer);
            let others: Vec<&String> = plan.targets.iter().filter(|t| *t != writer).collect();
            assert_eq!(from.targets[1..].iter().collect::<Vec<_>>(), others[..2]);
        }
        // A writer with no room is passed over.
        let mut full = nodes(5);
        full[0].free_bytes = 0;
        let from = PutPlan::new(&m, &full, 3, Some("n0")).unwrap();
        assert!(!from.targets.contains(&"n0".to_string()), "{from:?}");
        assert_eq!(ack_copies(0), 1);
    }

    #[test]
    fn repair_keeps_good_copies_and_adds_missing_ones_from_them() {
        let m = ChunkId::of(b"m");
        let all = nodes(5);
        let good = vec!["n4".to_string()];
        let plan = plan_repair(&m, &good, &all, 3);
        assert_eq!(plan.copies.len(), 2);
        assert!(plan.copies.iter().all(|c| c.from == "n4" && c.to != "n4"));
        assert_eq!(plan.replicas.len(), 3);
        assert_eq!(plan.replicas[0], "n4");
        // Nothing to do at full strength, and nothing can be done with no good copy.
        let full: Vec<String> = vec!["n0".into(), "n1".into(), "n2".into()];
        assert!(plan_repair(&m, &full, &all, 3).copies.is_empty());
        assert!(plan_repair(&m, &[], &all, 3).copies.is_empty());
        // Fewer live nodes than r: as many copies as there are nodes.
        let plan = plan_repair(&m, &good, &all[3..], 3);
        assert_eq!(plan.replicas.len(), 2);
    }
}
