//! The phase 4 agent as an operator starts it, in or out of a cluster: the node's name from the
//! downward API alone, --pid without any cluster, and a missing or unreachable API server said in
//! one line rather than a screenful.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const EXE: &str = env!("CARGO_BIN_EXE_phase-4-k8s");

/// Kills the process when the test ends, panics included.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        self.0.kill().ok();
        self.0.wait().ok();
    }
}

/// The agent's command with no cluster around: no in-cluster variables, a kubeconfig that is
/// not there (or `kubeconfig`).
fn agent(kubeconfig: &str) -> Command {
    let mut cmd = Command::new(EXE);
    cmd.arg("agent")
        .env_remove("KUBERNETES_SERVICE_HOST")
        .env_remove("KUBERNETES_SERVICE_PORT")
        .env_remove("AUDIO_TRACER_NODE")
        .env("KUBECONFIG", kubeconfig);
    cmd
}

#[test]
fn selecting_pods_without_a_cluster_configuration_is_one_short_line() {
    let o = agent("/no-such-dir/kubeconfig")
        .args(["--node", "n1", "--collector", "http://127.0.0.1:9"])
        .args(["--namespace", "voice", "--namespace", "asr"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert_eq!(
        err,
        "phase-4-k8s: no Kubernetes configuration: not in a cluster, and failed to read \
         kubeconfig from '\"/no-such-dir/kubeconfig\"': No such file or directory (os error 2)\n"
    );
}

/// `--pid` alone needs no cluster: the agent says once that its sightings carry no pod names,
/// takes its node's name from NODE_NAME (as the DaemonSet gives it), and ships to the collector.
#[test]
fn a_pid_needs_no_cluster_and_node_name_is_enough() {
    let port = harness::run::free_port().unwrap();
    let _collector = Running(
        Command::new(EXE)
            .args(["collector", "--listen", &format!("127.0.0.1:{port}")])
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let mut target = Running(Command::new("sleep").arg("60").spawn().unwrap());
    let deadline = Instant::now() + Duration::from_secs(10);
    while !harness::run::listening(port) {
        assert!(Instant::now() < deadline, "the collector does not listen");
        std::thread::sleep(Duration::from_millis(50));
    }
    let o = agent("/no-such-dir/kubeconfig")
        .env("NODE_NAME", "node-from-downward-api")
        .args(["--collector", &format!("http://127.0.0.1:{port}")])
        .args(["-p", &target.0.id().to_string(), "-d", "1"])
        .output()
        .unwrap();
    target.0.kill().ok();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    // Log lines: their message after the timestamp.
    let lines: Vec<&str> = err
        .lines()
        .map(|l| l.split_once("Z  ").map_or(l, |(_, message)| message))
        .collect();
    assert_eq!(
        lines[..2],
        [
            "WARN no Kubernetes configuration: not in a cluster, and failed to read kubeconfig from \
             '\"/no-such-dir/kubeconfig\"': No such file or directory (os error 2): tracing \
             without pod names",
            "INFO agent node-from-downward-api tracing; Ctrl-C to stop"
        ],
        "{err}"
    );
}

/// An API server that does not answer: one line when the watch first fails, not one per retry,
/// then one when the agent gives up waiting for the pod list.
#[test]
fn an_unreachable_api_server_is_said_once() {
    let dir = harness::run::workdir("unreachable-api").unwrap();
    let kubeconfig = dir.join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: gone\n  cluster:\n    server: http://127.0.0.1:{}\n\
             contexts:\n- name: gone\n  context:\n    cluster: gone\n    user: gone\n\
             current-context: gone\nusers:\n- name: gone\n  user: {{}}\n",
            harness::run::free_port().unwrap()
        ),
    )
    .unwrap();
    let started = Instant::now();
    let mut child = agent(kubeconfig.to_str().unwrap())
        .args(["--node", "n1", "--collector", "http://127.0.0.1:9"])
        .args(["--namespace", "voice"])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let lines: Vec<String> = BufReader::new(child.stderr.take().unwrap())
        .lines()
        .map_while(Result::ok)
        .collect();
    let status = child.wait().unwrap();
    std::fs::remove_dir_all(&dir).ok();
    assert_eq!(status.code(), Some(1), "{lines:?}");
    assert!(started.elapsed() >= Duration::from_secs(30), "{lines:?}");
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert!(
        lines[0].contains(" WARN pods: watching the pods of node n1: ")
            && lines[0].ends_with("(retrying)"),
        "{lines:?}"
    );
    assert_eq!(
        lines[1],
        "phase-4-k8s: the pods of node n1 were not listed within 30 s"
    );
}
