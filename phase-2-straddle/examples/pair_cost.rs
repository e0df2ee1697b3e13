//! Cost of a 2 KiB write+read pair of real speech through a pipe, measured side by side in one
//! run: untraced, phase 2 loaded but this process not a target, and this process traced.
//! `cargo run --release -p phase-2-straddle --example pair_cost` (root). Prints medians of
//! batch means, in ns per pair.

use harness::audio;
use phase_2_straddle::tracer::Tracer;
use shared::FingerprintConfig;
use std::os::fd::AsRawFd;
use std::time::Instant;

const PAIR: usize = 2048;
const BATCH: usize = 2000;
const BATCHES: usize = 15;

fn batch_ns(bytes: &[u8], w: i32, r: i32, buf: &mut [u8]) -> f64 {
    let t = Instant::now();
    for i in 0..BATCH {
        let chunk = &bytes[(i * PAIR) % (bytes.len() - PAIR)..][..PAIR];
        // SAFETY: valid buffers and open fds.
        unsafe {
            assert_eq!(libc::write(w, chunk.as_ptr().cast(), PAIR), PAIR as isize);
            assert_eq!(libc::read(r, buf.as_mut_ptr().cast(), PAIR), PAIR as isize);
        }
    }
    t.elapsed().as_nanos() as f64 / BATCH as f64
}

fn main() -> anyhow::Result<()> {
    let bytes = audio::speech_call(&audio::speech_corpus()?, 60.0, 1).to_bytes();
    let (r, w) = std::io::pipe()?;
    let (r, w) = (r.as_raw_fd(), w.as_raw_fd());
    let mut buf = vec![0u8; PAIR];
    let mut tracer = Tracer::start(&FingerprintConfig::default(), None)?;
    let mut results: Vec<(&str, Vec<f64>)> = vec![
        ("untraced", vec![]),
        ("loaded, not a target", vec![]),
        ("traced", vec![]),
    ];
    // Interleaved so that machine noise hits every mode alike; "untraced" detaches by dropping.
    let mut untraced = Vec::new();
    drop(tracer);
    for _ in 0..BATCHES {
        untraced.push(batch_ns(&bytes, w, r, &mut buf));
    }
    tracer = Tracer::start(&FingerprintConfig::default(), None)?;
    for b in 0..2 * BATCHES {
        if b == BATCHES {
            tracer.add_targets(&[std::process::id()])?;
        }
        let ns = batch_ns(&bytes, w, r, &mut buf);
        results[1 + b / BATCHES].1.push(ns);
        tracer.drain(|_| {});
    }
    results[0].1 = untraced;
    for (name, mut v) in results {
        v.sort_by(f64::total_cmp);
        println!(
            "{name:>22}: median {:7.0} ns/pair  (min {:.0}, max {:.0})",
            v[v.len() / 2],
            v[0],
            v[v.len() - 1]
        );
    }
    Ok(())
}
