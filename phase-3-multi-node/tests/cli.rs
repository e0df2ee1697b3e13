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
