//! The scenario components — source, relay, sink — each a real process that moves calls' audio
//! over real links and records ground truth of every syscall it makes on them.
//!
//! A component is described by a [`Spec`] (JSON, written by the runner). Links are FIFOs (pipes),
//! TCP over IPv4 or IPv6 (optionally TLS), unix sockets, or connections to a NATS broker; each
//! plain end uses one syscall family (write/read, writev/readv, send/recv, sendmsg/recvmsg, the
//! vector ones with several iovecs), a TLS end OpenSSL's SSL_write_ex/SSL_read_ex. A link frames
//! its bytes as a stream (a header line of a chosen length, then one call's PCM), as Pulsar-style
//! envelopes (size, command, magic 0x0e01, crc32c, metadata, payload) or as NATS messages,
//! several calls multiplexed and several envelopes or messages batched per write.
//!
//! `spec` says what a component is told, `framing` and `nats` how links frame audio,
//! `transport` how their ends are opened and moved, `ends` how a component writes and reads
//! them, `recorder` how it records the truth. This module runs a component.

mod ends;
mod framing;
mod nats;
mod recorder;
mod spec;
mod transport;

pub use framing::{crc32c, ENVELOPE_MAGIC};
pub use spec::{End, Framing, IoCall, Role, Route, SourceCall, Spec, Transport};
pub use transport::{mkfifo, syscall_io, tls_acceptor, tls_connect, MAX_IOVECS};

use crate::audio::Audio;
use crate::truth::{involuntary_switches, Io};
use agent::clock::monotonic_ns;
use agent::schema::Dir;
use anyhow::{Context, Result};
use ends::{In, Out, Payload};
use recorder::Recorder;
use std::io::Write;
use std::path::Path;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;
use transport::{accept, listen};

/// Environment variable naming the spec file of the component a binary should become.
pub const COMPONENT_ENV: &str = "HX_COMPONENT";
const READ_BUF: usize = 64 * 1024;
/// Audio a source sends per call per tick.
const TICK: Duration = Duration::from_millis(20);

/// Runs the component whose spec [`COMPONENT_ENV`] names (or the rustls relay,
/// [`crate::tls_relay`]) and exits; returns when it is unset. Call it first thing in `main` of
/// any binary that launches scenarios.
pub fn run_if_component() {
    crate::tls_relay::run_if_rustls_relay();
    let Some(spec) = std::env::var_os(COMPONENT_ENV) else {
        return;
    };
    let result = std::fs::read(&spec)
        .with_context(|| format!("reading component spec {spec:?}"))
        .and_then(|b| Ok(serde_json::from_slice::<Spec>(&b)?))
        .and_then(run);
    match result {
        Ok(()) => std::process::exit(0),
        Err(e) => {
            eprintln!("component: {e:#}");
            std::process::exit(1)
        }
    }
}

fn sleep_until(t_ns: u64) {
    let now = monotonic_ns();
    if t_ns > now {
        std::thread::sleep(Duration::from_nanos(t_ns - now));
    }
}

fn wait_for(go: &Path) {
    while !go.exists() {
        std::thread::sleep(Duration::from_micros(200));
    }
}

/// What the input threads send: (input index, time of the read, the audio it carried).
type Arrivals = mpsc::Receiver<(usize, u64, Vec<Payload>)>;
type Readers = Vec<std::thread::JoinHandle<Result<()>>>;

/// Starts one thread per input: each reads its link to the end, records every read, and sends
/// the audio it carried, stamped with the read's time, to the returned channel.
fn start_inputs(rec: &Arc<Recorder>, ends: &[End], go: &Path) -> Result<(Arrivals, Readers)> {
    let (tx, rx) = mpsc::channel();
    let mut threads = Vec::new();
    for (i, end) in ends.iter().enumerate() {
        let listening = listen(&end.transport)?;
        let (rec, tx, end, go) = (rec.clone(), tx.clone(), end.clone(), go.to_path_buf());
        threads.push(std::thread::spawn(move || -> Result<()> {
            let mut conn = accept(listening)?;
            wait_for(&go);
            let mut input = In::new(end.clone());
            let mut buf = vec![0u8; READ_BUF];
            let mut at = 0u64;
            while !input.ended {
                let switches = involuntary_switches();
                let n = conn.io(&mut buf, false, end.call);
                let t_ns = monotonic_ns();
                let preempted = involuntary_switches() != switches;
                let n = n.with_context(|| format!("reading {}", end.link))?;
                if n == 0 {
                    break;
                }
                rec.io(Io {
                    t_ns,
                    preempted,
                    dir: Dir::Read,
                    fd: conn.fd(),
                    link: end.link.clone(),
                    flow_off: at,
                    len: n as u64,
                    segments: Vec::new(),
                });
                at += n as u64;
                let payloads = input.feed(&rec, &buf[..n])?;
                if !payloads.is_empty() && tx.send((i, t_ns, payloads)).is_err() {
                    break;
                }
            }
            Ok(())
        }));
    }
    Ok((rx, threads))
}

fn join(threads: Readers) -> Result<()> {
    for t in threads {
        t.join()
            .map_err(|_| anyhow::anyhow!("input thread panicked"))??;
    }
    Ok(())
}

pub fn run(spec: Spec) -> Result<()> {
    // A source loads its audio before it is ready: the tracer is attached then, and reading the
    // WAV files is not part of the pipeline.
    let audio = match &spec.role {
        Role::Source { calls, .. } => calls
            .iter()
            .map(|c| Audio::read_wav(&c.wav))
            .collect::<Result<Vec<_>>>()?,
        _ => Vec::new(),
    };
    let rec = Recorder::start(&spec)?;
    let (rx, threads) = start_inputs(&rec, &spec.inputs, &spec.go)?;
    let mut outs = spec
        .outputs
        .iter()
        .map(|e| Out::open(e, &spec.name))
        .collect::<Result<Vec<_>>>()?;
    std::fs::write(&spec.ready, b"")
        .with_context(|| format!("creating {}", spec.ready.display()))?;
    match &spec.role {
        Role::Source { calls, speed } => source(&rec, &mut outs, calls, &audio, *speed, &spec.go)?,
        Role::Relay { hold_us, route } => {
            let n = outs.len();
            let mut ready = rx.recv().ok();
            while let Some((input, t_read, payloads)) = ready {
                sleep_until(t_read + hold_us * 1000);
                for (call, off, bytes) in payloads {
                    for o in route.outputs(input, call, n) {
                        outs[o].push(&rec, call, off, &bytes)?;
                    }
                }
                // Batch whatever has already arrived; write once nothing more is waiting.
                ready = match rx.try_recv() {
                    Ok(next) => Some(next),
                    Err(mpsc::TryRecvError::Empty) => {
                        for o in &mut outs {
                            o.flush(&rec, false)?;
                        }
                        rx.recv().ok()
                    }
                    Err(mpsc::TryRecvError::Disconnected) => None,
                };
            }
        }
        Role::Sink => while rx.recv().is_ok() {},
    }
    for o in outs {
        o.close(&rec)?;
    }
    join(threads)?;
    rec.finish()
}

fn source(
    rec: &Recorder,
    outs: &mut [Out],
    calls: &[SourceCall],
    audio: &[Audio],
    speed: f64,
    go: &Path,
) -> Result<()> {
    let rate = audio[0].rate as u64;
    let audio: Vec<Vec<u8>> = audio.iter().map(Audio::to_bytes).collect();
    let tick = (rate * 2 * TICK.as_millis() as u64 / 1000) as usize;
    wait_for(go);
    let t0 = monotonic_ns();
    let ticks = audio
        .iter()
        .map(|a| a.len().div_ceil(tick))
        .max()
        .unwrap_or(0);
    for k in 0..ticks {
        sleep_until(t0 + ((k + 1) as f64 * TICK.as_nanos() as f64 / speed) as u64);
        for (c, bytes) in calls.iter().zip(&audio) {
            let lo = (k * tick).min(bytes.len());
            let hi = ((k + 1) * tick).min(bytes.len());
            if lo < hi {
                outs[c.output].push(rec, c.call, lo as u64, &bytes[lo..hi])?;
            }
        }
        for o in outs.iter_mut() {
            o.flush(rec, false)?;
        }
    }
    Ok(())
}

/// Writes `spec` where a component launched from `exe` will find it; returns the command.
pub fn command(exe: &Path, spec: &Spec, spec_path: &Path) -> Result<std::process::Command> {
    let mut f = std::fs::File::create(spec_path)
        .with_context(|| format!("creating {}", spec_path.display()))?;
    f.write_all(&serde_json::to_vec(spec)?)?;
    let mut cmd = std::process::Command::new(exe);
    cmd.env(COMPONENT_ENV, spec_path)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null());
    Ok(cmd)
}
