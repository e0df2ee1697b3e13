//! The executable definition of an audio "moment" (docs/fingerprint.md says why it is this one).
//!
//! A moment is a window of `window` bytes of a byte stream that ends at an *anchor*
//! ([`is_anchor`]): a byte of the marker class whose byte two before has its top three bits equal
//! to [`PRE_GATE_VALUE`] (both tested on eight bytes at once in the kernel), for which
//!   1. the 8 bytes ending at the anchor pass the sampling gate ([`gate`] below `keep_per_256`):
//!      hash-based consistent sampling, and cheap, so it runs before the window tests;
//!   2. the window is loud, smooth audio when read as samples whose low byte is the anchor's
//!      ([`is_loud_audio`]);
//!   3. the window does not repeat itself within its own length ([`is_periodic`]: tones).
//!
//! Its signature is xxh64 of the window's bytes with [`SEED`]. Everything depends only on the
//! window's bytes, so every component that sees the same audio picks the same moments whatever the
//! syscall boundaries, envelope sizes, header lengths or stream offsets ([`Scanner`] carries the
//! last `window - 1` bytes of a flow so that a window split over calls is found as if it had
//! arrived whole).
//!
//! The eBPF C side implements the same definition (`bpf/fingerprint.bpf.h`) and takes its
//! constants from `bpf/fingerprint_consts.h`, which [`c_header`] renders and a test checks.

pub mod bpf_build;
mod c_header;
mod scanner;

pub use c_header::c_header;
pub use scanner::{scan, Moment, Scanner};

/// Marker bytes are those with `byte & MARKER_MASK == MARKER_VALUE`: 0x88..=0x8F (an anchor is a
/// marker that also passes the pre-gate, [`is_anchor`]). In
/// little-endian PCM16 they land mostly in the noisy low byte of a sample; there they mean
/// |sample| >= 113, so quiet audio (and ASCII text) almost never offers one. A class of 8 values
/// rather than one value because G.711 decoding leaves low bytes of only 4 mod 8 (µ-law) or
/// 0 mod 8 (A-law): the class holds one of each, and linear, µ-law and A-law speech all offer
/// markers at similar rates (docs/fingerprint.md).
pub const MARKER_MASK: u8 = 0xF8;
pub const MARKER_VALUE: u8 = 0x88;
/// The pre-gate: an anchor's byte two before (the low byte of the sample before the anchor's)
/// has `byte >> PRE_GATE_SHIFT == PRE_GATE_VALUE`. Low bytes of speech are noise, so this keeps
/// one marker in 8 on linear, µ-law and A-law speech alike (docs/fingerprint.md), and the kernel
/// tests it in the same SWAR step as the marker class: the three bits land in the three bits
/// `MARKER_MASK` leaves out, and a word's anchors are the zero bytes of
/// `((w & MARKER_MASK) | (w_two_before >> 5 & 7)) ^ ANCHOR_VALUE`, per byte.
pub const PRE_GATE_SHIFT: u8 = 5;
pub const PRE_GATE_VALUE: u8 = 5;
/// What an anchor byte and its pre-gate bits make together.
pub const ANCHOR_VALUE: u8 = MARKER_VALUE | PRE_GATE_VALUE;
/// Odd multiplier of the sampling gate (2^64 / golden ratio).
pub const GATE_MULT: u64 = 0x9E37_79B9_7F4A_7C15;
/// Seed of the xxh64 signature ("AUDIOMOM").
pub const SEED: u64 = 0x4155_4449_4F4D_4F4D;
/// Largest window the C side reserves room for.
pub const WINDOW_MAX: usize = 256;
/// Smallest window the definition allows (the study measures from here up).
pub const WINDOW_MIN: usize = 16;

/// The cluster-wide fingerprint settings; every node must use the same values: a moment is recognised only where the settings agree.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FingerprintConfig {
    /// Window length in bytes: a multiple of 8 in `WINDOW_MIN..=WINDOW_MAX`.
    /// Default 32 (16 samples, 2 ms at 8 kHz): the smallest window with no chance duplicate in
    /// real speech (docs/fingerprint.md).
    pub window: usize,
    /// Consistent-sampling density: an anchor is kept when its [`gate`] is below this value
    /// (1..=256; 256 keeps all). Default in [`Default`], chosen from the density table of
    /// docs/fingerprint.md.
    pub keep_per_256: u16,
    /// A window is quiet when no sample reaches this magnitude. Default 300 (about -41 dBFS):
    /// telephony comfort noise (sigma up to 30) stays under it.
    pub quiet_threshold: u16,
    /// Largest difference between adjacent samples that still counts as audio. Default 16384:
    /// rejects 0.08 % of loud speech windows and all but ~1e-5 of random (ciphertext) windows.
    pub max_step: u16,
}

impl Default for FingerprintConfig {
    fn default() -> Self {
        Self {
            window: 32,
            keep_per_256: 128,
            quiet_threshold: 300,
            max_step: 16384,
        }
    }
}

impl FingerprintConfig {
    pub fn with_window(self, window: usize) -> Self {
        Self { window, ..self }
    }

    /// Checks the ranges the C side relies on.
    pub fn validate(&self) -> Result<(), String> {
        if !self.window.is_multiple_of(8) || !(WINDOW_MIN..=WINDOW_MAX).contains(&self.window) {
            return Err(format!(
                "window must be a multiple of 8 in {WINDOW_MIN}..={WINDOW_MAX}, got {}",
                self.window
            ));
        }
        if !(1..=256).contains(&self.keep_per_256) {
            return Err(format!(
                "keep_per_256 must be in 1..=256, got {}",
                self.keep_per_256
            ));
        }
        if self.quiet_threshold == 0 || self.quiet_threshold > 32767 {
            return Err(format!(
                "quiet_threshold must be in 1..=32767, got {}",
                self.quiet_threshold
            ));
        }
        if self.max_step == 0 {
            return Err("max_step must be positive".into());
        }
        Ok(())
    }
}

pub fn is_marker(byte: u8) -> bool {
    byte & MARKER_MASK == MARKER_VALUE
}

/// True when the last byte of `bytes` (at least 3 long) is an anchor: a marker whose byte two
/// before passes the pre-gate.
pub fn is_anchor(bytes: &[u8]) -> bool {
    let n = bytes.len();
    is_marker(bytes[n - 1]) && bytes[n - 3] >> PRE_GATE_SHIFT == PRE_GATE_VALUE
}

/// The sampling gate of an anchor: the top byte of the 8 bytes ending at it (little-endian),
/// multiplied by [`GATE_MULT`].
pub fn gate(last8: [u8; 8]) -> u16 {
    (u64::from_le_bytes(last8).wrapping_mul(GATE_MULT) >> 56) as u16
}

/// xxh64 of the window's bytes: the moment's signature.
pub fn signature(window: &[u8]) -> u64 {
    xxhash_rust::xxh64::xxh64(window, SEED)
}

/// Peak |sample| and largest |step| between adjacent samples when `bytes` is read as
/// little-endian i16 samples starting at byte `parity`.
pub fn peak_and_max_step(bytes: &[u8], parity: usize) -> (u16, u32) {
    let mut peak = 0u16;
    let mut max_step = 0u32;
    let mut prev: Option<i16> = None;
    for pair in bytes[parity..].chunks_exact(2) {
        let s = i16::from_le_bytes([pair[0], pair[1]]);
        peak = peak.max(s.unsigned_abs());
        if let Some(p) = prev {
            max_step = max_step.max((s as i32 - p as i32).unsigned_abs());
        }
        prev = Some(s);
    }
    (peak, max_step)
}

/// True when the window, read as little-endian samples whose low byte is the anchor's (byte
/// parity 1, since the window has an even length and ends at the anchor; byte 0 and the
/// anchor are half samples), is not quiet (a sample reaches `quiet_threshold`) and smooth (no
/// adjacent step above `max_step`). The sample grid comes from the anchor, not from the stream,
/// so the test is alignment-free; the smoothness bound rejects random bytes.
pub fn is_loud_audio(window: &[u8], cfg: &FingerprintConfig) -> bool {
    let (peak, step) = peak_and_max_step(&window[..window.len() - 1], 1);
    peak >= cfg.quiet_threshold && step <= cfg.max_step as u32
}

/// True when the window repeats itself at an even byte lag of at most half its length
/// (a whole number of samples): pure tones with short periods, digital test patterns.
///
/// Only lags above a quarter of the length are compared: a window that repeats at lag `l`
/// repeats at every multiple of `l` too, and the largest multiple up to half the length is
/// above a quarter of it. The kernel compares half as many lags for the same answer.
pub fn is_periodic(window: &[u8]) -> bool {
    let n = window.len();
    (n / 4 + 1..=n / 2)
        .filter(|lag| lag % 2 == 0)
        .any(|lag| window[lag..] == window[..n - lag])
}

/// What the definition says of one window ending at a marker byte.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Quiet, or not audio-like (fails [`is_loud_audio`]).
    NotLoudAudio,
    Periodic,
    /// Not kept by the sampling gate.
    Unsampled,
    Moment(u64),
}

/// Classifies a window whose last byte is an anchor ([`is_anchor`]).
pub fn classify(window: &[u8], cfg: &FingerprintConfig) -> Verdict {
    debug_assert_eq!(window.len(), cfg.window);
    debug_assert!(is_anchor(window));
    let last8: [u8; 8] = window[window.len() - 8..]
        .try_into()
        .expect("window >= 8 bytes");
    if gate(last8) >= cfg.keep_per_256 {
        return Verdict::Unsampled;
    }
    if !is_loud_audio(window, cfg) {
        return Verdict::NotLoudAudio;
    }
    if is_periodic(window) {
        return Verdict::Periodic;
    }
    Verdict::Moment(signature(window))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pcm(samples: &[i16]) -> Vec<u8> {
        samples.iter().flat_map(|s| s.to_le_bytes()).collect()
    }

    /// `samples` as a window that ends at the low byte of one more sample, `last_low`: the
    /// window starts with the high byte of a sample before them, `first_high`.
    fn window_of(first_high: u8, samples: &[i16], last_low: u8) -> Vec<u8> {
        let mut w = vec![first_high];
        w.extend(pcm(samples));
        w.push(last_low);
        w
    }

    #[test]
    fn loudness_and_smoothness_on_the_anchors_sample_grid() {
        let cfg = FingerprintConfig::default();
        let ramp: Vec<i16> = (0..15).map(|i| i * 100).collect();
        assert!(
            is_loud_audio(&window_of(0, &ramp, 0x88), &cfg),
            "peak 1400, small steps"
        );
        let quiet: Vec<i16> = (0..15).map(|i| (i % 5) * 50).collect();
        assert!(
            !is_loud_audio(&window_of(0x7f, &quiet, 0x88), &cfg),
            "peak 200; the half samples at both ends do not count"
        );
        let jumpy: Vec<i16> = (0..15)
            .map(|i| if i % 2 == 0 { 14000 } else { -14000 })
            .collect();
        assert!(
            !is_loud_audio(&window_of(0, &jumpy, 0x88), &cfg),
            "steps of 28000"
        );
        // The other byte parity is not read: the ramp one byte off the anchor's grid is noise.
        let mut shifted = pcm(&ramp);
        shifted.extend([0, 0x88]);
        assert!(!is_loud_audio(&shifted, &cfg));
    }

    #[test]
    fn periodic_windows_are_recognised() {
        let tone: Vec<i16> = (0..16)
            .map(|i| [0, 5000, 7000, 5000, 0, -5000, -7000, -5000][i % 8])
            .collect();
        assert!(is_periodic(&pcm(&tone)));
        let ramp: Vec<i16> = (0..16).map(|i| i * 100 + i * i).collect();
        assert!(!is_periodic(&pcm(&ramp)));
    }

    #[test]
    fn periodic_compares_only_the_upper_lags_yet_finds_every_period() {
        // The literal definition: any even lag up to half the window.
        let literal = |w: &[u8]| {
            (2..=w.len() / 2)
                .step_by(2)
                .any(|lag| w[lag..] == w[..w.len() - lag])
        };
        for n in (WINDOW_MIN..=WINDOW_MAX).step_by(8) {
            for lag in (2..=n / 2).step_by(2) {
                let w: Vec<u8> = (0..n)
                    .map(|i| ((i % lag) as u8).wrapping_mul(37).wrapping_add(1))
                    .collect();
                assert!(is_periodic(&w) && literal(&w), "window {n}, lag {lag}");
                let mut broken = w.clone();
                broken[n - 1] ^= 0x40;
                assert_eq!(
                    is_periodic(&broken),
                    literal(&broken),
                    "window {n}, lag {lag}"
                );
            }
        }
    }

    #[test]
    fn anchors_are_markers_that_pass_the_pre_gate() {
        let with = |two_before: u8, last: u8| [two_before, 0x00, last];
        assert!(is_anchor(&with(0xA0, 0x88)));
        assert!(is_anchor(&with(0xBF, 0x8F)));
        assert!(!is_anchor(&with(0xC0, 0x88)), "pre-gate bits 6");
        assert!(!is_anchor(&with(0x9F, 0x88)), "pre-gate bits 4");
        assert!(!is_anchor(&with(0xA0, 0x90)), "not a marker");
        assert_eq!(ANCHOR_VALUE, 0x8D);
    }

    #[test]
    fn sampling_keeps_by_gate() {
        // A real anchor: the marker is the low byte of the window's last sample and the low
        // byte of the sample before passes the pre-gate.
        let mut samples: Vec<i16> = (0..17).map(|i| 1000 + i * 37).collect();
        samples[16] = (samples[16] & !0xff) | MARKER_VALUE as i16;
        samples[15] = (samples[15] & !0xff) | 0xA5;
        let w = pcm(&samples)[1..33].to_vec();
        let all = FingerprintConfig {
            keep_per_256: 256,
            ..FingerprintConfig::default()
        };
        let Verdict::Moment(sig) = classify(&w, &all) else {
            panic!("expected a moment")
        };
        assert_eq!(sig, signature(&w));
        let g = gate(w[24..].try_into().unwrap());
        assert_eq!(
            classify(
                &w,
                &FingerprintConfig {
                    keep_per_256: g + 1,
                    ..all
                }
            ),
            Verdict::Moment(sig)
        );
        if g > 0 {
            assert_eq!(
                classify(
                    &w,
                    &FingerprintConfig {
                        keep_per_256: g,
                        ..all
                    }
                ),
                Verdict::Unsampled
            );
        }
    }

    #[test]
    fn config_is_validated() {
        let d = FingerprintConfig::default();
        assert!(d.validate().is_ok());
        assert!(d.with_window(20).validate().is_err());
        assert!(d.with_window(264).validate().is_err());
        assert!(FingerprintConfig {
            keep_per_256: 0,
            ..d
        }
        .validate()
        .is_err());
        assert!(FingerprintConfig {
            quiet_threshold: 0,
            ..d
        }
        .validate()
        .is_err());
    }
}
