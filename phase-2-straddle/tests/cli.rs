//! Phase 2's agent as a user runs it, on sockets: traced by pid until its targets exit, its JSON
//! lines scored against the ground truth. (Flag and target errors are phase 1's shared CLI,
//! tested there.)

use harness::demo::follow_scenario_live;
use harness::scenario;
use harness::score::TEST_BAR;
use phase_2_straddle::demo::OBSERVES;
use std::path::Path;

#[test]
fn live_agent_follows_socket_pipelines_until_their_processes_exit() {
    let run = follow_scenario_live(
        &scenario::s4(),
        Path::new(env!("CARGO_BIN_EXE_phase-2-straddle")),
        OBSERVES,
    )
    .unwrap();
    let err = String::from_utf8_lossy(&run.output.stderr);
    assert!(run.output.status.success(), "{err}");
    assert!(
        err.contains("every target process has exited; stopping"),
        "{err}"
    );
    eprintln!("{}", run.score);
    assert_eq!(run.score.hops_found, 10);
    assert!(
        run.score.misses(&TEST_BAR).is_empty(),
        "{:?}",
        run.score.misses(&TEST_BAR)
    );
}

/// `--comm`: processes that start after the agent get their OpenSSL probed too.
#[test]
fn live_agent_probes_openssl_in_targets_started_after_it() {
    use std::process::{Command, Stdio};
    let exe = Path::new(env!("CARGO_BIN_EXE_phase-2-straddle"));
    let dir = harness::run::workdir("late-tls").unwrap();
    let mut agent = Command::new(exe)
        .args(["--comm", "hx-", "--report-every", "0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The pipeline starts once the agent says it is tracing (its programs take seconds to load).
    let (started, wait_start) = std::sync::mpsc::channel();
    let stderr = agent.stderr.take().unwrap();
    let log = std::thread::spawn(move || {
        use std::io::BufRead;
        let mut all = String::new();
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            if line.contains("INFO tracing ") {
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
    let gt = harness::run::run(&scenario::s6(), exe, &dir, |_| Ok(())).unwrap();
    // SAFETY: signalling our own child.
    unsafe { libc::kill(agent.id() as i32, libc::SIGINT) };
    let out = agent.wait_with_output().unwrap();
    let err = log.join().unwrap();
    assert!(out.status.success(), "{err}");
    std::fs::remove_dir_all(&dir).ok();
    let text = String::from_utf8_lossy(&out.stdout);
    let field = |name: &str| -> u64 {
        agent::counters::in_health(&text, name).unwrap_or_else(|| panic!("{text}"))
    };
    // Every component of S6 runs this binary, which links libssl.so.3.
    let ours = gt.components.iter().filter(|c| !c.external).count() as u64;
    assert!(field("tls_probed_processes") >= ours, "{ours}: {text}");
    assert!(field("tls_calls") > 0, "{text}");
}
