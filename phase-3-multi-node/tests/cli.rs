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
