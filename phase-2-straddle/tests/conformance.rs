//! The kernel's moments equal the shared reference's on whole flows, whatever the chunking and
//! the syscall (real kernel): a moment split over two reads or writes, or over iovecs, is found
//! as if it had arrived whole. Timestamps are checked against the calls' own clocks.

use agent::clock::monotonic_ns;
use agent::schema::Dir;
use harness::audio;
use phase_2_straddle::event::Phase2Event;
use phase_2_straddle::tracer::Tracer;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use shared::{FingerprintConfig, Scanner};
use std::io::Write;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;

use harness::component::{syscall_io, tls_acceptor, tls_connect, IoCall as Call};
use harness::run::free_port;

/// One syscall moving `buf`, split into up to 4 iovecs at random for the vector families.
fn io(fd: i32, buf: *mut u8, len: usize, write: bool, call: Call, rng: &mut StdRng) -> isize {
    let mut cuts: Vec<usize> = (0..rng.gen_range(0..4))
        .map(|_| rng.gen_range(0..=len))
        .collect();
    cuts.sort_unstable();
    syscall_io(fd, buf, len, write, call, &cuts)
}

/// The truth of one call: its flow offset range, the caller's clock before and after it.
type Calls = Vec<(u64, u64, u64, u64)>;

/// How many runs of the tracer's programs were skipped: on a preemptible kernel, while one is
/// preempted mid-run, the same syscall program does not run for the next syscalls on that CPU
/// (the kernel's guard, `recursion_misses`), nor does a uprobe program (ours,
/// `uprobe_runs_skipped`; docs/kernels.md). A skipped call's moments are lost and the flow's
/// positions after it shift by its bytes, so a test that saw skips checks what still holds, and
/// says so. Without skips (always, on a kernel that does not preempt programs) it checks
/// everything.
fn skipped_runs(tracer: &Tracer, test: &str) -> u64 {
    let skipped = tracer.recursion_misses()
        + tracer
            .counters()
            .map_or(0, |(_, path)| path.get("uprobe_runs_skipped"));
    if skipped > 0 {
        eprintln!(
            "{test}: the kernel skipped {skipped} runs of the programs: positions not compared"
        );
    }
    skipped
}

/// The most moments `skips` lost calls can take: a call's own moments and those whose window
/// reaches into it, over the `skips` calls that hold the most.
fn lost_to_skips(want: &[(u64, u64)], calls: &Calls, window: u64, skips: u64) -> usize {
    let mut per_call: Vec<usize> = calls
        .iter()
        .map(|&(a, b, _, _)| want.iter().filter(|m| a < m.0 && m.0 < b + window).count())
        .collect();
    per_call.sort_unstable_by(|x, y| y.cmp(x));
    per_call.iter().take(skips as usize).sum()
}

/// With runs skipped: at most `lost_at_most` of the reference's moments missing, and at most
/// two found per call that left no mark (`unmarked`) that the reference does not have. A call
/// seen at one end is a gap in its flow, that end naming the flow (phase2.bpf.c); a call whose
/// syscall runs were both skipped, or whose uprobe entry run was, names nothing, so its flow's
/// carry joins across the gap, and a window across that junction can be a moment.
fn assert_signatures_hold(
    got: &[(u64, u64)],
    want: &[(u64, u64)],
    lost_at_most: usize,
    unmarked: u64,
    what: &str,
) {
    let signatures: std::collections::HashSet<u64> = want.iter().map(|m| m.1).collect();
    let foreign: Vec<_> = got.iter().filter(|m| !signatures.contains(&m.1)).collect();
    assert!(
        foreign.len() as u64 <= 2 * unmarked,
        "{what}: {} moments the reference does not have, at most {unmarked} calls unmarked: {:?}",
        foreign.len(),
        &foreign[..foreign.len().min(5)]
    );
    assert!(
        got.len() - foreign.len() + lost_at_most >= want.len(),
        "{what}: {} moments, reference {}, at most {lost_at_most} lost to the skipped runs",
        got.len(),
        want.len()
    );
}

/// Streams `bytes` from one fd to the other with random sizes and calls, traced.
fn stream(
    cfg: FingerprintConfig,
    bytes: &[u8],
    wfd: OwnedFd,
    rfd: OwnedFd,
    calls: &[Call],
    seed: u64,
) {
    let mut tracer = Tracer::start(&cfg, None).expect("loading phase 2 (run as root)");
    tracer.add_targets(&[std::process::id()]).unwrap();
    let total = bytes.len();
    let (w, r) = (wfd.as_raw_fd(), rfd.as_raw_fd());
    let reader_calls = calls.to_vec();
    let reader = std::thread::spawn(move || {
        let mut rng = StdRng::seed_from_u64(seed + 1);
        // At most the 64 KiB a call is scanned for (more is counted as truncated).
        let mut buf = vec![0u8; 65536];
        let (mut got, mut truth): (usize, Calls) = (0, Vec::new());
        while got < total {
            let n = rng.gen_range(1..=buf.len().min(total - got).max(1));
            let call = reader_calls[rng.gen_range(0..reader_calls.len())];
            let before = monotonic_ns();
            let k = io(r, buf.as_mut_ptr(), n, false, call, &mut rng);
            let after = monotonic_ns();
            assert!(k > 0, "read returned {k}");
            truth.push((got as u64, got as u64 + k as u64, before, after));
            got += k as usize;
        }
        truth
    });
    let mut rng = StdRng::seed_from_u64(seed);
    let mut data = bytes.to_vec();
    let (mut sent, mut wtruth): (usize, Calls) = (0, Vec::new());
    while sent < total {
        let n = match rng.gen_range(0..8) {
            0 => rng.gen_range(1..40),
            1..=5 => rng.gen_range(40..4096),
            _ => rng.gen_range(4096..=65536),
        }
        .min(total - sent);
        let call = calls[rng.gen_range(0..calls.len())];
        let before = monotonic_ns();
        let k = io(w, data[sent..].as_mut_ptr(), n, true, call, &mut rng);
        let after = monotonic_ns();
        assert!(k > 0, "write returned {k}");
        wtruth.push((sent as u64, sent as u64 + k as u64, before, after));
        sent += k as usize;
    }
    let rtruth = reader.join().unwrap();
    let mut events: Vec<Phase2Event> = Vec::new();
    tracer.drain(|e| events.push(e));

    let want: Vec<(u64, u64)> = Scanner::new(cfg)
        .feed_collect(bytes)
        .iter()
        .map(|m| (m.end, m.signature))
        .collect();
    assert!(want.len() > 100, "{} reference moments", want.len());
    let skipped = skipped_runs(&tracer, &format!("calls {calls:?}"));
    for (fd, truth, what) in [(w, &wtruth, "write"), (r, &rtruth, "read")] {
        let mine: Vec<&Phase2Event> = events
            .iter()
            .filter(|e| e.call.fd == fd && e.call.tgid == std::process::id())
            .collect();
        let mut got: Vec<(u64, u64)> = mine.iter().map(|e| (e.end, e.signature)).collect();
        got.sort_unstable();
        let missing: Vec<_> = want
            .iter()
            .filter(|m| got.binary_search(m).is_err())
            .take(5)
            .collect();
        let extra: Vec<_> = got
            .iter()
            .filter(|m| want.binary_search(m).is_err())
            .take(5)
            .collect();
        if skipped > 0 {
            let lost_at_most = lost_to_skips(&want, truth, cfg.window as u64, skipped);
            // A syscall leaves no mark only when both its runs were skipped.
            assert_signatures_hold(&got, &want, lost_at_most, skipped / 2, what);
            continue;
        }
        assert!(
            got == want,
            "{what} side, calls {calls:?}: {} moments, reference {}; first missing {missing:?}, first extra {extra:?}; kernel: {}",
            got.len(),
            want.len(),
            agent::pipeline::Kernel::health(&tracer).unwrap_or_default()
        );
        // Each moment is stamped inside the call that carried its anchor byte, between the
        // caller's clocks around it (how close to each end is BENCHMARKS.md's business).
        let mut lag: Vec<u64> = Vec::new();
        for e in &mine {
            let &(_, _, before, after) = truth
                .iter()
                .find(|(a, b, _, _)| *a < e.end && e.end <= *b)
                .expect("a call carries the anchor");
            assert!(
                (before..=after).contains(&e.call.t_ns),
                "{what}: stamp {} outside its call [{before}, {after}]",
                e.call.t_ns
            );
            lag.push(if what == "write" {
                e.call.t_ns - before
            } else {
                after - e.call.t_ns
            });
        }
        lag.sort_unstable();
        eprintln!(
            "{what} stamps after the call's start (writes) / before its end (reads): p50 {} ns",
            lag[lag.len() / 2]
        );
    }
}

fn audio_bytes(seconds: f64) -> Vec<u8> {
    audio_bytes_seeded(seconds, 9, 2)
}

/// Audio of its own: tests that run at once in this process, each tracing it, must not send the
/// same moments (one test's read and another's write of a moment in one process is a residence).
fn audio_bytes_seeded(seconds: f64, call_seed: u64, tail_seed: u64) -> Vec<u8> {
    let mut b = audio::speech_call(&audio::speech_corpus().unwrap(), seconds, call_seed).to_bytes();
    b.extend(audio::alaw_roundtrip(&audio::speech_like(8000, 10.0, tail_seed)).to_bytes());
    b
}

#[test]
fn pipe_with_read_write_readv_writev() {
    let (r, w) = std::io::pipe().unwrap();
    stream(
        FingerprintConfig::default(),
        &audio_bytes(30.0),
        w.into(),
        r.into(),
        &[Call::Plain, Call::Vector],
        1,
    );
}

#[test]
fn unix_socket_with_every_call() {
    let (a, b) = UnixStream::pair().unwrap();
    let calls = [Call::Plain, Call::Vector, Call::Socket, Call::Message];
    stream(
        FingerprintConfig::default(),
        &audio_bytes(30.0),
        a.into(),
        b.into(),
        &calls,
        2,
    );
}

#[test]
fn tcp_with_send_recv_and_messages_on_v6() {
    let listener = std::net::TcpListener::bind("[::1]:0").unwrap();
    let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let (server, _) = listener.accept().unwrap();
    stream(
        FingerprintConfig::default(),
        &audio_bytes(20.0),
        client.into(),
        server.into(),
        &[Call::Socket, Call::Message],
        3,
    );
}

#[test]
fn other_cluster_settings() {
    let (r, w) = std::io::pipe().unwrap();
    let cfg = FingerprintConfig {
        window: 64,
        keep_per_256: 128,
        ..Default::default()
    };
    stream(
        cfg,
        &audio_bytes(15.0),
        w.into(),
        r.into(),
        &[Call::Plain, Call::Vector],
        4,
    );
}

/// Reads `total` bytes from `rfd` in 64 KiB reads, on a thread.
fn drain_pipe(rfd: OwnedFd, total: usize) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 65536];
        let mut got = 0;
        while got < total {
            // SAFETY: buf is valid for its length; rfd is open.
            let n = unsafe { libc::read(rfd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
            assert!(n > 0);
            got += n as usize;
        }
    })
}

/// Traced processes also move logs, JSON and binary framing: on those bytes the event rate must
/// stay negligible next to speech's (about 2.5 moments per KiB).
#[test]
fn non_audio_traffic_does_not_flood_the_ring_buffer() {
    let (json, random) = harness::collisions::non_audio(4 << 20, 21);
    let mut bytes = json;
    bytes.extend(random);
    let mut tracer = Tracer::start(&FingerprintConfig::default(), None).unwrap();
    tracer.add_targets(&[std::process::id()]).unwrap();
    let (r, w) = std::io::pipe().unwrap();
    let (rfd, wfd): (OwnedFd, OwnedFd) = (r.into(), w.into());
    let total = bytes.len();
    let reader = drain_pipe(rfd, total);
    for chunk in bytes.chunks(4096) {
        // SAFETY: chunk is valid for its length; wfd is open.
        assert_eq!(
            unsafe { libc::write(wfd.as_raw_fd(), chunk.as_ptr().cast(), chunk.len()) },
            chunk.len() as isize
        );
    }
    reader.join().unwrap();
    // The writes on this pipe only: the other tests in this process trace the same pid with
    // tracers of their own, and the read end's number may be reused once the reader is done.
    let mut moments = 0;
    tracer.drain(|e| moments += usize::from(e.call.fd == wfd.as_raw_fd() && e.dir() == Dir::Write));
    let per_mib = moments as f64 / 8.0;
    eprintln!("non-audio: {moments} moments written over 8 MiB = {per_mib:.2} per MiB");
    assert!(per_mib <= 1.0, "{per_mib} moments per MiB");
}

/// A call of more than 64 KiB is scanned for its first 64 KiB; the rest is counted, the flow's
/// carry restarts after it, and positions stay true to the flow.
#[test]
fn calls_over_64_kib_are_counted_as_truncated() {
    let bytes = audio_bytes(20.0);
    let sizes = [10_000usize, 100_000, 10_000];
    let total: usize = sizes.iter().sum();
    let mut tracer = Tracer::start(&FingerprintConfig::default(), None).unwrap();
    tracer.add_targets(&[std::process::id()]).unwrap();
    let (r, w) = std::io::pipe().unwrap();
    let (rfd, wfd): (OwnedFd, OwnedFd) = (r.into(), w.into());
    let reader = drain_pipe(rfd, total);
    let mut at = 0;
    for n in sizes {
        // SAFETY: the range is inside `bytes`; wfd is open.
        let k = unsafe { libc::write(wfd.as_raw_fd(), bytes[at..].as_ptr().cast(), n) };
        assert_eq!(k, n as isize);
        at += n;
    }
    reader.join().unwrap();
    let mut ends = Vec::new();
    tracer.drain(|e| {
        if e.call.fd == wfd.as_raw_fd() {
            ends.push((e.end, e.signature))
        }
    });
    let (scan, path) = tracer.counters().unwrap();
    let scanned_to = (10_000 + 65_536) as u64;
    let w = FingerprintConfig::default().window as u64;
    let want: Vec<(u64, u64)> = Scanner::new(FingerprintConfig::default())
        .feed_collect(&bytes[..total])
        .iter()
        .filter(|m| m.end <= scanned_to || m.end >= 110_000 + w)
        .map(|m| (m.end, m.signature))
        .collect();
    ends.sort_unstable();
    if skipped_runs(&tracer, "calls over 64 KiB") > 0 {
        return;
    }
    assert_eq!(scan.get("truncated"), (100_000 - 65_536) as u64);
    assert_eq!(path.get("broken_flows"), 1);
    assert_eq!(ends, want);
}

/// TLS: the plaintext OpenSSL moves (SSL_write_ex / SSL_read_ex, random sizes) yields the
/// reference's moments at plaintext positions counted from 0; the handshake that opens each end
/// of the socket and the ciphertext after it yield none (the handshake's bytes once did, in
/// about 3 % of runs, and matched across the socket as a false hop).
#[test]
fn tls_plaintext_at_openssl_equals_the_reference() {
    let dir = harness::run::workdir("tls-conformance").unwrap();
    let pem = dir.join("test.pem");
    harness::pki::write_test_certificate(&pem).unwrap();
    let cfg = FingerprintConfig::default();
    let bytes = audio_bytes(20.0);
    let total = bytes.len();
    let mut tracer = Tracer::start(&cfg, None).expect("loading phase 2 (run as root)");
    tracer.add_targets(&[std::process::id()]).unwrap();

    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = tls_acceptor(&pem).unwrap();
    let server = std::thread::spawn(move || {
        let (tcp, _) = listener.accept().unwrap();
        let fd = tcp.as_raw_fd();
        let mut tls = acceptor.accept(tcp).unwrap();
        let mut rng = StdRng::seed_from_u64(21);
        let mut buf = vec![0u8; 65536];
        let mut got = Vec::new();
        while got.len() < total {
            let n = rng.gen_range(1..=buf.len());
            let k = tls.ssl_read(&mut buf[..n]).unwrap();
            got.extend_from_slice(&buf[..k]);
        }
        // The stream goes back too: its fd stays open, and unused by the other tests in this
        // process, until the events are read.
        (fd, got, tls)
    });
    let tcp = std::net::TcpStream::connect(addr).unwrap();
    let client_fd = tcp.as_raw_fd();
    let mut tls = tls_connect(tcp).unwrap();
    let mut rng = StdRng::seed_from_u64(20);
    let mut sent = 0;
    while sent < total {
        let n = match rng.gen_range(0..4) {
            0 => rng.gen_range(1..40),
            _ => rng.gen_range(40..=32768),
        }
        .min(total - sent);
        sent += tls.ssl_write(&bytes[sent..sent + n]).unwrap();
    }
    let (server_fd, got, _server_tls) = server.join().unwrap();
    assert!(got == bytes, "the TLS link delivered other bytes");
    let mut events: Vec<Phase2Event> = Vec::new();
    tracer.drain(|e| events.push(e));
    std::fs::remove_dir_all(&dir).ok();

    let want: Vec<(u64, u64)> = Scanner::new(cfg)
        .feed_collect(&bytes)
        .iter()
        .map(|m| (m.end, m.signature))
        .collect();
    for (fd, dir, what) in [
        (client_fd, 1, "SSL_write_ex"),
        (server_fd, 0, "SSL_read_ex"),
    ] {
        let mine: Vec<&Phase2Event> = events
            .iter()
            .filter(|e| e.call.fd == fd && e.call.dir == dir && e.call.tgid == std::process::id())
            .collect();
        let plain: Vec<_> = mine
            .iter()
            .filter(|e| e.call.tls == 0)
            .map(|e| (e.end, e.signature))
            .collect();
        assert!(
            plain.is_empty(),
            "{what}: moments outside the plaintext: {plain:?}"
        );
        let mut got: Vec<(u64, u64)> = mine.iter().map(|e| (e.end, e.signature)).collect();
        got.sort_unstable();
        let skipped = skipped_runs(&tracer, what);
        if skipped > 0 {
            // Calls not recorded one by one here: a tenth of the moments.
            assert_signatures_hold(&got, &want, want.len() / 10, skipped, what);
            continue;
        }
        assert!(
            got == want,
            "{what}: {} moments, reference {}",
            got.len(),
            want.len()
        );
    }
    let (_, path) = tracer.counters().unwrap();
    assert_eq!(path.get("tls_sockets"), 2, "{path}");
    assert_eq!(path.get("tls_handshakes"), 2, "{path}");
    assert!(path.get("ciphertext_skipped") > 0, "{path}");
}

/// Calls' records leave the kernel in batches of about 4 KiB per CPU: a lone call whose
/// batch is far from full still reaches the agent at its next drain (the agent sends every
/// CPU's batch first), with the reference's moments, and the kernel counts them as sent.
#[test]
fn a_lone_call_reaches_the_agent_at_the_next_drain() {
    let cfg = FingerprintConfig::default();
    let bytes = audio_bytes(5.0);
    // The first 2 KiB stretch that holds a moment of its own.
    let (at, want) = (0..bytes.len() - 2048)
        .step_by(2048)
        .find_map(|at| {
            let found: Vec<(u64, u64)> = Scanner::new(cfg)
                .feed_collect(&bytes[at..at + 2048])
                .iter()
                .map(|m| (m.end, m.signature))
                .collect();
            (!found.is_empty()).then_some((at, found))
        })
        .expect("speech has moments");
    let mut tracer = Tracer::start(&cfg, None).unwrap();
    let (r, w) = std::io::pipe().unwrap();
    // A child makes the call: the kernel's counters then hold its moments alone, whatever the
    // other tests in this process write.
    let (go_r, go_w) = std::io::pipe().unwrap();
    // SAFETY: the child only reads, writes and exits (async-signal-safe calls).
    let child = unsafe { libc::fork() };
    assert!(child >= 0, "fork");
    if child == 0 {
        let mut go = [0u8];
        // SAFETY: fds are open in the child; the range is inside `bytes`.
        unsafe {
            libc::read(go_r.as_raw_fd(), go.as_mut_ptr().cast(), 1);
            let k = libc::write(w.as_raw_fd(), bytes[at..].as_ptr().cast(), 2048);
            libc::_exit(i32::from(k != 2048));
        }
    }
    tracer.add_targets(&[child as u32]).unwrap();
    (&go_w).write_all(b"g").unwrap();
    let mut status = 0;
    // SAFETY: child is our child process.
    assert_eq!(unsafe { libc::waitpid(child, &mut status, 0) }, child);
    assert_eq!(status, 0, "the child's write");
    let mut got = Vec::new();
    tracer.drain(|e| {
        if e.call.fd == w.as_raw_fd() && e.call.tgid == child as u32 {
            got.push((e.end, e.signature));
        }
    });
    got.sort_unstable();
    if skipped_runs(&tracer, "a lone call") == 0 {
        assert_eq!(got, want);
        let (scan, _) = tracer.counters().unwrap();
        assert_eq!(scan.get("moments"), want.len() as u64);
    }
    drop(r);
}

/// Which end of a call the tracer does not see.
#[derive(Clone, Copy, Debug)]
enum LostEnd {
    Entry,
    Exit,
}

/// Where the lost call reads: a pipe, or OpenSSL's SSL_read on a TLS socket.
#[derive(Clone, Copy, Debug)]
enum GapLink {
    Pipe,
    Tls,
}

/// A call whose entry or exit the tracer does not see (on a preemptible kernel the guard skips a
/// program's run while another is preempted on the CPU; a call in flight when tracing begins has
/// no entry) is a gap in its flow: no moment joins the bytes on either side of it. Past a lost
/// entry the positions stay true (the syscall's exit says how many bytes moved); past a lost
/// exit or return they shift by the call's bytes. The lost run is made for real: the tracer
/// follows threads by command name, and the reading thread is renamed out of it for one end of
/// a read it is blocked in. (A lost SSL entry is not a gap: its return cannot name the socket.)
#[test]
fn a_call_seen_at_one_end_only_is_a_gap_no_moment_crosses() {
    for (link, lost, seed) in [
        (GapLink::Pipe, LostEnd::Entry, 61),
        (GapLink::Pipe, LostEnd::Exit, 71),
        (GapLink::Tls, LostEnd::Exit, 81),
    ] {
        gap_in_a_flow(link, lost, seed);
    }
}

fn gap_in_a_flow(link: GapLink, lost: LostEnd, seed: u64) {
    use std::io::Read;
    use std::sync::mpsc;
    const TRACED: &str = "p2gap-reader";
    let what = format!("{link:?}, {lost:?} lost");
    let cfg = FingerprintConfig::default();
    let bytes = audio_bytes_seeded(3.0, seed, seed + 1);
    let moments = |from: usize, to: usize, at: usize| -> Vec<(u64, u64)> {
        Scanner::new(cfg)
            .feed_collect(&bytes[from..to])
            .iter()
            .map(|m| (m.end + at as u64, m.signature))
            .collect()
    };
    // Before the gap, the lost call (one TLS record's most), after it (the rest). The gap is
    // placed where the test can tell: joined, the bytes on either side of it hold a moment whose
    // window crosses the junction (a moment depends on its window's bytes alone).
    let gap = 16384;
    let w = cfg.window;
    let before = (bytes.len() / 3..bytes.len() / 2)
        .find(|&before| {
            let junction = [
                &bytes[before - w..before],
                &bytes[before + gap..before + gap + w],
            ];
            Scanner::new(cfg)
                .feed_collect(&junction.concat())
                .iter()
                .any(|m| (w + 1..2 * w).contains(&(m.end as usize)))
        })
        .expect("a junction a moment crosses");
    let mut tracer = Tracer::start(&cfg, Some("p2gap")).expect("loading phase 2 (run as root)");
    if let GapLink::Tls = link {
        // The tracer probes libssl in the processes it finds by name: this one, so named for as
        // long as it takes to look.
        let leader = format!("/proc/self/task/{}/comm", std::process::id());
        let was = std::fs::read_to_string(&leader).unwrap();
        std::fs::write(&leader, "p2gap-test").unwrap();
        tracer.refresh().unwrap();
        std::fs::write(&leader, was.trim_end()).unwrap();
        assert_eq!(tracer.tls_probes(), Some((1, 0)), "{what}: libssl probed");
    }
    // The writer's end, and the reader's stream (its fd as the tracer names the flow).
    type Opens<T> = Box<dyn FnOnce() -> T + Send>;
    type Ends = (Opens<Box<dyn Write>>, Opens<(i32, Box<dyn Read>)>);
    let (writer_end, reader_end): Ends = match link {
        GapLink::Pipe => {
            let (r, w) = std::io::pipe().unwrap();
            (
                Box::new(move || Box::new(w) as Box<dyn Write>),
                Box::new(move || (r.as_raw_fd(), Box::new(r) as Box<dyn Read>)),
            )
        }
        GapLink::Tls => {
            let dir = harness::run::workdir("tls-gap").unwrap();
            let pem = dir.join("test.pem");
            harness::pki::write_test_certificate(&pem).unwrap();
            let acceptor = tls_acceptor(&pem).unwrap();
            std::fs::remove_dir_all(&dir).ok();
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
            let accept = move || {
                let (tcp, _) = listener.accept().unwrap();
                let fd = tcp.as_raw_fd();
                (fd, Box::new(acceptor.accept(tcp).unwrap()) as Box<dyn Read>)
            };
            // The client's handshake waits for the reader's.
            let handshake = std::thread::spawn(move || tls_connect(client).unwrap());
            (
                Box::new(move || Box::new(handshake.join().unwrap()) as Box<dyn Write>),
                Box::new(accept),
            )
        }
    };
    // The reader: its handshake, if any, then reads of the sizes it is sent, each one read or
    // until that many bytes came; says its thread and fd first, then each read's count.
    let (to_reader, orders) = mpsc::channel::<(usize, bool)>();
    let (counts, from_reader) = mpsc::channel::<usize>();
    let reader = std::thread::spawn(move || {
        // SAFETY: names the calling thread; the name is NUL-terminated.
        unsafe { libc::prctl(libc::PR_SET_NAME, c"p2gap-reader".as_ptr()) };
        let (fd, mut stream) = reader_end();
        // SAFETY: gettid has no preconditions.
        counts.send(unsafe { libc::gettid() } as usize).unwrap();
        counts.send(fd as usize).unwrap();
        let mut buf = vec![0u8; 65536];
        for (n, once) in orders {
            let mut got = 0;
            while got < n {
                let k = stream.read(&mut buf[..(n - got).min(65536)]).unwrap();
                assert!(k > 0, "the stream ended");
                got += k;
                if once {
                    break;
                }
            }
            counts.send(got).unwrap();
        }
    });
    let mut writer = writer_end();
    let (tid, fd) = (
        from_reader.recv().unwrap(),
        from_reader.recv().unwrap() as i32,
    );
    let name = |n: &str| std::fs::write(format!("/proc/self/task/{tid}/comm"), n).unwrap();
    // Blocked in its read: /proc says the syscall it sleeps in (x86-64: read is 0, recvfrom 45,
    // which Rust's TcpStream reads with).
    let blocked_in_read = || {
        for _ in 0..2000 {
            let s = std::fs::read_to_string(format!("/proc/self/task/{tid}/syscall")).unwrap();
            if s.starts_with("0 ") || s.starts_with("45 ") {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        panic!("{what}: the reader never blocked in read()");
    };
    to_reader.send((before, false)).unwrap();
    writer.write_all(&bytes[..before]).unwrap();
    assert_eq!(from_reader.recv().unwrap(), before);
    // The lost call: one read of the gap, the reader out of the traced names at one end.
    match lost {
        LostEnd::Entry => name("untraced"),
        LostEnd::Exit => name(TRACED),
    }
    to_reader.send((gap, true)).unwrap();
    blocked_in_read();
    match lost {
        LostEnd::Entry => name(TRACED),
        LostEnd::Exit => name("untraced"),
    }
    writer.write_all(&bytes[before..before + gap]).unwrap();
    writer.flush().unwrap();
    assert_eq!(
        from_reader.recv().unwrap(),
        gap,
        "{what}: the lost read took the gap whole"
    );
    name(TRACED);
    let after = before + gap;
    to_reader.send((bytes.len() - after, false)).unwrap();
    writer.write_all(&bytes[after..]).unwrap();
    assert_eq!(from_reader.recv().unwrap(), bytes.len() - after);
    drop(to_reader);
    reader.join().unwrap();

    let mut got: Vec<(u64, u64)> = Vec::new();
    tracer.drain(|e| {
        if e.call.fd == fd && e.call.tgid == std::process::id() && e.dir() == Dir::Read {
            got.push((e.end, e.signature));
        }
    });
    got.sort_unstable();
    // Past a lost exit the flow does not know the call's bytes: its positions shift by them.
    let shift = match lost {
        LostEnd::Entry => 0,
        LostEnd::Exit => gap,
    };
    let mut want = moments(0, before, 0);
    want.extend(moments(after, bytes.len(), after - shift));
    let (_, path) = tracer.counters().unwrap();
    let skipped = skipped_runs(&tracer, &what);
    if skipped > 0 {
        assert_signatures_hold(&got, &want, want.len() / 10, skipped, &what);
        return;
    }
    assert_eq!(got, want, "{what}");
    let counter = match lost {
        LostEnd::Entry => "unseen_calls",
        LostEnd::Exit => "unseen_exits",
    };
    // An SSL_read's return, and the read() inside it.
    let calls = match link {
        GapLink::Pipe => 1,
        GapLink::Tls => 2,
    };
    assert_eq!(path.get(counter), calls, "{what}: {counter}");
}

/// A Go toolchain the Go TLS tests build their relay with: its version (`go1.19`) and its `go`.
struct GoToolchain {
    version: &'static str,
    go: &'static str,
}

/// Each Go TLS test, once per Go toolchain: a module of thin tests per toolchain, named by its
/// version (`go1_23::go_tls_…`), whose bodies are the shared functions below.
macro_rules! go_toolchains {
    ($($module:ident: $version:literal at $go:literal;)*) => {$(
        mod $module {
            use super::{go_tls_relays, go_tls_returns, GoToolchain};
            const GO: GoToolchain = GoToolchain { version: $version, go: $go };

            #[test]
            fn go_tls_returns_are_the_rets_go_objdump_lists() {
                go_tls_returns(&GO);
            }

            #[test]
            fn go_tls_relay_plaintext_equals_the_reference_and_makes_hops() {
                go_tls_relays(&GO, false, 31);
            }

            #[test]
            fn go_tls_stripped_pie_relay_plaintext_equals_the_reference_and_makes_hops() {
                go_tls_relays(&GO, true, 41);
            }
        }
    )*};
}

// Debian's golang-go (on PATH) and bookworm-backports' golang-1.23-go (not on PATH): both
// installed by scripts/setup.sh.
go_toolchains! {
    go1_19: "go1.19" at "go";
    go1_23: "go1.23" at "/usr/lib/go-1.23/bin/go";
}

impl GoToolchain {
    /// `go` with these arguments; GOTOOLCHAIN=local: never another toolchain downloaded.
    fn command(&self, args: &[&str]) -> std::process::Command {
        let mut command = std::process::Command::new(self.go);
        command.args(args).env("GOTOOLCHAIN", "local");
        command
    }

    /// Whether the toolchain is installed. A missing one fails the test under CI (CI=true), and
    /// elsewhere skips it, saying so.
    fn installed(&self) -> bool {
        let present = self
            .command(&["version"])
            .output()
            .is_ok_and(|o| o.status.success());
        let ci = std::env::var("CI").is_ok_and(|v| v == "true");
        assert!(
            present || !ci,
            "{}: {} is not installed: run `bash scripts/setup.sh`",
            self.version,
            self.go
        );
        if !present {
            eprintln!(
                "{}: {} is not installed: test skipped",
                self.version, self.go
            );
        }
        present
    }

    /// The Go version it builds with, as `runtime.buildVersion` says it (`go1.19.8`).
    fn full_version(&self) -> String {
        let out = self.command(&["env", "GOVERSION"]).output().unwrap();
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    }

    /// The Go TLS relay (`harness/relays/go/relay.go`) built by this toolchain, once per test
    /// binary: as Go builds by default (a fixed executable with its symbol table) or, with
    /// `stripped_pie`, as images often ship it (position-independent, `-ldflags=-s -w`); `None`
    /// when the toolchain is missing and may be (`installed`).
    fn relay(&self, stripped_pie: bool) -> Option<std::path::PathBuf> {
        static RELAYS: std::sync::Mutex<Vec<(&str, bool, std::path::PathBuf)>> =
            std::sync::Mutex::new(Vec::new());
        if !self.installed() {
            return None;
        }
        // Held while building: one build at a time.
        let mut relays = RELAYS.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((.., path)) = relays
            .iter()
            .find(|(v, p, _)| *v == self.version && *p == stripped_pie)
        {
            return Some(path.clone());
        }
        let (mode, flags, label) = if stripped_pie {
            ("pie", "-s -w", "stripped-pie")
        } else {
            ("exe", "", "exe")
        };
        let name = format!("go-tls-relay-{}-{label}", self.version);
        let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"));
        let out = dir.join(&name);
        // Built aside, then renamed over: another test binary (nextest runs one per test) may be
        // running the previous build.
        let built = dir.join(format!("{name}.{}", std::process::id()));
        let status = harness::run::go_relay_build(self.go, mode, flags, &built)
            .status()
            .unwrap();
        assert!(status.success(), "{}: go build: {status}", self.version);
        std::fs::rename(&built, &out).unwrap();
        relays.push((self.version, stripped_pie, out.clone()));
        Some(out)
    }
}

/// The RETs found by decoding the relay's (*Conn).Read and Write are those Go's own
/// disassembler lists, and the version is the toolchain's.
fn go_tls_returns(toolchain: &GoToolchain) {
    use object::{Object, ObjectSection};
    use phase_2_straddle::go_tls::{inspect, FUNCTIONS};
    let Some(relay) = toolchain.relay(false) else {
        return;
    };
    let go = inspect(&relay).unwrap().expect("the relay has crypto/tls");
    assert_eq!(go.version, toolchain.full_version());
    assert!(
        go.version.starts_with(&format!("{}.", toolchain.version)),
        "{} is not the {} the toolchain is named for",
        go.version,
        toolchain.version
    );
    assert!(go.layout.is_some(), "{} is placed", go.version);
    let bytes = std::fs::read(&relay).unwrap();
    let elf = object::File::parse(&*bytes).unwrap();
    let text = elf.section_by_name(".text").unwrap();
    let (text_offset, _) = text.file_range().unwrap();
    for ((name, _), f) in FUNCTIONS.iter().zip(&go.functions) {
        let pattern = format!(
            "^{}$",
            name.replace('(', "\\(")
                .replace(')', "\\)")
                .replace('*', "\\*")
        );
        let out = toolchain
            .command(&["tool", "objdump", "-s", &pattern])
            .arg(&relay)
            .output()
            .unwrap();
        assert!(out.status.success(), "go tool objdump: {out:?}");
        // "  conn.go:1190  0x4f6a3d  c3  RET": the address is the second column.
        let listed: Vec<u64> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| l.split_whitespace().last() == Some("RET"))
            .map(|l| {
                let address = l.split_whitespace().nth(1).unwrap();
                let address = u64::from_str_radix(address.trim_start_matches("0x"), 16).unwrap();
                address - text.address() + text_offset
            })
            .collect();
        assert!(!listed.is_empty(), "{name}: objdump lists no RET");
        assert_eq!(f.returns, listed, "{name}");
        for &ret in &f.returns {
            assert_eq!(bytes[ret as usize], 0xc3, "{name}: RET at {ret:#x}");
        }
        assert!(f.entry < f.returns[0], "{name}");
    }
}

/// The fd of `pid`'s TCP socket whose (local port, remote port) fit `which`.
fn tcp_fd(pid: u32, which: impl Fn(u16, u16) -> bool) -> i32 {
    use procfs::net::TcpNetEntries;
    use procfs::FromReadSI;
    use std::os::unix::fs::MetadataExt;
    let TcpNetEntries(table) = TcpNetEntries::from_file(
        format!("/proc/{pid}/net/tcp"),
        procfs::current_system_info(),
    )
    .unwrap();
    let inode = table
        .iter()
        .find(|e| which(e.local_address.port(), e.remote_address.port()))
        .expect("the socket")
        .inode;
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .flatten()
        .find(|d| std::fs::metadata(d.path()).is_ok_and(|m| m.ino() == inode))
        .and_then(|d| d.file_name().to_str()?.parse().ok())
        .expect("the socket's fd")
}

/// A connection to what listens on `port` of the loopback, once something does.
fn connect_when_listening(port: u16) -> std::net::TcpStream {
    for _ in 0..200 {
        if let Ok(s) = std::net::TcpStream::connect(("127.0.0.1", port)) {
            return s;
        }
        std::thread::sleep(std::time::Duration::from_millis(25));
    }
    panic!("nothing listens on port {port}");
}

/// Go's crypto/tls seen from inside, on the real Go relay: an OpenSSL client sends audio over
/// TLS to a first relay (TLS in, TLS out: Go's Read and Write), which passes it over TLS to a
/// second (TLS in, TCP out), which passes it in the clear to this test. Each relay's plaintext
/// read and write is the reference's moments on the right socket (no ciphertext scanned), and the
/// matcher reports every hop: transit client → relay 1 → relay 2 → sink, residence in each relay.
/// With `stripped_pie`, through position-independent relays stripped of their symbol tables: the
/// probes are placed from the Go runtime's own tables, and the Conn's itabs are where the process
/// loaded them.
fn go_tls_relays(toolchain: &GoToolchain, stripped_pie: bool, seed: u64) {
    use agent::pipeline::{Kernel, Matched, MATCH_WINDOW};
    use agent::schema::HopKind;
    use phase_2_straddle::links::{Observed, Seen};
    use phase_2_straddle::matcher::Matcher;
    use std::io::Read;
    let Some(relay) = toolchain.relay(stripped_pie) else {
        return;
    };
    let dir = harness::run::workdir("go-tls-conformance").unwrap();
    let pem = dir.join("test.pem");
    harness::pki::write_test_certificate(&pem).unwrap();
    let cfg = FingerprintConfig::default();
    let bytes = audio_bytes_seeded(20.0, seed, seed + 1);
    let total = bytes.len();
    let me = std::process::id();

    let sink = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let (p1, p2, p3) = (
        free_port().unwrap(),
        free_port().unwrap(),
        sink.local_addr().unwrap().port(),
    );
    let spawn = |service: String| {
        let child = std::process::Command::new(&relay)
            .arg(&pem)
            .arg(service)
            .spawn()
            .unwrap();
        // Killed when the test ends, passed or not.
        struct Kill(std::process::Child);
        impl Drop for Kill {
            fn drop(&mut self) {
                let _ = self.0.kill();
                let _ = self.0.wait();
            }
        }
        Kill(child)
    };
    let relay1 = spawn(format!("tls:{p1}>tls:{p2}"));
    let relay2 = spawn(format!("tls:{p2}>tcp:{p3}"));
    let (r1, r2) = (relay1.0.id(), relay2.0.id());
    let mut tracer = Tracer::start(&cfg, None).expect("loading phase 2 (run as root)");
    tracer.add_targets(&[me, r1, r2]).unwrap();
    assert_eq!(
        tracer.go_tls_probes(),
        Some((2, 0, 0)),
        "both relays probed"
    );

    let reader = std::thread::spawn(move || {
        let (mut tcp, _) = sink.accept().unwrap();
        let fd = tcp.as_raw_fd();
        // Reads of at most the 64 KiB a call is scanned for.
        let (mut got, mut buf) = (Vec::new(), vec![0u8; 16384]);
        while got.len() < total {
            let k = tcp.read(&mut buf).unwrap();
            assert!(k > 0, "the relay closed early");
            got.extend_from_slice(&buf[..k]);
        }
        (fd, got, tcp)
    });
    let tcp = connect_when_listening(p1);
    let (client_fd, client_port) = (tcp.as_raw_fd(), tcp.local_addr().unwrap().port());
    let mut tls = tls_connect(tcp).unwrap();
    let mut rng = StdRng::seed_from_u64(22);
    let mut sent = 0;
    while sent < total {
        let n = rng.gen_range(40..=16384).min(total - sent);
        sent += tls.ssl_write(&bytes[sent..sent + n]).unwrap();
        // Paced, as audio is (faster than real time still): a chunk crosses the chain before the
        // next, so five busy processes do not contend for two CPUs. On a preemptible kernel under
        // emulation that contention preempts the programs mid-run: at 5 ms a chunk, 7.3.4 under
        // qemu skipped 15 to 49 runs a test.
        std::thread::sleep(std::time::Duration::from_millis(40));
    }
    let (sink_fd, got, _sink_tcp) = reader.join().unwrap();
    assert!(got == bytes, "the relays delivered other bytes");
    // Every socket is still open: the links are resolved as the events are drained.
    let fds = [
        (
            r1,
            tcp_fd(r1, |l, r| l == p1 && r == client_port),
            0,
            1,
            "relay 1 Go Read",
        ),
        (r1, tcp_fd(r1, |_, r| r == p2), 1, 1, "relay 1 Go Write"),
        (
            r2,
            tcp_fd(r2, |l, r| l == p2 && r != 0),
            0,
            1,
            "relay 2 Go Read",
        ),
        (
            r2,
            tcp_fd(r2, |_, r| r == p3),
            1,
            0,
            "relay 2 write syscall",
        ),
    ];
    let mut observed: Vec<Observed> = Vec::new();
    Kernel::drain(&mut tracer, &mut |o| observed.push(o));
    let seen: Vec<&Seen> = observed
        .iter()
        .filter_map(|o| match o {
            Observed::Moment(s) => Some(s),
            Observed::OpaqueSockets(_) => None,
        })
        .collect();
    let health = Kernel::health(&tracer).unwrap();
    std::fs::remove_dir_all(&dir).ok();

    let want: Vec<(u64, u64)> = Scanner::new(cfg)
        .feed_collect(&bytes)
        .iter()
        .map(|m| (m.end, m.signature))
        .collect();
    let skipped = skipped_runs(&tracer, "Go TLS relays");
    for (pid, fd, dir, tls, what) in fds {
        let mine: Vec<&Phase2Event> = seen
            .iter()
            .map(|s| &s.e)
            .filter(|e| e.call.tgid == pid && e.call.fd == fd && e.call.dir == dir)
            .collect();
        let wrong: Vec<_> = mine.iter().filter(|e| e.call.tls != tls).take(3).collect();
        assert!(
            wrong.is_empty(),
            "{what}: moments taken elsewhere: {wrong:?}"
        );
        let mut got: Vec<(u64, u64)> = mine.iter().map(|e| (e.end, e.signature)).collect();
        got.sort_unstable();
        if skipped > 0 {
            // Calls not recorded one by one here: a tenth of the moments.
            assert_signatures_hold(&got, &want, want.len() / 10, skipped, what);
            continue;
        }
        let missing: Vec<_> = want.iter().filter(|m| !got.contains(m)).take(5).collect();
        let extra: Vec<_> = got.iter().filter(|m| !want.contains(m)).take(5).collect();
        assert!(
            got == want,
            "{what} (pid {pid} fd {fd}): {} moments, reference {}; first missing {missing:?}, \
             first extra {extra:?}; {health}",
            got.len(),
            want.len()
        );
    }
    // No relay moment on any other fd: the ciphertext syscalls are not scanned.
    let elsewhere = seen
        .iter()
        .filter(|s| [r1, r2].contains(&s.e.call.tgid))
        .filter(|s| {
            !fds.iter()
                .any(|f| (f.0, f.1, f.2) == (s.e.call.tgid, s.e.call.fd, s.e.call.dir))
        })
        .count();
    assert_eq!(elsewhere, 0, "relay moments on other fds; {health}");

    let mut matched: Matched<Matcher> = Matched::new(MATCH_WINDOW);
    for o in observed {
        matched.push(o);
    }
    let mut hops = Vec::new();
    matched.close_due(None, &mut hops);
    // (transit, from pid, from fd, to pid, to fd) → hops.
    let mut per_hop: std::collections::HashMap<(bool, u32, i32, u32, i32), usize> =
        std::collections::HashMap::new();
    for h in &hops {
        assert!(h.latency_ns >= 0, "{h:?}");
        *per_hop
            .entry((
                h.kind == HopKind::Transit,
                h.from.pid,
                h.from.fd,
                h.to.pid,
                h.to.fd,
            ))
            .or_default() += 1;
    }
    let [(_, r1_in, ..), (_, r1_out, ..), (_, r2_in, ..), (_, r2_out, ..)] = fds;
    let expected = [
        (true, me, client_fd, r1, r1_in),
        (false, r1, r1_in, r1, r1_out),
        (true, r1, r1_out, r2, r2_in),
        (false, r2, r2_in, r2, r2_out),
        (true, r2, r2_out, me, sink_fd),
    ];
    eprintln!(
        "hops per (transit, from pid, fd, to pid, fd): {per_hop:?}; reference moments {}",
        want.len()
    );
    for hop in expected {
        let n = per_hop.get(&hop).copied().unwrap_or(0);
        // With skipped runs a hop needs both its ends seen, and this process's own calls (the
        // client and the sink, hundreds of them) are skipped too: most hops, not nearly all.
        assert!(
            if skipped > 0 {
                n * 2 >= want.len()
            } else {
                n == want.len()
            },
            "{hop:?}: {n} hops, {} reference moments; {health}",
            want.len()
        );
    }
    let unexpected: Vec<_> = per_hop.keys().filter(|k| !expected.contains(k)).collect();
    assert!(unexpected.is_empty(), "hops nobody made: {unexpected:?}");
    let (_, path) = tracer.counters().unwrap();
    assert!(path.get("go_tls_calls") > 0, "{path}");
    assert_eq!(path.get("go_tls_unattributed"), 0, "{path}");
    drop(tls);
}
