//! `noodle bench --quick --json`: the link rows and this machine's limit rows, in the promised
//! shape. Speed itself is judged from the numbers, not here.

use crate::support::cli;

#[test]
fn quick_bench_prints_link_and_limit_rows() {
    let dir = tempfile::tempdir().unwrap();
    let out = cli(dir.path(), &["bench", "--quick", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let rows = v["rows"].as_array().unwrap();
    let row = |name: &str| {
        rows.iter()
            .find(|r| r["name"] == name)
            .unwrap_or_else(|| panic!("no row {name} in {v}"))
    };
    let cases = [
        ("link_rtt", "us", true),
        ("link_bulk_throughput", "MB/s", true),
        ("link_pq_handshakes", "handshakes/s", false),
        ("control_commit_latency", "us", true),
        ("control_batched_commits", "commits/s", false),
        ("cap_authorisations", "authorisations/s", false),
        ("run_true_latency", "ms", false),
        ("revocation_everywhere", "ms", false),
        ("node_remove_everywhere", "ms", false),
        ("tiny_jobs_per_node", "jobs/s", false),
        ("fabric_put_small_latency", "ms", false),
        ("fabric_small_puts", "puts/s", false),
        ("fabric_small_gets_cached", "gets/s", false),
        ("fabric_large_put", "MB/s", true),
        ("fabric_large_get_local", "GB/s", true),
        ("fabric_large_get_remote", "MB/s", true),
        ("fabric_large_put_local", "MB/s", false),
        ("fabric_mount_read", "MB/s", false),
        ("job_spawn_sandboxed", "us", true),
        ("job_spawn_plain", "us", false),
        ("memcpy", "GB/s", false),
        ("tcp_loopback_throughput", "MB/s", false),
        ("tcp_loopback_rtt", "us", false),
        ("datadir_fsync_latency", "us", false),
    ];
    for (name, unit, has_ratio) in cases {
        let r = row(name);
        assert_eq!(r["unit"], unit, "{r}");
        for key in ["median", "p99"] {
            assert!(
                r[key].as_f64().is_some_and(|x| x > 0.0),
                "{name}.{key}: {r}"
            );
        }
        assert_eq!(r["ratio_to_limit"].as_f64().is_some(), has_ratio, "{r}");
    }
    assert_eq!(rows.len(), cases.len());
}
