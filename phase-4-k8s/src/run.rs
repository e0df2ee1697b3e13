//! A harness scenario traced as phase 4 runs in a cluster, on a cluster faked here
//! ([`crate::testbed`]):
//!
//! - every component process (real brokers and proxies included) joins the cgroup of a real
//!   crun container in a pod of its own: the only replica of a Deployment named after it, in
//!   namespace [`NAMESPACE`], on the component's node. The cgroup drivers, QoS classes and
//!   runtimes alternate between pods, so every naming scheme the agent must read is in play;
//! - a fake API server lists those pods, each node's to that node's agent;
//! - one phase-4 agent process per node, started as the DaemonSet starts it (its node's name,
//!   a kubeconfig), picks its targets by namespace and label selector (never by pid or comm,
//!   so it traces no other run's processes) and names every sighting by pod;
//! - phase 3's collector matches, in this process (as phase 3's runner does, whose parts
//!   these are).
//!
//! Scored against the ground truth, and every sighting must name the pod of the component
//! whose pid it carries ([`Phase4Run::misattributed`]).

use crate::testbed::crun::{exclusive, host};
use crate::testbed::plan::{podlist, ContainerPlan, Driver, PodPlan, Qos};
use crate::testbed::FakeCluster;
use agent::clock::Skew;
use agent::schema::{PodRef, Sighting};
use anyhow::{Context, Result};
use harness::nodes::HOST;
use harness::scenario::Scenario;
use phase_3_multi_node::run::{
    run_agent_if, skew_args, skews_from_now, AgentProcess, ClusterRun, InProcessCollector,
};
use std::collections::HashMap;
use std::path::Path;
use std::process::Command;

/// The namespace of every component's pod.
pub const NAMESPACE: &str = "audio";
/// The label that names a pod's scenario: the agents select `scenario=<id>`.
const SCENARIO_LABEL: &str = "scenario";
/// Set on the agents this module starts: the binary they run is whichever runs the scenario.
const AGENT_ENV: &str = "PHASE4_RUN_AS_AGENT";

/// Makes this binary a phase-4 agent when [`trace_scenario_phase4`] started it as one; call
/// first in `main`.
pub fn run_if_agent() {
    run_agent_if(AGENT_ENV, crate::cli::run_agent);
}

pub struct Phase4Run {
    pub cluster: ClusterRun,
    /// Record sides (from or to) not named by the pod of the component whose pid they carry.
    pub misattributed: usize,
    /// A few of them, described.
    pub misattributed_examples: Vec<String>,
}

/// Every component's pod, and its one container (named after the component).
fn plan(sc: &Scenario) -> (Vec<PodPlan>, Vec<ContainerPlan>) {
    const QOS: [Qos; 3] = [Qos::Burstable, Qos::BestEffort, Qos::Guaranteed];
    let (mut pods, mut containers) = (Vec::new(), Vec::new());
    for (i, comp) in sc.topology.comps.iter().enumerate() {
        let (id, uid) = crate::testbed::crun::random_ids();
        let (hash, suffix) = (&id[..10], &id[10..15]);
        let name = &comp.name;
        pods.push(PodPlan {
            namespace: NAMESPACE.into(),
            name: format!("{name}-{hash}-{suffix}"),
            uid,
            node: comp.node.clone().unwrap_or_else(|| HOST.into()),
            labels: vec![
                ("app".into(), name.clone()),
                ("pod-template-hash".into(), hash.into()),
                (SCENARIO_LABEL.into(), sc.id.to_lowercase()),
            ],
            owner: Some(("ReplicaSet".into(), format!("{name}-{hash}"))),
            qos: QOS[i % 3],
            driver: if i % 2 == 0 {
                Driver::Systemd
            } else {
                Driver::Cgroupfs
            },
            workload: name.clone(),
        });
        containers.push(ContainerPlan {
            pod: i,
            name: name.clone(),
            id,
            runtime: if i % 4 == 3 {
                crate::cgroup::Runtime::CriO
            } else {
                crate::cgroup::Runtime::Containerd
            },
            component: Some(name.clone()),
        });
    }
    (pods, containers)
}

/// Runs `sc` from `exe` (a binary that calls [`run_if_agent`] and
/// `harness::component::run_if_component` first) on a faked cluster with an agent per node;
/// `skew` gives each node's clock skew. Needs root, crun and busybox-static.
pub fn trace_scenario_phase4(
    sc: &Scenario,
    exe: &Path,
    skew: impl Fn(&str) -> Skew,
) -> Result<Phase4Run> {
    // The containers' cgroups are shared ground (crun::exclusive).
    let _lock = exclusive()?;
    let dir = harness::run::workdir(&format!("phase-4-{}", sc.id))?;
    let run = trace_on_cluster(sc, exe, skew, &dir);
    std::fs::remove_dir_all(&dir).ok();
    run
}

fn trace_on_cluster(
    sc: &Scenario,
    exe: &Path,
    skew: impl Fn(&str) -> Skew,
    dir: &Path,
) -> Result<Phase4Run> {
    let (pods, containers) = plan(sc);
    let mut fake = FakeCluster::start(
        &host()?,
        &pods,
        &containers,
        &podlist(&pods, &containers),
        dir,
    )?;
    let collector = InProcessCollector::start()?;
    let selector = format!("{SCENARIO_LABEL}={}", sc.id.to_lowercase());
    let skew = skews_from_now(skew);
    let run_dir = dir.join("run");
    std::fs::create_dir_all(&run_dir)?;
    let mut agents: Vec<AgentProcess> = Vec::new();
    let gt = harness::run::run(sc, exe, &run_dir, |t| {
        for (name, pid) in &t.components {
            let i = containers
                .iter()
                .position(|c| c.component.as_ref() == Some(name))
                .with_context(|| format!("no pod planned for component {name}"))?;
            fake.join(*pid, i)?;
        }
        // Started once the components are in their pods: an agent's first target lookup,
        // before it reports attached, finds them all.
        for (node, _) in &t.nodes {
            let ready = dir.join(format!("agent-{node}.ready"));
            let mut cmd = Command::new(exe);
            cmd.env(AGENT_ENV, "1")
                .args(["--node", node, "--collector", &collector.url()])
                .args(["--namespace", NAMESPACE, "--selector", &selector])
                .args(skew_args(skew(node)))
                .arg("--ready-file")
                .arg(&ready);
            fake.agent_env(&mut cmd, node);
            agents.push(AgentProcess::spawn(node, &mut cmd, ready)?);
        }
        AgentProcess::wait_attached(&mut agents)
    });
    // Agents that select by pods run until stopped; then they deliver what they hold.
    for a in &agents {
        a.terminate();
    }
    let finished: Result<Vec<_>> = agents.into_iter().map(AgentProcess::finish).collect();
    let mut gt = gt?;
    let agent_lines = finished?;
    gt.node_clocks = agent_lines
        .iter()
        .map(|(node, _)| (node.clone(), skew(node)))
        .collect();
    let collected = collector.finish()?;
    drop(fake);
    let cluster = ClusterRun::score(gt, collected, agent_lines, "phase-4-k8s")?;

    // Who each pid is, and which pod must name it.
    let expected: HashMap<u32, (&str, PodRef)> = cluster
        .gt
        .components
        .iter()
        .filter_map(|log| {
            let c = containers
                .iter()
                .find(|c| c.component.as_ref() == Some(&log.name))?;
            Some((log.pid, (log.name.as_str(), c.pod_ref(&pods))))
        })
        .collect();
    let mut misattributed = 0;
    let mut misattributed_examples = Vec::new();
    let mut check = |s: &Sighting| {
        let wrong = match expected.get(&s.pid) {
            None => Some(format!("pid {} ({}) is no component", s.pid, s.comm)),
            Some((name, pod)) if s.pod.as_ref() != Some(pod) => Some(format!(
                "{name} (pid {}) named {:?}, not {}/{}",
                s.pid, s.pod, pod.namespace, pod.pod
            )),
            Some(_) => None,
        };
        if let Some(w) = wrong {
            misattributed += 1;
            if misattributed_examples.len() < 3 {
                misattributed_examples.push(w);
            }
        }
    };
    for r in &cluster.records {
        check(&r.from);
        check(&r.to);
    }
    Ok(Phase4Run {
        cluster,
        misattributed,
        misattributed_examples,
    })
}
