//! Replays the committed fuzz seeds (`fuzz/seeds/<target>/`) through every target on stable.

#![allow(clippy::expect_used)]

use std::path::PathBuf;

fn seeds() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/seeds")
}

#[test]
fn every_committed_seed_passes_its_target() {
    for (name, target) in noodle_fuzz_targets::TARGETS {
        let dir = seeds().join(name);
        let inputs: Vec<PathBuf> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|e| e.expect("a seed").path())
            .collect();
        assert!(!inputs.is_empty(), "no seeds for {name}");
        for input in inputs {
            target(&std::fs::read(&input).expect("a seed"));
        }
    }
}

#[test]
fn every_seed_directory_is_a_target() {
    for entry in std::fs::read_dir(seeds()).expect("fuzz/seeds") {
        let name = entry.expect("an entry").file_name();
        let name = name.to_string_lossy();
        assert!(
            noodle_fuzz_targets::TARGETS.iter().any(|(t, _)| *t == name),
            "fuzz/seeds/{name} has no target"
        );
    }
}
