//! The agent as a user runs it: bad input gets one clear line, and a live trace of a real
//! pipeline whose processes exit mid-trace ends by itself and loses nothing.

use harness::demo::follow_scenario_live;
use harness::scenario;
use harness::score::TEST_BAR;
use phase_1_poc::demo::OBSERVES;
use std::path::Path;
use std::process::{Command, Output};
use std::time::{SystemTime, UNIX_EPOCH};

const EXE: &str = env!("CARGO_BIN_EXE_phase-1-poc");

fn agent(args: &[&str]) -> Output {
    Command::new(EXE).args(args).output().unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn an_invalid_flag_is_refused_with_usage() {
    let o = agent(&["--no-such-flag"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).starts_with("error: unexpected argument '--no-such-flag'"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn a_duration_that_is_not_one_is_refused_before_anything_runs() {
    for (flag, value, why) in [
        ("--duration", "nan", "it must be finite and not negative"),
        ("--duration", "inf", "it must be finite and not negative"),
        ("--duration", "1e300", "is longer than 100 years"),
        ("--duration", "0", "must be more than 0"),
        ("--report-every", "1e-12", "is shorter than 1 ms"),
        ("--report-every", "5 parsecs", "unknown unit"),
    ] {
        let o = agent(&["--pid", "1", flag, value]);
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(2), "{flag} {value}: {err}");
        let first = err.lines().next().unwrap_or_default();
        assert!(
            first.starts_with(&format!(
                "error: invalid value '{value}' for '{flag} <DURATION>'"
            )) && first.contains(why),
            "{flag} {value}: {err}"
        );
        assert!(!err.contains("panicked"), "{err}");
    }
}

#[test]
fn an_unknown_comm_is_one_clear_line() {
    let o = agent(&["--comm", "no-such-cmd-xyz"]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(
        stderr(&o),
        "phase-1-poc: no running process has a command name starting with \"no-such-cmd-xyz\"\n"
    );
}

#[test]
fn a_missing_pid_is_one_clear_line() {
    let o = agent(&["--pid", "2147483646"]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(stderr(&o), "phase-1-poc: no process with pid 2147483646\n");
}

#[test]
fn an_unknown_scenario_is_one_clear_line() {
    let o = agent(&["--scenario", "S99"]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(
        stderr(&o),
        "phase-1-poc: unknown scenario \"S99\"; `harness list` shows the catalogue\n"
    );
}

#[test]
fn not_root_is_one_clear_line() {
    let o = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            EXE,
            "--pid",
            "1",
        ])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(
        stderr(&o),
        "phase-1-poc: must run as root: loading eBPF programs needs CAP_BPF and CAP_PERFMON\n"
    );
}

/// An output that cannot be written is found before anything is loaded: as an unprivileged
/// user, the refusal is about the file, not about loading eBPF programs.
#[test]
fn an_unwritable_json_path_is_one_line_before_anything_is_loaded() {
    let o = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", EXE])
        .args(["--pid", "1", "--json", "/no-such-dir/hops.jsonl"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(
        stderr(&o),
        "phase-1-poc: creating /no-such-dir/hops.jsonl: No such file or directory (os error 2)\n"
    );
}

/// The agent traces S1's processes by pid; they exit when the audio ends; the agent notices,
/// stops by itself and its JSON lines score as well as the in-process tracer does.
#[test]
fn live_agent_follows_a_pipeline_until_its_processes_exit() {
    let before = SystemTime::now();
    let run = follow_scenario_live(&scenario::s1(), Path::new(EXE), OBSERVES).unwrap();
    let after = SystemTime::now();
    let err = stderr(&run.output);
    assert!(run.output.status.success(), "{err}");
    assert!(
        err.contains("every target process has exited; stopping"),
        "{err}"
    );
    let table = String::from_utf8_lossy(&run.output.stdout);
    assert!(
        table.contains("hx-c0-src") && table.contains("drops=0"),
        "{table}"
    );
    assert!(table.starts_with("hops at "), "{table}");
    eprintln!("{}", run.score);
    assert!(
        run.score.misses(&TEST_BAR).is_empty(),
        "{:?}",
        run.score.misses(&TEST_BAR)
    );
    // Every line is version 2, dated on the wall clock while the run lasted, and every date
    // comes from one mapping of the monotonic clock (the agent ran in one bracket's error).
    assert!(!run.records.is_empty());
    let mut offsets = Vec::new();
    for r in &run.records {
        assert_eq!(r.schema, agent::schema::SCHEMA);
        let at = r.timestamp.expect("a wall-clock timestamp");
        assert!(before <= at && at <= after, "{r:?}");
        let error = r.timestamp_error_ns.expect("its error");
        let wall_ns = at.duration_since(UNIX_EPOCH).unwrap().as_nanos() as i128;
        offsets.push((wall_ns - i128::from(r.to.t_ns), error));
    }
    let (lo, hi) = (
        offsets.iter().map(|o| o.0).min().unwrap(),
        offsets.iter().map(|o| o.0).max().unwrap(),
    );
    let mapping_error = offsets.iter().map(|o| o.1).max().unwrap() as i128;
    // The kernel's estimate of the wall clock's error aside, a bracket is microseconds.
    assert!(hi - lo <= 2 * mapping_error.min(100_000), "{lo}..{hi} ± {mapping_error}");
}

/// Traces a `sleep` for a second with `args`: the agent's output.
fn trace_a_sleep(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut target = Command::new("sleep").arg("60").spawn().unwrap();
    let pid = target.id().to_string();
    let out = Command::new(EXE)
        .args(["--pid", &pid, "--duration", "1"])
        .args(args)
        .env_remove("RUST_LOG")
        .envs(env.iter().copied())
        .output()
        .unwrap();
    target.kill().ok();
    target.wait().ok();
    assert!(out.status.success(), "{args:?}: {}", stderr(&out));
    out
}

/// Log lines go to stderr, leveled and dated, as text or JSON; reports (the table, the health
/// line) stay on stdout as they were.
#[test]
fn logs_are_dated_leveled_lines_as_text_or_json() {
    let text = trace_a_sleep(&[], &[]);
    let err = stderr(&text);
    let line = err.lines().next().unwrap();
    let mut words = line.split_whitespace();
    let at = humantime::parse_rfc3339(words.next().unwrap()).expect(line);
    assert!(at <= SystemTime::now(), "{line}");
    assert_eq!(words.next(), Some("INFO"), "{line}");
    assert!(
        words.collect::<Vec<_>>().join(" ").starts_with("tracing write() of pid "),
        "{line}"
    );
    let report = String::from_utf8_lossy(&text.stdout);
    assert!(report.starts_with("hops at ") && report.contains("p50 µs"), "{report}");
    assert!(report.contains("drops=0"), "{report}");

    let json = trace_a_sleep(&["--log-format", "json"], &[]);
    let err = stderr(&json);
    assert!(!err.is_empty());
    for line in err.lines() {
        let v: serde_json::Value = serde_json::from_str(line).expect(line);
        humantime::parse_rfc3339(v["timestamp"].as_str().expect(line)).expect(line);
        assert_eq!(v["level"], "INFO", "{line}");
        assert!(v["message"].as_str().is_some(), "{line}");
    }
    assert!(String::from_utf8_lossy(&json.stdout).contains("drops=0"));

    // Filtered by flag or by RUST_LOG: no info lines, the report all the same.
    for quiet in [
        trace_a_sleep(&["--log-level", "warn"], &[]),
        trace_a_sleep(&[], &[("RUST_LOG", "warn")]),
    ] {
        assert_eq!(stderr(&quiet), "");
        assert!(String::from_utf8_lossy(&quiet.stdout).contains("drops=0"));
    }
}

#[test]
fn with_json_logs_a_failure_is_one_json_line() {
    let o = agent(&["--log-format", "json", "--pid", "2147483646"]);
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    assert_eq!(err.lines().count(), 1, "{err}");
    let v: serde_json::Value = serde_json::from_str(&err).expect(&err);
    assert_eq!(v["level"], "ERROR", "{err}");
    assert_eq!(v["message"], "phase-1-poc: no process with pid 2147483646");
}

#[test]
fn a_log_filter_that_is_not_one_is_refused_in_one_line() {
    let o = agent(&["--log-level", "debug,=[", "--pid", "1"]);
    assert_eq!(o.status.code(), Some(2));
    let first = stderr(&o).lines().next().unwrap_or_default().to_string();
    assert!(
        first.starts_with("error: invalid value 'debug,=[' for '--log-level <FILTER>': not a log filter"),
        "{first}"
    );
    let o = Command::new(EXE)
        .args(["--pid", "1"])
        .env("RUST_LOG", "info,=[")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    assert!(
        err.starts_with("phase-1-poc: RUST_LOG=\"info,=[\" is not a log filter") && err.lines().count() == 1,
        "{err}"
    );
}

/// Runs the agent in a private mount namespace after `prepare` (so nothing changes outside).
fn agent_in_mount_namespace(prepare: &str) -> Output {
    let script = format!("{prepare}; exec {EXE} --pid 1");
    Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c", &script])
        .output()
        .unwrap()
}

#[test]
fn tracefs_not_mounted_is_one_clear_line_that_says_how() {
    let o = agent_in_mount_namespace(
        "umount /sys/kernel/tracing 2>/dev/null; umount /sys/kernel/debug/tracing 2>/dev/null; umount /sys/kernel/debug 2>/dev/null; true",
    );
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(
        stderr(&o),
        "phase-1-poc: tracefs is not mounted (no events/syscalls): mount -t tracefs nodev /sys/kernel/tracing\n"
    );
}

#[test]
fn a_kernel_without_btf_is_one_clear_line() {
    let o = agent_in_mount_namespace("mount -t tmpfs none /sys/kernel/btf");
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(
        stderr(&o),
        "phase-1-poc: this kernel has no BTF (/sys/kernel/btf/vmlinux): build it with CONFIG_DEBUG_INFO_BTF=y\n"
    );
}
