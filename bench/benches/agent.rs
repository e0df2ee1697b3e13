//! The agent's hot path on one core, by criterion: phase 2's ring-buffer records decoded, their
//! links resolved, admitted through the matching window and closed into hop records. A node's
//! agent must keep up with a million events a second; `bench agent` measures the memory.

use bench::agent::{run_agent, AgentState, Chain, PER_CALL};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};

fn decode_match_close(c: &mut Criterion) {
    let chain = Chain::new().expect("pipes and `sleep` holders for the chain");
    // 20 calls × 600 moments, seen at six points: 72 000 events per pass.
    let records: Vec<Vec<u8>> = (0..20)
        .flat_map(|call| chain.records(call, 600, 1_000_000_000))
        .collect();
    // One agent state across passes, as the agent runs: links are resolved once, then cached.
    let mut state = AgentState::default();
    let (events, hops) = run_agent(&records, &mut state);
    assert_eq!(events, records.len() * PER_CALL);
    assert!(hops > 0, "the chain's links did not resolve");
    let mut group = c.benchmark_group("agent");
    group.throughput(Throughput::Elements(events as u64));
    group.bench_function("decode, match and close", |b| {
        b.iter(|| run_agent(&records, &mut state))
    });
    group.finish();
}

criterion_group!(benches, decode_match_close);
criterion_main!(benches);
