//! The simulation's tests: the lease holds for many seeds, a seed replays exactly, and the
//! planted bug (a node that does not self-fence) is caught, so a passing run means something.

use super::{SimOptions, Violation, run_seed};

fn env(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|s| s.parse().ok())
}

/// Seeds run by default `0..100`; `NOODLE_JOBS_SIM_SEEDS=N` runs `0..N`, and
/// `NOODLE_JOBS_SIM_SEED=S` runs seed `S` alone with its whole trace printed.
fn seeds() -> std::ops::Range<u64> {
    match env("NOODLE_JOBS_SIM_SEED") {
        Some(seed) => seed..seed + 1,
        None => 0..env("NOODLE_JOBS_SIM_SEEDS").unwrap_or(100),
    }
}

#[test]
fn lease_simulation_holds_for_100_seeds() {
    let opts = SimOptions {
        keep_trace: env("NOODLE_JOBS_SIM_SEED").is_some(),
        ..SimOptions::default()
    };
    let mut failures = Vec::new();
    let (mut processes, mut fenced, mut lost_answers) = (0, 0, 0);
    for seed in seeds() {
        match run_seed(seed, &opts) {
            Ok(report) => {
                for line in &report.trace {
                    eprintln!("{line}");
                }
                processes += report.processes;
                fenced += report.fenced;
                lost_answers += report.lost_answers;
            }
            Err(failure) => {
                eprintln!("{failure}\nlast events:");
                let shown = if opts.keep_trace { usize::MAX } else { 60 };
                for line in failure.trace_tail.iter().rev().take(shown).rev() {
                    eprintln!("  {line}");
                }
                failures.push(failure.to_string());
            }
        }
    }
    eprintln!("{processes} processes, {fenced} fenced, {lost_answers} answers lost");
    assert!(
        failures.is_empty(),
        "{} seeds failed (run one alone with NOODLE_JOBS_SIM_SEEDS and keep_trace):\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn the_same_seed_gives_the_same_run() {
    let opts = SimOptions {
        keep_trace: true,
        ..SimOptions::default()
    };
    let first = run_seed(7, &opts).map_err(|f| f.to_string());
    let second = run_seed(7, &opts).map_err(|f| f.to_string());
    let (Ok(first), Ok(second)) = (first, second) else {
        panic!("seed 7 failed");
    };
    assert!(
        first.trace.len() > 1000,
        "a real run: {} events",
        first.trace.len()
    );
    assert_eq!(first.fingerprint, second.fingerprint);
    assert_eq!(first, second);
    let other = run_seed(8, &opts).map_err(|f| f.to_string());
    assert_ne!(
        other.map(|r| r.fingerprint),
        Ok(first.fingerprint),
        "another seed, another run"
    );
}

#[test]
fn a_node_that_does_not_self_fence_is_caught() {
    let opts = SimOptions {
        self_fence: false,
        ..SimOptions::default()
    };
    let seeds = seeds();
    let count = seeds.end - seeds.start;
    let mut twice = Vec::new();
    let mut other = Vec::new();
    for seed in seeds {
        match run_seed(seed, &opts) {
            Ok(_) => {}
            Err(f) if matches!(f.violation, Violation::TwoAtOnce { .. }) => twice.push(f),
            Err(f) => other.push(f),
        }
    }
    eprintln!(
        "without self-fencing, {} of {} seeds ran a job on two nodes at once, {} broke \
         another invariant",
        twice.len(),
        count,
        other.len()
    );
    for f in twice.iter().chain(&other).take(5) {
        eprintln!("  {f}");
    }
    assert!(
        !twice.is_empty(),
        "no seed caught a node that keeps running its jobs when cut off"
    );
}
