//! Where a chunk's copies go: weighted rendezvous hashing, spread over failure domains.
//!
//! Each candidate node scores each chunk with `-free / ln(u)`, where `u` in (0, 1] comes from
//! hashing the chunk id with the node id: the highest scores win. So every node computes the
//! same placement from the same table with no coordination; a node with twice the free disk
//! gets about twice the chunks; and a node joining or leaving moves only the chunks it gains or
//! loses. Copies are spread over failure domains (a `zone` label, say) before a domain gets a
//! second one. A node without free disk takes nothing. Pure functions.

use noodle_chunks::ChunkId;

/// A node that may hold copies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub node: String,
    /// Bytes it can still take; 0: it takes nothing.
    pub free_bytes: u64,
    /// Its failure domain, if it has one; nodes without one share no domain.
    pub domain: Option<String>,
}

/// The score of `node` for `chunk`: higher is better.
fn score(chunk: &ChunkId, c: &Candidate) -> f64 {
    let mut h = blake3::Hasher::new();
    h.update(&chunk.0);
    h.update(c.node.as_bytes());
    let bytes = h.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&bytes.as_bytes()[..8]);
    // (0, 1]: never 0, so the logarithm is finite; ln(1) = 0 gives an infinite score, which
    // is as good as it gets and still ordered.
    let u = (u64::from_le_bytes(first) as f64 + 1.0) / (u64::MAX as f64 + 1.0);
    let weight = c.free_bytes as f64;
    -weight / u.ln()
}

/// The nodes (at most `r`) that hold `chunk`, best first.
pub fn place(chunk: &ChunkId, candidates: &[Candidate], r: usize) -> Vec<String> {
    place_from(chunk, candidates, r, None)
}

/// As [`place`], with `writer` first if it can take copies: it holds the bytes already, so a
/// write sends one copy fewer across the network (the first copy on the writer, as HDFS does).
pub fn place_from(
    chunk: &ChunkId,
    candidates: &[Candidate],
    r: usize,
    writer: Option<&str>,
) -> Vec<String> {
    let mut ranked: Vec<(f64, &Candidate)> = candidates
        .iter()
        .filter(|c| c.free_bytes > 0)
        .map(|c| {
            let first = writer == Some(c.node.as_str());
            (
                if first {
                    f64::INFINITY
                } else {
                    score(chunk, c)
                },
                c,
            )
        })
        .collect();
    // Ties (practically never) by node id, so the order is total.
    ranked.sort_by(|a, b| b.0.total_cmp(&a.0).then_with(|| a.1.node.cmp(&b.1.node)));
    let mut chosen: Vec<&Candidate> = Vec::with_capacity(r);
    // First the best node of each domain not yet used, in score order...
    for (_, c) in &ranked {
        if chosen.len() >= r {
            break;
        }
        let new_domain = match &c.domain {
            None => true,
            Some(d) => !chosen.iter().any(|p| p.domain.as_ref() == Some(d)),
        };
        if new_domain {
            chosen.push(c);
        }
    }
    // ...then the rest, in score order.
    for (_, c) in &ranked {
        if chosen.len() >= r {
            break;
        }
        if !chosen.iter().any(|p| p.node == c.node) {
            chosen.push(c);
        }
    }
    chosen.into_iter().map(|c| c.node.clone()).collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::collections::{BTreeSet, HashMap};

    fn node(name: &str, free_bytes: u64, domain: Option<&str>) -> Candidate {
        Candidate {
            node: name.into(),
            free_bytes,
            domain: domain.map(str::to_string),
        }
    }

    fn chunk(i: u32) -> ChunkId {
        ChunkId::of(&i.to_le_bytes())
    }

    #[test]
    fn same_input_same_nodes_distinct_and_at_most_r() {
        let nodes: Vec<Candidate> = (0..5).map(|i| node(&format!("n{i}"), 100, None)).collect();
        for i in 0..100 {
            let a = place(&chunk(i), &nodes, 3);
            assert_eq!(a, place(&chunk(i), &nodes, 3));
            assert_eq!(a.len(), 3);
            assert_eq!(a.iter().collect::<BTreeSet<_>>().len(), 3);
        }
        assert_eq!(
            place(&chunk(1), &nodes[..2], 3).len(),
            2,
            "fewer nodes than r"
        );
        assert!(place(&chunk(1), &[], 3).is_empty());
    }

    #[test]
    fn a_full_node_takes_nothing() {
        let nodes = vec![
            node("full", 0, None),
            node("a", 10, None),
            node("b", 10, None),
        ];
        for i in 0..100 {
            assert!(!place(&chunk(i), &nodes, 3).contains(&"full".to_string()));
        }
    }

    #[test]
    fn copies_spread_over_domains_first() {
        let nodes = vec![
            node("a1", 100, Some("a")),
            node("a2", 100, Some("a")),
            node("b1", 100, Some("b")),
            node("b2", 100, Some("b")),
            node("c1", 100, Some("c")),
            node("c2", 100, Some("c")),
        ];
        let domain = |n: &str| n[..1].to_string();
        for i in 0..500 {
            let placed = place(&chunk(i), &nodes, 3);
            let domains: BTreeSet<String> = placed.iter().map(|n| domain(n)).collect();
            assert_eq!(domains.len(), 3, "{placed:?}");
            // More copies than domains: every domain first, then doubled up.
            let four = place(&chunk(i), &nodes, 4);
            assert_eq!(
                four.iter()
                    .map(|n| domain(n))
                    .collect::<BTreeSet<_>>()
                    .len(),
                3
            );
            assert_eq!(four[..3], placed[..]);
        }
    }

    #[test]
    fn nodes_with_more_free_disk_get_more_chunks() {
        let nodes = vec![node("big", 400, None), node("small", 100, None)];
        let mut counts: HashMap<String, u32> = HashMap::new();
        for i in 0..10_000 {
            *counts
                .entry(place(&chunk(i), &nodes, 1)[0].clone())
                .or_default() += 1;
        }
        let share = f64::from(counts["big"]) / 10_000.0;
        assert!((0.77..0.83).contains(&share), "big got {share}");
    }

    #[test]
    fn a_new_node_moves_only_the_copies_it_takes() {
        let mut nodes: Vec<Candidate> = (0..6).map(|i| node(&format!("n{i}"), 100, None)).collect();
        let before: Vec<Vec<String>> = (0..1000).map(|i| place(&chunk(i), &nodes, 3)).collect();
        nodes.push(node("new", 100, None));
        let mut moved = 0;
        for (i, old) in before.iter().enumerate() {
            let new = place(&chunk(i as u32), &nodes, 3);
            let old_set: BTreeSet<&String> = old.iter().collect();
            let new_set: BTreeSet<&String> = new.iter().collect();
            let gone: Vec<_> = old_set.difference(&new_set).collect();
            let came: Vec<_> = new_set.difference(&old_set).collect();
            assert!(gone.len() <= 1, "{old:?} -> {new:?}");
            if let Some(c) = came.first() {
                assert_eq!(c.as_str(), "new");
                moved += 1;
            }
        }
        // About 3/7 of the chunks get a copy on the new node.
        assert!((350..510).contains(&moved), "{moved}");
    }
}
