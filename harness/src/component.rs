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
//! NATS is spoken directly (a text protocol): a client library such as async-nats buffers and
//! flushes from a background task, and no syscall could be stamped as the one that moved a
//! message.

use crate::audio::Audio;
use crate::truth::{involuntary_switches, monotonic_ns, ComponentLog, Dir, Io, Segment};
use anyhow::{anyhow, bail, Context, Result};
use openssl::ssl::{
    ErrorCode, SslAcceptor, SslConnector, SslFiletype, SslMethod, SslOptions, SslStream,
    SslVerifyMode,
};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Environment variable naming the spec file of the component a binary should become.
pub const COMPONENT_ENV: &str = "HX_COMPONENT";
const READ_BUF: usize = 64 * 1024;
const HEADER_MIN: usize = 16;
/// Audio a source sends per call per tick.
const TICK: Duration = Duration::from_millis(20);
/// Pulsar's frame magic (before the checksum).
pub const ENVELOPE_MAGIC: u16 = 0x0e01;
/// NATS subjects: a call's audio is published on `audio.<call>.<audio offset>` (the offset lets
/// a consumer's ground truth be checked rather than counted), the end of a producer's stream on
/// `audio.end`; consumers subscribe to `audio.>`.
const NATS_AUDIO: &str = "audio";
const NATS_END: &str = "audio.end";

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Transport {
    Fifo(PathBuf),
    /// The reader binds an ephemeral port on `ip` (loopback, or its node's address when the
    /// writer is on another node) and writes it to `port_file` (the runner does, when the
    /// reader is an external component); the writer connects there. With `tls`, the reader
    /// serves TLS with that PEM file (key and self-signed certificate) and the writer accepts
    /// any certificate: a test link, encrypted for real.
    Tcp {
        ip: IpAddr,
        port_file: PathBuf,
        tls: Option<PathBuf>,
    },
    Unix(PathBuf),
    /// A TCP connection to the NATS broker listening on the IPv4 loopback port in `port_file`:
    /// both ends connect to it.
    Nats {
        port_file: PathBuf,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Framing {
    /// A header line of `header_len` bytes, then one call's PCM.
    Stream { header_len: usize },
    /// Envelopes carrying at most `max_payload` bytes of one call's audio each.
    Envelope { max_payload: usize },
    /// NATS messages (`PUB` written, `MSG` read) carrying at most `max_payload` bytes of one
    /// call's audio each; the writer ends with a message on `audio.end`.
    Nats { max_payload: usize },
}

/// The syscall family an end uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum IoCall {
    /// write / read
    Plain,
    /// writev / readv
    Vector,
    /// sendto / recvfrom
    Socket,
    /// sendmsg / recvmsg
    Message,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct End {
    pub link: String,
    pub transport: Transport,
    pub framing: Framing,
    pub call: IoCall,
    /// Bytes per write (stream framing writes only whole chunks until the end).
    pub chunk: usize,
}

/// Which outputs a relay sends a call to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Route {
    /// Output i gets what input i brought.
    Same,
    /// Output 0 gets everything (merge / multiplex).
    First,
    /// Output `call % outputs` (demultiplex).
    ByCall,
    /// Outputs 2i and 2i + 1 get what input i brought (fan-out to two consumers per link).
    Pairs,
    /// Every output gets everything (a broker's subscribers).
    All,
}

impl Route {
    pub fn outputs(self, input: usize, call: u32, n: usize) -> Vec<usize> {
        match self {
            Route::Same => vec![input],
            Route::First => vec![0],
            Route::ByCall => vec![call as usize % n],
            Route::Pairs => vec![2 * input, 2 * input + 1],
            Route::All => (0..n).collect(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SourceCall {
    pub call: u32,
    pub wav: PathBuf,
    pub output: usize,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Role {
    /// Sends its calls' audio paced in (scaled) real time.
    Source {
        calls: Vec<SourceCall>,
        speed: f64,
    },
    /// Holds each read, then sends its audio on by `route`.
    Relay {
        hold_us: u64,
        route: Route,
    },
    Sink,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Spec {
    /// Component name; its comm becomes `hx-<name>`.
    pub name: String,
    pub truth: PathBuf,
    /// Created once every link is set up.
    pub ready: PathBuf,
    /// Nothing is read or written before this exists (the tracer is attached by then, so no
    /// call is already in flight when it starts).
    pub go: PathBuf,
    pub role: Role,
    pub inputs: Vec<End>,
    pub outputs: Vec<End>,
}

/// Runs the component whose spec [`COMPONENT_ENV`] names and exits; returns when it is unset.
/// Call it first thing in `main` of any binary that launches scenarios.
pub fn run_if_component() {
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

/// Most iovecs a vector call is split into.
pub const MAX_IOVECS: usize = 8;

/// One read or write syscall of the given family. `cuts` splits the buffer into iovecs for the
/// vector families (ascending offsets inside `0..=len`, fewer than `MAX_IOVECS`). Nothing is
/// allocated or freed around the syscall: components stamp their clocks right before and after
/// it, and on a CPU just back from the kernel even a free() shows in those stamps.
/// Components also read their thread's involuntary context-switch count on both sides of the
/// stamp and the syscall, and flag the record `preempted` when it changed.
// Not an `unsafe fn`: the phase crates call it as it is. Callers pass a buffer valid for `len`.
#[allow(clippy::not_unsafe_ptr_arg_deref)]
pub fn syscall_io(
    fd: i32,
    buf: *mut u8,
    len: usize,
    write: bool,
    call: IoCall,
    cuts: &[usize],
) -> isize {
    let empty = libc::iovec {
        iov_base: std::ptr::null_mut(),
        iov_len: 0,
    };
    let mut iov = [empty; MAX_IOVECS];
    let mut n = 0;
    let mut start = 0;
    for &end in cuts
        .iter()
        .take(MAX_IOVECS - 1)
        .chain(std::iter::once(&len))
    {
        // SAFETY: start <= end <= len, inside `buf`.
        iov[n] = libc::iovec {
            iov_base: unsafe { buf.add(start) }.cast(),
            iov_len: end - start,
        };
        n += 1;
        start = end;
    }
    // SAFETY: every pointer covers `buf`, valid for `len` bytes; the caller owns `fd`.
    unsafe {
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = iov.as_mut_ptr();
        msg.msg_iovlen = n;
        match (call, write) {
            (IoCall::Plain, true) => libc::write(fd, buf.cast(), len),
            (IoCall::Plain, false) => libc::read(fd, buf.cast(), len),
            (IoCall::Vector, true) => libc::writev(fd, iov.as_ptr(), n as i32),
            (IoCall::Vector, false) => libc::readv(fd, iov.as_ptr(), n as i32),
            (IoCall::Socket, true) => {
                libc::sendto(fd, buf.cast(), len, libc::MSG_NOSIGNAL, std::ptr::null(), 0)
            }
            (IoCall::Socket, false) => libc::recvfrom(
                fd,
                buf.cast(),
                len,
                0,
                std::ptr::null_mut(),
                std::ptr::null_mut(),
            ),
            (IoCall::Message, true) => libc::sendmsg(fd, &msg, libc::MSG_NOSIGNAL),
            (IoCall::Message, false) => libc::recvmsg(fd, &mut msg, 0),
        }
    }
}

/// Iovec cuts the components use: thirds.
fn thirds(len: usize) -> [usize; 2] {
    [len / 3, 2 * len / 3]
}

/// An open end of a link: an fd moved by syscalls, or TLS over TCP.
enum Conn {
    Plain(OwnedFd),
    Tls(SslStream<TcpStream>),
}

impl Conn {
    /// The socket (or pipe) fd: what a tracer attributes the bytes to.
    fn fd(&self) -> i32 {
        match self {
            Conn::Plain(fd) => fd.as_raw_fd(),
            Conn::Tls(s) => s.get_ref().as_raw_fd(),
        }
    }

    /// One read or write of plaintext; 0 at the end of the stream. Plain: one syscall of
    /// `call`'s family. TLS: one SSL_write_ex or SSL_read_ex (what `ssl_write`/`ssl_read` of
    /// openssl 0.10.82 call on OpenSSL ≥ 1.1.1), the calls a tracer uprobes in libssl.so.3.
    fn io(&mut self, buf: &mut [u8], write: bool, call: IoCall) -> std::io::Result<usize> {
        match self {
            Conn::Plain(fd) => {
                let len = buf.len();
                let n = syscall_io(
                    fd.as_raw_fd(),
                    buf.as_mut_ptr(),
                    len,
                    write,
                    call,
                    &thirds(len),
                );
                usize::try_from(n).map_err(|_| std::io::Error::last_os_error())
            }
            Conn::Tls(s) => {
                let done = if write {
                    s.ssl_write(buf)
                } else {
                    s.ssl_read(buf)
                };
                match done {
                    Err(e) if e.code() == ErrorCode::ZERO_RETURN => Ok(0),
                    other => other.map_err(|e| {
                        e.into_io_error()
                            .unwrap_or_else(|e| std::io::Error::other(e.to_string()))
                    }),
                }
            }
        }
    }

    /// A TLS writer says goodbye (close_notify), so the reader sees a clean end.
    fn close(self) {
        if let Conn::Tls(mut s) = self {
            let _ = s.shutdown();
        }
    }
}

/// Writes a fresh key and self-signed certificate for `localhost` (EC P-256) to `pem`, for one
/// run's TLS links: our TLS servers and stunnel serve it, our TLS clients accept anything.
pub fn write_test_certificate(pem: &Path) -> Result<()> {
    use openssl::{asn1::Asn1Time, bn::BigNum, ec, hash::MessageDigest, nid::Nid, pkey::PKey};
    let group = ec::EcGroup::from_curve_name(Nid::X9_62_PRIME256V1)?;
    let key = PKey::from_ec_key(ec::EcKey::generate(&group)?)?;
    let mut name = openssl::x509::X509NameBuilder::new()?;
    name.append_entry_by_text("CN", "localhost")?;
    let name = name.build();
    let mut cert = openssl::x509::X509::builder()?;
    cert.set_version(2)?;
    let serial = BigNum::from_u32(1)?.to_asn1_integer()?;
    let (not_before, not_after) = (Asn1Time::days_from_now(0)?, Asn1Time::days_from_now(2)?);
    cert.set_serial_number(&serial)?;
    cert.set_subject_name(&name)?;
    cert.set_issuer_name(&name)?;
    cert.set_pubkey(&key)?;
    cert.set_not_before(&not_before)?;
    cert.set_not_after(&not_after)?;
    cert.sign(&key, MessageDigest::sha256())?;
    let mut bytes = key.private_key_to_pem_pkcs8()?;
    bytes.extend(cert.build().to_pem()?);
    std::fs::write(pem, bytes).with_context(|| format!("writing {}", pem.display()))
}

/// Peers may close without close_notify (stunnel passing on a plain EOF): that is an end too.
const TLS_OPTIONS: SslOptions = SslOptions::IGNORE_UNEXPECTED_EOF;

fn tls_connect(tcp: TcpStream) -> Result<SslStream<TcpStream>> {
    let mut b = SslConnector::builder(SslMethod::tls_client())?;
    b.set_verify(SslVerifyMode::NONE);
    b.set_options(TLS_OPTIONS);
    b.build()
        .configure()?
        .verify_hostname(false)
        .connect("localhost", tcp)
        .map_err(|e| anyhow!("TLS handshake: {e}"))
}

fn tls_acceptor(pem: &Path) -> Result<SslAcceptor> {
    let mut b = SslAcceptor::mozilla_intermediate_v5(SslMethod::tls_server())?;
    b.set_private_key_file(pem, SslFiletype::PEM)?;
    b.set_certificate_chain_file(pem)?;
    b.set_options(TLS_OPTIONS);
    Ok(b.build())
}

/// One CRLF-terminated protocol line, read a byte at a time so nothing after it is consumed.
fn read_line(s: &mut TcpStream) -> Result<String> {
    let mut line = Vec::new();
    let mut byte = [0u8];
    while !line.ends_with(b"\r\n") {
        s.read_exact(&mut byte)
            .context("the broker closed the connection")?;
        line.push(byte[0]);
    }
    line.truncate(line.len() - 2);
    Ok(String::from_utf8_lossy(&line).into_owned())
}

/// The NATS client handshake, before the component is ready: the server's INFO, our CONNECT
/// (no +OK acknowledgements), and for a consumer the subscription, confirmed by a PING/PONG
/// round trip: the broker keeps nothing for subscribers that come late.
fn nats_hello(s: &mut TcpStream, subscribe: bool) -> Result<()> {
    let info = read_line(s)?;
    if !info.starts_with("INFO ") {
        bail!("not a NATS server: {info:?}");
    }
    let mut hello = String::from("CONNECT {\"verbose\":false,\"pedantic\":false}\r\n");
    if subscribe {
        hello += &format!("SUB {NATS_AUDIO}.> 1\r\nPING\r\n");
    }
    s.write_all(hello.as_bytes())?;
    if subscribe {
        loop {
            match read_line(s)? {
                l if l == "PONG" => break,
                l if l.starts_with("-ERR") => bail!("broker: {l}"),
                _ => {}
            }
        }
    }
    Ok(())
}

/// One `PUB` of a call's audio; returns the message and where its payload starts.
fn nats_pub(call: u32, audio_off: u64, payload: &[u8]) -> (Vec<u8>, usize) {
    let head = format!("PUB {NATS_AUDIO}.{call}.{audio_off} {}\r\n", payload.len());
    let mut m = Vec::with_capacity(head.len() + payload.len() + 2);
    m.extend(head.as_bytes());
    m.extend(payload);
    m.extend(b"\r\n");
    (m, head.len())
}

/// What one server message at the start of a consumer's buffer is.
#[derive(Debug, PartialEq)]
enum NatsMsg {
    Audio {
        call: u32,
        audio_off: u64,
        payload: std::ops::Range<usize>,
    },
    End,
    /// PING, PONG, +OK, INFO: nothing for the audio (the server's first PING comes after two
    /// minutes, longer than any scenario).
    Control,
}

/// Parses one whole server message at the start of `buf`: (its length, what it is); `None` if
/// incomplete.
fn parse_nats(buf: &[u8]) -> Option<Result<(usize, NatsMsg)>> {
    let eol = buf.windows(2).position(|w| w == b"\r\n")?;
    let line = String::from_utf8_lossy(&buf[..eol]);
    let words: Vec<&str> = line.split(' ').collect();
    Some(match words[0] {
        // MSG <subject> <sid> [reply-to] <payload length>
        "MSG" if words.len() >= 4 => {
            let Ok(len) = words[words.len() - 1].parse::<usize>() else {
                return Some(Err(anyhow!("bad NATS message line {line:?}")));
            };
            let start = eol + 2;
            if buf.len() < start + len + 2 {
                return None;
            }
            let at = |s: &str| -> Option<(u32, u64)> {
                let mut f = s.strip_prefix(NATS_AUDIO)?.strip_prefix('.')?.split('.');
                Some((f.next()?.parse().ok()?, f.next()?.parse().ok()?))
            };
            match (words[1], at(words[1])) {
                (NATS_END, _) => Ok((start + len + 2, NatsMsg::End)),
                (_, Some((call, audio_off))) => Ok((
                    start + len + 2,
                    NatsMsg::Audio {
                        call,
                        audio_off,
                        payload: start..start + len,
                    },
                )),
                (subject, None) => Err(anyhow!("unexpected NATS subject {subject:?}")),
            }
        }
        "PING" | "PONG" | "+OK" | "INFO" => Ok((eol + 2, NatsMsg::Control)),
        _ => Err(anyhow!("unexpected NATS line {line:?}")),
    })
}

/// Ground truth being recorded; shared by a component's threads.
struct Recorder {
    log: Mutex<ComponentLog>,
    /// Where payload bytes sit in each link's flows, by direction (`Dir as usize`).
    payloads: Mutex<HashMap<String, [Vec<Segment>; 2]>>,
    truth: PathBuf,
}

impl Recorder {
    fn start(spec: &Spec) -> Result<Arc<Self>> {
        let comm = format!("hx-{}", spec.name);
        let cname = std::ffi::CString::new(comm.clone())?;
        // SAFETY: PR_SET_NAME reads a NUL-terminated string (truncated to 15 bytes by the kernel).
        unsafe { libc::prctl(libc::PR_SET_NAME, cname.as_ptr()) };
        let log = ComponentLog {
            name: spec.name.clone(),
            pid: std::process::id(),
            comm: comm.chars().take(15).collect(),
            ios: Vec::new(),
            external: false,
            node: None,
        };
        Ok(Arc::new(Self {
            log: Mutex::new(log),
            payloads: Mutex::new(HashMap::new()),
            truth: spec.truth.clone(),
        }))
    }

    fn io(&self, io: Io) {
        self.log.lock().unwrap().ios.push(io);
    }

    fn payload(&self, link: &str, dir: Dir, seg: Segment) {
        let mut payloads = self.payloads.lock().unwrap();
        let flows = match payloads.get_mut(link) {
            Some(f) => f,
            None => payloads.entry(link.to_string()).or_default(),
        };
        flows[dir as usize].push(seg);
    }

    /// Attributes payload bytes to the syscalls that moved them, and saves. A flow's payload
    /// segments never overlap: sorted by flow offset, the ones a syscall moved are found by
    /// binary search.
    fn finish(&self) -> Result<()> {
        let mut payloads = self.payloads.lock().unwrap();
        for flows in payloads.values_mut() {
            for segs in flows.iter_mut() {
                segs.sort_by_key(|s| s.flow_off);
                debug_assert!(segs
                    .windows(2)
                    .all(|w| w[0].flow_off + w[0].len <= w[1].flow_off));
            }
        }
        let mut log = self.log.lock().unwrap();
        for io in &mut log.ios {
            let Some(flows) = payloads.get(&io.link) else {
                io.segments = Vec::new();
                continue;
            };
            let segs = &flows[io.dir as usize];
            let (lo, hi) = (io.flow_off, io.flow_off + io.len);
            let first = segs.partition_point(|s| s.flow_off + s.len <= lo);
            io.segments = segs[first..]
                .iter()
                .take_while(|s| s.flow_off < hi)
                .filter(|s| lo < s.flow_off + s.len)
                .map(|s| {
                    let (a, b) = (s.flow_off.max(lo), (s.flow_off + s.len).min(hi));
                    Segment {
                        flow_off: a,
                        call: s.call,
                        audio_off: s.audio_off + (a - s.flow_off),
                        len: b - a,
                    }
                })
                .collect();
        }
        log.ios.sort_by_key(|io| io.t_ns);
        log.save(&self.truth)
    }
}

fn sleep_until(t_ns: u64) {
    let now = monotonic_ns();
    if t_ns > now {
        std::thread::sleep(Duration::from_nanos(t_ns - now));
    }
}

fn stream_header(call: u32, len: usize) -> Result<Vec<u8>> {
    let text = format!("HXA call={call} ");
    if len < HEADER_MIN.max(text.len() + 1) {
        bail!("header length {len} too short for {text:?}");
    }
    let mut h = text.into_bytes();
    h.resize(len - 1, b'.');
    h.push(b'\n');
    Ok(h)
}

fn parse_stream_header(bytes: &[u8]) -> Option<Result<(u32, usize)>> {
    let nl = bytes.iter().position(|&b| b == b'\n')?;
    let text = String::from_utf8_lossy(&bytes[..nl]);
    let call = text
        .strip_prefix("HXA call=")
        .and_then(|r| r.split(' ').next())
        .and_then(|n| n.parse().ok());
    Some(
        call.map(|c| (c, nl + 1))
            .ok_or_else(|| anyhow::anyhow!("malformed stream header")),
    )
}

/// CRC-32C (Castagnoli), as Pulsar checksums its frames: slicing-by-8 over tables built at
/// compile time (a bitwise loop cost a source of 1000 calls most of a core).
pub fn crc32c(bytes: &[u8]) -> u32 {
    let t = &CRC32C_TABLES;
    let mut crc = !0u32;
    let mut chunks = bytes.chunks_exact(8);
    for c in &mut chunks {
        let lo = crc ^ u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        crc = t[7][(lo & 0xFF) as usize]
            ^ t[6][((lo >> 8) & 0xFF) as usize]
            ^ t[5][((lo >> 16) & 0xFF) as usize]
            ^ t[4][(lo >> 24) as usize]
            ^ t[3][c[4] as usize]
            ^ t[2][c[5] as usize]
            ^ t[1][c[6] as usize]
            ^ t[0][c[7] as usize];
    }
    for &b in chunks.remainder() {
        crc = t[0][((crc ^ b as u32) & 0xFF) as usize] ^ (crc >> 8);
    }
    !crc
}

/// `CRC32C_TABLES[0]` is the byte-at-a-time table of the reflected polynomial 0x82F63B78;
/// table k advances a byte's contribution by k more zero bytes.
static CRC32C_TABLES: [[u32; 256]; 8] = {
    let mut t = [[0u32; 256]; 8];
    let mut i = 0;
    while i < 256 {
        let mut crc = i as u32;
        let mut k = 0;
        while k < 8 {
            crc = (crc >> 1) ^ (0x82F6_3B78 & (crc & 1).wrapping_neg());
            k += 1;
        }
        t[0][i] = crc;
        i += 1;
    }
    let mut k = 1;
    while k < 8 {
        let mut i = 0;
        while i < 256 {
            let prev = t[k - 1][i];
            t[k][i] = (prev >> 8) ^ t[0][(prev & 0xFF) as usize];
            i += 1;
        }
        k += 1;
    }
    t
};

/// One envelope: [total][cmd size][cmd][magic][crc32c][meta size][meta][payload], big-endian
/// sizes, total counting everything after itself; metadata padded to vary header lengths.
/// Returns the frame and where its payload starts.
fn envelope(
    producer: &str,
    seq: u64,
    call: u32,
    audio_off: u64,
    payload: &[u8],
) -> (Vec<u8>, usize) {
    let cmd = format!("SEND producer={producer} sequence_id={seq}");
    let pad = (seq.wrapping_mul(0x9E37_79B9) >> 7) % 23;
    let meta = format!(
        "call={call} offset={audio_off} props={}",
        "p".repeat(pad as usize)
    );
    let mut checked = Vec::with_capacity(4 + meta.len() + payload.len());
    checked.extend((meta.len() as u32).to_be_bytes());
    checked.extend(meta.as_bytes());
    checked.extend(payload);
    let total = 4 + cmd.len() + 2 + 4 + checked.len();
    let mut f = Vec::with_capacity(4 + total);
    f.extend((total as u32).to_be_bytes());
    f.extend((cmd.len() as u32).to_be_bytes());
    f.extend(cmd.as_bytes());
    f.extend(ENVELOPE_MAGIC.to_be_bytes());
    f.extend(crc32c(&checked).to_be_bytes());
    f.extend(&checked);
    let payload_at = f.len() - payload.len();
    (f, payload_at)
}

/// One parsed envelope: (frame length, call, audio offset, payload range).
type Envelope = (usize, u32, u64, std::ops::Range<usize>);

/// Parses one whole envelope at the start of `buf`; `None` if incomplete.
fn parse_envelope(buf: &[u8]) -> Option<Result<Envelope>> {
    let be32 = |b: &[u8]| u32::from_be_bytes(b[..4].try_into().unwrap()) as usize;
    if buf.len() < 4 || buf.len() < 4 + be32(buf) {
        return None;
    }
    Some((|| {
        let len = 4 + be32(buf);
        let cmd = be32(&buf[4..]);
        let at = 8 + cmd;
        if u16::from_be_bytes([buf[at], buf[at + 1]]) != ENVELOPE_MAGIC {
            bail!("bad envelope magic");
        }
        let crc = u32::from_be_bytes(buf[at + 2..at + 6].try_into().unwrap());
        if crc32c(&buf[at + 6..len]) != crc {
            bail!("envelope checksum mismatch");
        }
        let meta_len = be32(&buf[at + 6..]);
        let meta = String::from_utf8_lossy(&buf[at + 10..at + 10 + meta_len]);
        let field = |k: &str| {
            meta.split(' ')
                .find_map(|kv| kv.strip_prefix(k))
                .and_then(|v| v.parse::<u64>().ok())
        };
        let (Some(call), Some(off)) = (field("call="), field("offset=")) else {
            bail!("envelope without call/offset")
        };
        Ok((len, call as u32, off, at + 10 + meta_len..len))
    })())
}

/// The sending end of a link: frames audio, batches it, writes it with its syscall family.
struct Out {
    conn: Conn,
    end: End,
    producer: String,
    /// Flow offset of `pending[0]`.
    flow_off: u64,
    pending: Vec<u8>,
    stream_call: Option<u32>,
    seq: u64,
}

impl Out {
    fn open(end: &End, producer: &str) -> Result<Self> {
        let conn =
            connect(&end.transport).with_context(|| format!("opening {} for writing", end.link))?;
        Ok(Self {
            conn,
            end: end.clone(),
            producer: producer.into(),
            flow_off: 0,
            pending: Vec::new(),
            stream_call: None,
            seq: 0,
        })
    }

    fn push(&mut self, rec: &Recorder, call: u32, audio_off: u64, bytes: &[u8]) -> Result<()> {
        match self.end.framing {
            Framing::Stream { header_len } => {
                match self.stream_call {
                    None => {
                        self.pending.extend(stream_header(call, header_len)?);
                        self.stream_call = Some(call);
                    }
                    Some(c) if c != call => {
                        bail!("{}: a stream link carries one call", self.end.link)
                    }
                    _ => {}
                }
                let at = self.flow_off + self.pending.len() as u64;
                rec.payload(
                    &self.end.link,
                    Dir::Write,
                    Segment {
                        flow_off: at,
                        call,
                        audio_off,
                        len: bytes.len() as u64,
                    },
                );
                self.pending.extend(bytes);
            }
            Framing::Envelope { max_payload } | Framing::Nats { max_payload } => {
                for (i, piece) in bytes.chunks(max_payload).enumerate() {
                    let off = audio_off + (i * max_payload) as u64;
                    let (frame, payload_at) = match self.end.framing {
                        Framing::Nats { .. } => nats_pub(call, off, piece),
                        _ => envelope(&self.producer, self.seq, call, off, piece),
                    };
                    self.seq += 1;
                    let at = self.flow_off + self.pending.len() as u64 + payload_at as u64;
                    rec.payload(
                        &self.end.link,
                        Dir::Write,
                        Segment {
                            flow_off: at,
                            call,
                            audio_off: off,
                            len: piece.len() as u64,
                        },
                    );
                    self.pending.extend(frame);
                }
            }
        }
        Ok(())
    }

    /// Writes what is pending: whole chunks only for a stream, unless `all`; a batch of whole
    /// envelopes or messages otherwise.
    fn flush(&mut self, rec: &Recorder, all: bool) -> Result<()> {
        let stream = matches!(self.end.framing, Framing::Stream { .. });
        let upto = if stream && !all {
            self.pending.len() / self.end.chunk * self.end.chunk
        } else {
            self.pending.len()
        };
        let mut done = 0;
        while done < upto {
            let n = (upto - done).min(self.end.chunk);
            let switches = involuntary_switches();
            let t_ns = monotonic_ns();
            let k = self
                .conn
                .io(&mut self.pending[done..done + n], true, self.end.call);
            let preempted = involuntary_switches() != switches;
            let k = k.with_context(|| format!("writing {}", self.end.link))?;
            let at = self.flow_off + done as u64;
            rec.io(Io {
                t_ns,
                preempted,
                dir: Dir::Write,
                fd: self.conn.fd(),
                link: self.end.link.clone(),
                flow_off: at,
                len: k as u64,
                segments: Vec::new(),
            });
            done += k;
        }
        self.pending.drain(..done);
        self.flow_off += done as u64;
        Ok(())
    }

    /// Writes everything left, ends a NATS producer's stream, and closes.
    fn close(mut self, rec: &Recorder) -> Result<()> {
        if let Framing::Nats { .. } = self.end.framing {
            self.pending
                .extend(format!("PUB {NATS_END} 0\r\n\r\n").as_bytes());
        }
        self.flush(rec, true)?;
        self.conn.close();
        Ok(())
    }
}

/// The receiving end of a link: turns bytes back into (call, audio offset, audio).
struct In {
    end: End,
    /// Flow offset of `buf[0]`.
    flow_off: u64,
    buf: Vec<u8>,
    stream: Option<(u32, usize)>,
    /// A NATS producer ended its stream (the broker itself never closes).
    ended: bool,
}

type Payload = (u32, u64, Vec<u8>);

impl In {
    /// Parses what `bytes` completes. Whole frames are consumed through a cursor and the buffer
    /// is compacted once per call: a 64 KiB read holds a hundred envelopes.
    fn feed(&mut self, rec: &Recorder, bytes: &[u8]) -> Result<Vec<Payload>> {
        self.buf.extend_from_slice(bytes);
        let mut out = Vec::new();
        let mut at = 0;
        let result = (|| -> Result<()> {
            loop {
                let rest = &self.buf[at..];
                let (take, payload) = match self.end.framing {
                    Framing::Stream { .. } => match self.stream {
                        None => match parse_stream_header(rest) {
                            None => break,
                            Some(h) => {
                                let (call, len) = h?;
                                self.stream = Some((call, len));
                                (len, None)
                            }
                        },
                        Some((call, header_len)) if !rest.is_empty() => (
                            rest.len(),
                            Some((call, self.flow_off - header_len as u64, 0..rest.len())),
                        ),
                        Some(_) => break,
                    },
                    Framing::Envelope { .. } => match parse_envelope(rest) {
                        None => break,
                        Some(frame) => {
                            let (len, call, off, range) = frame?;
                            (len, Some((call, off, range)))
                        }
                    },
                    Framing::Nats { .. } => match parse_nats(rest) {
                        None => break,
                        Some(msg) => match msg? {
                            (
                                len,
                                NatsMsg::Audio {
                                    call,
                                    audio_off,
                                    payload,
                                },
                            ) => (len, Some((call, audio_off, payload))),
                            (len, NatsMsg::End) => {
                                self.ended = true;
                                (len, None)
                            }
                            (len, NatsMsg::Control) => (len, None),
                        },
                    },
                };
                if let Some((call, audio_off, range)) = payload {
                    rec.payload(
                        &self.end.link,
                        Dir::Read,
                        Segment {
                            flow_off: self.flow_off + range.start as u64,
                            call,
                            audio_off,
                            len: range.len() as u64,
                        },
                    );
                    out.push((call, audio_off, rest[range].to_vec()));
                }
                at += take;
                self.flow_off += take as u64;
            }
            Ok(())
        })();
        self.buf.drain(..at);
        result.map(|()| out)
    }
}

/// A reading end set up before the component is ready: a listening socket, a FIFO to open, or
/// a subscription already made.
enum Listening {
    Fifo(PathBuf),
    Tcp(std::net::TcpListener, Option<SslAcceptor>),
    Unix(std::os::unix::net::UnixListener),
    Subscribed(Conn),
}

fn listen(t: &Transport) -> Result<Listening> {
    Ok(match t {
        Transport::Fifo(p) => Listening::Fifo(p.clone()),
        Transport::Tcp { ip, port_file, tls } => {
            let acceptor = tls.as_deref().map(tls_acceptor).transpose()?;
            let l = std::net::TcpListener::bind((*ip, 0))
                .with_context(|| format!("listening on {ip}"))?;
            std::fs::write(port_file, l.local_addr()?.port().to_string())?;
            Listening::Tcp(l, acceptor)
        }
        Transport::Unix(p) => Listening::Unix(
            std::os::unix::net::UnixListener::bind(p)
                .with_context(|| format!("binding {}", p.display()))?,
        ),
        Transport::Nats { port_file } => {
            let mut s = retry(|| tcp_connect(Ipv4Addr::LOCALHOST.into(), port_file))?;
            nats_hello(&mut s, true)?;
            Listening::Subscribed(Conn::Plain(s.into()))
        }
    })
}

fn accept(l: Listening) -> Result<Conn> {
    Ok(match l {
        Listening::Fifo(p) => Conn::Plain(
            std::fs::File::open(&p)
                .with_context(|| format!("opening {}", p.display()))?
                .into(),
        ),
        Listening::Tcp(l, None) => Conn::Plain(l.accept()?.0.into()),
        Listening::Tcp(l, Some(tls)) => Conn::Tls(
            tls.accept(l.accept()?.0)
                .map_err(|e| anyhow!("TLS handshake: {e}"))?,
        ),
        Listening::Unix(l) => Conn::Plain(l.accept()?.0.into()),
        Listening::Subscribed(conn) => conn,
    })
}

/// Retries for 20 s: the peer may not be listening yet.
fn retry<T>(mut attempt: impl FnMut() -> std::io::Result<T>) -> std::io::Result<T> {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        match attempt() {
            Ok(t) => return Ok(t),
            Err(e) if std::time::Instant::now() > deadline => return Err(e),
            Err(_) => std::thread::sleep(Duration::from_millis(5)),
        }
    }
}

/// Connects to the port on `ip` named in `port_file` (which may not exist yet).
fn tcp_connect(ip: IpAddr, port_file: &Path) -> std::io::Result<TcpStream> {
    let port = std::fs::read_to_string(port_file)?
        .trim()
        .parse::<u16>()
        .map_err(std::io::Error::other)?;
    let s = TcpStream::connect(SocketAddr::new(ip, port))?;
    s.set_nodelay(true)?;
    Ok(s)
}

fn connect(t: &Transport) -> Result<Conn> {
    Ok(match t {
        Transport::Fifo(p) => Conn::Plain(std::fs::OpenOptions::new().write(true).open(p)?.into()),
        Transport::Tcp { ip, port_file, tls } => {
            let s = retry(|| tcp_connect(*ip, port_file))?;
            match tls {
                None => Conn::Plain(s.into()),
                Some(_) => Conn::Tls(tls_connect(s)?),
            }
        }
        Transport::Unix(p) => {
            Conn::Plain(retry(|| std::os::unix::net::UnixStream::connect(p))?.into())
        }
        Transport::Nats { port_file } => {
            let mut s = retry(|| tcp_connect(Ipv4Addr::LOCALHOST.into(), port_file))?;
            nats_hello(&mut s, false)?;
            Conn::Plain(s.into())
        }
    })
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
            let mut input = In {
                end: end.clone(),
                flow_off: 0,
                buf: Vec::new(),
                stream: None,
                ended: false,
            };
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

/// Creates a FIFO.
pub fn mkfifo(path: &Path) -> Result<()> {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())?;
    // SAFETY: c is a valid NUL-terminated path.
    if unsafe { libc::mkfifo(c.as_ptr(), 0o600) } != 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("mkfifo {}", path.display()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_headers_have_the_asked_length_and_parse() {
        for len in [17, 45, 64, 1001] {
            let h = stream_header(42, len).unwrap();
            assert_eq!(h.len(), len);
            assert_eq!(parse_stream_header(&h).unwrap().unwrap(), (42, len));
        }
        assert!(stream_header(1, 8).is_err());
        assert!(parse_stream_header(b"HXA call=").is_none());
        assert!(parse_stream_header(b"garbage\n").unwrap().is_err());
    }

    #[test]
    fn envelopes_round_trip_and_checksums_catch_damage() {
        let payload: Vec<u8> = (0..1000u32).map(|i| (i * 7) as u8).collect();
        for seq in 0..30 {
            let (mut f, at) = envelope("relay-1", seq, 9, 12_345, &payload);
            assert_eq!(&f[at..], &payload[..]);
            let (len, call, off, range) = parse_envelope(&f).unwrap().unwrap();
            assert_eq!((len, call, off, range.start), (f.len(), 9, 12_345, at));
            assert!(parse_envelope(&f[..f.len() - 1]).is_none(), "incomplete");
            f[at + 3] ^= 1;
            assert!(parse_envelope(&f).unwrap().is_err(), "damaged payload");
        }
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
    }

    #[test]
    fn table_driven_crc32c_is_the_bitwise_one() {
        let bitwise = |bytes: &[u8]| {
            let mut crc = !0u32;
            for &b in bytes {
                crc ^= b as u32;
                for _ in 0..8 {
                    crc = (crc >> 1) ^ (0x82F6_3B78 & (crc & 1).wrapping_neg());
                }
            }
            !crc
        };
        let bytes: Vec<u8> = (0..3000u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        for len in (0..40).chain([255, 256, 1000, 2999, 3000]) {
            for start in [0, 1, 3, 7] {
                let b = &bytes[start..start + len.min(3000 - start)];
                assert_eq!(crc32c(b), bitwise(b), "len {len} start {start}");
            }
        }
    }

    #[test]
    fn nats_messages_parse_as_a_consumer_receives_them() {
        let (publish, at) = nats_pub(3, 640, b"pcm\r\nbytes");
        assert_eq!(&publish[..at], b"PUB audio.3.640 10\r\n");
        // What the server delivers for it, after a PING, in two pieces.
        let msg = b"PING\r\nMSG audio.3.640 1 10\r\npcm\r\nbytes\r\nMSG audio.end 1 0\r\n\r\n";
        assert_eq!(parse_nats(msg).unwrap().unwrap(), (6, NatsMsg::Control));
        assert!(parse_nats(&msg[6..30]).is_none(), "incomplete");
        let (len, audio) = parse_nats(&msg[6..]).unwrap().unwrap();
        assert_eq!(
            audio,
            NatsMsg::Audio {
                call: 3,
                audio_off: 640,
                payload: 22..32
            }
        );
        assert_eq!(&msg[6 + 22..6 + 32], b"pcm\r\nbytes");
        assert_eq!(
            parse_nats(&msg[6 + len..]).unwrap().unwrap(),
            (21, NatsMsg::End)
        );
        assert!(parse_nats(b"-ERR 'Slow Consumer'\r\n").unwrap().is_err());
        assert!(parse_nats(b"MSG other.1 1 2\r\nxy\r\n").unwrap().is_err());
    }

    #[test]
    fn envelope_headers_vary_in_length() {
        let lens: std::collections::BTreeSet<usize> =
            (0..50).map(|s| envelope("p", s, 1, 0, b"xy").1).collect();
        assert!(
            lens.len() > 10 && lens.iter().any(|l| l % 2 == 1),
            "{lens:?}"
        );
    }
}
