//! The collector's batch handling: whatever agents send — resends, batches out of order, for
//! another collector instance, with nonsense clock exchanges, counters that go backwards,
//! indexes past the batch, colliding signatures, opaque-socket snapshots of any version — the
//! collector answers every batch and never panics; it takes each (node, epoch, seq) once, and
//! the hops it reports are between sightings it took.

use phase_3_multi_node::collector::Service;
use phase_3_multi_node::proto::collector_server::Collector;
use phase_3_multi_node::proto::{Batch, Exchange, NodeSighting, OpaqueSocket, OpaqueSockets};
use proptest::prelude::*;
use std::collections::{BTreeMap, BTreeSet};
use tonic::Code;

/// Around the collector's "now", so that windows open and close; sometimes anything at all.
const T0: u64 = 1_000_000_000_000;

fn time() -> impl Strategy<Value = u64> {
    prop_oneof![4 => T0..T0 + 5_000_000_000, 1 => any::<u64>()]
}

fn sighting() -> impl Strategy<Value = NodeSighting> {
    (
        (0..4u64, time(), 1..4u32, 0..4i32, any::<bool>()),
        (
            any::<u64>(),
            prop::sample::select(vec!["", "L1", "L2"]),
            0..3u64,
        ),
    )
        .prop_map(
            |((signature, t_ns, pid, fd, write), (pos, link, flow_birth_ns))| NodeSighting {
                signature,
                t_ns,
                pid,
                comm: format!("c{pid}"),
                fd,
                write,
                pos,
                link: link.into(),
                flow_birth_ns,
                pod: None,
            },
        )
}

/// A round trip in order on both clocks, or four arbitrary stamps.
fn exchange() -> impl Strategy<Value = Exchange> {
    prop_oneof![
        (
            T0..T0 + 5_000_000_000,
            0..100_000u64,
            0..10_000u64,
            0..100_000u64
        )
            .prop_map(|(t1, there, busy, back)| Exchange {
                t1,
                t2: t1 + there,
                t3: t1 + there + busy,
                t4: t1 + there + busy + back,
            }),
        any::<[u64; 4]>().prop_map(|[t1, t2, t3, t4]| Exchange { t1, t2, t3, t4 }),
    ]
}

/// A snapshot of opaque sockets on the sightings' processes and links, any version.
fn opaque() -> impl Strategy<Value = OpaqueSockets> {
    (
        prop_oneof![any::<u64>(), 0..4u64],
        prop::collection::vec((1..4u32, prop::sample::select(vec!["", "L1", "L2"])), 0..4),
    )
        .prop_map(|(version, sockets)| OpaqueSockets {
            version,
            sockets: sockets
                .into_iter()
                .map(|(pid, link)| OpaqueSocket {
                    pid,
                    link: link.into(),
                })
                .collect(),
        })
}

/// What an agent may send; `to_this` says whether it is addressed to this collector.
#[derive(Clone, Debug)]
struct Sent {
    batch: Batch,
    to_this: bool,
}

fn sent() -> impl Strategy<Value = Sent> {
    (
        (
            prop::sample::select(vec!["node-a", "node-b", "node-c"]),
            0..3u64,
            0..6u64,
            prop::collection::vec(sighting(), 0..6),
        ),
        (
            prop::collection::vec(exchange(), 0..3),
            prop_oneof![any::<u64>(), 0..50u64],
            prop_oneof![any::<u64>(), 0..50u64],
            prop::collection::vec(0..8u32, 0..3),
            prop::bool::weighted(0.9),
        ),
        prop::option::of(opaque()),
    )
        .prop_map(
            |(
                (node, epoch, seq, sightings),
                (exchanges, lost, taken, matched, to_this),
                opaque,
            )| Sent {
                batch: Batch {
                    node: node.into(),
                    seq,
                    sightings,
                    lost,
                    exchanges,
                    epoch,
                    taken,
                    collector: 0,
                    matched,
                    opaque,
                },
                to_this,
            },
        )
}

#[derive(Clone, Debug)]
enum Step {
    Send(Sent),
    /// Close what is due this long after T0.
    Close(u64),
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        4 => sent().prop_map(Step::Send),
        1 => (0..10_000_000_000u64).prop_map(Step::Close),
    ]
}

proptest! {
    #[test]
    fn each_batch_is_taken_once_and_hops_join_sightings_taken(
        steps in prop::collection::vec(step(), 1..40),
    ) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
        let service = Service::default();
        // The rule the agents rely on: per (node, epoch), a batch past the last one taken is new.
        let mut last_seq: BTreeMap<(String, u64), u64> = BTreeMap::new();
        let mut taken: BTreeMap<String, u64> = BTreeMap::new();
        let mut signatures = BTreeSet::new();
        let mut records = Vec::new();
        for step in steps {
            match step {
                Step::Send(Sent { mut batch, to_this }) => {
                    batch.collector = if to_this { service.instance } else { service.instance ^ 1 };
                    let (node, epoch, seq) = (batch.node.clone(), batch.epoch, batch.seq);
                    let n = batch.sightings.len() as u64;
                    let sent_signatures: Vec<u64> = batch.sightings.iter().map(|s| s.signature).collect();
                    let answer = rt.block_on(service.send(tonic::Request::new(batch)));
                    if !to_this {
                        let code = answer.as_ref().map_err(|s| s.code()).err();
                        prop_assert_eq!(code, Some(Code::FailedPrecondition));
                        continue;
                    }
                    let ack = answer.map_err(|s| TestCaseError::fail(format!("refused: {s}")))?.into_inner();
                    prop_assert_eq!(ack.seq, seq);
                    prop_assert_eq!(ack.instance, service.instance);
                    let last = last_seq.entry((node.clone(), epoch)).or_default();
                    if seq > *last {
                        *last = seq;
                        *taken.entry(node).or_default() += n;
                        signatures.extend(sent_signatures);
                    }
                    prop_assert!(ack.closed_through <= *last, "{} > {}", ack.closed_through, *last);
                }
                Step::Close(after) => records.extend(service.close_due(Some(T0 + after))),
            }
            records.extend(service.released());
            prop_assert!(!service.health().is_empty());
        }
        records.extend(service.close_due(None));
        records.extend(service.released());
        let state = service.state.lock().unwrap();
        for (node, n) in &taken {
            prop_assert_eq!(state.nodes[node].sightings(), *n, "{}", node);
        }
        for r in &records {
            prop_assert!(signatures.contains(&r.signature), "{:?}", r);
        }
    }
}
