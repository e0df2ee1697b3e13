//! The harness: audio, real pipeline components that record ground truth, the scenario
//! catalogue and the nodes some scenarios run on, the common result schema, scoring, and the
//! smallest-window study.

pub mod audio;
pub mod collisions;
pub mod component;
pub mod nodes;
pub mod oracle;
pub mod run;
pub mod scenario;
pub mod schema;
pub mod score;
pub mod supervised;
pub mod truth;
