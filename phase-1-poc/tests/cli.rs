//! The agent as a user runs it: bad input gets one clear line, and a live trace of a real
//! pipeline whose processes exit mid-trace ends by itself and loses nothing.

use harness::score::{score, TEST_BAR};
use harness::{run, scenario, schema};
use phase_1_poc::OBSERVES;
use shared::FingerprintConfig;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

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

/// The agent traces S1's processes by pid; they exit when the audio ends; the agent notices,
/// stops by itself and its JSON lines score as well as the in-process tracer does.
#[test]
fn live_agent_follows_a_pipeline_until_its_processes_exit() {
    let sc = scenario::s1();
    let dir = run::workdir("phase1-cli").unwrap();
    let json = dir.join("hops.jsonl");
    let mut child = None;
    let gt = run::run(&sc, Path::new(EXE), &dir, |targets| {
        let mut args = vec![
            "--json".to_string(),
            json.display().to_string(),
            "--report-every".into(),
            "0".into(),
        ];
        for p in &targets.pids {
            args.extend(["--pid".into(), p.to_string()]);
        }
        let mut c = Command::new(EXE)
            .args(&args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        // Attached once it says so.
        let mut line = String::new();
        BufReader::new(c.stderr.as_mut().unwrap()).read_line(&mut line)?;
        assert!(line.starts_with("tracing write() of pid"), "{line}");
        child = Some(c);
        Ok(())
    })
    .unwrap();
    let mut child = child.unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while child.try_wait().unwrap().is_none() {
        assert!(
            std::time::Instant::now() < deadline,
            "agent did not stop after its targets exited"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("every target process has exited; stopping"),
        "{}",
        stderr(&out)
    );
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        table.contains("hx-c0-src") && table.contains("drops=0"),
        "{table}"
    );
    let records = schema::read_jsonl(BufReader::new(std::fs::File::open(&json).unwrap())).unwrap();
    let s = score(
        &gt,
        &records,
        OBSERVES,
        FingerprintConfig::default(),
        "phase-1-poc --pid",
    )
    .unwrap();
    eprintln!("{s}");
    assert!(
        s.misses(&TEST_BAR).is_empty(),
        "{:?}",
        s.misses(&TEST_BAR)
    );
    std::fs::remove_dir_all(&dir).ok();
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
