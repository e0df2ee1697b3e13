//! What every phase's agent shares, in the order data flows through it: a phase's eBPF object
//! is loaded (`loader`) and told which processes to trace (`targets`); its events are drained
//! into the phase's matcher through the matching window (`pipeline`, `window`); the hop records
//! that come out (`schema`) feed per-hop statistics (`stats`) and the outputs. `counters` reads
//! the kernel side's counters, `cli` is the command line every phase's binary has,
//! `config` where its settings come from besides flags (environment, a YAML file), `log` its
//! log lines.
//!
//! A phase crate brings only its story: its `.bpf.c` and `.h`, its event, its kernel side (a
//! [`pipeline::Kernel`]) and its matcher (a [`pipeline::Matching`]). Nothing here knows a
//! phase, the test harness, or Kubernetes.

pub mod cli;
pub mod clock;
pub mod config;
pub mod counters;
pub mod loader;
pub mod log;
pub mod pipeline;
pub mod schema;
pub mod stats;
pub mod targets;
pub mod window;
