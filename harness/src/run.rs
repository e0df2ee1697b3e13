//! Runs a scenario: prepares each call's audio, starts the components as real processes wired
//! by pipes, lets a tracer attach, starts the audio and collects the ground truth.

use crate::audio::{self, Audio};
use crate::component::COMPONENT_ENV;
use crate::scenario::{AudioSource, Scenario, Stage};
use crate::truth::{CallTruth, ComponentLog, Dir, GroundTruth, Point};
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// What a tracer is told to trace: the components' pids and the prefix of their comm.
#[derive(Clone, Debug)]
pub struct Targets {
    pub pids: Vec<u32>,
    pub comm_prefix: String,
}

/// A fresh directory for one run's audio and ground truth.
pub fn workdir(label: &str) -> Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("hx-{label}-{}-{}", std::process::id(), crate::truth::monotonic_ns()));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

/// The audio of call `call` of a scenario: deterministic for a scenario and call number.
pub fn call_audio(sc: &Scenario, call: u32, corpus: Option<&[Audio]>) -> Result<Audio> {
    let seed = 0x5EED_0000 + call as u64;
    Ok(match sc.audio {
        AudioSource::SyntheticSpeech => audio::speech_like(sc.rate, sc.seconds, seed),
        AudioSource::RealSpeech => match corpus {
            Some(c) => audio::speech_call(c, sc.seconds, seed),
            None => audio::speech_call(&audio::speech_corpus()?, sc.seconds, seed),
        },
    })
}

struct Running {
    name: String,
    child: Child,
}

fn component_args(
    role: &str,
    name: &str,
    dir: &Path,
    link_in: &str,
    link_out: &str,
) -> Vec<String> {
    vec![
        role.into(),
        "--name".into(),
        name.into(),
        "--truth".into(),
        dir.join(format!("{name}.truth.json")).display().to_string(),
        "--ready".into(),
        dir.join(format!("{name}.ready")).display().to_string(),
        "--link-in".into(),
        link_in.into(),
        "--link-out".into(),
        link_out.into(),
    ]
}

fn stage_args(s: &Stage) -> Vec<String> {
    vec!["--chunk".into(), s.chunk.to_string(), "--header-len".into(), s.header_len.to_string()]
}

/// Runs `sc` with components launched from `exe` (a binary that calls
/// `component::run_if_component` first in `main`). `attach` is called once every component is
/// up and before any audio moves: start the tracer there.
pub fn run(sc: &Scenario, exe: &Path, dir: &Path, attach: impl FnOnce(&Targets) -> Result<()>) -> Result<GroundTruth> {
    let corpus = match sc.audio {
        AudioSource::RealSpeech => Some(audio::speech_corpus()?),
        AudioSource::SyntheticSpeech => None,
    };
    let go = dir.join("go");
    let mut running: Vec<Running> = Vec::new();
    let mut calls = Vec::new();
    let spawn = |running: &mut Vec<Running>, name: String, args: Vec<String>, stdin: Stdio, piped_out: bool| -> Result<()> {
        let child = Command::new(exe)
            .env(COMPONENT_ENV, "1")
            .args(args)
            .stdin(stdin)
            .stdout(if piped_out { Stdio::piped() } else { Stdio::null() })
            .spawn()
            .with_context(|| format!("starting component {name} from {}", exe.display()))?;
        running.push(Running { name, child });
        Ok(())
    };
    let result = (|| -> Result<()> {
        for call in 0..sc.calls {
            let wav = dir.join(format!("call-{call}.wav"));
            call_audio(sc, call, corpus.as_deref())?.write_wav(&wav)?;
            let link = |i: usize| format!("c{call}-l{i}");
            let mut path = Vec::new();
            let src = format!("c{call}-src");
            let mut args = component_args("source", &src, dir, "", &link(0));
            args.extend(stage_args(&sc.source));
            args.extend([
                "--call".into(),
                call.to_string(),
                "--wav".into(),
                wav.display().to_string(),
                "--go".into(),
                go.display().to_string(),
                "--speed".into(),
                sc.speed.to_string(),
            ]);
            spawn(&mut running, src.clone(), args, Stdio::null(), true)?;
            path.push(Point { component: src, dir: Dir::Write, link: link(0) });
            for (i, stage) in sc.relays.iter().enumerate() {
                let name = format!("c{call}-r{}", i + 1);
                let mut args = component_args("relay", &name, dir, &link(i), &link(i + 1));
                args.extend(stage_args(stage));
                args.extend(["--hold-us".into(), stage.hold_us.to_string()]);
                let upstream = running.last_mut().and_then(|r| r.child.stdout.take()).expect("piped stdout");
                spawn(&mut running, name.clone(), args, upstream.into(), true)?;
                path.push(Point { component: name.clone(), dir: Dir::Read, link: link(i) });
                path.push(Point { component: name, dir: Dir::Write, link: link(i + 1) });
            }
            let sink = format!("c{call}-sink");
            let last = link(sc.relays.len());
            let upstream = running.last_mut().and_then(|r| r.child.stdout.take()).expect("piped stdout");
            spawn(&mut running, sink.clone(), component_args("sink", &sink, dir, &last, ""), upstream.into(), false)?;
            path.push(Point { component: sink, dir: Dir::Read, link: last });
            calls.push(CallTruth { call, wav, path });
        }
        wait_ready(&mut running, dir)?;
        let targets =
            Targets { pids: running.iter().map(|r| r.child.id()).collect(), comm_prefix: "hx-".into() };
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
    let components = running
        .iter()
        .map(|r| ComponentLog::load(&dir.join(format!("{}.truth.json", r.name))))
        .collect::<Result<Vec<_>>>()?;
    Ok(GroundTruth { scenario: sc.id.to_string(), calls, components })
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
