//! Runs a scenario: prepares each call's audio, starts its topology's components as real
//! processes joined by real links, lets a tracer attach, starts the audio and collects the
//! ground truth.
//!
//! Components placed on nodes run inside them ([`crate::nodes`], created for the run); a TCP
//! link between two nodes listens on the reader's node address, any other link is local.
//!
//! External components (a real nats-server, stunnel4) start after ours: the runner picks the
//! ports they listen on up front, waits until our components listen where they connect, writes
//! their configuration, and stops them once our components are done.

use crate::audio::{self, Audio};
use crate::component::{self, End, Role, SourceCall, Spec, Transport};
use crate::nodes::{Node, Nodes, HOST};
use crate::scenario::{AudioPlan, External, Kind, LinkKind, Scenario};
use crate::truth::{CallTruth, ComponentLog, Dir, GroundTruth, Point};
use anyhow::{bail, Context, Result};
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant};

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
        crate::truth::monotonic_ns()
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
    let mut todo = vec![(t.comps[src].outputs[output], None)];
    while let Some((l, parent)) = todo.pop() {
        let link = &t.links[l];
        let w = tree.add(
            Point {
                component: t.comps[link.from].name.clone(),
                dir: Dir::Write,
                link: link.name.clone(),
            },
            parent,
        );
        let reader = &t.comps[link.to];
        let r = tree.add(
            Point {
                component: reader.name.clone(),
                dir: Dir::Read,
                link: link.name.clone(),
            },
            Some(w),
        );
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

struct Running {
    name: String,
    /// Its index in the topology.
    comp: usize,
    child: Child,
    /// What an external component is; its log file.
    external: Option<(External, PathBuf)>,
}

impl Running {
    /// The component, and for an external one what it is and the tail of its log.
    fn describe(&self) -> String {
        match &self.external {
            None => format!("component {}", self.name),
            Some((kind, log)) => {
                let text = std::fs::read_to_string(log).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(5).collect();
                format!(
                    "{} ({}; last lines of {}: {})",
                    kind.program(),
                    self.name,
                    log.display(),
                    tail.into_iter().rev().collect::<Vec<_>>().join(" | ")
                )
            }
        }
    }
}

/// The loopback port in a port file.
fn read_port(port_file: &Path) -> Result<u16> {
    Ok(std::fs::read_to_string(port_file)
        .with_context(|| format!("reading {}", port_file.display()))?
        .trim()
        .parse()?)
}

/// A port free on the IPv4 loopback for an external component to listen on (someone else may
/// take it before it does: a small race, accepted).
pub fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Whether something listens on IPv4 `port`. Read from /proc rather than by connecting: a
/// probe connection into stunnel would make it connect on to our components.
pub fn listening(port: u16) -> bool {
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap_or_default();
    let local = format!(":{port:04X}");
    table.lines().skip(1).any(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        f.len() > 3 && f[1].ends_with(&local) && f[3] == "0A"
    })
}

fn port_file(t: &Transport) -> Result<&Path> {
    match t {
        Transport::Tcp {
            ip: IpAddr::V4(_),
            port_file,
            ..
        }
        | Transport::Nats { port_file } => Ok(port_file),
        other => bail!("external components use TCP over IPv4, not {other:?}"),
    }
}

/// How the runner starts one external component.
struct ExternalPlan {
    comp: usize,
    kind: External,
    /// Port files the runner fills before anything starts: where it will listen.
    listens: Vec<PathBuf>,
    /// Port files our components fill: where it connects.
    connects: Vec<PathBuf>,
}

impl ExternalPlan {
    fn new(sc: &Scenario, comp: usize, kind: External, ends: &[(End, End)]) -> Result<Self> {
        let c = &sc.topology.comps[comp];
        let files = |links: &[usize]| -> Result<Vec<PathBuf>> {
            links
                .iter()
                .map(|&l| Ok(port_file(&ends[l].0.transport)?.to_path_buf()))
                .collect()
        };
        Ok(match kind {
            // Producers and consumers alike connect to the broker's one port.
            External::Nats => {
                let mut listens = files(&c.inputs)?;
                listens.extend(files(&c.outputs)?);
                listens.sort();
                listens.dedup();
                Self {
                    comp,
                    kind,
                    listens,
                    connects: Vec::new(),
                }
            }
            External::Stunnel => Self {
                comp,
                kind,
                listens: files(&c.inputs)?,
                connects: files(&c.outputs)?,
            },
        })
    }

    /// The command line, with its configuration written to `dir` first.
    fn command(&self, sc: &Scenario, dir: &Path, pem: &Path) -> Result<std::process::Command> {
        let t = &sc.topology;
        let c = &t.comps[self.comp];
        let mut cmd = std::process::Command::new(self.kind.program());
        match self.kind {
            External::Nats => {
                let port = read_port(&self.listens[0])?;
                cmd.args(["-a", "127.0.0.1", "-p", &port.to_string()]);
            }
            External::Stunnel => {
                let conf = dir.join(format!("{}.conf", c.name));
                // Without TCP_NODELAY, Nagle's algorithm would hold small writes back.
                let mut text = String::from(
                    "foreground = yes\npid =\nsocket = l:TCP_NODELAY=1\nsocket = r:TCP_NODELAY=1\n",
                );
                for (i, (&input, &output)) in c.inputs.iter().zip(&c.outputs).enumerate() {
                    let tls_in = t.links[input].spec.kind == LinkKind::Tls;
                    let tls_out = t.links[output].spec.kind == LinkKind::Tls;
                    if tls_in == tls_out {
                        bail!("{}: service {i} must have exactly one TLS side", c.name);
                    }
                    write!(
                        text,
                        "[s{i}]\naccept = 127.0.0.1:{}\nconnect = 127.0.0.1:{}\n{}\n",
                        read_port(&self.listens[i])?,
                        read_port(&self.connects[i])?,
                        if tls_out {
                            "client = yes".to_string()
                        } else {
                            format!("cert = {}", pem.display())
                        }
                    )?;
                }
                std::fs::write(&conf, text)?;
                cmd.arg(conf);
            }
        }
        Ok(cmd)
    }
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
    let corpus = match sc.audio {
        AudioPlan::RealSpeech | AudioPlan::QuietAndShared => audio::speech_corpus()?,
        AudioPlan::SyntheticSpeech => Vec::new(),
    };
    let music = match sc.audio {
        AudioPlan::QuietAndShared => audio::hold_music()?,
        _ => Vec::new(),
    };
    let t = &sc.topology;
    let nodes = match t.nodes() {
        names if names.is_empty() => None,
        names => Some(Nodes::create(&names)?),
    };
    let node = |comp: usize| {
        let name = t.comps[comp].node.as_deref()?;
        nodes.as_ref()?.get(name)
    };
    let go = dir.join("go");
    let pem = dir.join("tls.pem");
    if t.links.iter().any(|l| l.spec.kind == LinkKind::Tls) {
        component::write_test_certificate(&pem)?;
    }
    let ends: Vec<(End, End)> = t
        .links
        .iter()
        .map(|l| {
            let port_file = |name: &str| dir.join(format!("{name}.port"));
            let (from, to) = (&t.comps[l.from], &t.comps[l.to]);
            let across = from.node != to.node;
            if across
                && !(matches!(l.spec.kind, LinkKind::Tcp4 | LinkKind::Tls)
                    && [from, to].iter().all(|c| c.node.is_some()))
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
                    ip: match node(l.to) {
                        Some(n) if across => n.addr.into(),
                        _ if l.spec.kind == LinkKind::Tcp6 => Ipv6Addr::LOCALHOST.into(),
                        _ => Ipv4Addr::LOCALHOST.into(),
                    },
                    port_file: port_file(&l.name),
                    tls: (l.spec.kind == LinkKind::Tls).then(|| pem.clone()),
                },
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
        .collect::<Result<_>>()?;

    let mut calls = Vec::new();
    let mut specs = Vec::new();
    // The component each spec is of.
    let mut spec_comps = Vec::new();
    let mut externals = Vec::new();
    for (ci, c) in t.comps.iter().enumerate() {
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
                let plan = ExternalPlan::new(sc, ci, *kind, &ends)?;
                for f in &plan.listens {
                    std::fs::write(f, free_port()?.to_string())?;
                }
                externals.push(plan);
                continue;
            }
        };
        spec_comps.push(ci);
        specs.push(Spec {
            name: c.name.clone(),
            truth: dir.join(format!("{}.truth.json", c.name)),
            ready: dir.join(format!("{}.ready", c.name)),
            go: go.clone(),
            role,
            inputs: c.inputs.iter().map(|&l| ends[l].1.clone()).collect(),
            outputs: c.outputs.iter().map(|&l| ends[l].0.clone()).collect(),
        });
    }
    calls.sort_by_key(|c| c.call);

    let mut running: Vec<Running> = Vec::new();
    let result = (|| -> Result<()> {
        for (spec, &ci) in specs.iter().zip(&spec_comps) {
            let mut cmd =
                component::command(exe, spec, &dir.join(format!("{}.spec.json", spec.name)))?;
            if let Some(n) = node(ci) {
                n.place(&mut cmd)?;
            }
            let child = cmd.spawn().with_context(|| {
                format!("starting component {} from {}", spec.name, exe.display())
            })?;
            running.push(Running {
                name: spec.name.clone(),
                comp: ci,
                child,
                external: None,
            });
        }
        for plan in &externals {
            let name = &t.comps[plan.comp].name;
            wait_until(
                &mut running,
                &format!("the ports {name} connects to"),
                // Read, not just there: a port file exists a moment before its port is in it.
                || plan.connects.iter().all(|f| read_port(f).is_ok()),
            )?;
            let log = dir.join(format!("{name}.log"));
            let out = std::fs::File::create(&log)?;
            let child = plan
                .command(sc, dir, &pem)?
                .stdin(std::process::Stdio::null())
                .stdout(out.try_clone()?)
                .stderr(out)
                .spawn()
                .with_context(|| {
                    format!(
                        "starting {} (not installed? `bash scripts/setup.sh` installs it)",
                        plan.kind.program()
                    )
                })?;
            running.push(Running {
                name: name.clone(),
                comp: plan.comp,
                child,
                external: Some((plan.kind, log)),
            });
            let ports = plan
                .listens
                .iter()
                .map(|f| read_port(f))
                .collect::<Result<Vec<_>>>()?;
            wait_until(&mut running, &format!("{name} to listen"), || {
                ports.iter().all(|&p| listening(p))
            })?;
        }
        for spec in &specs {
            wait_until(&mut running, &format!("{} to be ready", spec.name), || {
                spec.ready.exists()
            })?;
        }
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
        let targets = Targets {
            pids: running.iter().map(|r| r.child.id()).collect(),
            components: running
                .iter()
                .map(|r| (r.name.clone(), r.child.id()))
                .collect(),
            comm_prefix: "hx-".into(),
            nodes: by_node,
            net: nodes.as_ref().map_or(Vec::new(), |n| n.all().to_vec()),
        };
        attach(&targets)?;
        std::fs::write(&go, b"")?;
        let budget = Duration::from_secs_f64(sc.seconds / sc.speed * 3.0 + 30.0);
        wait_all(&mut running, budget)
    })();
    // Our components are done (or failed): stop whatever still runs, the externals included.
    let externals_log: Vec<ComponentLog> = running
        .iter()
        .filter(|r| r.external.is_some())
        .map(|r| ComponentLog {
            name: r.name.clone(),
            pid: r.child.id(),
            comm: comm(r.child.id()),
            ios: Vec::new(),
            external: true,
            node: t.comps[r.comp].node.clone(),
        })
        .collect();
    for r in &mut running {
        stop(&mut r.child);
    }
    result?;
    let mut components = specs
        .iter()
        .zip(&spec_comps)
        .map(|(s, &ci)| {
            let mut log = ComponentLog::load(&s.truth)?;
            log.node = t.comps[ci].node.clone();
            Ok(log)
        })
        .collect::<Result<Vec<_>>>()?;
    components.extend(externals_log);
    Ok(GroundTruth {
        scenario: sc.id.to_string(),
        calls,
        components,
    })
}

/// The comm of a running process.
fn comm(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .map(|c| c.trim_end().to_string())
        .unwrap_or_default()
}

/// Ends a child that still runs: SIGTERM, then SIGKILL if it does not exit within 2 s.
fn stop(child: &mut Child) {
    if matches!(child.try_wait(), Ok(Some(_))) {
        return;
    }
    // SAFETY: kill() with a pid we spawned and have not reaped yet.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(2);
    while Instant::now() < deadline {
        if matches!(child.try_wait(), Ok(Some(_))) {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// Waits up to 30 s for `done` (`what` it is), failing as soon as any started process exits.
fn wait_until(running: &mut [Running], what: &str, done: impl Fn() -> bool) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !done() {
        for r in running.iter_mut() {
            if let Some(status) = r.child.try_wait()? {
                bail!("{} exited during start-up ({status})", r.describe());
            }
        }
        if Instant::now() > deadline {
            bail!("waited 30 s for {what}");
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    Ok(())
}

/// Waits for our components to finish; the external ones must still be running then.
fn wait_all(running: &mut [Running], budget: Duration) -> Result<()> {
    let deadline = Instant::now() + budget;
    for r in running.iter_mut() {
        loop {
            let status = r.child.try_wait()?;
            match (&r.external, status) {
                (None, Some(status)) if !status.success() => {
                    bail!("{} failed ({status})", r.describe())
                }
                (Some(_), Some(status)) => bail!("{} exited early ({status})", r.describe()),
                (None, Some(_)) | (Some(_), None) => break,
                (None, None) => {}
            }
            if Instant::now() > deadline {
                bail!("{} still running after {budget:?}", r.describe());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    Ok(())
}
