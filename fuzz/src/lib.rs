//! Property-based fuzzing, on stable Rust, of every input the agents and the collector take
//! from outside their own process: the kernel's ring-buffer records, the batches agents send,
//! label selectors, flag values, `/proc/<pid>/cgroup` and JSON lines. Each property says
//! more than "does not panic": what a decoder returns for well-formed input is what was encoded,
//! and what it returns for any input stays within what the bytes can hold.
//!
//! The tests (tests/) run a few hundred cases each in CI; for a longer search:
//! `PROPTEST_CASES=100000 cargo test --release -p fuzz`. A failing case is shrunk and saved
//! under `proptest-regressions/`, to be committed with its fix.
