//! The invariants of the moment definition (docs/fingerprint.md), checked on real speech and on the hard synthetic cases.

use harness::audio::{self, Audio};
use harness::collisions::{moment_stats, non_audio, repeats};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use shared::{scan, FingerprintConfig, Moment, Scanner};

fn cfg() -> FingerprintConfig {
    FingerprintConfig::default()
}

fn real_call(seconds: f64, seed: u64) -> Vec<u8> {
    let corpus = audio::speech_corpus().expect("real speech corpus (CI installs it; see README)");
    audio::speech_call(&corpus, seconds, seed).to_bytes()
}

/// Feeds `bytes` in random pieces of 1 byte … `max_piece` bytes.
fn chunked(bytes: &[u8], max_piece: usize, rng: &mut StdRng) -> Vec<Moment> {
    let mut s = Scanner::new(cfg());
    let mut out = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        // Mostly small pieces, sometimes large ones, so that both kinds of boundary occur.
        let max = if rng.gen_bool(0.7) {
            64.min(max_piece)
        } else {
            max_piece
        };
        let n = rng.gen_range(1..=max).min(bytes.len() - at);
        s.feed(&bytes[at..at + n], |m| out.push(m));
        at += n;
    }
    out
}

#[test]
fn same_moments_whatever_the_chunking() {
    let bytes = real_call(60.0, 1);
    let whole = scan(cfg(), &bytes);
    assert!(
        whole.len() > 300,
        "too few moments to test with: {}",
        whole.len()
    );
    let mut rng = StdRng::seed_from_u64(42);
    for round in 0..40 {
        let max_piece = [1, 2, 7, 31, 160, 2048, 3001, 65536][round % 8];
        assert_eq!(
            chunked(&bytes, max_piece, &mut rng),
            whole,
            "round {round}, pieces ≤ {max_piece}"
        );
    }
}

#[test]
fn same_moments_whatever_the_chunking_synthetic_16k() {
    let bytes = audio::speech_like(16000, 30.0, 3).to_bytes();
    let whole = scan(cfg(), &bytes);
    assert!(!whole.is_empty());
    let mut rng = StdRng::seed_from_u64(7);
    for max_piece in [1, 5, 999, 65536] {
        assert_eq!(
            chunked(&bytes, max_piece, &mut rng),
            whole,
            "pieces ≤ {max_piece}"
        );
    }
}

#[test]
fn alignment_free_after_headers_of_any_length() {
    let audio = real_call(30.0, 2);
    let w = cfg().window as u64;
    let bare = scan(cfg(), &audio);
    for header in [1usize, 2, 3, 45, 1001] {
        let mut bytes = vec![b'h'; header];
        bytes.extend_from_slice(&audio);
        let shifted: Vec<Moment> = scan(cfg(), &bytes)
            .into_iter()
            .filter(|m| m.end >= header as u64 + w)
            .map(|m| Moment {
                end: m.end - header as u64,
                ..m
            })
            .collect();
        assert_eq!(shifted, bare, "after a {header}-byte header");
    }
}

#[test]
fn quiet_yields_no_moments() {
    let quiet = [
        audio::digital_silence(8000, 60.0),
        audio::comfort_noise(8000, 60.0, 4.0, 1),
        audio::comfort_noise(8000, 60.0, 10.0, 2),
        audio::comfort_noise(8000, 60.0, 30.0, 3),
        audio::comfort_noise(16000, 60.0, 30.0, 4),
    ];
    for a in &quiet {
        assert_eq!(
            scan(cfg(), &a.to_bytes()),
            vec![],
            "{} s of quiet audio",
            a.seconds()
        );
    }
}

#[test]
fn short_period_tones_yield_no_moments() {
    for (rate, freq) in [
        (8000, 1000.0),
        (8000, 2000.0),
        (16000, 1000.0),
        (8000, 800.0),
    ] {
        let a = audio::tone(rate, 30.0, freq, 8000.0);
        assert_eq!(
            scan(cfg(), &a.to_bytes()),
            vec![],
            "{freq} Hz tone at {rate} Hz"
        );
    }
}

#[test]
fn non_audio_bytes_rarely_yield_moments() {
    let (json, random) = non_audio(16 << 20, 9);
    let per_mib = |b: &[u8]| scan(cfg(), b).len() as f64 / 16.0;
    // Speech yields about 0.75 moments per KiB of audio (12 per 8 kHz second); these must be
    // thousands of times rarer.
    assert_eq!(per_mib(&json), 0.0, "JSON has no marker byte");
    let random_rate = per_mib(&random);
    assert!(
        random_rate <= 1.0,
        "random bytes: {random_rate} moments per MiB"
    );
}

#[test]
fn speech_is_dense_enough_to_cover_every_nonsilent_second() {
    let corpus = audio::speech_corpus().unwrap();
    let s = moment_stats(&corpus, cfg());
    let per_second = s.moments as f64 / s.nonsilent_seconds as f64;
    let covered = s.covered_seconds as f64 / s.nonsilent_seconds as f64;
    assert!(
        per_second >= 10.0,
        "{per_second:.1} moments per non-silent second"
    );
    assert!(
        covered >= 0.99,
        "{:.2} % of non-silent seconds hold a moment",
        covered * 100.0
    );
}

#[test]
fn speech_through_g711_still_yields_moments() {
    // Telephony audio is usually G.711 before it becomes PCM: its low bytes are restricted,
    // which a single-value marker byte would miss entirely.
    let corpus = audio::speech_corpus().unwrap();
    for (codec, decoded) in [
        (
            "µ-law",
            corpus
                .iter()
                .map(audio::mulaw_roundtrip)
                .collect::<Vec<_>>(),
        ),
        ("A-law", corpus.iter().map(audio::alaw_roundtrip).collect()),
    ] {
        let s = moment_stats(&decoded, cfg());
        let per_second = s.moments as f64 / s.nonsilent_seconds as f64;
        let covered = s.covered_seconds as f64 / s.nonsilent_seconds as f64;
        assert!(
            per_second >= 5.0,
            "{codec}: {per_second:.1} moments per non-silent second"
        );
        assert!(
            covered >= 0.985,
            "{codec}: {:.2} % of non-silent seconds hold a moment",
            covered * 100.0
        );
    }
}

#[test]
fn default_window_has_no_chance_repeats_in_real_speech() {
    let corpus = audio::speech_corpus().unwrap();
    let r = repeats(&corpus, cfg().window, cfg().quiet_threshold);
    assert!(r.windows > 5_000_000, "{r:?}");
    assert_eq!(r.chance, 0, "{r:?}");
}

#[test]
fn moments_are_deterministic_across_calls_sharing_content() {
    // Hold music heard by two calls: the same moments on both (the matcher must resolve them).
    let music = audio::hold_music().unwrap();
    let track: Audio = Audio::new(8000, music[0].samples[..8000 * 20].to_vec());
    let a = scan(cfg(), &track.to_bytes());
    let mut b_bytes = b"other call's header..".to_vec();
    b_bytes.extend(track.to_bytes());
    let b: Vec<u64> = scan(cfg(), &b_bytes)
        .into_iter()
        .map(|m| m.signature)
        .collect();
    assert!(!a.is_empty());
    let a: Vec<u64> = a.into_iter().map(|m| m.signature).collect();
    assert!(a.iter().all(|s| b.contains(s)));
}

#[test]
fn c_header_matches_the_rust_definition() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/bpf/fingerprint_consts.h");
    let want = shared::c_header();
    if std::env::var_os("UPDATE_FINGERPRINT_HEADER").is_some() {
        std::fs::write(path, &want).unwrap();
    }
    let have = std::fs::read_to_string(path).unwrap_or_default();
    assert!(
        have == want,
        "{path} is out of date with shared/src/lib.rs; regenerate it with \
         `UPDATE_FINGERPRINT_HEADER=1 cargo test -p shared --test invariants c_header`"
    );
}
