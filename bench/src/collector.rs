//! The collector at full rate (`bench collector`): its memory and throughput over millions of
//! hop records, in this process. Synthetic batches from three nodes go through the gRPC
//! service's `send` (batch sequence, clock models, backlog, matching window), moments are
//! closed as `run_collector` closes them, and every hop record goes into the hop statistics and
//! the Prometheus metrics; the table is printed and the metrics rendered every two seconds of
//! the traffic's time, as a collector reporting and scraped would. No JSON, no records kept.
//!
//! The traffic is S9's shape: per moment, `src` on node a → `r1` on node b (across nodes), `r1`
//! → `r2` inside node b (a unix socket), `r2` → `sink` on node c (across nodes): 6 sightings,
//! 5 hop records (3 transits, 2 residences). Its clock is virtual: each node's batch covers 50
//! ms of it at 36 000 hop records per second (issue 17's rate), while the bench sends them as
//! fast as it can. The window, clock models and per-hop state are then what a collector at
//! that rate holds, and the real rate says how far above it one core goes.
//!
//! With `--vec-baseline`, every latency is also kept per hop in a vector and a sorted copy made
//! at each report, as the hop statistics did before they were histograms: the "before".
//!
//! With `--replicas N` ([`sharded`]), the same traffic is sharded by signature over N collector
//! services as agents shard it (`phase_3_multi_node::shards`), each fed its share in turn on
//! this one thread and timed apart: the busiest replica's time is what N replicas on a core
//! each would take.

use crate::scale::status_kib;
use agent::schema::HopRecord;
use anyhow::{bail, Result};
use phase_3_multi_node::collector::Service;
use phase_3_multi_node::outputs::Outputs;
use phase_3_multi_node::proto::collector_server::Collector;
use phase_3_multi_node::proto::{Batch, Exchange, NodeSighting};
use std::collections::BTreeMap;
use std::time::Instant;

/// Virtual time per batch.
const TICK_NS: u64 = 50_000_000;
/// Hop records per moment.
const HOPS_PER_MOMENT: u64 = 5;
/// Moments per batch: 36 000 hop records per second of virtual time.
const MOMENTS_PER_TICK: u64 = 36_000 / HOPS_PER_MOMENT * TICK_NS / 1_000_000_000;
/// Report (table, scrape) every this many ticks: 2 s.
const REPORT_EVERY: u64 = 40;
/// Virtual time starts here on the collector's clock.
const T0_NS: u64 = 1_000_000_000_000;

const NODES: [(&str, i64); 3] = [
    ("node-a", 50_000_000),
    ("node-b", -30_000_000),
    ("node-c", 10_000_000),
];
const AB: &str = "tcp 10.0.0.1:4000 10.0.0.2:5000";
const BB: &str = "unix node-b 7";
const BC: &str = "tcp 10.0.0.2:6000 10.0.0.3:7000";

/// One point of the chain: node index, pid, comm, fd, write, link, ns after the moment's start.
type Point = (usize, u32, &'static str, i32, bool, &'static str, u64);
const POINTS: [Point; 6] = [
    (0, 100, "src", 5, true, AB, 0),
    (1, 200, "r1", 3, false, AB, 60_000),
    (1, 200, "r1", 4, true, BB, 90_000),
    (1, 201, "r2", 3, false, BB, 110_000),
    (1, 201, "r2", 4, true, BC, 150_000),
    (2, 300, "sink", 3, false, BC, 230_000),
];

fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// The three nodes' batches covering virtual time [t, t + TICK_NS), addressed to the
/// collector `instance` by one agent process per node.
fn batches(tick: u64, t_ns: u64, instance: u64) -> Vec<Batch> {
    let mut out: Vec<Batch> = NODES
        .iter()
        .map(|&(node, offset)| {
            let on_node = |t: u64| t.saturating_add_signed(offset);
            Batch {
                node: node.into(),
                seq: tick + 1,
                sightings: Vec::new(),
                lost: 0,
                // A symmetric 40 µs round trip at the batch's start.
                exchanges: vec![Exchange {
                    t1: on_node(t_ns),
                    t2: t_ns + 20_000,
                    t3: t_ns + 21_000,
                    t4: on_node(t_ns + 41_000),
                }],
                epoch: 1,
                collector: instance,
                ..Default::default()
            }
        })
        .collect();
    for m in 0..MOMENTS_PER_TICK {
        let moment = tick * MOMENTS_PER_TICK + m;
        let signature = splitmix(moment);
        let start = t_ns + m * (TICK_NS / MOMENTS_PER_TICK);
        for (i, &(node, pid, comm, fd, write, link, after)) in POINTS.iter().enumerate() {
            // Up to 20 µs of jitter per point, so every hop has a spread of latencies.
            let jitter = splitmix(signature ^ i as u64) % 20_000;
            let t = (start + after + jitter).saturating_add_signed(NODES[node].1);
            out[node].sightings.push(NodeSighting {
                signature,
                t_ns: t,
                pid,
                comm: comm.into(),
                fd,
                write,
                pos: (moment + 1) * 2048,
                link: link.into(),
                flow_birth_ns: 1,
                pod: None,
            });
        }
    }
    for b in &mut out {
        // Every tick puts as many sightings in each node's batch.
        b.taken = (tick + 1) * b.sightings.len() as u64;
    }
    out
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// The hop statistics as they were: every latency per hop, sorted copies at each report.
#[derive(Default)]
struct VecBaseline(BTreeMap<(String, String), Vec<i64>>);

impl VecBaseline {
    fn add(&mut self, records: &[HopRecord]) {
        for r in records {
            let hop = self.0.entry((r.from.who(), r.to.who())).or_default();
            hop.push(r.latency_ns);
        }
    }

    /// Each hop's p99, from a sorted copy: what the old table did.
    fn report(&self) -> i64 {
        let mut p99_sum = 0;
        for latencies in self.0.values() {
            let mut sorted = latencies.clone();
            sorted.sort_unstable();
            p99_sum += agent::stats::percentile(&sorted, 0.99);
        }
        p99_sum
    }
}

pub fn run(records: u64, checkpoint: u64, vec_baseline: bool) -> Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread().build()?;
    let service = Service::default();
    let mut outputs = Outputs::default();
    let mut baseline = vec_baseline.then(VecBaseline::default);
    let rss0 = status_kib("VmRSS:");
    println!(
        "collector at full rate: {} hop records, {MOMENTS_PER_TICK} moments per 50 ms batch per node{}",
        records,
        if vec_baseline { ", with every latency also kept in vectors (before)" } else { "" }
    );
    println!("RSS before: {:.1} MiB\n", mib(rss0));
    println!("| hop records | s | records/s (since last) | VmRSS MiB | VmHWM MiB |");
    println!("| --- | --- | --- | --- | --- |");
    let start = Instant::now();
    let (mut taken, mut next_checkpoint) = (0u64, checkpoint);
    let mut last = (0u64, start);
    let mut tick = 0;
    let mut table_len = 0;
    while taken < records {
        let t_ns = T0_NS + tick * TICK_NS;
        for batch in batches(tick, t_ns, service.instance) {
            rt.block_on(service.send(tonic::Request::new(batch)))?;
        }
        let closed = service.close_due(Some(t_ns + TICK_NS));
        if taken == 0 && !closed.is_empty() {
            // What the matching window alone holds at this rate.
            println!(
                "| 0 (window full) | {:.1} | | {:.1} | {:.1} |",
                start.elapsed().as_secs_f64(),
                mib(status_kib("VmRSS:")),
                mib(status_kib("VmHWM:")),
            );
        }
        taken += closed.len() as u64;
        if let Some(b) = &mut baseline {
            b.add(&closed);
        }
        outputs.take(closed)?;
        outputs.update_nodes(&service);
        if tick % REPORT_EVERY == 0 {
            table_len = outputs.stats.table().len() + outputs.metrics.render().len();
            if let Some(b) = &baseline {
                std::hint::black_box(b.report());
            }
        }
        if taken >= next_checkpoint {
            let now = Instant::now();
            let rate = (taken - last.0) as f64 / (now - last.1).as_secs_f64();
            println!(
                "| {taken} | {:.1} | {rate:.0} | {:.1} | {:.1} |",
                (now - start).as_secs_f64(),
                mib(status_kib("VmRSS:")),
                mib(status_kib("VmHWM:")),
            );
            last = (taken, now);
            next_checkpoint += checkpoint;
        }
        tick += 1;
    }
    let elapsed = start.elapsed().as_secs_f64();
    println!(
        "\n{taken} hop records in {elapsed:.1} s: {:.0} records/s ({:.1} s of traffic at 36 000/s)",
        taken as f64 / elapsed,
        (tick * TICK_NS) as f64 / 1e9
    );
    println!(
        "last report: {table_len} bytes of table and metrics; collector: {}",
        service.health()
    );
    let hops = outputs.stats.table().lines().count() - 2;
    if hops != HOPS_PER_MOMENT as usize {
        bail!(
            "{hops} hops in the table, expected {HOPS_PER_MOMENT}:\n{}",
            outputs.stats.table()
        );
    }
    println!("\n{}", outputs.stats.table());
    Ok(())
}

/// `records` hop records sharded over `replicas` collectors: per replica its records and the
/// time it spent (sends, closes, statistics), and what the busiest allows on a core each.
pub fn sharded(records: u64, replicas: usize) -> Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread().build()?;
    let names: Vec<String> = (0..replicas)
        .map(|i| format!("http://collector-{i}:50051"))
        .collect();
    let ring = phase_3_multi_node::shards::Rendezvous::new(&names);
    let live = vec![true; replicas];
    let services: Vec<Service> = (0..replicas).map(|_| Service::default()).collect();
    let mut outputs: Vec<Outputs> = (0..replicas).map(|_| Outputs::default()).collect();
    let mut busy = vec![std::time::Duration::ZERO; replicas];
    let mut taken = vec![0u64; replicas];
    let start = Instant::now();
    let mut tick = 0;
    while taken.iter().sum::<u64>() < records {
        let t_ns = T0_NS + tick * TICK_NS;
        for (i, service) in services.iter().enumerate() {
            // Each node's batch to this replica: the sightings it owns (every tick has some).
            let mut mine = batches(tick, t_ns, service.instance);
            for b in &mut mine {
                b.sightings.retain(|s| ring.owner(s.signature, &live) == i);
            }
            let at = Instant::now();
            for batch in mine {
                rt.block_on(service.send(tonic::Request::new(batch)))?;
            }
            let closed = service.close_due(Some(t_ns + TICK_NS));
            taken[i] += closed.len() as u64;
            outputs[i].take(closed)?;
            outputs[i].update_nodes(service);
            if tick % REPORT_EVERY == 0 {
                std::hint::black_box(
                    outputs[i].stats.table().len() + outputs[i].metrics.render().len(),
                );
            }
            busy[i] += at.elapsed();
        }
        tick += 1;
    }
    let total: u64 = taken.iter().sum();
    let busiest = busy.iter().max().copied().unwrap_or_default().as_secs_f64();
    println!(
        "{total} hop records over {replicas} replicas in {:.1} s on one thread; RSS {:.1} MiB",
        start.elapsed().as_secs_f64(),
        mib(status_kib("VmRSS:"))
    );
    println!("| replica | hop records | busy s | records/s while busy |");
    println!("| --- | --- | --- | --- |");
    for i in 0..replicas {
        println!(
            "| {i} | {} | {:.2} | {:.0} |",
            taken[i],
            busy[i].as_secs_f64(),
            taken[i] as f64 / busy[i].as_secs_f64()
        );
    }
    println!(
        "\na core per replica: {:.0} hop records/s (the busiest replica's {busiest:.2} s for all {total})",
        total as f64 / busiest
    );
    for (i, o) in outputs.iter().enumerate() {
        let hops = o.stats.table().lines().count() - 2;
        if hops != HOPS_PER_MOMENT as usize {
            bail!("replica {i}: {hops} hops in the table, expected {HOPS_PER_MOMENT}");
        }
    }
    Ok(())
}
