//! The walkthrough (docs/phases/README.md) runs as written: every `cargo run` it shows names a
//! binary of this workspace that accepts the arguments shown (checked with `--help` after
//! them: clap refuses an unknown argument before it gets there), every `cargo test --test` a
//! test that exists, and every file and page it names is there.

use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The lines of the page's `sh` blocks, comments stripped.
fn commands(page: &str) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    let mut inside = false;
    for line in page.lines() {
        if line.starts_with("```") {
            inside = line == "```sh";
            continue;
        }
        if inside {
            let line = line.split(" #").next().unwrap().trim();
            if !line.is_empty() {
                out.push(line.split_whitespace().map(str::to_string).collect());
            }
        }
    }
    out
}

#[test]
fn every_command_and_file_of_the_walkthrough_exists() {
    let page = std::fs::read_to_string(root().join("docs/phases/README.md")).unwrap();
    let commands = commands(&page);
    assert!(commands.len() >= 10, "{commands:?}");
    for words in &commands {
        let words: Vec<&str> = words.iter().map(String::as_str).collect();
        match words.as_slice() {
            ["cargo", "run", "--release", "-p", package, rest @ ..] => {
                let args = match rest {
                    [] => &[][..],
                    ["--", args @ ..] => args,
                    _ => panic!("{words:?}: arguments go after --"),
                };
                let bin = root().join("target/release").join(package);
                assert!(bin.exists(), "{words:?}: no binary {}", bin.display());
                let out = Command::new(&bin)
                    .args(args)
                    .arg("--help")
                    .output()
                    .unwrap();
                assert!(
                    out.status.success(),
                    "{words:?}: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            ["cargo", "test", "--release", "-p", package, "--test", test] => {
                let file = root()
                    .join(package)
                    .join("tests")
                    .join(format!("{test}.rs"));
                assert!(file.exists(), "{words:?}: no {}", file.display());
            }
            _ => panic!("{words:?}: not a command this test knows how to check"),
        }
    }
    // Files named in backquotes, and pages linked.
    let mut named = 0;
    for quoted in page.split('`').skip(1).step_by(2) {
        let looks_like_file = quoted.contains('/')
            && !quoted.contains(' ')
            && [".rs", ".c", ".h", ".md", ".toml"]
                .iter()
                .any(|ext| quoted.ends_with(ext));
        if looks_like_file {
            assert!(root().join(quoted).exists(), "no file {quoted}");
            named += 1;
        }
    }
    for link in page.split("](").skip(1) {
        let target = link.split(')').next().unwrap();
        if !target.starts_with("http") {
            let path = root()
                .join("docs/phases")
                .join(target.split('#').next().unwrap());
            assert!(path.exists(), "broken link {target}");
            named += 1;
        }
    }
    assert!(named >= 15, "{named} files and links");
}
