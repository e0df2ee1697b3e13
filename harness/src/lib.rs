//! The harness: audio, real pipeline components that record ground truth, the scenario
//! catalogue and the nodes some scenarios run on, scoring a tracer's hop records against that
//! truth, a phase's agent traced on a scenario (`demo`), and the smallest-window study.

pub mod audio;
pub mod collisions;
pub mod component;
pub mod demo;
pub mod nodes;
pub mod oracle;
pub mod pki;
pub mod run;
pub mod scenario;
pub mod score;
pub mod service;
pub mod supervised;
pub mod tls_relay;
pub mod truth;
