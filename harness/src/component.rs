//! The scenario components — source, relay, sink — each a real process moving one call's audio
//! and recording ground truth of every syscall it makes on the audio.
//!
//! A link carries a stream: a header line of a chosen length (`HXA call=<n> ...\n`, padded; odd
//! lengths shift the PCM's sample grid against the byte stream) followed by the call's PCM bytes.
//! Components read fd 0 and write fd 1; the runner wires them with pipes.

use crate::audio::Audio;
use crate::truth::{monotonic_ns, ComponentLog, Dir, Io, Segment};
use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use std::path::PathBuf;
use std::time::Duration;

/// Environment variable that turns any binary calling [`run_if_component`] into a component.
pub const COMPONENT_ENV: &str = "HX_COMPONENT";
const IN_FD: i32 = 0;
const OUT_FD: i32 = 1;
const READ_BUF: usize = 64 * 1024;
const HEADER_MIN: usize = 16;

#[derive(Subcommand, Debug, Clone)]
pub enum Role {
    /// Streams a WAV file's PCM, paced in (scaled) real time.
    Source(SourceArgs),
    /// Reads a stream, holds each read, re-chunks, and writes it on with its own header.
    Relay(RelayArgs),
    /// Reads a stream to its end.
    Sink(Common),
}

#[derive(Args, Debug, Clone)]
pub struct Common {
    /// Component name (comm becomes `hx-<name>`).
    #[arg(long)]
    pub name: String,
    /// Where to write this component's ground truth (JSON).
    #[arg(long)]
    pub truth: PathBuf,
    /// Created once the component is set up.
    #[arg(long)]
    pub ready: PathBuf,
    #[arg(long, default_value = "")]
    pub link_in: String,
    #[arg(long, default_value = "")]
    pub link_out: String,
}

#[derive(Args, Debug, Clone)]
pub struct SourceArgs {
    #[command(flatten)]
    pub common: Common,
    #[arg(long)]
    pub call: u32,
    #[arg(long)]
    pub wav: PathBuf,
    /// The source waits for this file before it sends anything.
    #[arg(long)]
    pub go: PathBuf,
    #[arg(long, default_value_t = 2048)]
    pub chunk: usize,
    #[arg(long, default_value_t = 64)]
    pub header_len: usize,
    /// Pace: 1 is real time, 8 is eight times faster.
    #[arg(long, default_value_t = 1.0)]
    pub speed: f64,
}

#[derive(Args, Debug, Clone)]
pub struct RelayArgs {
    #[command(flatten)]
    pub common: Common,
    /// Each read is held this long before it may be written on.
    #[arg(long, default_value_t = 0)]
    pub hold_us: u64,
    /// Size of every write (the last one may be shorter).
    #[arg(long, default_value_t = 2048)]
    pub chunk: usize,
    #[arg(long, default_value_t = 64)]
    pub header_len: usize,
}

/// Runs the component named by the arguments and exits, when [`COMPONENT_ENV`] is set; returns
/// otherwise. Call it first thing in `main` of any binary that launches scenarios.
pub fn run_if_component() {
    if std::env::var_os(COMPONENT_ENV).is_none() {
        return;
    }
    #[derive(clap::Parser)]
    struct Cli {
        #[command(subcommand)]
        role: Role,
    }
    let cli = <Cli as clap::Parser>::parse();
    match run(cli.role) {
        Ok(()) => std::process::exit(0),
        Err(e) => {
            eprintln!("component: {e:#}");
            std::process::exit(1)
        }
    }
}

pub fn run(role: Role) -> Result<()> {
    match role {
        Role::Source(a) => source(a),
        Role::Relay(a) => relay(a),
        Role::Sink(c) => sink(c),
    }
}

struct Recorder {
    log: ComponentLog,
    truth: PathBuf,
}

impl Recorder {
    fn start(c: &Common) -> Result<Self> {
        let comm = format!("hx-{}", c.name);
        let cname = std::ffi::CString::new(comm.clone())?;
        // SAFETY: PR_SET_NAME reads a NUL-terminated string (truncated to 15 bytes by the kernel).
        unsafe { libc::prctl(libc::PR_SET_NAME, cname.as_ptr()) };
        let comm = comm.chars().take(15).collect();
        let log = ComponentLog { name: c.name.clone(), pid: std::process::id(), comm, ios: Vec::new() };
        std::fs::write(&c.ready, b"").with_context(|| format!("creating {}", c.ready.display()))?;
        Ok(Self { log, truth: c.truth.clone() })
    }

    fn finish(self) -> Result<()> {
        self.log.save(&self.truth)
    }
}

/// A stream's byte layout: `header_len` header bytes, then one call's audio.
#[derive(Clone, Copy)]
struct Stream {
    call: u32,
    header_len: u64,
}

impl Stream {
    fn segments(&self, flow_off: u64, len: u64) -> Vec<Segment> {
        let start = flow_off.max(self.header_len);
        let end = flow_off + len;
        if start >= end {
            return Vec::new();
        }
        vec![Segment { flow_off: start, call: self.call, audio_off: start - self.header_len, len: end - start }]
    }
}

fn header(call: u32, len: usize) -> Result<Vec<u8>> {
    let text = format!("HXA call={call} ");
    if len < HEADER_MIN.max(text.len() + 1) {
        bail!("header length {len} too short for {text:?}");
    }
    let mut h = text.into_bytes();
    h.resize(len - 1, b'.');
    h.push(b'\n');
    Ok(h)
}

fn parse_header(bytes: &[u8]) -> Option<Result<Stream>> {
    let nl = bytes.iter().position(|&b| b == b'\n')?;
    let text = String::from_utf8_lossy(&bytes[..nl]);
    let call = text
        .strip_prefix("HXA call=")
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok());
    Some(match call {
        Some(call) => Ok(Stream { call, header_len: nl as u64 + 1 }),
        None => Err(anyhow::anyhow!("malformed stream header")),
    })
}

fn sleep_until(t_ns: u64) {
    let now = monotonic_ns();
    if t_ns > now {
        std::thread::sleep(Duration::from_nanos(t_ns - now));
    }
}

/// One write syscall of `bytes` at stream offset `flow_off`, recorded; returns bytes written.
fn write_once(rec: &mut Recorder, link: &str, stream: Stream, flow_off: u64, bytes: &[u8]) -> Result<usize> {
    let t_ns = monotonic_ns();
    // SAFETY: bytes is a valid buffer of bytes.len() bytes.
    let n = unsafe { libc::write(OUT_FD, bytes.as_ptr().cast(), bytes.len()) };
    if n < 0 {
        return Err(std::io::Error::last_os_error()).context("write");
    }
    let n = n as usize;
    rec.log.ios.push(Io {
        t_ns,
        dir: Dir::Write,
        fd: OUT_FD,
        link: link.to_string(),
        flow_off,
        len: n as u64,
        segments: stream.segments(flow_off, n as u64),
    });
    Ok(n)
}

fn write_all(rec: &mut Recorder, link: &str, stream: Stream, flow_off: &mut u64, mut bytes: &[u8]) -> Result<()> {
    while !bytes.is_empty() {
        let n = write_once(rec, link, stream, *flow_off, bytes)?;
        *flow_off += n as u64;
        bytes = &bytes[n..];
    }
    Ok(())
}

/// One read syscall, stamped right after it returns; returns the bytes read (0 at end of stream).
fn read_once(buf: &mut [u8]) -> Result<(usize, u64)> {
    // SAFETY: buf is a valid, writable buffer of buf.len() bytes.
    let n = unsafe { libc::read(IN_FD, buf.as_mut_ptr().cast(), buf.len()) };
    let t_ns = monotonic_ns();
    if n < 0 {
        return Err(std::io::Error::last_os_error()).context("read");
    }
    Ok((n as usize, t_ns))
}

/// Reads the input stream to its end, calling `on_read` with each read's bytes and time; records
/// every read once the stream's header has told which call it carries.
fn read_stream(
    rec: &mut Recorder,
    link: &str,
    mut on_read: impl FnMut(&mut Recorder, Stream, &[u8], u64) -> Result<()>,
) -> Result<()> {
    let mut buf = vec![0u8; READ_BUF];
    let mut flow_off = 0u64;
    let mut stream: Option<Stream> = None;
    let mut head: Vec<u8> = Vec::new();
    let mut pending_reads: Vec<(u64, u64, u64)> = Vec::new();
    loop {
        let (n, t_ns) = read_once(&mut buf)?;
        if n == 0 {
            return match stream {
                Some(_) => Ok(()),
                None => bail!("stream ended before its header"),
            };
        }
        let s = match stream {
            Some(s) => s,
            None => {
                head.extend_from_slice(&buf[..n]);
                pending_reads.push((t_ns, flow_off, n as u64));
                flow_off += n as u64;
                let Some(parsed) = parse_header(&head) else { continue };
                let s = parsed?;
                stream = Some(s);
                for (t, off, len) in pending_reads.drain(..) {
                    rec.log.ios.push(Io {
                        t_ns: t,
                        dir: Dir::Read,
                        fd: IN_FD,
                        link: link.to_string(),
                        flow_off: off,
                        len,
                        segments: s.segments(off, len),
                    });
                }
                on_read(rec, s, &head, t_ns)?;
                continue;
            }
        };
        rec.log.ios.push(Io {
            t_ns,
            dir: Dir::Read,
            fd: IN_FD,
            link: link.to_string(),
            flow_off,
            len: n as u64,
            segments: s.segments(flow_off, n as u64),
        });
        flow_off += n as u64;
        on_read(rec, s, &buf[..n], t_ns)?;
    }
}

fn source(a: SourceArgs) -> Result<()> {
    let mut rec = Recorder::start(&a.common)?;
    let audio = Audio::read_wav(&a.wav)?;
    let byte_rate = audio.bytes_per_second() as f64;
    let mut bytes = header(a.call, a.header_len)?;
    bytes.extend(audio.to_bytes());
    let stream = Stream { call: a.call, header_len: a.header_len as u64 };
    while !a.go.exists() {
        std::thread::sleep(Duration::from_micros(200));
    }
    let t0 = monotonic_ns();
    let mut flow_off = 0u64;
    for chunk in bytes.chunks(a.chunk) {
        let due = (flow_off + chunk.len() as u64) as f64 / byte_rate / a.speed;
        sleep_until(t0 + (due * 1e9) as u64);
        write_all(&mut rec, &a.common.link_out, stream, &mut flow_off, chunk)?;
    }
    rec.finish()
}

fn relay(a: RelayArgs) -> Result<()> {
    let mut rec = Recorder::start(&a.common)?;
    let link_out = a.common.link_out.clone();
    let mut out_stream: Option<Stream> = None;
    let mut pending: Vec<u8> = Vec::new();
    let mut out_off = 0u64;
    read_stream(&mut rec, &a.common.link_in.clone(), |rec, s, bytes, t_read| {
        let out = match out_stream {
            Some(o) => {
                pending.extend_from_slice(bytes);
                o
            }
            None => {
                // First call: `bytes` is the whole input so far; replace its header with ours.
                let o = Stream { call: s.call, header_len: a.header_len as u64 };
                pending.extend(header(s.call, a.header_len)?);
                pending.extend_from_slice(&bytes[s.header_len as usize..]);
                out_stream = Some(o);
                o
            }
        };
        sleep_until(t_read + a.hold_us * 1000);
        let full = pending.len() / a.chunk * a.chunk;
        for chunk in pending[..full].chunks(a.chunk) {
            write_all(rec, &link_out, out, &mut out_off, chunk)?;
        }
        pending.drain(..full);
        Ok(())
    })?;
    if let Some(out) = out_stream {
        write_all(&mut rec, &link_out, out, &mut out_off, &pending)?;
    }
    rec.finish()
}

fn sink(c: Common) -> Result<()> {
    let mut rec = Recorder::start(&c)?;
    read_stream(&mut rec, &c.link_in, |_, _, _, _| Ok(()))?;
    rec.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_has_the_asked_length_and_parses() {
        for len in [17, 45, 64, 1001] {
            let h = header(42, len).unwrap();
            assert_eq!(h.len(), len);
            let s = parse_header(&h).unwrap().unwrap();
            assert_eq!((s.call, s.header_len), (42, len as u64));
        }
        assert!(header(1, 8).is_err());
        assert!(parse_header(b"HXA call=").is_none());
        assert!(parse_header(b"garbage\n").unwrap().is_err());
    }

    #[test]
    fn segments_skip_the_header() {
        let s = Stream { call: 3, header_len: 45 };
        assert!(s.segments(0, 45).is_empty());
        assert_eq!(s.segments(40, 10), vec![Segment { flow_off: 45, call: 3, audio_off: 0, len: 5 }]);
        assert_eq!(s.segments(100, 10), vec![Segment { flow_off: 100, call: 3, audio_off: 55, len: 10 }]);
    }
}
