//! Integration tests for `noodle-sched`: the policy-comparison simulation.

#![allow(clippy::unwrap_used, clippy::print_stderr)]

use std::collections::BTreeMap;

use noodle_sched::sim::{SimJob, simulate};
use noodle_sched::{JobSpec, LeastLoaded, NextFit, NodeSpec, RoundRobin, Scored};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

const GIB: u64 = 1 << 30;
const SEED: u64 = 0x6e6f_6f64_6c65;
const JOBS: usize = 2_000;

/// `(id, cpus, mem GiB, gpus, speed, cost, gpu label)`.
type NodeRow = (
    &'static str,
    u32,
    u64,
    u32,
    &'static str,
    &'static str,
    Option<&'static str>,
);

/// Ten heterogeneous nodes.
fn nodes() -> Vec<NodeSpec> {
    let table: [NodeRow; 10] = [
        ("n00", 32, 128, 0, "2.0", "1.5", None),
        ("n01", 16, 64, 0, "1.5", "1.2", None),
        ("n02", 16, 64, 0, "1.0", "1.0", None),
        ("n03", 8, 32, 0, "1.0", "1.0", None),
        ("n04", 8, 16, 0, "0.75", "0.8", None),
        ("n05", 4, 16, 0, "0.5", "0.5", None),
        ("n06", 4, 8, 0, "0.5", "0.5", None),
        ("n07", 2, 4, 0, "0.5", "0.5", None),
        ("n08", 16, 64, 2, "1.5", "2.0", Some("a100")),
        ("n09", 8, 32, 1, "1.0", "1.5", Some("t4")),
    ];
    table
        .iter()
        .map(|&(id, cpus, mem, gpus, speed, cost, gpu)| {
            let mut labels = BTreeMap::from([
                ("speed".to_owned(), speed.to_owned()),
                ("cost".to_owned(), cost.to_owned()),
            ]);
            if let Some(g) = gpu {
                labels.insert("gpu".to_owned(), g.to_owned());
            }
            NodeSpec {
                id: id.to_owned(),
                cpus,
                mem_bytes: mem * GIB,
                gpus,
                labels,
            }
        })
        .collect()
}

/// 2,000 jobs from six submitters in ten bursts: mostly 1-2 CPU jobs, some 4-8 CPU jobs, 5%
/// GPU jobs; work 100..1,000 ticks with a 10% tail of 2,000..5,000.
fn workload(seed: u64) -> Vec<SimJob> {
    workload_with(seed, 200, 2_000)
}

fn workload_with(seed: u64, burst: u64, gap: u64) -> Vec<SimJob> {
    let mut rng = StdRng::seed_from_u64(seed);
    (0..JOBS as u64)
        .map(|id| {
            let cpus = [1, 1, 1, 2, 2, 4, 8][rng.random_range(0..7)];
            let gpu = rng.random_range(0..100) < 5;
            let mut labels = BTreeMap::new();
            if gpu && rng.random_range(0..2) == 0 {
                labels.insert("gpu".to_owned(), "a100".to_owned());
            }
            let work = if rng.random_range(0..10) == 0 {
                rng.random_range(2_000..5_000)
            } else {
                rng.random_range(100..1_000)
            };
            let spec = JobSpec {
                id,
                submitter: format!("user{}", rng.random_range(0..6)),
                origin: format!("n0{}", rng.random_range(0..10)),
                cpus,
                mem_bytes: u64::from(cpus) * rng.random_range(1..4) * GIB / 2,
                gpus: u32::from(gpu),
                labels,
                inputs: Vec::new(),
            };
            SimJob {
                spec,
                arrival: (id / burst) * gap,
                work,
            }
        })
        .collect()
}

/// The done-when check of "Unified CPU: noodle run": on the heterogeneous workload our
/// scheduler's makespan is at least 20% better than round-robin's. `simulate` itself fails on
/// any oversubscribed node or any job not finishing exactly once.
#[test]
fn simulation_beats_round_robin_by_20_percent() {
    let nodes = nodes();
    let jobs = workload(SEED);
    let ours = simulate(Scored, &nodes, &jobs).unwrap();
    let rr = simulate(RoundRobin::default(), &nodes, &jobs).unwrap();
    let ll = simulate(LeastLoaded, &nodes, &jobs).unwrap();
    let nf = simulate(NextFit::default(), &nodes, &jobs).unwrap();
    eprintln!(
        "seed {SEED:#x}: {JOBS} jobs on {} nodes, 10 bursts of 200 every 2,000 ticks",
        nodes.len()
    );
    eprintln!("{:<14} {:>9} {:>10}", "policy", "makespan", "mean wait");
    for (name, r) in [
        ("scored", &ours),
        ("round-robin", &rr),
        ("least-loaded", &ll),
        ("next-fit", &nf),
    ] {
        assert_eq!(r.finished, JOBS, "{name}");
        eprintln!("{name:<14} {:>9} {:>10.1}", r.makespan, r.mean_wait);
    }
    let ratio = ours.makespan as f64 / rr.makespan as f64;
    eprintln!("scored / round-robin makespan = {ratio:.3}");
    assert!(ratio <= 0.8, "makespan ratio {ratio:.3} > 0.8");
    assert!(
        ours.makespan <= ll.makespan,
        "scored worse than least-loaded"
    );
}

/// Same seed, same result: the simulation is deterministic.
#[test]
fn simulation_is_deterministic() {
    let nodes = nodes();
    let jobs = workload(SEED);
    let a = simulate(Scored, &nodes, &jobs).unwrap();
    let b = simulate(Scored, &nodes, &jobs).unwrap();
    assert_eq!(a, b);
}
