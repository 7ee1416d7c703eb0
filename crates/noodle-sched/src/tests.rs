//! Unit tests: admission, capacity, fairness, removal and cancellation.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;

use proptest::prelude::*;

use crate::{JobSpec, JobState, NodeSpec, Placement, Rejected, RoundRobin, Scheduler, Scored};

const GIB: u64 = 1 << 30;

fn node(id: &str, cpus: u32, mem_gib: u64, gpus: u32, labels: &[(&str, &str)]) -> NodeSpec {
    NodeSpec {
        id: id.to_owned(),
        cpus,
        mem_bytes: mem_gib * GIB,
        gpus,
        labels: labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
    }
}

fn job(id: u64, submitter: &str, cpus: u32, mem_gib: u64, gpus: u32) -> JobSpec {
    JobSpec {
        id,
        submitter: submitter.to_owned(),
        origin: "a".to_owned(),
        cpus,
        mem_bytes: mem_gib * GIB,
        gpus,
        labels: BTreeMap::new(),
        inputs: Vec::new(),
    }
}

fn with_label(mut j: JobSpec, k: &str, v: &str) -> JobSpec {
    j.labels.insert(k.to_owned(), v.to_owned());
    j
}

fn cluster() -> Scheduler {
    let mut s = Scheduler::default();
    s.add_node(node("a", 16, 64, 0, &[])).unwrap();
    s.add_node(node("b", 8, 32, 2, &[("gpu", "a100")])).unwrap();
    s
}

fn ids(p: &[Placement]) -> Vec<u64> {
    p.iter().map(|p| p.job).collect()
}

#[test]
fn impossible_jobs_are_rejected_with_the_reason() {
    let cases: Vec<(JobSpec, &str)> = vec![
        (
            job(1, "u", 64, 1, 0),
            "needs 64 CPUs; the largest node has 16",
        ),
        (
            job(2, "u", 0, 1, 0),
            "job 2 asks for 0 CPUs; ask for at least 1",
        ),
        (
            job(3, "u", 1, 65, 0),
            "needs 69793218560 bytes of memory; the largest node has 68719476736",
        ),
        (job(4, "u", 1, 1, 3), "needs 3 GPUs; the largest node has 2"),
        (
            with_label(job(5, "u", 1, 1, 0), "gpu", "h100"),
            "no node has label gpu=h100",
        ),
        (
            job(6, "u", 12, 1, 1),
            "no single node has 12 CPUs, 1073741824 bytes, 1 GPUs and the labels asked for",
        ),
    ];
    let mut s = cluster();
    for (j, want) in cases {
        let err = s.submit(j).unwrap_err();
        assert_eq!(err.to_string(), want);
    }
    assert!(s.queued().is_empty());
    assert_eq!(
        Scheduler::default().submit(job(1, "u", 1, 0, 0)),
        Err(Rejected::NoNodes)
    );
}

#[test]
fn duplicate_ids_are_rejected() {
    let mut s = cluster();
    s.submit(job(1, "u", 1, 1, 0)).unwrap();
    assert_eq!(
        s.submit(job(1, "v", 1, 1, 0)),
        Err(Rejected::DuplicateId { job: 1 })
    );
    s.place();
    assert_eq!(
        s.submit(job(1, "v", 1, 1, 0)),
        Err(Rejected::DuplicateId { job: 1 })
    );
}

#[test]
fn labels_must_match() {
    let mut s = cluster();
    s.submit(with_label(job(1, "u", 1, 1, 0), "gpu", "a100"))
        .unwrap();
    s.submit(job(2, "u", 1, 1, 1)).unwrap();
    let p = s.place();
    assert!(p.iter().all(|p| p.node == "b"), "{p:?}");
    assert_eq!(ids(&p), vec![1, 2]);
}

#[test]
fn jobs_that_need_no_gpu_avoid_gpu_nodes() {
    let mut s = cluster();
    s.submit(job(1, "u", 1, 1, 0)).unwrap();
    assert_eq!(s.place()[0].node, "a");
}

#[test]
fn per_submitter_fifo_blocks_behind_the_head() {
    let mut s = cluster();
    s.submit(job(1, "u", 16, 1, 0)).unwrap();
    s.submit(job(2, "u", 16, 1, 0)).unwrap(); // must wait for node a
    s.submit(job(3, "u", 1, 1, 0)).unwrap(); // would fit on b, but FIFO behind 2
    assert_eq!(ids(&s.place()), vec![1]);
    assert_eq!(s.queued(), vec![2, 3]);
    assert!(s.finished(1));
    assert_eq!(ids(&s.place()), vec![2, 3]);
}

#[test]
fn a_blocked_submitter_does_not_block_others() {
    let mut s = cluster();
    s.submit(job(1, "big", 16, 1, 0)).unwrap();
    s.submit(job(2, "big", 16, 1, 0)).unwrap();
    s.submit(job(3, "small", 1, 1, 0)).unwrap();
    let mut placed = ids(&s.place());
    placed.sort_unstable();
    assert_eq!(placed, vec![1, 3]);
    assert_eq!(s.queued(), vec![2]);
}

#[test]
fn submitters_take_turns() {
    let mut s = Scheduler::default();
    s.add_node(node("a", 4, 64, 0, &[])).unwrap();
    for id in 0..6 {
        s.submit(job(id, "alice", 1, 1, 0)).unwrap();
    }
    s.submit(job(10, "bob", 1, 1, 0)).unwrap();
    s.submit(job(11, "bob", 1, 1, 0)).unwrap();
    assert_eq!(ids(&s.place()), vec![0, 10, 1, 11]);
    s.finished(0);
    s.finished(10);
    assert_eq!(ids(&s.place()), vec![2, 3]);
}

#[test]
fn remove_node_returns_its_running_jobs() {
    let mut s = cluster();
    for id in 1..=3 {
        s.submit(job(id, "u", 8, 1, 0)).unwrap();
    }
    let placed = s.place();
    let on_a: Vec<u64> = placed
        .iter()
        .filter(|p| p.node == "a")
        .map(|p| p.job)
        .collect();
    assert_eq!(on_a.len(), 2);
    assert_eq!(s.running_on("a"), on_a);
    assert_eq!(s.remove_node("a"), on_a);
    assert!(s.running_on("a").is_empty());
    for j in &on_a {
        assert_eq!(s.state(*j), None);
    }
    assert!(s.remove_node("a").is_empty());
}

#[test]
fn cancel_queued_and_running() {
    let mut s = cluster();
    s.submit(job(1, "u", 16, 1, 0)).unwrap();
    s.submit(job(2, "u", 16, 1, 0)).unwrap();
    s.place();
    assert_eq!(s.cancel(2), Some(JobState::Queued));
    assert!(s.queued().is_empty());
    assert_eq!(s.cancel(1), Some(JobState::Running));
    assert_eq!(s.usage("a"), Some((0, 0, 0)));
    assert_eq!(s.cancel(1), None);
    assert!(!s.finished(1));
}

#[test]
fn queue_is_bounded() {
    let mut s = cluster();
    s.submit(job(0, "u", 16, 1, 0)).unwrap();
    s.submit(job(1, "u", 16, 1, 0)).unwrap();
    s.place();
    for id in 2..crate::QUEUED_MAX as u64 + 1 {
        s.submit(job(id, "u", 1, 0, 0)).unwrap();
    }
    assert_eq!(
        s.submit(job(u64::MAX, "u", 1, 0, 0)),
        Err(Rejected::QueueFull {
            max: crate::QUEUED_MAX
        })
    );
}

#[test]
fn score_prefers_fast_cheap_near_nodes() {
    let mut s = Scheduler::default();
    s.add_node(node("slow", 8, 8, 0, &[("speed", "0.5")]))
        .unwrap();
    s.add_node(node("fast", 8, 8, 0, &[("speed", "2.0")]))
        .unwrap();
    s.add_node(node("far", 8, 8, 0, &[("speed", "2.0")]))
        .unwrap();
    s.set_rtt("a", "fast", 1_000);
    s.set_rtt("a", "far", 200_000);
    s.submit(job(1, "u", 1, 1, 0)).unwrap();
    assert_eq!(s.place()[0].node, "fast");
}

proptest! {
    /// Whatever the nodes, jobs and finish order, no node is ever given more than it has, and
    /// every admitted job eventually runs exactly once.
    #[test]
    fn capacity_is_never_exceeded(
        nodes in prop::collection::vec((1u32..16, 1u64..32, 0u32..3), 1..6),
        jobs in prop::collection::vec((0u8..3, 1u32..20, 0u64..40, 0u32..4), 1..60),
        finish_picks in prop::collection::vec(any::<prop::sample::Index>(), 200),
        round_robin in any::<bool>(),
    ) {
        let specs: Vec<NodeSpec> = nodes
            .iter()
            .enumerate()
            .map(|(i, (c, m, g))| node(&format!("n{i}"), *c, *m, *g, &[]))
            .collect();
        if round_robin {
            check_capacity(Scheduler::new(RoundRobin::default()), &specs, &jobs, &finish_picks)?;
        } else {
            check_capacity(Scheduler::new(Scored), &specs, &jobs, &finish_picks)?;
        }
    }
}

fn check_capacity<P: crate::Policy>(
    mut s: Scheduler<P>,
    specs: &[NodeSpec],
    jobs: &[(u8, u32, u64, u32)],
    finish_picks: &[prop::sample::Index],
) -> Result<(), TestCaseError> {
    for n in specs {
        s.add_node(n.clone()).unwrap();
    }
    let mut admitted = 0usize;
    for (id, (sub, c, m, g)) in jobs.iter().enumerate() {
        if s.submit(job(id as u64, &format!("u{sub}"), *c, *m, *g))
            .is_ok()
        {
            admitted += 1;
        }
    }
    let mut running: Vec<u64> = Vec::new();
    let mut started = std::collections::HashSet::new();
    let mut picks = finish_picks.iter().cycle();
    loop {
        for p in s.place() {
            prop_assert!(started.insert(p.job), "job {} placed twice", p.job);
            running.push(p.job);
        }
        for n in specs {
            let (c, m, g) = s.usage(&n.id).unwrap();
            prop_assert!(
                c <= n.cpus && m <= n.mem_bytes && g <= n.gpus,
                "{} over: {c} {m} {g}",
                n.id
            );
        }
        if running.is_empty() {
            break;
        }
        let i = picks.next().unwrap().index(running.len());
        prop_assert!(s.finished(running.swap_remove(i)));
    }
    prop_assert_eq!(s.queued_len(), 0, "admitted jobs left queued");
    prop_assert_eq!(started.len(), admitted);
    Ok(())
}

#[test]
fn restored_jobs_hold_their_resources() {
    let mut s = Scheduler::default();
    s.add_node(node("a", 2, 8, 0, &[])).unwrap();
    assert!(s.restore_running(job(1, "u", 2, 1, 0), "a"));
    assert!(
        !s.restore_running(job(1, "u", 1, 1, 0), "a"),
        "restored twice"
    );
    assert!(!s.restore_running(job(2, "u", 1, 1, 0), "nowhere"));
    s.submit(job(3, "u", 1, 1, 0)).unwrap();
    assert!(s.place().is_empty(), "the restored job fills node a");
    assert!(s.finished(1));
    assert_eq!(ids(&s.place()), vec![3]);
}
