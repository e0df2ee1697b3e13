//! The agent as a user runs it: bad input gets one clear line, and a live trace of a real
//! pipeline whose processes exit mid-trace ends by itself and loses nothing.

use harness::demo::follow_scenario_live;
use harness::scenario;
use harness::score::TEST_BAR;
use phase_1_poc::demo::OBSERVES;
use std::path::Path;
use std::process::{Command, Output};

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
    let run = follow_scenario_live(&scenario::s1(), Path::new(EXE), OBSERVES).unwrap();
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
    eprintln!("{}", run.score);
    assert!(
        run.score.misses(&TEST_BAR).is_empty(),
        "{:?}",
        run.score.misses(&TEST_BAR)
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
