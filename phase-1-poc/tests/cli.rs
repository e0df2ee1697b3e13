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

/// `--comm` names processes that may start later: none running yet is said once, and those
/// that start are traced; `-o json` puts their hops on stdout as JSON lines.
#[test]
fn a_comm_with_no_process_yet_traces_those_started_later() {
    use std::io::BufRead;
    use std::process::Stdio;
    // S1 with component names (so command names) no other test's processes have.
    let mut sc = scenario::s1();
    for c in &mut sc.topology.comps {
        c.name = format!("late{}", c.name);
    }
    let dir = harness::run::workdir("late-comm").unwrap();
    let mut agent = Command::new(EXE)
        .args(["-c", "hx-late", "-o", "json", "--report-every", "0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (started, wait_start) = std::sync::mpsc::channel();
    let stderr = agent.stderr.take().unwrap();
    let log = std::thread::spawn(move || {
        let mut all = String::new();
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            if line.contains(" INFO tracing ") {
                started.send(()).ok();
            }
            all += &line;
            all.push('\n');
        }
        all
    });
    if wait_start
        .recv_timeout(std::time::Duration::from_secs(60))
        .is_err()
    {
        agent.kill().ok();
        panic!("agent did not start: {}", log.join().unwrap());
    }
    // Read as it comes: a full pipe would stall the agent.
    let mut stdout = agent.stdout.take().unwrap();
    let hops = std::thread::spawn(move || {
        let mut all = String::new();
        std::io::Read::read_to_string(&mut stdout, &mut all).ok();
        all
    });
    harness::run::run(&sc, Path::new(EXE), &dir, |_| Ok(())).unwrap();
    // SAFETY: signalling our own child.
    unsafe { libc::kill(agent.id() as i32, libc::SIGINT) };
    let status = agent.wait().unwrap();
    let err = log.join().unwrap();
    std::fs::remove_dir_all(&dir).ok();
    assert!(status.success(), "{err}");
    assert!(
        err.lines().next().is_some_and(|l| l.ends_with(
            " WARN no process with a command name starting with \"hx-late\" runs yet: tracing those that start"
        )),
        "{err}"
    );
    // The table went to stderr; stdout is only hops, from the processes that started later.
    assert!(err.contains("drops="), "{err}");
    let stdout = hops.join().unwrap();
    let hops: Vec<agent::schema::HopRecord> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert!(hops.len() > 10, "{stdout}\n{err}");
}

/// Every setting from a flag, else its AUDIO_TRACER_ variable, else the config file: which one
/// won shows in the error about the --json file it names (before anything is loaded).
#[test]
fn settings_come_from_flag_then_environment_then_config_file() {
    let dir = harness::run::workdir("config-precedence").unwrap();
    let file = dir.join("agent.yaml");
    std::fs::write(
        &file,
        "pid: [1]\njson: /no-such-dir/from-file.jsonl\nwindow: 64\n",
    )
    .unwrap();
    let run = |env: &[(&str, &str)], flags: &[&str]| {
        let o = Command::new(EXE)
            .env("AUDIO_TRACER_CONFIG", &file)
            .envs(env.iter().copied())
            .args(flags)
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
        stderr(&o)
    };
    let refused = |name: &str| {
        format!("phase-1-poc: creating /no-such-dir/{name}.jsonl: No such file or directory (os error 2)\n")
    };
    assert_eq!(run(&[], &[]), refused("from-file"));
    let env = [("AUDIO_TRACER_JSON", "/no-such-dir/from-env.jsonl")];
    assert_eq!(run(&env, &[]), refused("from-env"));
    assert_eq!(
        run(&env, &["--json", "/no-such-dir/from-flag.jsonl"]),
        refused("from-flag")
    );
    // --config beats AUDIO_TRACER_CONFIG; a repeatable setting's variable is a list.
    let other = dir.join("other.yaml");
    std::fs::write(&other, "json: /no-such-dir/other.jsonl\n").unwrap();
    let pids = [("AUDIO_TRACER_PID", "1,1")];
    assert_eq!(
        run(&pids, &["--config", other.to_str().unwrap()]),
        refused("other")
    );
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn a_bad_config_file_or_variable_is_one_line_naming_it_and_the_key() {
    let dir = harness::run::workdir("config-bad").unwrap();
    let file = dir.join("agent.yaml");
    let shown = file.display();
    for (text, want) in [
        ("pid: [1]\nwindw: 64\n", format!("config file {shown}: windw: unknown key (the keys are the long flags `phase-1-poc --help` lists, without --)")),
        ("pid: [1]\nwindow: wide\n", format!("config file {shown}: window: \"wide\" is refused: invalid digit found in string")),
        ("pid: [1]\nduration: [1, 2]\n", format!("config file {shown}: duration: takes one value, not a list")),
        ("pid: [1]\noutput: xml\n", format!("config file {shown}: output: \"xml\" is refused: use one of table, json")),
        ("pid: [1]\nduration: -1\n", format!("config file {shown}: duration: \"-1\" is refused: \"-1\" is not a duration: it must be finite and not negative")),
    ] {
        std::fs::write(&file, text).unwrap();
        let o = Command::new(EXE).arg("--config").arg(&file).output().unwrap();
        assert_eq!(o.status.code(), Some(2), "{text}: {}", stderr(&o));
        assert_eq!(stderr(&o), format!("phase-1-poc: {want}\n"), "{text}");
    }
    let o = Command::new(EXE)
        .args(["-p", "1"])
        .env("AUDIO_TRACER_KEEP_PER_256", "many")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert_eq!(
        stderr(&o),
        "phase-1-poc: environment AUDIO_TRACER_KEEP_PER_256: \"many\" is refused: invalid digit found in string\n"
    );
    std::fs::remove_dir_all(&dir).ok();
}

/// libbpf-tools' short flags, checked as their long forms are, before anything is loaded.
#[test]
fn short_flags_are_the_long_ones() {
    let o = agent(&["-p", "2147483646"]);
    assert_eq!(stderr(&o), "phase-1-poc: no process with pid 2147483646\n");
    let o = agent(&["-p", "1", "-d", "-1"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).starts_with(
            "error: invalid value '-1' for '--duration <DURATION>': \"-1\" is not a duration"
        ),
        "{}",
        stderr(&o)
    );
    let o = agent(&["-c", "a-command-name-too-long"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("is longer than a command name (15 bytes)"),
        "{}",
        stderr(&o)
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
    assert!(
        hi - lo <= 2 * mapping_error.min(100_000),
        "{lo}..{hi} ± {mapping_error}"
    );
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
        words
            .collect::<Vec<_>>()
            .join(" ")
            .starts_with("tracing write() of pid "),
        "{line}"
    );
    let report = String::from_utf8_lossy(&text.stdout);
    assert!(
        report.starts_with("hops at ") && report.contains("p50 µs"),
        "{report}"
    );
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
        first.starts_with(
            "error: invalid value 'debug,=[' for '--log-level <FILTER>': not a log filter"
        ),
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
        err.starts_with("phase-1-poc: RUST_LOG=\"info,=[\" is not a log filter")
            && err.lines().count() == 1,
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
