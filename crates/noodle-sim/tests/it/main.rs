//! The simulation over many seeds, the broken variant it must catch, and its determinism.
//!
//! - `NOODLE_SIM_SEEDS=<n>`: run seeds `0..n` (default 100).
//! - `NOODLE_SIM_SEED=<seed>`: run that seed only, and print its report.
//! - `NOODLE_SIM_TRACE=1`: with `NOODLE_SIM_SEED`, print every event of the run.
//! - `NOODLE_SIM_TWICE=1`: run every seed twice and fail if a fingerprint differs.

use noodle_sim::{SimFailure, SimOptions, SimReport, run_seed};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

const DEFAULT_SEEDS: u64 = 100;
/// The broken variant must fail within this many seeds.
const BROKEN_SEEDS_MAX: u64 = 100;

fn env_u64(name: &str) -> Option<u64> {
    let value = std::env::var(name).ok()?;
    Some(
        value
            .trim()
            .parse()
            .unwrap_or_else(|e| panic!("{name}={value:?}: {e}")),
    )
}

fn print_failure(f: &SimFailure) {
    eprintln!("last events of seed {}:", f.seed);
    for line in &f.trace_tail {
        eprintln!("  {line}");
    }
    eprintln!("{f}");
}

/// Runs `seeds` on as many threads as there are cores; each run lives on one thread.
fn run_all(seeds: &[u64], opts: &SimOptions) -> Vec<Result<SimReport, SimFailure>> {
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(seeds.len().max(1));
    let next = AtomicUsize::new(0);
    let results: Mutex<Vec<Option<Result<SimReport, SimFailure>>>> =
        Mutex::new(vec![None; seeds.len()]);
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                loop {
                    let n = next.fetch_add(1, Ordering::Relaxed);
                    let Some(seed) = seeds.get(n) else {
                        return;
                    };
                    let result = run_seed(*seed, opts);
                    results.lock().expect("results lock")[n] = Some(result);
                }
            });
        }
    });
    results
        .into_inner()
        .expect("results lock")
        .into_iter()
        .map(|r| r.expect("every seed ran"))
        .collect()
}

#[test]
fn hundred_seeds_hold_the_invariants() {
    let opts = SimOptions {
        keep_trace: std::env::var("NOODLE_SIM_TRACE").is_ok(),
        ..SimOptions::default()
    };
    let seeds: Vec<u64> = match env_u64("NOODLE_SIM_SEED") {
        Some(seed) => vec![seed],
        None => (0..env_u64("NOODLE_SIM_SEEDS").unwrap_or(DEFAULT_SEEDS)).collect(),
    };
    let started = Instant::now();
    let results = run_all(&seeds, &opts);
    let mut failed: Vec<u64> = Vec::new();
    let mut ops = 0;
    let mut grown = 0;
    for result in &results {
        match result {
            Ok(report) => {
                ops += report.register_ops_returned + report.writes_acknowledged;
                grown += usize::from(report.voters_before_faults == 5);
                if seeds.len() == 1 {
                    for line in &report.trace {
                        eprintln!("{line}");
                    }
                    eprintln!("{report:#?}");
                }
            }
            Err(f) => {
                print_failure(f);
                failed.push(f.seed);
            }
        }
    }
    eprintln!(
        "{} seeds, {ops} operations answered, 5 voters before the faults in {grown}, in {:.1?}",
        seeds.len(),
        started.elapsed()
    );
    if std::env::var("NOODLE_SIM_TWICE").is_ok() {
        // Again, in the other order, so other seeds run beside each one this time.
        let reversed: Vec<u64> = seeds.iter().rev().copied().collect();
        let again = run_all(&reversed, &opts);
        for (first, second) in results.iter().zip(again.iter().rev()) {
            let fingerprint = |r: &Result<SimReport, SimFailure>| match r {
                Ok(report) => report.fingerprint.clone(),
                Err(f) => f.to_string(),
            };
            if fingerprint(first) != fingerprint(second) {
                let seed = match first {
                    Ok(r) => r.seed,
                    Err(f) => f.seed,
                };
                eprintln!("seed {seed} ran differently the second time");
                failed.push(seed);
            }
        }
    }
    let small: Vec<u64> = results
        .iter()
        .filter_map(|r| r.as_ref().ok())
        .filter(|r| r.voters_before_faults != 5)
        .map(|r| r.seed)
        .collect();
    assert!(
        small.is_empty(),
        "the cluster had not grown to 5 voters when the faults began in seeds {small:?}"
    );
    if let Some(first) = failed.first() {
        panic!(
            "{} of {} seeds broke an invariant: {failed:?}\nrerun one with: NOODLE_SIM_SEED={first} cargo test -p noodle-sim --test it hundred_seeds -- --nocapture",
            failed.len(),
            seeds.len()
        );
    }
}

#[test]
fn acknowledging_before_fsync_is_caught() {
    let opts = SimOptions {
        ack_before_fsync: true,
        ..SimOptions::default()
    };
    let failure = (0..BROKEN_SEEDS_MAX)
        .find_map(|seed| run_seed(seed, &opts).err())
        .unwrap_or_else(|| {
            panic!("{BROKEN_SEEDS_MAX} seeds of acknowledging before fsync broke no invariant")
        });
    eprintln!(
        "the broken variant failed at seed {}:\n{failure}",
        failure.seed
    );
    assert!(
        failure.failures[0].is_data_loss(),
        "the broken variant must lose a write or break linearizability, not just: {failure}"
    );
    // The same seed fails the same way again.
    let again = run_seed(failure.seed, &opts).expect_err("the failing seed fails again");
    assert_eq!(again.failures, failure.failures);
    assert_eq!(again.trace_tail, failure.trace_tail);
}

#[test]
fn the_same_seed_gives_the_same_run() {
    let opts = SimOptions::default();
    for seed in [3, 1234] {
        let first = run_seed(seed, &opts).unwrap_or_else(|f| panic!("{f}"));
        let second = run_seed(seed, &opts).unwrap_or_else(|f| panic!("{f}"));
        assert_eq!(first, second, "seed {seed} ran differently twice");
        assert!(
            first.register_ops_returned > 0 && first.crashes > 0 && first.voters_before_faults == 5,
            "{first:?}"
        );
    }
    let other = run_seed(4, &opts).unwrap_or_else(|f| panic!("{f}"));
    let three = run_seed(3, &opts).unwrap_or_else(|f| panic!("{f}"));
    assert_ne!(
        other.fingerprint, three.fingerprint,
        "different seeds, different runs"
    );
}
