//! The scenario catalogue: every phase is run against the same descriptions (BRIEF §6).

use serde::Serialize;

/// Where a scenario's call audio comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum AudioSource {
    /// Prompts of the real speech corpus with pauses and per-call line noise.
    RealSpeech,
    /// `audio::speech_like`, unique per call.
    SyntheticSpeech,
}

/// How one component writes its stream on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Stage {
    /// How long each read is held before it may be written on (relays).
    pub hold_us: u64,
    /// Size of every write.
    pub chunk: usize,
    /// Length of the stream header it writes before the audio.
    pub header_len: usize,
}

#[derive(Clone, Debug, Serialize)]
pub struct Scenario {
    pub id: &'static str,
    pub title: &'static str,
    pub calls: u32,
    pub seconds: f64,
    pub rate: u32,
    pub audio: AudioSource,
    /// Pace of the source: 1 is real time.
    pub speed: f64,
    pub source: Stage,
    /// One relay per stage, in order; a sink reads the last link.
    pub relays: Vec<Stage>,
}

const fn stage(hold_us: u64, chunk: usize, header_len: usize) -> Stage {
    Stage { hold_us, chunk, header_len }
}

/// S1 pipe chain: source → relay → relay → sink over pipes, 2048-byte writes, known hold times.
pub fn s1() -> Scenario {
    Scenario {
        id: "S1",
        title: "pipe chain, 2048-byte writes",
        calls: 2,
        seconds: 20.0,
        rate: 8000,
        audio: AudioSource::RealSpeech,
        speed: 4.0,
        source: stage(0, 2048, 64),
        relays: vec![stage(2_000, 2048, 64), stage(5_000, 2048, 64)],
    }
}

/// S2 re-chunk: relays re-chunk to 160, 1000 and 3001 bytes behind headers of odd lengths.
pub fn s2() -> Scenario {
    Scenario {
        id: "S2",
        title: "re-chunk to 160/1000/3001 bytes, odd header offsets",
        calls: 2,
        seconds: 20.0,
        rate: 8000,
        audio: AudioSource::RealSpeech,
        speed: 4.0,
        source: stage(0, 2048, 45),
        relays: vec![stage(1_000, 160, 1001), stage(2_000, 1000, 17), stage(500, 3001, 64)],
    }
}

/// Every scenario that exists so far.
pub fn catalogue() -> Vec<Scenario> {
    vec![s1(), s2()]
}

pub fn by_id(id: &str) -> Option<Scenario> {
    catalogue().into_iter().find(|s| s.id.eq_ignore_ascii_case(id))
}
