//! Runs a scenario: prepares each call's audio, starts its topology's components as real
//! processes joined by real links, lets a tracer attach, starts the audio and collects the
//! ground truth.
//!
//! Components placed on nodes run inside them ([`crate::nodes`], created for the run); a TCP
//! link between two nodes listens on the reader's node address, any other link is local.
//!
//! External components (a real nats-server, stunnel4, relays on other TLS stacks) start after
//! ours: the runner picks the ports they listen on up front, waits until whatever they connect
//! to listens (our components, or an external component started before), writes their
//! configuration, and stops them once our components are done.
//!
//! [`run`] goes in steps: the links' ends, the plan of what starts (audio, specs, external
//! components' ports), starting it (`processes`; `external` for the external components),
//! the tracer's targets, and the ground truth once everything is done.

mod external;
mod processes;
mod services;
mod tls_relays;

pub use external::{free_port, listening};
pub use tls_relays::go_relay_build;

use crate::audio::{self, Audio};
use crate::component::{self, End, Role, SourceCall, Spec, Transport};
use crate::nodes::{Node, Nodes, HOST};
use crate::scenario::{AudioPlan, External, Kind, LinkKind, Scenario};
use crate::truth::{CallTruth, ComponentLog, GroundTruth, Point};
use agent::schema::Dir;
use anyhow::{bail, Context, Result};
use external::{in_start_order, read_port, ExternalPlan};
use processes::{comm, stop, wait_all, wait_until, Running};
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// What a tracer is told to trace: every component's pid, the external ones included (their
/// comm is in their `ComponentLog`), and the prefix of our components' comm.
#[derive(Clone, Debug)]
pub struct Targets {
    pub pids: Vec<u32>,
    /// Every component's name and pid, in `pids`' order.
    pub components: Vec<(String, u32)>,
    pub comm_prefix: String,
    /// `pids` by node: the scenario's nodes in order, then [`HOST`] for the components on none
    /// (if any).
    pub nodes: Vec<(String, Vec<u32>)>,
    /// The scenario's nodes, alive until the run ends: where a tracer's per-node parts go
    /// ([`Node::run_in`], [`Node::place`]). Empty when the scenario has none.
    pub net: Vec<Node>,
}

/// A fresh directory for one run's audio, links and ground truth.
pub fn workdir(label: &str) -> Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!(
        "hx-{label}-{}-{}",
        std::process::id(),
        agent::clock::monotonic_ns()
    ));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

/// The audio of call `call` of a scenario: deterministic for a scenario and call number.
pub fn call_audio(sc: &Scenario, call: u32, corpus: &[Audio], music: &[Audio]) -> Result<Audio> {
    let seed = 0x5EED_0000 + call as u64;
    let rate = sc.rate;
    Ok(match sc.audio {
        AudioPlan::SyntheticSpeech => audio::speech_like(rate, sc.seconds, seed),
        AudioPlan::RealSpeech => audio::speech_call(corpus, sc.seconds, seed),
        AudioPlan::QuietAndShared => {
            // 24 s: speech, silence, comfort noise, tone, DTMF, shared hold music, speech.
            let mut a = audio::speech_call(corpus, 5.0, seed);
            a.append(&audio::digital_silence(rate, 2.0));
            a.append(&audio::comfort_noise(rate, 2.0, 30.0, seed));
            a.append(&audio::tone(rate, 1.0, 1000.0, 8000.0));
            a.append(&audio::dtmf(rate, "1590#"));
            let hold = (rate as f64 * 7.0) as usize;
            a.append(&Audio::new(rate, music[0].samples[..hold].to_vec()));
            let rest = (sc.seconds * rate as f64) as usize - a.samples.len();
            a.append(&audio::speech_call(
                corpus,
                rest as f64 / rate as f64,
                seed + 1000,
            ));
            a.samples.truncate((sc.seconds * rate as f64) as usize);
            a
        }
    })
}

/// The tree of points call `call` passes, from its source's output `output`.
fn call_tree(sc: &Scenario, call: u32, src: usize, output: usize, wav: PathBuf) -> CallTruth {
    let t = &sc.topology;
    let mut tree = CallTruth {
        call,
        wav,
        points: Vec::new(),
        parent: Vec::new(),
    };
    let point = |comp: usize, dir: Dir, l: usize| {
        let link = &t.links[l];
        let c = &t.comps[comp];
        Point {
            component: c.name.clone(),
            dir,
            link: link.name.clone(),
            tls_stack: match c.kind {
                Kind::External(kind) if link.spec.kind == LinkKind::Tls => kind.tls_stack(),
                _ => None,
            },
        }
    };
    let mut todo = vec![(t.comps[src].outputs[output], None)];
    while let Some((l, parent)) = todo.pop() {
        let link = &t.links[l];
        let w = tree.add(point(link.from, Dir::Write, l), parent);
        let reader = &t.comps[link.to];
        let r = tree.add(point(link.to, Dir::Read, l), Some(w));
        if let Some(route) = reader.kind.route() {
            let input = reader
                .inputs
                .iter()
                .position(|&i| i == l)
                .expect("link is an input of its reader");
            for o in route.outputs(input, call, reader.outputs.len()) {
                todo.push((reader.outputs[o], Some(r)));
            }
        }
    }
    tree
}

/// Runs `sc` with components launched from `exe` (a binary that calls
/// `component::run_if_component` first in `main`). `attach` is called once every component is
/// up and before any audio moves: start the tracer there.
pub fn run(
    sc: &Scenario,
    exe: &Path,
    dir: &Path,
    attach: impl FnOnce(&Targets) -> Result<()>,
) -> Result<GroundTruth> {
    let t = &sc.topology;
    let nodes = match t.nodes() {
        names if names.is_empty() => None,
        names => Some(Nodes::create(&names)?),
    };
    let pem = dir.join("tls.pem");
    if t.links.iter().any(|l| l.spec.kind == LinkKind::Tls) {
        crate::pki::write_test_certificate(&pem)?;
    }
    let ends = link_ends(sc, dir, nodes.as_ref(), &pem)?;
    let plan = plan_components(sc, dir, &ends)?;
    let mut running: Vec<Running> = Vec::new();
    let result = (|| -> Result<()> {
        start(&mut running, sc, exe, dir, &pem, &plan, nodes.as_ref())?;
        attach(&targets(sc, &running, nodes.as_ref()))?;
        std::fs::write(&plan.go, b"")?;
        let budget = Duration::from_secs_f64(sc.seconds / sc.speed * 3.0 + 30.0);
        wait_all(&mut running, budget)
    })();
    // Our components are done (or failed): stop whatever still runs, the externals included.
    let externals_log = external_logs(sc, &running);
    for r in &mut running {
        stop(&mut r.child);
    }
    result?;
    let mut components = plan
        .ours
        .iter()
        .map(|(s, ci)| {
            let mut log = ComponentLog::load(&s.truth)?;
            log.node = t.comps[*ci].node.clone();
            Ok(log)
        })
        .collect::<Result<Vec<_>>>()?;
    components.extend(externals_log);
    Ok(GroundTruth {
        scenario: sc.id.to_string(),
        calls: plan.calls,
        components,
        node_clocks: Default::default(),
    })
}

/// The node component `comp` runs on, if any.
fn node_of<'n>(sc: &Scenario, nodes: Option<&'n Nodes>, comp: usize) -> Option<&'n Node> {
    nodes?.get(sc.topology.comps[comp].node.as_deref()?)
}

/// Each link's (writing end, reading end), its FIFO made.
fn link_ends(
    sc: &Scenario,
    dir: &Path,
    nodes: Option<&Nodes>,
    pem: &Path,
) -> Result<Vec<(End, End)>> {
    let t = &sc.topology;
    t.links
        .iter()
        .enumerate()
        .map(|(i, l)| {
            let port_file = |name: &str| dir.join(format!("{name}.port"));
            let (from, to) = (&t.comps[l.from], &t.comps[l.to]);
            let across = from.node != to.node;
            if across
                && !(matches!(
                    l.spec.kind,
                    LinkKind::Tcp4 | LinkKind::Tls | LinkKind::Service
                ) && [from, to].iter().all(|c| c.node.is_some()))
            {
                bail!(
                    "link {} joins {} on node {:?} to {} on node {:?}: only TCP over IPv4 joins \
                     two nodes",
                    l.name,
                    from.name,
                    from.node,
                    to.name,
                    to.node
                );
            }
            let transport = match l.spec.kind {
                LinkKind::Pipe => {
                    let p = dir.join(format!("{}.fifo", l.name));
                    component::mkfifo(&p)?;
                    Transport::Fifo(p)
                }
                LinkKind::Tcp4 | LinkKind::Tcp6 | LinkKind::Tls => Transport::Tcp {
                    ip: match node_of(sc, nodes, l.to) {
                        Some(n) if across => n.addr.into(),
                        _ if l.spec.kind == LinkKind::Tcp6 => Ipv6Addr::LOCALHOST.into(),
                        _ => Ipv4Addr::LOCALHOST.into(),
                    },
                    port_file: port_file(&l.name),
                    tls: (l.spec.kind == LinkKind::Tls).then(|| pem.to_path_buf()),
                    service: None,
                },
                LinkKind::Service => {
                    if from.node.is_none() || to.node.is_none() {
                        bail!("link {}: a Service link joins components on nodes", l.name);
                    }
                    Transport::Tcp {
                        // Both endpoint addresses reach the one listener.
                        ip: Ipv4Addr::UNSPECIFIED.into(),
                        port_file: port_file(&l.name),
                        tls: None,
                        service: Some(services::cluster_addr(i).into()),
                    }
                }
                LinkKind::Unix => Transport::Unix(dir.join(format!("{}.sock", l.name))),
                LinkKind::Nats => {
                    let broker = [l.from, l.to]
                        .into_iter()
                        .find(|&c| t.comps[c].kind == Kind::External(External::Nats))
                        .with_context(|| format!("link {} reaches no NATS broker", l.name))?;
                    Transport::Nats {
                        port_file: port_file(&t.comps[broker].name),
                    }
                }
            };
            let end = |call| End {
                link: l.name.clone(),
                transport: transport.clone(),
                framing: l.spec.framing,
                call,
                chunk: l.spec.chunk,
            };
            Ok((end(l.spec.write), end(l.spec.read)))
        })
        .collect()
}

/// What a run starts, before anything starts.
struct Plan {
    /// Every call's tree of points, by call number.
    calls: Vec<CallTruth>,
    /// Our components' specs, each with its index in the topology.
    ours: Vec<(Spec, usize)>,
    externals: Vec<ExternalPlan>,
    /// Nothing moves before this file exists.
    go: PathBuf,
}

/// Writes each call's audio, our components' specs' roles and ends, and picks the ports the
/// external components will listen on.
fn plan_components(sc: &Scenario, dir: &Path, ends: &[(End, End)]) -> Result<Plan> {
    let corpus = match sc.audio {
        AudioPlan::RealSpeech | AudioPlan::QuietAndShared => audio::speech_corpus()?,
        AudioPlan::SyntheticSpeech => Vec::new(),
    };
    let music = match sc.audio {
        AudioPlan::QuietAndShared => audio::hold_music()?,
        _ => Vec::new(),
    };
    let go = dir.join("go");
    let mut calls = Vec::new();
    let mut ours = Vec::new();
    let mut externals = Vec::new();
    for (ci, c) in sc.topology.comps.iter().enumerate() {
        let role = match &c.kind {
            Kind::Source { calls: mine } => {
                let mut list = Vec::new();
                for &(call, output) in mine {
                    let wav = dir.join(format!("call-{call}.wav"));
                    call_audio(sc, call, &corpus, &music)?.write_wav(&wav)?;
                    calls.push(call_tree(sc, call, ci, output, wav.clone()));
                    list.push(SourceCall { call, wav, output });
                }
                Role::Source {
                    calls: list,
                    speed: sc.speed,
                }
            }
            Kind::Relay { hold_us, route } => Role::Relay {
                hold_us: *hold_us,
                route: *route,
            },
            Kind::Sink => Role::Sink,
            Kind::External(kind) => {
                if c.node.is_some() {
                    bail!("{}: external components run on no node", c.name);
                }
                let plan = ExternalPlan::new(sc, ci, *kind, ends)?;
                for f in &plan.listens {
                    std::fs::write(f, free_port()?.to_string())?;
                }
                externals.push(plan);
                continue;
            }
        };
        let spec = Spec {
            name: c.name.clone(),
            truth: dir.join(format!("{}.truth.json", c.name)),
            ready: dir.join(format!("{}.ready", c.name)),
            go: go.clone(),
            role,
            inputs: c.inputs.iter().map(|&l| ends[l].1.clone()).collect(),
            outputs: c.outputs.iter().map(|&l| ends[l].0.clone()).collect(),
        };
        ours.push((spec, ci));
    }
    calls.sort_by_key(|c| c.call);
    Ok(Plan {
        calls,
        ours,
        externals: in_start_order(externals)?,
        go,
    })
}

/// Starts our components, then each external one once the ports it connects to are taken,
/// and waits until every one is ready. What started is in `running`, even on failure.
fn start(
    running: &mut Vec<Running>,
    sc: &Scenario,
    exe: &Path,
    dir: &Path,
    pem: &Path,
    plan: &Plan,
    nodes: Option<&Nodes>,
) -> Result<()> {
    for (spec, ci) in &plan.ours {
        let mut cmd = component::command(exe, spec, &dir.join(format!("{}.spec.json", spec.name)))?;
        if let Some(n) = node_of(sc, nodes, *ci) {
            n.place(&mut cmd)?;
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("starting component {} from {}", spec.name, exe.display()))?;
        running.push(Running {
            name: spec.name.clone(),
            comp: *ci,
            child,
            external: None,
        });
    }
    services::install(sc, dir, nodes, running)?;
    for ext in &plan.externals {
        let name = &sc.topology.comps[ext.comp].name;
        wait_until(
            running,
            &format!("the ports {name} connects to"),
            // Read, not just there: a port file exists a moment before its port is in it.
            || ext.connects.iter().all(|f| read_port(f).is_ok()),
        )?;
        let log = dir.join(format!("{name}.log"));
        let out = std::fs::File::create(&log)?;
        let child = ext
            .command(sc, dir, pem, exe)?
            .stdin(std::process::Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .with_context(|| {
                format!(
                    "starting {} (not installed? `bash scripts/setup.sh` installs it)",
                    ext.kind.name()
                )
            })?;
        running.push(Running {
            name: name.clone(),
            comp: ext.comp,
            child,
            external: Some((ext.kind, log)),
        });
        let ports = ext
            .listens
            .iter()
            .map(|f| read_port(f))
            .collect::<Result<Vec<_>>>()?;
        wait_until(running, &format!("{name} to listen"), || {
            ports.iter().all(|&p| listening(p))
        })?;
    }
    for (spec, _) in &plan.ours {
        wait_until(running, &format!("{} to be ready", spec.name), || {
            spec.ready.exists()
        })?;
    }
    Ok(())
}

/// What the tracer is told about the running components.
fn targets(sc: &Scenario, running: &[Running], nodes: Option<&Nodes>) -> Targets {
    let t = &sc.topology;
    let on = |node: Option<&str>| -> Vec<u32> {
        running
            .iter()
            .filter(|r| t.comps[r.comp].node.as_deref() == node)
            .map(|r| r.child.id())
            .collect()
    };
    let mut by_node: Vec<(String, Vec<u32>)> = t
        .nodes()
        .into_iter()
        .map(|n| (n.to_string(), on(Some(n))))
        .collect();
    let host = on(None);
    if !host.is_empty() {
        by_node.push((HOST.to_string(), host));
    }
    Targets {
        pids: running.iter().map(|r| r.child.id()).collect(),
        components: running
            .iter()
            .map(|r| (r.name.clone(), r.child.id()))
            .collect(),
        comm_prefix: "hx-".into(),
        nodes: by_node,
        net: nodes.map_or(Vec::new(), |n| n.all().to_vec()),
    }
}

/// The external components' part of the ground truth: who they were, nothing they did (read
/// while they still run: their comm).
fn external_logs(sc: &Scenario, running: &[Running]) -> Vec<ComponentLog> {
    running
        .iter()
        .filter(|r| r.external.is_some())
        .map(|r| ComponentLog {
            name: r.name.clone(),
            pid: r.child.id(),
            comm: comm(r.child.id()),
            ios: Vec::new(),
            external: true,
            node: sc.topology.comps[r.comp].node.clone(),
        })
        .collect()
}
