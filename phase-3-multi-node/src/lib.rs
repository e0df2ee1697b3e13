//! Phase 3 (in progress, issue 7): agents on several nodes, a collector that matches across
//! them, and cross-node clock alignment whose error bound travels with every hop. So far: the
//! clock alignment (`clock`); the agent/collector transport, the S9 scenario and the docs page
//! are still to come.

pub mod clock;
