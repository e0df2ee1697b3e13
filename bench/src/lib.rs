//! What the `bench` binary and the criterion benchmarks (`benches/`) share.

pub mod agent;
