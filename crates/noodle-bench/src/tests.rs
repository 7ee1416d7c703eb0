//! Unit tests of the row statistics and the table; the measurements themselves run in the
//! binary's end-to-end test (`noodle bench --quick --json`).

use super::*;

#[test]
fn bench_row_picks_median_and_the_bad_tail() {
    let samples: Vec<f64> = (1..=101).map(f64::from).collect();
    let latency = row("x_latency", "us", samples.clone(), None);
    assert_eq!((latency.median, latency.p99), (51.0, 100.0));
    // For a rate the bad tail is the low end.
    let rate = row("x_rate", "MB/s", samples.clone(), None);
    assert_eq!((rate.median, rate.p99), (51.0, 2.0));
    let limit = limit_row("x_limit", "us", vec![17.0]);
    assert!(limit.is_limit && limit.ratio_to_limit.is_none());
    let vs = row("x_vs", "us", vec![34.0], Some(&limit));
    assert_eq!(vs.ratio_to_limit, Some(2.0));
    assert!(!vs.is_limit);
    let empty = row(
        "x_empty",
        "us",
        Vec::new(),
        Some(&row("zero", "us", vec![0.0], None)),
    );
    assert_eq!(
        (empty.median, empty.p99, empty.ratio_to_limit),
        (0.0, 0.0, None)
    );
}

#[test]
fn bench_render_and_json_shape() -> Result<(), serde_json::Error> {
    let limit = limit_row("tcp_loopback_rtt", "us", vec![20.0]);
    let rows = vec![
        row("link_rtt", "us", vec![50.0], Some(&limit)),
        row("link_pq_handshakes", "handshakes/s", vec![900.0], None),
        limit,
    ];
    let expected = "\
METRIC                           MEDIAN          P99  UNIT          VS LIMIT
link_rtt                          50.00        50.00  us            2.50x
link_pq_handshakes               900.00       900.00  handshakes/s  -
tcp_loopback_rtt                  20.00        20.00  us            limit
throughput rows: fraction of the limit; latency rows: multiple of the limit
";
    assert_eq!(render(&rows), expected);
    assert_eq!(
        serde_json::to_string(&rows[0])?,
        r#"{"name":"link_rtt","unit":"us","median":50.0,"p99":50.0,"ratio_to_limit":2.5}"#
    );
    Ok(())
}
