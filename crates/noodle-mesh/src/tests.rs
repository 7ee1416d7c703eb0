//! Unit tests: the probe against this machine, and disk selection against fixed mount tables.

#![allow(clippy::unwrap_used)]

use super::*;

#[test]
fn sample_reports_this_machine() {
    let dir = tempfile::tempdir().unwrap();
    let mut probe = ResourceProbe::new(dir.path());
    // Twice: the second sample takes the cheap path (no relisting of the mounts).
    for _ in 0..2 {
        let r = probe.sample();
        assert!(r.cpus >= 1, "{r:?}");
        assert!(r.mem_available_bytes > 0, "{r:?}");
        assert!(r.mem_total_bytes >= r.mem_available_bytes, "{r:?}");
        assert!(r.disk_total_bytes > 0, "{r:?} {probe:?}");
        assert!(r.disk_total_bytes >= r.disk_free_bytes, "{r:?}");
        assert!(r.load_1m >= 0.0, "{r:?}");
        for gpu in &r.gpus {
            assert_eq!(gpu.vendor, "nvidia");
        }
    }
}

#[test]
fn sample_survives_a_relist() {
    let dir = tempfile::tempdir().unwrap();
    let mut probe = ResourceProbe::new(dir.path());
    let first = probe.sample();
    for _ in 0..=DISK_RELIST_SAMPLES {
        probe.sample();
    }
    let after = probe.sample();
    assert_eq!(first.disk_total_bytes, after.disk_total_bytes);
}

#[test]
fn data_dir_that_does_not_exist_yet_is_on_its_parents_disk() {
    let dir = tempfile::tempdir().unwrap();
    let existing = ResourceProbe::new(dir.path()).sample();
    let missing = ResourceProbe::new(&dir.path().join("not/yet/created")).sample();
    assert_eq!(existing.disk_total_bytes, missing.disk_total_bytes);
}

#[test]
fn resolve_path_keeps_the_missing_tail() {
    let dir = tempfile::tempdir().unwrap();
    let canonical = dir.path().canonicalize().unwrap();
    assert_eq!(resolve_path(&dir.path().join("a/b")), canonical.join("a/b"));
    assert_eq!(resolve_path(dir.path()), canonical);
}

fn check(mounts: &[&str], path: &str, expect: Option<usize>) {
    let got = longest_mount_prefix(mounts.iter().map(Path::new), Path::new(path));
    assert_eq!(got, expect, "mounts {mounts:?}, path {path}");
}

#[test]
fn longest_mount_prefix_picks_the_deepest_mount() {
    check(&["/", "/data", "/data/fast"], "/data/fast/noodle", Some(2));
    check(&["/data/fast", "/data", "/"], "/data/noodle", Some(1));
    check(&["/", "/data"], "/home/me/.noodle", Some(0));
    // Component-wise, not string-wise: /data2 is not under /data.
    check(&["/", "/data"], "/data2/noodle", Some(0));
    check(&["/data"], "/data", Some(0));
    // A mount stacked on another at the same point: the later one is in use.
    check(&["/", "/data", "/data"], "/data/x", Some(2));
    check(&["/data"], "/home", None);
    check(&[], "/home", None);
}
