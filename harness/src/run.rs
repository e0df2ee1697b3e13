//! Runs a scenario: prepares each call's audio, starts its topology's components as real
//! processes joined by real links, lets a tracer attach, starts the audio and collects the
//! ground truth.

use crate::audio::{self, Audio};
use crate::component::{self, End, Role, SourceCall, Spec, Transport};
use crate::scenario::{AudioPlan, Kind, LinkKind, Scenario};
use crate::truth::{CallTruth, ComponentLog, Dir, GroundTruth, Point};
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant};

/// What a tracer is told to trace: the components' pids and the prefix of their comm.
#[derive(Clone, Debug)]
pub struct Targets {
    pub pids: Vec<u32>,
    pub comm_prefix: String,
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
        if let Kind::Relay { route, .. } = reader.kind {
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
    child: Child,
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
    let go = dir.join("go");
    let ends: Vec<(End, End)> = t
        .links
        .iter()
        .map(|l| {
            let transport = match l.spec.kind {
                LinkKind::Pipe => {
                    let p = dir.join(format!("{}.fifo", l.name));
                    component::mkfifo(&p)?;
                    Transport::Fifo(p)
                }
                LinkKind::Tcp4 | LinkKind::Tcp6 => Transport::Tcp {
                    v6: l.spec.kind == LinkKind::Tcp6,
                    port_file: dir.join(format!("{}.port", l.name)),
                },
                LinkKind::Unix => Transport::Unix(dir.join(format!("{}.sock", l.name))),
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
        };
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
        for spec in &specs {
            let child =
                component::command(exe, spec, &dir.join(format!("{}.spec.json", spec.name)))?
                    .spawn()
                    .with_context(|| {
                        format!("starting component {} from {}", spec.name, exe.display())
                    })?;
            running.push(Running {
                name: spec.name.clone(),
                child,
            });
        }
        wait_ready(&mut running, dir)?;
        let targets = Targets {
            pids: running.iter().map(|r| r.child.id()).collect(),
            comm_prefix: "hx-".into(),
        };
        attach(&targets)?;
        std::fs::write(&go, b"")?;
        let budget = Duration::from_secs_f64(sc.seconds / sc.speed * 3.0 + 30.0);
        wait_all(&mut running, budget)
    })();
    if result.is_err() {
        for r in &mut running {
            let _ = r.child.kill();
            let _ = r.child.wait();
        }
    }
    result?;
    let components = specs
        .iter()
        .map(|s| ComponentLog::load(&s.truth))
        .collect::<Result<Vec<_>>>()?;
    Ok(GroundTruth {
        scenario: sc.id.to_string(),
        calls,
        components,
    })
}

fn wait_ready(running: &mut [Running], dir: &Path) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    for r in running.iter_mut() {
        let ready = dir.join(format!("{}.ready", r.name));
        while !ready.exists() {
            if let Some(status) = r.child.try_wait()? {
                bail!("component {} exited during start-up ({status})", r.name);
            }
            if Instant::now() > deadline {
                bail!("component {} not ready after 30 s", r.name);
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }
    Ok(())
}

fn wait_all(running: &mut [Running], budget: Duration) -> Result<()> {
    let deadline = Instant::now() + budget;
    for r in running.iter_mut() {
        loop {
            if let Some(status) = r.child.try_wait()? {
                if !status.success() {
                    bail!("component {} failed ({status})", r.name);
                }
                break;
            }
            if Instant::now() > deadline {
                bail!("component {} still running after {budget:?}", r.name);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    Ok(())
}
