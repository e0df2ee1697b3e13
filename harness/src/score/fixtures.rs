//! A tiny hand-made ground truth for the scoring steps' tests: one call of 3 s of synthetic
//! speech (8 kHz) from `src` over link `a` (a 20-byte stream header, then the audio, 4000-byte
//! writes) to `relay`, which reads it in 6000-byte reads and sends it on over link `b` in
//! envelopes (a 10-byte header before every 320 bytes of audio, one write each) to `sink`.
//! Every stamp is made up, and one of the relay's reads is flagged preempted.

use super::{score_indexed, CallTruthIndex, Observes, Score};
use crate::audio::{speech_like, Audio};
use crate::truth::{CallTruth, ComponentLog, GroundTruth, Io, Point, Segment};
use agent::schema::Dir;
use agent::schema::{HopRecord, Sighting};
use shared::FingerprintConfig;
use std::path::PathBuf;

pub(super) const AUDIO_LEN: u64 = 3 * 16_000;
pub(super) const STREAM_HEADER: u64 = 20;
pub(super) const ENVELOPE_HEADER: u64 = 10;
/// Bytes per write of link `a`, and per envelope's audio on link `b`.
pub(super) const WRITE: u64 = 4000;
pub(super) const PAYLOAD: u64 = 320;
/// The relay's read of link `a` whose truth is preempted.
pub(super) const PREEMPTED_READ: usize = 2;
pub(super) const READ: u64 = 6000;
/// Points of the call's path, in order.
pub(super) const SRC_WRITE: usize = 0;
pub(super) const RELAY_READ: usize = 1;
pub(super) const RELAY_WRITE: usize = 2;
pub(super) const SINK_READ: usize = 3;
/// (component, pid, fd, dir, link) of each point.
const POINTS: [(&str, u32, i32, Dir, &str); 4] = [
    ("src", 100, 3, Dir::Write, "a"),
    ("relay", 200, 4, Dir::Read, "a"),
    ("relay", 200, 5, Dir::Write, "b"),
    ("sink", 300, 6, Dir::Read, "b"),
];

pub(super) struct Fixture {
    pub(super) gt: GroundTruth,
    pub(super) calls: Vec<CallTruthIndex>,
    dir: PathBuf,
}

/// (flow offset, audio offset, length) of the call's audio on a link.
type Runs = Vec<(u64, u64, u64)>;

/// Syscalls moving flow bytes `bounds[i]..bounds[i + 1]` at times `t_ns[i]`, with the audio
/// they carried.
fn ios(
    point: usize,
    runs: &Runs,
    bounds: &[u64],
    t_ns: &[u64],
    preempted: Option<usize>,
) -> Vec<Io> {
    let (_, _, fd, dir, link) = POINTS[point];
    bounds
        .windows(2)
        .enumerate()
        .map(|(i, w)| Io {
            t_ns: t_ns[i],
            preempted: preempted == Some(i),
            dir,
            fd,
            link: link.into(),
            flow_off: w[0],
            len: w[1] - w[0],
            segments: runs
                .iter()
                .filter(|&&(f, _, l)| f < w[1] && w[0] < f + l)
                .map(|&(f, a, l)| {
                    let (lo, hi) = (f.max(w[0]), (f + l).min(w[1]));
                    Segment {
                        flow_off: lo,
                        call: 0,
                        audio_off: a + (lo - f),
                        len: hi - lo,
                    }
                })
                .collect(),
        })
        .collect()
}

/// Which of `bounds`' pieces holds flow byte `flow`.
fn piece_of(bounds: &[u64], flow: u64) -> usize {
    bounds.partition_point(|&b| b <= flow) - 1
}

impl Fixture {
    /// The call's ground truth, indexed; `external_relay`: the relay records nothing, as a
    /// real broker would.
    pub(super) fn new(external_relay: bool) -> Self {
        static RUN: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "hx-score-fixture-{}-{}",
            std::process::id(),
            RUN.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let audio: Audio = speech_like(8000, 3.0, 7);
        assert_eq!(audio.to_bytes().len() as u64, AUDIO_LEN);
        let wav = dir.join("call-0.wav");
        audio.write_wav(&wav).unwrap();

        // Link a: header, then the audio; the source writes 4000 bytes every 250 µs.
        let a_runs: Runs = vec![(STREAM_HEADER, 0, AUDIO_LEN)];
        let a_end = STREAM_HEADER + AUDIO_LEN;
        let writes_a: Vec<u64> = (0..a_end).step_by(WRITE as usize).chain([a_end]).collect();
        let t_writes_a: Vec<u64> = (0..writes_a.len() as u64)
            .map(|i| 1_000_000 + i * 250_000)
            .collect();
        // The relay reads 6000 bytes 30 µs after the write that completed them.
        let reads_a: Vec<u64> = (0..a_end).step_by(READ as usize).chain([a_end]).collect();
        let t_reads_a: Vec<u64> = reads_a
            .windows(2)
            .map(|w| t_writes_a[piece_of(&writes_a, w[1] - 1)] + 30_000)
            .collect();
        // Link b: an envelope per 320 bytes of audio, written 100 µs after the read that
        // brought its last byte, read by the sink 40 µs later.
        let pieces = AUDIO_LEN.div_ceil(PAYLOAD);
        let envelope = ENVELOPE_HEADER + PAYLOAD;
        let b_runs: Runs = (0..pieces)
            .map(|j| (j * envelope + ENVELOPE_HEADER, j * PAYLOAD, PAYLOAD))
            .collect();
        let writes_b: Vec<u64> = (0..=pieces).map(|j| j * envelope).collect();
        let t_writes_b: Vec<u64> = (0..pieces)
            .map(|j| {
                let last = STREAM_HEADER + (j + 1) * PAYLOAD - 1;
                t_reads_a[piece_of(&reads_a, last)] + 100_000
            })
            .collect();
        let t_reads_b: Vec<u64> = t_writes_b.iter().map(|t| t + 40_000).collect();

        let log = |name: &str, pid: u32, ios: Vec<Io>| ComponentLog {
            name: name.into(),
            pid,
            comm: format!("hx-{name}"),
            ios,
            external: false,
            node: None,
        };
        let mut relay = log(
            "relay",
            200,
            [
                ios(
                    RELAY_READ,
                    &a_runs,
                    &reads_a,
                    &t_reads_a,
                    Some(PREEMPTED_READ),
                ),
                ios(RELAY_WRITE, &b_runs, &writes_b, &t_writes_b, None),
            ]
            .concat(),
        );
        if external_relay {
            relay.ios.clear();
            relay.external = true;
        }
        let components = vec![
            log(
                "src",
                100,
                ios(SRC_WRITE, &a_runs, &writes_a, &t_writes_a, None),
            ),
            relay,
            log(
                "sink",
                300,
                ios(SINK_READ, &b_runs, &writes_b, &t_reads_b, None),
            ),
        ];
        let mut call = CallTruth {
            call: 0,
            wav,
            points: Vec::new(),
            parent: Vec::new(),
        };
        let mut parent = None;
        for (component, _, _, dir, link) in POINTS {
            let point = Point {
                component: component.into(),
                dir,
                link: link.into(),
                tls_stack: None,
            };
            parent = Some(call.add(point, parent));
        }
        let gt = GroundTruth {
            scenario: "fixture".into(),
            calls: vec![call],
            components,
            node_clocks: Default::default(),
        };
        let calls = CallTruthIndex::build(&gt, FingerprintConfig::default()).unwrap();
        Self { gt, calls, dir }
    }

    pub(super) fn call(&self) -> &CallTruthIndex {
        &self.calls[0]
    }

    pub(super) fn score(&self, records: &[HopRecord]) -> Score {
        let cfg = FingerprintConfig::default();
        score_indexed(
            &self.gt,
            &self.calls,
            records,
            Observes::ALL,
            cfg,
            "fixture",
        )
    }

    /// Ends of the moments whose window lies inside one envelope's audio on link `b`: carried
    /// at every point.
    pub(super) fn moments_everywhere(&self) -> Vec<u64> {
        let window = FingerprintConfig::default().window as u64;
        self.call()
            .moments
            .iter()
            .map(|m| m.end)
            .filter(|&end| (end - window) / PAYLOAD == (end - 1) / PAYLOAD)
            .collect()
    }

    /// What a perfect tracer reports for the moment ending at `end` at `point`; an external
    /// point is seen at its own made-up fd, halfway between its neighbours' stamps.
    pub(super) fn sighting(&self, point: usize, end: u64) -> Sighting {
        let (component, pid, fd, dir, _) = POINTS[point];
        let c = self.call();
        let (t_ns, fd, pos) = match c.carried[point].get(&end) {
            Some(k) => (k.t_ns, k.fd, Some(k.pos)),
            None => {
                let t = |p: usize| c.carried[p][&end].t_ns;
                ((t(SRC_WRITE) + t(SINK_READ)) / 2, fd, None)
            }
        };
        Sighting {
            pid,
            comm: format!("hx-{component}"),
            fd,
            dir,
            t_ns,
            pos,
            node: None,
            node_t_ns: None,
            pod: None,
        }
    }

    /// A correct record of the moment ending at `end` between two points.
    pub(super) fn record(&self, from: usize, to: usize, end: u64) -> HopRecord {
        let signature = self
            .call()
            .moments
            .iter()
            .find(|m| m.end == end)
            .unwrap()
            .signature;
        HopRecord::new(signature, self.sighting(from, end), self.sighting(to, end))
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        std::fs::remove_dir_all(&self.dir).ok();
    }
}
