//! The agent and collector as an operator runs them: a flag value that makes no sense is refused
//! with one line naming it, before anything starts (no panic, no backtrace).

use std::process::Command;

const EXE: &str = env!("CARGO_BIN_EXE_phase-3-multi-node");

#[test]
fn nonsense_values_are_refused_with_one_line() {
    let collector = ["collector", "--listen", "127.0.0.1:0"];
    let agent = [
        "agent",
        "--node",
        "n1",
        "--collector",
        "http://127.0.0.1:9",
        "--pid",
        "1",
    ];
    let dialing = ["agent", "--node", "n1", "--pid", "1"];
    for (process, flag, value, why) in [
        (
            &collector[..],
            "--duration",
            "nan",
            "it must be finite and not negative",
        ),
        (
            &collector[..],
            "--duration",
            "inf",
            "it must be finite and not negative",
        ),
        (
            &collector[..],
            "--duration",
            "1e300",
            "is longer than 100 years",
        ),
        (
            &collector[..],
            "--report-every",
            "inf",
            "it must be finite and not negative",
        ),
        (
            &collector[..],
            "--report-every",
            "1e-12",
            "is shorter than 1 ms",
        ),
        (
            &agent[..],
            "--duration",
            "-5",
            "it must be finite and not negative",
        ),
        (&agent[..], "--skew-ppm", "nan", "is not a finite number"),
        (&dialing[..], "--collector", "not a url", "is not a URL"),
        (
            &dialing[..],
            "--collector",
            "ftp://c:1",
            "must start with http:// or https://",
        ),
        (
            &dialing[..],
            "--collector",
            "http://c",
            "must name a host and a port",
        ),
        (
            &collector[..],
            "--max-nodes",
            "0",
            "is not a whole number of at least 1",
        ),
    ] {
        let o = Command::new(EXE)
            .args(process)
            .arg(format!("{flag}={value}"))
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(
            o.status.code(),
            Some(2),
            "{process:?} {flag} {value}: {err}"
        );
        let first = err.lines().next().unwrap_or_default();
        assert!(
            first.starts_with(&format!("error: invalid value '{value}' for '{flag}"))
                && first.contains(why),
            "{process:?} {flag} {value}: {err}"
        );
        assert!(!err.contains("panicked"), "{err}");
    }
}

/// TLS files and an http:// address (or an https:// address without them) would fail every
/// connect once tracing had started: refused first, in one line, with nothing traced.
#[test]
fn a_collector_address_that_disagrees_with_tls_is_refused_before_tracing() {
    let o = Command::new(EXE)
        .args(["agent", "--node", "n1", "--pid", "1", "--duration", "1"])
        .args(["--collector", "https://127.0.0.1:9"])
        .output()
        .unwrap();
    let (out, err) = (
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr),
    );
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert_eq!(
        err.trim_end(),
        "phase-3-multi-node: --collector https://127.0.0.1:9: an https:// collector needs \
         --tls-ca, --tls-cert and --tls-key"
    );
    assert!(!out.contains("tracing"), "{out}");
}

/// A replica listed twice would own two shares; refused in one line before tracing.
#[test]
fn a_collector_replica_listed_twice_is_refused_before_tracing() {
    let o = Command::new(EXE)
        .args(["agent", "--node", "n1", "--pid", "1", "--duration", "1"])
        .args(["--collector", "http://c-0:1", "--collector", "http://c-1:1"])
        .args(["--collector", "http://c-0:1"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert_eq!(
        err.trim_end(),
        "phase-3-multi-node: --collector http://c-0:1 is given twice"
    );
    // The replicas as a list in the environment (a config file takes a YAML list).
    let o = Command::new(EXE)
        .args(["agent", "--node", "n1", "--pid", "1", "--duration", "1"])
        .env("AUDIO_TRACER_COLLECTOR", "http://c-1:1,http://c-1:1")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(
        err.trim_end(),
        "phase-3-multi-node: --collector http://c-1:1 is given twice"
    );
}

/// The agent matches nothing itself (the collector does): the flags of phase 1 and 2's local
/// report are not its flags, rather than flags it would take and ignore.
#[test]
fn the_agent_has_no_local_report_flags() {
    for flag in [
        "--json=hops.jsonl",
        "--report-every=1",
        "--match-window-ms=500",
    ] {
        let o = Command::new(EXE)
            .args(["agent", "--node", "n1", "--collector", "http://127.0.0.1:9"])
            .args(["--pid", "1", flag])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{flag}: {err}");
        assert!(
            err.starts_with("error: unexpected argument"),
            "{flag}: {err}"
        );
    }
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// Listen addresses as operators write them: a host name resolved, `:PORT` on every interface.
#[test]
fn listen_addresses_take_host_names_and_bare_ports() {
    use std::io::{BufRead, Read, Write};
    let (grpc, metrics) = (free_port(), free_port());
    let mut collector = Command::new(EXE)
        .args(["collector", "--listen", &format!("localhost:{grpc}")])
        .args(["--metrics", &format!(":{metrics}"), "-d", "20"])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(collector.stderr.take().unwrap()).lines();
    let first = lines.next().unwrap().unwrap();
    assert!(
        first.ends_with(&format!(
            " INFO collector listening on 127.0.0.1:{grpc}; Ctrl-C to stop"
        )),
        "{first}"
    );
    std::net::TcpStream::connect(("127.0.0.1", grpc)).unwrap();
    // Every interface: 127.0.0.2 reaches a socket on 0.0.0.0, not one on 127.0.0.1.
    let mut http = std::net::TcpStream::connect(("127.0.0.2", metrics)).unwrap();
    http.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").unwrap();
    let mut reply = String::new();
    http.read_to_string(&mut reply).unwrap();
    collector.kill().ok();
    collector.wait().ok();
    assert!(
        reply.starts_with("HTTP/1.0 200") || reply.starts_with("HTTP/1.1 200"),
        "{reply}"
    );
}

/// A busy port is one line naming the address, before the collector says it listens.
#[test]
fn a_busy_port_is_one_line_naming_the_address() {
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = busy.local_addr().unwrap();
    let free = format!("127.0.0.1:{}", free_port());
    for flags in [
        ["--listen", &addr.to_string(), "--metrics", &free],
        ["--listen", &free, "--metrics", &addr.to_string()],
    ] {
        let o = Command::new(EXE)
            .arg("collector")
            .args(flags)
            .args(["-d", "5"])
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(1), "{flags:?}");
        assert_eq!(
            String::from_utf8_lossy(&o.stderr),
            format!(
                "phase-3-multi-node: cannot listen on {addr}: Address already in use (os error 98)\n"
            ),
            "{flags:?}"
        );
    }
}

/// The mutual-TLS files go together, wherever each comes from: the config file and the flags
/// add up, and a partial set is one line naming what is missing.
#[test]
fn tls_files_go_together_from_flags_or_the_config_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("agent.yaml");
    std::fs::write(
        &file,
        "collector: https://collector:50051\ntls-ca: /no-such-dir/ca.crt\n",
    )
    .unwrap();
    let agent = |flags: &[&str]| {
        let o = Command::new(EXE)
            .args(["agent", "--node", "n1", "-p", "1", "--config"])
            .arg(&file)
            .args(flags)
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(1));
        String::from_utf8_lossy(&o.stderr).into_owned()
    };
    assert_eq!(
        agent(&["--tls-cert", "/no-such-dir/n1.crt"]),
        "phase-3-multi-node: --tls-ca, --tls-cert, --tls-key go together; given only --tls-ca, --tls-cert\n"
    );
    // All three: the first file is read (and is not there).
    let err = agent(&[
        "--tls-cert",
        "/no-such-dir/n1.crt",
        "--tls-key",
        "/no-such-dir/n1.key",
    ]);
    assert!(
        err.starts_with("phase-3-multi-node: /no-such-dir/ca.crt"),
        "{err}"
    );
}
