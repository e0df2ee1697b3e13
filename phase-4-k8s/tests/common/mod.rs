//! Helpers shared by the integration tests: crun containers in kubelet-named cgroups
//! ([`crun`]) and a fake Kubernetes API server ([`api`]). Each test binary uses part of them.
#![allow(dead_code)]

pub mod api;
pub mod crun;
