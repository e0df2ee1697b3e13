use super::latencies::Latencies;
use super::*;
use crate::schema::{Dir, Sighting};
use std::time::SystemTime;

const S: u64 = 1_000_000_000;

#[test]
fn percentiles_are_nearest_rank() {
    let sorted = [10, 20, 30, 40];
    assert_eq!(percentile(&sorted, 0.5), 20);
    assert_eq!(percentile(&sorted, 0.51), 30);
    assert_eq!(percentile(&sorted, 0.99), 40);
    assert_eq!(percentile(&sorted, 0.0), 10);
    assert_eq!(percentile::<u64>(&[], 0.99), 0);
}

/// Latencies from −300 µs to 1 s, spread over every order of magnitude (a fixed LCG).
fn spread(n: usize) -> Vec<i64> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    (0..n)
        .map(|_| {
            x = x
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            let magnitude = 10f64.powf((x >> 11) as f64 / (1u64 << 53) as f64 * 9.0) as i64;
            if x.is_multiple_of(5) {
                -(magnitude % 300_000)
            } else {
                magnitude
            }
        })
        .collect()
}

#[test]
fn quantiles_match_exact_nearest_rank_within_the_histograms_precision() {
    let values = spread(20_000);
    let mut latencies = Latencies::default();
    for &v in &values {
        latencies.record(v);
    }
    let mut sorted = values.clone();
    sorted.sort_unstable();
    assert_eq!(latencies.count(), sorted.len() as u64);
    let qs = [0.0, 0.001, 0.1, 0.19, 0.2, 0.21, 0.5, 0.9, 0.99, 0.999, 1.0];
    for q in qs {
        let exact = percentile(&sorted, q);
        let got = latencies.quantile(q).unwrap();
        // 3 significant digits: within 0.1 % of the value, and 1 ns near 0.
        let tolerance = exact.unsigned_abs() / 1000 + 1;
        assert!(
            got.abs_diff(exact) <= tolerance,
            "q {q}: {got} against exact {exact}"
        );
    }
    assert_eq!(Latencies::default().quantile(0.5), None);
}

#[test]
fn negative_latencies_keep_their_sign_and_order() {
    let mut latencies = Latencies::default();
    // Values the histogram holds exactly (below 2048 ns, or few significant bits).
    for v in [-40_000, -10_000, 0, 2_000] {
        latencies.record(v);
    }
    let got: Vec<_> = [0.25, 0.5, 0.75, 1.0]
        .map(|q| latencies.quantile(q).unwrap())
        .to_vec();
    assert_eq!(got, [-40_000, -10_000, 0, 2_000]);
}

fn record(from: &str, to: &str, latency_ns: i64, bound_ns: Option<u64>) -> HopRecord {
    let end = |comm: &str, dir| Sighting {
        pid: 1,
        comm: comm.into(),
        fd: 3,
        dir,
        t_ns: 0,
        pos: None,
        node: None,
        node_t_ns: None,
        pod: None,
    };
    let mut r = HopRecord::new(1, end(from, Dir::Write), end(to, Dir::Read));
    r.latency_ns = latency_ns;
    r.bound_ns = bound_ns;
    r
}

fn table_at(stats: &HopStats, now_ns: u64) -> String {
    stats.table_at(now_ns, SystemTime::UNIX_EPOCH)
}

/// The table's row for the hop from `from`, split into columns after the arrow's sides.
fn row(table: &str, from: &str) -> Option<Vec<String>> {
    let line = table.lines().find(|l| l.trim_start().starts_with(from))?;
    let (_, after) = line.split_once('→')?;
    Some(after.split_whitespace().map(str::to_string).collect())
}

#[test]
fn percentiles_cover_the_recent_window_and_count_since_start() {
    let mut stats = HopStats::default();
    let t0 = 1_000 * S;
    for _ in 0..100 {
        stats.add_at(&record("src", "relay", 5_000_000, Some(900_000)), t0);
    }
    for i in 0..10 {
        stats.add_at(
            &record("src", "relay", 20_000 + i, Some(30_000)),
            t0 + 59 * S,
        );
    }
    // Still inside the window: the old records weigh in.
    let within = row(&table_at(&stats, t0 + 59 * S), "src").unwrap();
    assert_eq!(within[1..3], ["110", "110"]);
    let p50: f64 = within[3].parse().unwrap();
    assert!((5000.0..=5005.0).contains(&p50), "{within:?}");
    // A minute on, their slot has rotated out; the count since start keeps them.
    let table = table_at(&stats, t0 + 61 * S);
    assert!(table.contains("the last 60 s"), "{table}");
    let after = row(&table, "src").unwrap();
    assert_eq!(
        after[1..],
        ["110", "10", "20.0", "20.0", "20.0", "20.0", "30.0"],
        "{table}"
    );
    // Nothing in the window: no figures rather than stale ones.
    let quiet = row(&table_at(&stats, t0 + 200 * S), "src").unwrap();
    assert_eq!(quiet[1..], ["110", "0", "-", "-", "-", "-", "-"]);
}

#[test]
fn quiet_hops_are_forgotten() {
    let mut stats = HopStats::new(Retention {
        window: Duration::from_secs(60),
        forget_after: Duration::from_secs(600),
    });
    let t0 = 1_000 * S;
    stats.add_at(&record("gone", "relay", 1_000, None), t0);
    stats.add_at(&record("live", "relay", 1_000, None), t0 + 500 * S);
    // Ten minutes without a record: out of the table at once…
    let table = table_at(&stats, t0 + 600 * S);
    assert!(row(&table, "gone").is_none(), "{table}");
    assert!(row(&table, "live").is_some(), "{table}");
    assert_eq!(stats.hops.len(), 2);
    // …and out of memory at the next record of any hop.
    stats.add_at(&record("live", "relay", 1_000, None), t0 + 600 * S);
    assert_eq!(stats.hops.len(), 1);
    // Seen again, it starts afresh.
    stats.add_at(&record("gone", "relay", 1_000, None), t0 + 601 * S);
    assert_eq!(
        row(&table_at(&stats, t0 + 601 * S), "gone").unwrap()[1],
        "1"
    );
}

#[test]
fn the_table_fits_long_names_and_says_when_and_in_which_unit() {
    let mut stats = HopStats::default();
    let long = "voice-gateway-7f9c8d6b5c-x2x4z-with-a-long-name";
    stats.add_at(&record(long, "relay", 12_000, None), S);
    stats.add_at(&record("src", "relay", 5_000, None), S);
    let table = stats.table_at(S, SystemTime::UNIX_EPOCH + Duration::from_millis(1_500));
    let lines: Vec<&str> = table.lines().collect();
    assert!(
        lines[0].starts_with("hops at 1970-01-01T00:00:01.500Z:"),
        "{table}"
    );
    let header: Vec<&str> = lines[1].split_whitespace().collect();
    assert_eq!(
        header,
        [
            "from", "to", "count", "n", "p50", "µs", "p90", "µs", "p99", "µs", "max", "µs", "±",
            "µs"
        ]
    );
    // Every row's arrow and figures line up under the header, however long a name.
    let arrow = |l: &str| l.find('→').unwrap();
    assert_eq!(arrow(lines[2]), arrow(lines[3]), "{table}");
    let end = |l: &str| l.chars().count();
    assert_eq!(end(lines[1]), end(lines[2]), "{table}");
    assert_eq!(row(&table, long).unwrap()[2..4], ["1", "12.0"], "{table}");
    assert_eq!(lines.len(), 4, "{table}");
}

/// From phase 4 on, a row is a hop between workloads, as the metrics have it: two pods of one
/// Deployment on two nodes are one row.
#[test]
fn rows_are_workloads_where_known() {
    let in_pod = |pod: &str, node: &str, dir| Sighting {
        pid: 1,
        comm: "main".into(),
        fd: 3,
        dir,
        t_ns: 0,
        pos: None,
        node: Some(node.into()),
        node_t_ns: None,
        pod: Some(crate::schema::PodRef {
            namespace: "audio".into(),
            pod: pod.into(),
            container: "main".into(),
            workload: pod.split('-').next().unwrap().into(),
        }),
    };
    let mut stats = HopStats::default();
    for (src, node) in [("gw-5c9f-abcde", "node-a"), ("gw-5c9f-fghij", "node-b")] {
        let to = in_pod("asr-7d-xyz12", "node-c", Dir::Read);
        let r = HopRecord::new(1, in_pod(src, node, Dir::Write), to);
        stats.add_at(&r, S);
    }
    let table = table_at(&stats, S);
    assert_eq!(
        row(&table, "audio/gw").unwrap()[0..2],
        ["audio/asr", "2"],
        "{table}"
    );
    assert!(
        !table.contains("abcde") && !table.contains("node-"),
        "{table}"
    );
}
