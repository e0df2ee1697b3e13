//! The smallest-window study behind the default window (docs/fingerprint.md): how often non-quiet
//! windows of 16…256 bytes repeat in real speech and in the hard synthetic cases, which of those
//! repeats are chance and which are shared content, and what the full moment definition makes of
//! each.

use crate::audio::{self, Audio};
use crate::score::nonsilent_seconds;
use anyhow::Result;
use rand::{Rng, SeedableRng};
use shared::{FingerprintConfig, Scanner};
use std::collections::HashMap;
use std::fmt::Write;

pub const WINDOWS: [usize; 8] = [16, 24, 32, 48, 64, 96, 128, 256];
/// Bytes either side a repeat is compared on to call it shared content rather than chance.
const CONTEXT: usize = 64;

/// Repeats of non-quiet windows (aligned to samples, sliding by one sample) in one body of audio.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Repeats {
    pub windows: u64,
    /// Windows whose bytes already occurred earlier, with different bytes around them.
    pub chance: u64,
    /// Windows whose bytes and the `CONTEXT` bytes around them already occurred: reused content.
    pub shared: u64,
}

pub fn repeats(pieces: &[Audio], window: usize, quiet: u16) -> Repeats {
    let bytes: Vec<Vec<u8>> = pieces.iter().map(Audio::to_bytes).collect();
    let mut seen: HashMap<u64, (usize, usize)> = HashMap::new();
    let mut r = Repeats::default();
    for (pi, b) in bytes.iter().enumerate() {
        let samples = &pieces[pi].samples;
        for start in (0..b.len().saturating_sub(window - 1)).step_by(2) {
            let peak = samples[start / 2..(start + window) / 2]
                .iter()
                .map(|s| s.unsigned_abs())
                .max()
                .unwrap_or(0);
            if peak < quiet {
                continue;
            }
            r.windows += 1;
            let w = &b[start..start + window];
            match seen.get(&shared::signature(w)) {
                None => {
                    seen.insert(shared::signature(w), (pi, start));
                }
                Some(&(qi, other)) => {
                    fn around(bytes: &[u8], at: usize, window: usize) -> (&[u8], &[u8]) {
                        let lo = at.saturating_sub(CONTEXT);
                        (
                            &bytes[lo..at],
                            &bytes[at + window..(at + window + CONTEXT).min(bytes.len())],
                        )
                    }
                    let ((a0, a1), (b0, b1)) =
                        (around(b, start, window), around(&bytes[qi], other, window));
                    let n0 = a0.len().min(b0.len());
                    let n1 = a1.len().min(b1.len());
                    let same_context =
                        a0[a0.len() - n0..] == b0[b0.len() - n0..] && a1[..n1] == b1[..n1];
                    if same_context && n0 + n1 > 0 {
                        r.shared += 1;
                    } else {
                        r.chance += 1;
                    }
                }
            }
        }
    }
    r
}

/// What the moment definition yields on a body of audio.
#[derive(Clone, Copy, Debug, Default)]
pub struct MomentStats {
    pub seconds: f64,
    pub nonsilent_seconds: usize,
    pub moments: u64,
    /// Moments whose signature occurred before in the same body.
    pub repeated: u64,
    /// Non-silent seconds holding at least one moment.
    pub covered_seconds: usize,
}

pub fn moment_stats(pieces: &[Audio], cfg: FingerprintConfig) -> MomentStats {
    let mut s = MomentStats::default();
    let mut seen = std::collections::HashSet::new();
    for a in pieces {
        let moments = Scanner::new(cfg).feed_collect(&a.to_bytes());
        let loud = nonsilent_seconds(a, cfg.quiet_threshold);
        let mut covered = vec![false; loud.len()];
        for m in &moments {
            s.moments += 1;
            if !seen.insert(m.signature) {
                s.repeated += 1;
            }
            if let Some(c) = covered.get_mut(((m.end - 1) / a.bytes_per_second()) as usize) {
                *c = true;
            }
        }
        s.seconds += a.seconds();
        s.nonsilent_seconds += loud.iter().filter(|&&l| l).count();
        s.covered_seconds += loud.iter().zip(&covered).filter(|(&l, &c)| l && c).count();
    }
    s
}

fn pct(n: u64, d: u64) -> String {
    if d == 0 {
        "–".into()
    } else {
        format!("{:.4} %", n as f64 * 100.0 / d as f64)
    }
}

/// Non-audio bytes shaped like what traced processes also write: JSON log lines and
/// random (ciphertext-like) bytes.
pub fn non_audio(bytes: usize, seed: u64) -> (Vec<u8>, Vec<u8>) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut json = Vec::with_capacity(bytes);
    while json.len() < bytes {
        let line = format!(
            "{{\"ts\":{},\"call\":\"{:08x}\",\"event\":\"guidance\",\"score\":{:.3},\"agent\":{}}}\n",
            rng.gen::<u32>(),
            rng.gen::<u32>(),
            rng.gen::<f64>(),
            rng.gen_range(1..5000)
        );
        json.extend_from_slice(line.as_bytes());
    }
    json.truncate(bytes);
    let random = (0..bytes).map(|_| rng.gen()).collect();
    (json, random)
}

/// Runs the whole study and returns it as Markdown.
pub fn study() -> Result<String> {
    let cfg = FingerprintConfig::default();
    let speech = audio::speech_corpus()?;
    let speech_mulaw: Vec<Audio> = speech.iter().map(audio::mulaw_roundtrip).collect();
    let speech_alaw: Vec<Audio> = speech.iter().map(audio::alaw_roundtrip).collect();
    let speech16 = audio::speech_16k()?;
    let music = audio::hold_music()?;
    let rate = 8000;
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    let digits: String = (0..300)
        .map(|_| b"0123456789*#ABCD"[rng.gen_range(0..16)] as char)
        .collect();
    // 1000 calls on hold hear the same track; two calls are enough to expose every repeat.
    let music_shared: Vec<Audio> = vec![music[0].clone(), music[0].clone()];
    let hard: Vec<(&str, Vec<Audio>)> = vec![
        (
            "digital silence, 60 s",
            vec![audio::digital_silence(rate, 60.0)],
        ),
        (
            "comfort noise σ=30, 60 s",
            vec![audio::comfort_noise(rate, 60.0, 30.0, 1)],
        ),
        ("DTMF, 300 digits", vec![audio::dtmf(rate, &digits)]),
        (
            "tone 1 kHz, 60 s",
            vec![audio::tone(rate, 60.0, 1000.0, 8000.0)],
        ),
        (
            "tone 440 Hz, 60 s",
            vec![audio::tone(rate, 60.0, 440.0, 8000.0)],
        ),
        ("hold music, one track on 2 calls", music_shared),
    ];

    let mut out = String::new();
    let minutes = |p: &[Audio]| p.iter().map(Audio::seconds).sum::<f64>() / 60.0;
    writeln!(
        out,
        "### Repeats of non-quiet windows (peak ≥ {}), sliding by one sample\n",
        cfg.quiet_threshold
    )?;
    writeln!(
        out,
        "\"chance\" repeats have different bytes within {CONTEXT} bytes either side; \"shared\" ones are reused content.\n"
    )?;
    let bodies: Vec<(String, &[Audio])> = vec![
        (
            format!("real speech 8 kHz ({:.1} min)", minutes(&speech)),
            &speech,
        ),
        (
            format!(
                "same, through G.711 µ-law ({:.1} min)",
                minutes(&speech_mulaw)
            ),
            &speech_mulaw,
        ),
        (
            format!(
                "same, through G.711 A-law ({:.1} min)",
                minutes(&speech_alaw)
            ),
            &speech_alaw,
        ),
        (
            format!("real speech 16 kHz ({:.1} min)", minutes(&speech16)),
            &speech16,
        ),
    ];
    writeln!(
        out,
        "| window (bytes) | audio | non-quiet windows | chance repeats | shared-content repeats |"
    )?;
    writeln!(out, "| ---: | --- | ---: | ---: | ---: |")?;
    for &w in &WINDOWS {
        for (name, body) in bodies
            .iter()
            .map(|(n, b)| (n.as_str(), *b))
            .chain(hard.iter().map(|(n, b)| (*n, b.as_slice())))
        {
            let r = repeats(body, w, cfg.quiet_threshold);
            writeln!(
                out,
                "| {w} | {name} | {} | {} ({}) | {} ({}) |",
                r.windows,
                r.chance,
                pct(r.chance, r.windows),
                r.shared,
                pct(r.shared, r.windows)
            )?;
        }
    }

    writeln!(
        out,
        "\n### Moments under the full definition (default density), per window\n"
    )?;
    writeln!(out, "| window (bytes) | audio | moments / s | repeated moments | non-silent seconds with a moment |")?;
    writeln!(out, "| ---: | --- | ---: | ---: | ---: |")?;
    for &w in &WINDOWS {
        let c = cfg.with_window(w);
        for (name, body) in bodies
            .iter()
            .map(|(n, b)| (n.as_str(), *b))
            .chain(hard.iter().map(|(n, b)| (*n, b.as_slice())))
        {
            let s = moment_stats(body, c);
            writeln!(
                out,
                "| {w} | {name} | {:.1} | {} ({}) | {} |",
                s.moments as f64 / s.seconds,
                s.repeated,
                pct(s.repeated, s.moments),
                pct(s.covered_seconds as u64, s.nonsilent_seconds as u64)
            )?;
        }
    }

    writeln!(out, "\n### Density (window {}): moments per non-silent second, and share of non-silent seconds with a moment\n", cfg.window)?;
    writeln!(out, "| keep_per_256 | real speech 8 kHz | µ-law | A-law |")?;
    writeln!(out, "| ---: | ---: | ---: | ---: |")?;
    for keep in [32, 64, 96, 128, 160, 192, 256] {
        let c = FingerprintConfig {
            keep_per_256: keep,
            ..cfg
        };
        let cell = |body: &[Audio]| {
            let s = moment_stats(body, c);
            format!(
                "{:.1} / {}",
                s.moments as f64 / s.nonsilent_seconds.max(1) as f64,
                pct(s.covered_seconds as u64, s.nonsilent_seconds as u64)
            )
        };
        writeln!(
            out,
            "| {keep} | {} | {} | {} |",
            cell(&speech),
            cell(&speech_mulaw),
            cell(&speech_alaw)
        )?;
    }

    let (json, random) = non_audio(16 << 20, 5);
    writeln!(
        out,
        "\n### Non-audio bytes (window {}), 16 MiB each\n",
        cfg.window
    )?;
    writeln!(out, "| bytes | moments per MiB |")?;
    writeln!(out, "| --- | ---: |")?;
    for (name, b) in [
        ("JSON log lines", &json),
        ("random (ciphertext-like)", &random),
    ] {
        let n = Scanner::new(cfg).feed_collect(b).len();
        writeln!(out, "| {name} | {:.2} |", n as f64 / 16.0)?;
    }
    Ok(out)
}
