//! The kernel's moments equal the shared reference's, signature for signature and position for
//! position, on the same writes (real eBPF program, this kernel, this process as the target).

use agent::clock::monotonic_ns;
use agent::counters::Counters;
use harness::audio;
use phase_1_poc::event::Phase1Event;
use phase_1_poc::tracer::Tracer;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use shared::{FingerprintConfig, Scanner};
use std::fs::File;
use std::os::fd::AsRawFd;

/// Phase 1 scans at most this much of one write.
const MAX_SCANNED: usize = 64 * 1024;

/// (write index, end, signature) of every moment.
type Found = Vec<(usize, u64, u64)>;

/// Writes `bytes` to /dev/null in pieces of `sizes`, traced; returns what the kernel found and
/// what the reference finds in each write on its own, and the kernel's counters.
fn kernel_and_reference(
    cfg: FingerprintConfig,
    bytes: &[u8],
    sizes: &[usize],
) -> (Found, Found, Counters) {
    // Phase 1 reads a write's buffer at syscall entry, where a page that khugepaged is
    // collapsing into a huge page reads as an error (counted as read_errors, as in production):
    // the test keeps its buffers out of its way, so that the comparison is exact.
    // SAFETY: a flag on this process's memory; no pointers.
    unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) };
    let mut tracer = Tracer::start(&cfg, None).expect("loading phase 1 (run as root)");
    tracer.add_targets(&[std::process::id()]).unwrap();
    let sink = File::create("/dev/null").unwrap();
    let fd = sink.as_raw_fd();
    let (mut spans, mut expected) = (Vec::new(), Vec::new());
    let mut at = 0;
    for (i, &n) in sizes.iter().enumerate() {
        let piece = &bytes[at..at + n];
        at += n;
        let t0 = monotonic_ns();
        // SAFETY: piece is a valid buffer; fd is open.
        let written = unsafe { libc::write(fd, piece.as_ptr().cast(), piece.len()) };
        let t1 = monotonic_ns();
        assert_eq!(written, n as isize);
        spans.push((t0, t1));
        let scanned = &piece[..n.min(MAX_SCANNED)];
        expected.extend(
            Scanner::new(cfg)
                .feed_collect(scanned)
                .into_iter()
                .map(|m| (i, m.end, m.signature)),
        );
    }
    let mut found = Vec::new();
    let mut events: Vec<Phase1Event> = Vec::new();
    tracer.drain(|e| events.push(e));
    for e in events
        .iter()
        .filter(|e| e.fd == fd && e.tgid == std::process::id())
    {
        let i = spans
            .iter()
            .position(|&(t0, t1)| t0 <= e.t_ns && e.t_ns <= t1)
            .expect("event outside any write");
        found.push((i, e.end, e.signature));
    }
    found.sort_unstable();
    expected.sort_unstable();
    (found, expected, tracer.counters().unwrap())
}

fn real_speech(seconds: f64, seed: u64) -> Vec<u8> {
    audio::speech_call(&audio::speech_corpus().unwrap(), seconds, seed).to_bytes()
}

#[test]
fn same_moments_as_the_reference_on_2048_byte_writes_of_real_speech() {
    let bytes = real_speech(60.0, 1);
    let sizes = vec![2048; bytes.len() / 2048];
    let (found, expected, counters) =
        kernel_and_reference(FingerprintConfig::default(), &bytes, &sizes);
    assert!(expected.len() > 500, "{} reference moments", expected.len());
    assert_eq!(found, expected, "{counters}");
}

#[test]
fn same_moments_as_the_reference_on_writes_of_random_sizes() {
    let mut rng = StdRng::seed_from_u64(3);
    let mut bytes = real_speech(40.0, 2);
    bytes.extend(audio::mulaw_roundtrip(&audio::speech_like(8000, 20.0, 5)).to_bytes());
    bytes.extend(audio::speech_like(16000, 20.0, 6).to_bytes());
    let mut sizes = Vec::new();
    let mut left = bytes.len();
    while left > 0 {
        let n = match rng.gen_range(0..10) {
            0 => rng.gen_range(1..64),
            1..=6 => rng.gen_range(64..4096),
            7 | 8 => rng.gen_range(4096..=MAX_SCANNED),
            _ => rng.gen_range(MAX_SCANNED..100_000),
        }
        .min(left);
        sizes.push(n);
        left -= n;
    }
    let beyond: u64 = sizes
        .iter()
        .map(|&n| n.saturating_sub(MAX_SCANNED) as u64)
        .sum();
    assert!(beyond > 0, "some writes must exceed the scan limit");
    let (found, expected, counters) =
        kernel_and_reference(FingerprintConfig::default(), &bytes, &sizes);
    assert!(expected.len() > 500);
    assert_eq!(found, expected, "{counters}");
    let truncated = counters.get("truncated");
    assert!(truncated >= beyond, "truncated {truncated} < {beyond}");
}

#[test]
fn same_moments_as_the_reference_with_other_cluster_settings() {
    let bytes = real_speech(20.0, 3);
    let sizes = vec![4096; bytes.len() / 4096];
    for cfg in [
        FingerprintConfig {
            window: 64,
            keep_per_256: 256,
            ..Default::default()
        },
        FingerprintConfig {
            window: 16,
            keep_per_256: 8,
            quiet_threshold: 1000,
            max_step: 8000,
        },
        FingerprintConfig {
            window: 256,
            ..Default::default()
        },
    ] {
        let (found, expected, counters) = kernel_and_reference(cfg, &bytes, &sizes);
        assert!(!expected.is_empty(), "{cfg:?}");
        assert_eq!(found, expected, "{cfg:?}: {counters}");
    }
}

#[test]
fn quiet_and_non_audio_writes_yield_what_the_reference_yields() {
    let (json, random) = harness::collisions::non_audio(1 << 20, 8);
    let mut bytes = audio::comfort_noise(8000, 30.0, 30.0, 4).to_bytes();
    bytes.extend(audio::tone(8000, 10.0, 1000.0, 8000.0).to_bytes());
    bytes.extend(json);
    bytes.extend(random);
    let sizes = vec![2048; bytes.len() / 2048];
    let (found, expected, counters) =
        kernel_and_reference(FingerprintConfig::default(), &bytes, &sizes);
    assert_eq!(found, expected, "{counters}");
    assert!(
        found.len() <= 2,
        "{} moments in quiet and non-audio bytes",
        found.len()
    );
}

/// Windows built to sit on the edges of the loudness and smoothness tests: every sample a
/// threshold away from quiet, every step a unit away from the largest allowed, at every lane of
/// the kernel's 16-bit SWAR words (first and last pairs, word boundaries), with full-scale
/// wrap-arounds.
#[test]
fn loudness_and_smoothness_at_their_edges() {
    let mut rng = StdRng::seed_from_u64(11);
    for cfg in [
        FingerprintConfig {
            keep_per_256: 256,
            ..Default::default()
        },
        FingerprintConfig {
            keep_per_256: 256,
            quiet_threshold: 1000,
            max_step: 8000,
            ..Default::default()
        },
    ] {
        let (t, m) = (cfg.quiet_threshold as i32, cfg.max_step as i32);
        let mut bytes = Vec::new();
        let (mut loud, mut smooth) = (0, 0);
        for _ in 0..4000 {
            let n = cfg.window / 2 - 1;
            let mut samples = vec![0i32; n];
            if rng.gen_bool(0.5) {
                // Quiet but for a sample or two exactly at the threshold or one below.
                for s in samples.iter_mut() {
                    *s = rng.gen_range(1 - t..t);
                }
                for _ in 0..rng.gen_range(0..3) {
                    samples[rng.gen_range(0..n)] = [t, t - 1, -t, 1 - t][rng.gen_range(0..4)];
                }
            } else {
                // Steps a unit either side of the largest allowed, wrapping at full scale.
                samples[0] = [0, t - 1, -t, -32768, 32767][rng.gen_range(0..5)];
                for k in 1..n {
                    let step = match rng.gen_range(0..8) {
                        0 => m,
                        1 => m + 1,
                        2 => -m,
                        3 => -m - 1,
                        _ => rng.gen_range(-40..40),
                    };
                    samples[k] = (samples[k - 1] + step).clamp(-32768, 32767);
                }
            }
            let mut w = vec![rng.gen::<u8>()];
            for &s in &samples {
                w.extend((s as i16).to_le_bytes());
            }
            // The last sample's low byte passes the pre-gate; the anchor ends the window.
            let pre = w.len() - 2;
            w[pre] = 0xA0 | (w[pre] & 0x1F);
            w.push(0x88 | rng.gen_range(0..8));
            let (peak, step) = shared::peak_and_max_step(&w[..w.len() - 1], 1);
            loud += (peak >= cfg.quiet_threshold) as u32;
            smooth += (step <= cfg.max_step as u32) as u32;
            bytes.extend(w);
        }
        // Both outcomes of both tests occur often, or the edges were not exercised.
        assert!((400..3600).contains(&loud), "{loud} loud of 4000");
        assert!((400..3600).contains(&smooth), "{smooth} smooth of 4000");
        let sizes = vec![cfg.window * 50; bytes.len() / (cfg.window * 50)];
        let (found, expected, counters) = kernel_and_reference(cfg, &bytes, &sizes);
        assert!(expected.len() > 200, "{} reference moments", expected.len());
        assert_eq!(found, expected, "{cfg:?}: {counters}");
    }
}

/// Windows that repeat themselves at every even lag the definition knows (the kernel compares
/// only those above a quarter window, after checking whether the first word repeats at all),
/// and near misses: the same with one byte changed, the first byte included.
#[test]
fn periodic_windows_and_near_misses() {
    const SPACING: usize = 512;
    let mut rng = StdRng::seed_from_u64(13);
    for window in [32, 48] {
        let cfg = FingerprintConfig {
            window,
            keep_per_256: 256,
            ..Default::default()
        };
        let mut bytes = Vec::new();
        let mut periodic = 0;
        for _ in 0..3000 {
            // Lag 2 would put the anchor and its pre-gate byte at one place of the pattern.
            let lag = 2 * rng.gen_range(2..=window / 4);
            // Loud and smooth on the anchor's grid: high bytes 0x10, low bytes anything.
            let mut pattern: Vec<u8> = (0..lag)
                .map(|i| if i % 2 == 0 { 0x10 } else { rng.gen() })
                .collect();
            pattern[(window - 1) % lag] = 0x88 | rng.gen_range(0..8);
            pattern[(window - 3) % lag] = 0xA0 | rng.gen_range(0..32);
            let mut w: Vec<u8> = (0..window).map(|i| pattern[i % lag]).collect();
            if rng.gen_bool(0.5) {
                // Anywhere but the anchor and its pre-gate byte; low bytes keep it smooth.
                let at = if rng.gen_bool(0.2) {
                    0
                } else {
                    2 * rng.gen_range(0..window / 2 - 2) + 1
                };
                w[at] = w[at].wrapping_add(rng.gen_range(1..=255));
            }
            periodic += (shared::classify(&w, &cfg) == shared::Verdict::Periodic) as u32;
            bytes.extend(w);
            // A periodic window holds an anchor every `lag` bytes: silence between windows
            // keeps a 2 KiB chunk under the kernel's 64 candidates (more are counted, not
            // examined).
            bytes.resize(bytes.len() + SPACING - window, 0);
        }
        assert!(
            (1000..2000).contains(&periodic),
            "{periodic} periodic of 3000"
        );
        let sizes = vec![4096; bytes.len() / 4096];
        let (found, expected, counters) = kernel_and_reference(cfg, &bytes, &sizes);
        assert!(
            expected.len() > 1000,
            "{} reference moments",
            expected.len()
        );
        let missing: Vec<_> = expected
            .iter()
            .filter(|m| !found.contains(m))
            .take(5)
            .collect();
        let extra: Vec<_> = found
            .iter()
            .filter(|m| !expected.contains(m))
            .take(5)
            .collect();
        assert!(
            found == expected,
            "window {window}: first missing {missing:?}, first extra {extra:?}; {counters}"
        );
    }
}
