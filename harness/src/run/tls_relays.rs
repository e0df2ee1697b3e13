//! The relays on TLS stacks other than OpenSSL, as the runner starts them: the Go one built and
//! the Java one compiled from harness/relays at run time (once per version of the source, shared
//! by every run on the machine), the rustls one the component binary itself
//! ([`crate::tls_relay`]).

use crate::truth::TlsStack;
use anyhow::{bail, Context, Result};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::{Path, PathBuf};
use std::process::Command;

/// The relays' sources.
const SOURCES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/relays");

/// The relay's command, before its arguments (`PEM IN>OUT...`).
pub(super) fn command(stack: TlsStack, exe: &Path) -> Result<Command> {
    Ok(match stack {
        TlsStack::Go => {
            let dir = built("go/relay.go", |_, out| {
                let mut c = go_relay_build("go", "exe", "", &out.join("go-tls-relay"));
                // A cache of its own: the run may have no HOME.
                c.env("GOCACHE", cache_root().join("go-cache"));
                c
            })?;
            Command::new(dir.join("go-tls-relay"))
        }
        TlsStack::Java => {
            let classes = built("java/Relay.java", |src, out| {
                let mut c = Command::new("javac");
                c.arg("-d").arg(out).arg(src);
                c
            })?;
            let mut c = Command::new("java");
            // IPv4 sockets: a dual-stack one listens in /proc/net/tcp6, where the runner does
            // not look.
            c.arg("-Djava.net.preferIPv4Stack=true")
                .arg("-cp")
                .arg(classes)
                .arg("Relay");
            c
        }
        TlsStack::Rustls => {
            let mut c = Command::new(exe);
            c.env(crate::tls_relay::RUSTLS_RELAY_ENV, "1");
            c
        }
    })
}

/// `go build` of the Go relay into `out` by the toolchain `go`, in build mode `mode` (`exe`,
/// `pie`) with `ldflags` (`-s -w`: stripped); GOTOOLCHAIN=local: never another toolchain
/// downloaded.
pub fn go_relay_build(go: &str, mode: &str, ldflags: &str, out: &Path) -> Command {
    let mut c = Command::new(go);
    c.args([
        "build",
        "-buildmode",
        mode,
        &format!("-ldflags={ldflags}"),
        "-o",
    ])
    .arg(out)
    .arg(Path::new(SOURCES).join("go/relay.go"))
    .env("GOTOOLCHAIN", "local");
    c
}

fn cache_root() -> PathBuf {
    std::env::temp_dir().join("hx-tls-relays")
}

/// The directory `build` fills from `source` (under [`SOURCES`]), made once per version of the
/// source: built into a fresh directory and renamed into place, so that runs at the same time
/// never see half a build.
fn built(source: &str, build: impl FnOnce(&Path, &Path) -> Command) -> Result<PathBuf> {
    let src = Path::new(SOURCES).join(source);
    let text = std::fs::read(&src).with_context(|| format!("reading {}", src.display()))?;
    let mut hash = DefaultHasher::new();
    text.hash(&mut hash);
    let stem = src.file_stem().unwrap_or_default().to_string_lossy();
    let root = cache_root();
    let dir = root.join(format!("{stem}-{:016x}", hash.finish()));
    if dir.exists() {
        return Ok(dir);
    }
    let fresh = root.join(format!(
        ".{stem}-{}-{}",
        std::process::id(),
        agent::clock::monotonic_ns()
    ));
    std::fs::create_dir_all(&fresh).with_context(|| format!("creating {}", fresh.display()))?;
    let mut cmd = build(&src, &fresh);
    let program = cmd.get_program().to_string_lossy().into_owned();
    let out = cmd.output().with_context(|| {
        format!("running {program} (not installed? `bash scripts/setup.sh` installs it)")
    })?;
    if !out.status.success() {
        let _ = std::fs::remove_dir_all(&fresh);
        let why = String::from_utf8_lossy(&out.stderr);
        bail!(
            "building {} with {program}: {}",
            src.display(),
            why.split_whitespace().collect::<Vec<_>>().join(" ")
        );
    }
    if let Err(e) = std::fs::rename(&fresh, &dir) {
        let _ = std::fs::remove_dir_all(&fresh);
        // Another run built the same source first.
        if !dir.exists() {
            return Err(e).with_context(|| format!("moving a build to {}", dir.display()));
        }
    }
    Ok(dir)
}
