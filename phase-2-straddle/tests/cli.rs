//! Phase 2's agent as a user runs it, on sockets: traced by pid until its targets exit, its JSON
//! lines scored against the ground truth. (Flag and target errors are phase 1's shared CLI,
//! tested there.)

use harness::scenario;
use harness::score::TEST_BAR;
use phase_1_poc::cli::follow_scenario_live;
use phase_2_straddle::OBSERVES;
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
