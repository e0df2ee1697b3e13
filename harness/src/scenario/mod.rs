//! The scenario catalogue: every phase is run against the same descriptions, so that their
//! results compare. A scenario is its calls' audio and a topology of components joined by
//! links (`topology`); the scenarios themselves are defined in `entries`.

mod entries;
mod topology;

pub use crate::truth::TlsStack;
pub use entries::{
    s1, s11, s12, s13, s14, s15, s16, s2, s3, s4, s5, s6, s7, s8, s9, scale, SCALE_CONNECTIONS,
};
pub use topology::{Comp, External, Kind, Link, LinkKind, LinkSpec, Topology};

use serde::Serialize;

/// Where a scenario's call audio comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum AudioPlan {
    /// Prompts of the real speech corpus with pauses and per-call line noise.
    RealSpeech,
    /// `audio::speech_like`, unique per call.
    SyntheticSpeech,
    /// Real speech, long digital silence, comfort noise, a tone, DTMF, then the same hold music
    /// at the same time on every call, then speech again (S7).
    QuietAndShared,
}

#[derive(Clone, Debug, Serialize)]
pub struct Scenario {
    pub id: &'static str,
    pub title: &'static str,
    pub calls: u32,
    pub seconds: f64,
    pub rate: u32,
    pub audio: AudioPlan,
    /// Pace of the sources: 1 is real time.
    pub speed: f64,
    pub topology: Topology,
}

impl Scenario {
    /// `calls` calls of real speech at 8 kHz through `topology`, paced at `speed` × real time:
    /// what most of the catalogue is.
    pub fn speech(
        id: &'static str,
        title: &'static str,
        calls: u32,
        seconds: f64,
        speed: f64,
        topology: Topology,
    ) -> Self {
        Self {
            id,
            title,
            calls,
            seconds,
            rate: 8000,
            audio: AudioPlan::RealSpeech,
            speed,
            topology,
        }
    }
}

/// The scenarios every phase runs: S1 to S8, and S12 to S16 (TLS stacks other than OpenSSL).
/// S9 and S11 need nodes and SCALE is a benchmark, so none is here.
pub fn catalogue() -> Vec<Scenario> {
    vec![
        s1(),
        s2(),
        s3(),
        s4(),
        s5(),
        s6(),
        s7(),
        s8(),
        s12(),
        s13(),
        s14(),
        s15(),
        s16(),
    ]
}

/// A catalogue scenario by id, [`s9`], [`s11`], or "SCALE": [`scale`] at the size the tracer is held
/// to, 1000 concurrent calls, for 10 s.
pub fn by_id(id: &str) -> Option<Scenario> {
    if id.eq_ignore_ascii_case("SCALE") {
        return Some(scale(1000, 10.0));
    }
    if id.eq_ignore_ascii_case("S9") {
        return Some(s9());
    }
    if id.eq_ignore_ascii_case("S11") {
        return Some(s11());
    }
    catalogue()
        .into_iter()
        .find(|s| s.id.eq_ignore_ascii_case(id))
}
