//! A process a test starts and supervises: its output read by threads (it never blocks on a
//! full pipe), stopped with SIGTERM or waited for within a limit, killed if the test ends while
//! it still runs. Failures panic with what the process printed: this is for tests.

use std::io::Read;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

pub struct Supervised {
    what: String,
    child: Child,
    out: Option<JoinHandle<Printed>>,
    err: Option<JoinHandle<Printed>>,
}

/// What a process printed on one stream, and when its last output came.
type Printed = (String, Option<Instant>);

pub struct Exited {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
    /// When its last output on stdout came.
    pub printed_at: Option<Instant>,
}

impl Exited {
    /// The last line on stdout (a health line).
    pub fn last_line(&self) -> &str {
        self.stdout
            .lines()
            .rfind(|l| !l.trim().is_empty())
            .unwrap_or("")
    }
}

impl Supervised {
    /// Starts `cmd` (named `what` in failures) with stdin closed and both outputs collected.
    pub fn spawn(what: &str, cmd: &mut Command) -> Self {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("starting {what}: {e}"));
        fn reader(mut r: impl Read + Send + 'static) -> JoinHandle<Printed> {
            std::thread::spawn(move || {
                let (mut bytes, mut buf, mut last) = (Vec::new(), [0u8; 4096], None);
                while let Ok(n @ 1..) = r.read(&mut buf) {
                    bytes.extend_from_slice(&buf[..n]);
                    last = Some(Instant::now());
                }
                (String::from_utf8_lossy(&bytes).into_owned(), last)
            })
        }
        Self {
            what: what.to_string(),
            out: child.stdout.take().map(reader),
            err: child.stderr.take().map(reader),
            child,
        }
    }

    /// What the failures call it.
    pub fn what(&self) -> &str {
        &self.what
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn running(&mut self) -> bool {
        self.child.try_wait().expect("try_wait").is_none()
    }

    /// SIGKILL.
    pub fn kill(&mut self) {
        self.child.kill().expect("kill");
    }

    /// SIGTERM, with the `kill` command.
    pub fn terminate(&self) {
        let ok = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()
            .expect("running kill")
            .success();
        assert!(ok, "kill -TERM {} ({})", self.pid(), self.what);
    }

    /// Waits up to `limit` for it to exit (fails the test past that, with what it printed).
    pub fn wait(mut self, limit: Duration) -> Exited {
        let deadline = Instant::now() + limit;
        let status = loop {
            if let Some(s) = self.child.try_wait().expect("try_wait") {
                break s;
            }
            if Instant::now() > deadline {
                self.child.kill().ok();
                self.child.wait().ok();
                let ((out, _), (err, _)) = self.output();
                panic!(
                    "{} still running {limit:?} after it should have stopped; killed. \
                     stdout: {out}\nstderr: {err}",
                    self.what
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let ((stdout, printed_at), (stderr, _)) = self.output();
        Exited {
            status,
            stdout,
            stderr,
            printed_at,
        }
    }

    /// What it printed (once it exited).
    fn output(&mut self) -> (Printed, Printed) {
        let text =
            |h: Option<JoinHandle<Printed>>| h.map(|h| h.join().unwrap()).unwrap_or_default();
        (text(self.out.take()), text(self.err.take()))
    }
}

impl Drop for Supervised {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
