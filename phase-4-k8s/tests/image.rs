//! The image, built and run: deploy/build-image.sh builds it with buildah (no Docker daemon),
//! and its agent and collector run from its root filesystem in crun containers configured as
//! the manifests configure their pods, tracing S1's pipeline in S10's faked cluster.
//!
//! - The image reference the script tags is the one the manifests name, and the image's binary
//!   is the shipped one: no `scenario` subcommand (built without `demo`).
//! - The agent's container: uid 0, every capability dropped but the DaemonSet's four (BPF,
//!   PERFMON, SYS_PTRACE, DAC_READ_SEARCH), no privilege escalation, a read-only root, the
//!   host's pids (hostPID), /sys/kernel/tracing, /sys/kernel/btf and the host's /sys/fs/cgroup
//!   read-only, its own cgroup namespace. It selects its targets by pods through the fake API
//!   server (S10's pods, s10/pods.rs).
//! - The collector's container: uid 65532, no capabilities, a read-only root; it writes its
//!   JSON lines to the one writable directory it is given.
//!
//! Asserted: every record names the selected components' pods, none an unselected one; scored
//! against the ground truth, no false match and every hop between selected components found;
//! the collector's hop table names the workloads. Differences from a cluster: both share the
//! host's network (loopback stands in for the Service), no TLS (tests/certs.rs covers it), and
//! crun applies no seccomp profile. Needs root, buildah, crun, busybox-static
//! (`scripts/setup.sh`).
#[path = "image/bundle.rs"]
mod bundle;
#[path = "s10/pods.rs"]
mod pods;

use agent::schema::Sighting;
use bundle::{ImageRoot, Workload};
use harness::run::{listening, Targets};
use harness::supervised::{Exited, Supervised};
use phase_4_k8s::testbed::crun::{exclusive, host, Host};
use phase_4_k8s::testbed::FakeCluster;
use pods::{plan, podlist, selected, NAMESPACE, NODE, SELECTOR};
use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

const EXE: &str = env!("CARGO_BIN_EXE_phase-4-k8s");
const DEPLOY: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy");
/// The image's binary has no demo: the pipeline's components run from the test build's.
const IN_IMAGE: &str = "/usr/local/bin/phase-4-k8s";
const COLLECTOR_UID: u32 = 65532;
/// As the DaemonSet adds them.
const AGENT_CAPABILITIES: [&str; 4] = ["BPF", "PERFMON", "SYS_PTRACE", "DAC_READ_SEARCH"];
const ATTACH_TIMEOUT: Duration = Duration::from_secs(30);
/// The agent looks its targets up every second: two lookups between the components joining
/// their containers and the pipeline's first moment.
const SELECTION_WAIT: Duration = Duration::from_secs(2);

/// The run's directory, removed at the end.
struct RunDir(PathBuf);

impl Drop for RunDir {
    fn drop(&mut self) {
        fs::remove_dir_all(&self.0).ok();
    }
}

/// A crun container in the foreground; killed and deleted on drop if still there.
struct Running {
    host: Host,
    name: String,
    process: Option<Supervised>,
}

impl Running {
    fn start(host: &Host, name: &str, bundle: &Path) -> Self {
        let mut cmd = host.crun(&["run", "--bundle", &bundle.to_string_lossy(), name]);
        Self {
            host: host.clone(),
            name: name.to_string(),
            process: Some(Supervised::spawn(name, &mut cmd)),
        }
    }

    fn check_running(&mut self) {
        let p = self.process.as_mut().unwrap();
        if !p.running() {
            let e = self.process.take().unwrap().wait(Duration::ZERO);
            panic!("{} exited ({}): {}", self.name, e.status, e.stderr.trim());
        }
    }

    /// SIGTERM to the container's process, as kubelet stops a pod; its exit.
    fn stop(mut self, limit: Duration) -> Exited {
        self.host
            .crun_ok(&["kill", &self.name, "TERM"])
            .unwrap_or_else(|e| panic!("{e}"));
        self.process.take().unwrap().wait(limit)
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(mut p) = self.process.take() {
            p.kill();
        }
        let _ = self.host.crun(&["delete", "--force", &self.name]).output();
    }
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|a| a.to_string()).collect()
}

fn build_image() -> String {
    let out = Command::new(Path::new(DEPLOY).join("build-image.sh"))
        .output()
        .expect("running deploy/build-image.sh");
    assert!(
        out.status.success(),
        "deploy/build-image.sh: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn image_runs_the_agent_and_collector_as_the_manifests_do() {
    let began = Instant::now();
    let _lock = exclusive().unwrap();
    let host = host().unwrap();

    let image = build_image();
    let built_after = began.elapsed();
    for manifest in ["agent-daemonset.yaml", "collector-statefulset.yaml"] {
        let text = fs::read_to_string(Path::new(DEPLOY).join("base").join(manifest)).unwrap();
        assert!(
            text.contains(&format!("image: {image}\n")),
            "{manifest} names the image build-image.sh tags, {image}"
        );
    }
    let root = ImageRoot::mount(&image).unwrap();
    let demo = Command::new(root.path.join(IN_IMAGE.trim_start_matches('/')))
        .args(["scenario", "--help"])
        .output()
        .unwrap();
    assert!(!demo.status.success(), "the image's binary has the demo");

    let sc = harness::scenario::Scenario {
        id: "S10-image",
        title: "S1's pipe chains in faked pods, traced by the image's agent",
        ..harness::scenario::s1()
    };
    let (pods, plans) = plan();
    let dir = RunDir(harness::run::workdir("image").unwrap());
    let mut fake =
        FakeCluster::start(&host, &pods, &plans, &podlist(&pods, &plans), &dir.0).unwrap();

    // The collector: its JSON lines in a directory of its own user, the only writable path.
    let out = dir.0.join("out");
    fs::create_dir_all(&out).unwrap();
    std::os::unix::fs::chown(&out, Some(COLLECTOR_UID), Some(COLLECTOR_UID)).unwrap();
    let addr = format!("127.0.0.1:{}", harness::run::free_port().unwrap());
    let collector_bundle = dir.0.join("collector");
    bundle::write(
        &host,
        &collector_bundle,
        &root,
        &Workload {
            args: strings(&[
                IN_IMAGE,
                "collector",
                "--listen",
                &addr,
                "--report-every",
                "0",
                "--json",
                &out.join("hops.jsonl").to_string_lossy(),
            ]),
            env: vec!["PATH=/usr/local/bin:/usr/bin".into()],
            uid: COLLECTOR_UID,
            capabilities: &[],
            host_pid: false,
            binds: vec![(out.clone(), out.clone(), false)],
        },
    )
    .unwrap();
    let name = |what: &str| format!("eat-image-{what}-{}", std::process::id());
    let mut collector = Running::start(&host, &name("collector"), &collector_bundle);
    let deadline = Instant::now() + Duration::from_secs(10);
    let port: u16 = addr.rsplit(':').next().unwrap().parse().unwrap();
    while !listening(port) {
        collector.check_running();
        assert!(Instant::now() < deadline, "the collector never listened");
        std::thread::sleep(Duration::from_millis(20));
    }

    // The agent: the kubeconfig read-only, its ready file in a writable directory.
    let ready_dir = dir.0.join("ready");
    fs::create_dir_all(&ready_dir).unwrap();
    let ready = ready_dir.join("agent.ready");
    let agent_bundle = dir.0.join("agent");
    let mut binds: Vec<(PathBuf, PathBuf, bool)> = ["/sys/kernel/tracing", "/sys/kernel/btf"]
        .into_iter()
        .map(|p| (PathBuf::from(p), PathBuf::from(p), true))
        .collect();
    // crun's view of it: on a hybrid host, the cgroup2 mount testbed::crun puts there.
    binds.push(("/sys/fs/cgroup".into(), "/sys/fs/cgroup".into(), true));
    binds.push((fake.kubeconfig.clone(), fake.kubeconfig.clone(), true));
    binds.push((ready_dir.clone(), ready_dir.clone(), false));
    bundle::write(
        &host,
        &agent_bundle,
        &root,
        &Workload {
            args: strings(&[
                IN_IMAGE,
                "agent",
                "--node",
                NODE,
                "--collector",
                &format!("http://{addr}"),
                "--namespace",
                NAMESPACE,
                "--selector",
                SELECTOR,
                "--ready-file",
                &ready.to_string_lossy(),
            ]),
            env: vec![
                "PATH=/usr/local/bin:/usr/bin".into(),
                format!("{}={NODE}", phase_4_k8s::pods::NODE_NAME_ENV),
                format!("KUBECONFIG={}", fake.kubeconfig.display()),
            ],
            uid: 0,
            capabilities: &AGENT_CAPABILITIES,
            host_pid: true,
            binds,
        },
    )
    .unwrap();
    let mut agent = Running::start(&host, &name("agent"), &agent_bundle);
    let deadline = Instant::now() + ATTACH_TIMEOUT;
    while !ready.exists() {
        agent.check_running();
        assert!(
            Instant::now() < deadline,
            "the agent did not attach within {ATTACH_TIMEOUT:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let attached_after = began.elapsed();

    // The pipeline, each component in its container's cgroup once up. The agent's sightings of
    // them are the check here (S10 also reads its targets map).
    let comp_plan: HashMap<&str, usize> = plans
        .iter()
        .enumerate()
        .filter_map(|(i, c)| Some((c.component.as_deref()?, i)))
        .collect();
    let run_dir = dir.0.join("run");
    fs::create_dir_all(&run_dir).unwrap();
    let gt = harness::run::run(&sc, Path::new(EXE), &run_dir, |t: &Targets| {
        for (name, pid) in &t.components {
            let &i = comp_plan
                .get(name.as_str())
                .ok_or_else(|| anyhow::anyhow!("{name} (pid {pid}) is no planned component"))?;
            fake.join(*pid, i)?;
        }
        std::thread::sleep(SELECTION_WAIT);
        Ok(())
    })
    .expect("the pipeline ran");

    let a = agent.stop(Duration::from_secs(60));
    assert!(a.status.success(), "agent: {}\n{}", a.status, a.stderr);
    let c = collector.stop(Duration::from_secs(10));
    assert!(c.status.success(), "collector: {}\n{}", c.status, c.stderr);
    fake.api.only_node_requested(NODE).unwrap();

    let records = agent::schema::read_jsonl(std::io::BufReader::new(
        fs::File::open(out.join("hops.jsonl")).expect("the collector's JSON lines"),
    ))
    .unwrap();
    assert!(!records.is_empty(), "no records; agent: {}", a.stderr);
    let pod_of: HashMap<u32, (&str, bool, &str)> = gt
        .components
        .iter()
        .map(|log| {
            let c = &plans[comp_plan[log.name.as_str()]];
            let p = &pods[c.pod];
            (log.pid, (log.name.as_str(), selected(p), p.name.as_str()))
        })
        .collect();
    let check = |s: &Sighting| {
        let (name, selected, pod) = pod_of[&s.pid];
        assert!(selected, "a sighting of unselected {name}");
        assert_eq!(s.pod.as_ref().map(|p| p.pod.as_str()), Some(pod), "{name}");
    };
    for r in &records {
        check(&r.from);
        check(&r.to);
    }
    let score = harness::score::score(
        &gt,
        &records,
        harness::score::Observes::ALL,
        shared::FingerprintConfig::default(),
        "phase-4-k8s image",
    )
    .unwrap();
    assert_eq!(score.false_matches, 0, "{:?}", score.false_examples);
    let selected_component =
        |point: &str| selected(&pods[plans[comp_plan[point.split(':').next().unwrap()]].pod]);
    let between: Vec<_> = score
        .hops
        .iter()
        .filter(|h| selected_component(&h.from) && selected_component(&h.to))
        .collect();
    assert_eq!(between.len(), 9, "{:?}", score.hops);
    for h in &between {
        assert!(
            h.matched > 0,
            "hop {} → {} of call {} found",
            h.from,
            h.to,
            h.call
        );
    }
    for workload in ["audio/asr", "audio/mixer"] {
        assert!(
            c.stdout.contains(workload),
            "the collector's hop table names {workload}:\n{}",
            c.stdout
        );
    }
    eprintln!(
        "image {image}: built in {:.1} s, agent attached {:.1} s in, {} records, {} of {} hops \
         found, done in {:.1} s",
        built_after.as_secs_f64(),
        attached_after.as_secs_f64(),
        records.len(),
        score.hops_found,
        score.hops_exist,
        began.elapsed().as_secs_f64()
    );
    drop(root);
}
