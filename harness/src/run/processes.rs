//! The processes of a run: waiting for them to start and to finish, and stopping them.

use crate::scenario::External;
use anyhow::{bail, Result};
use std::path::PathBuf;
use std::process::Child;
use std::time::{Duration, Instant};

/// A started component.
pub(super) struct Running {
    pub(super) name: String,
    /// Its index in the topology.
    pub(super) comp: usize,
    pub(super) child: Child,
    /// What an external component is; its log file.
    pub(super) external: Option<(External, PathBuf)>,
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
                    kind.name(),
                    self.name,
                    log.display(),
                    tail.into_iter().rev().collect::<Vec<_>>().join(" | ")
                )
            }
        }
    }
}

/// The comm of a running process.
pub(super) fn comm(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .map(|c| c.trim_end().to_string())
        .unwrap_or_default()
}

/// Ends a child that still runs: SIGTERM, then SIGKILL if it does not exit within 2 s.
pub(super) fn stop(child: &mut Child) {
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
pub(super) fn wait_until(
    running: &mut [Running],
    what: &str,
    done: impl Fn() -> bool,
) -> Result<()> {
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
pub(super) fn wait_all(running: &mut [Running], budget: Duration) -> Result<()> {
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
