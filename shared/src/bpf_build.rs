//! For phases' build scripts: compiles a phase's `.bpf.c` with clang against the shared BPF
//! headers (`shared/bpf/`), the way libbpf-bootstrap builds its tools.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Compiles `source` (with `bpf/` of the calling crate on the include path) into
/// `$OUT_DIR/<object>` and tells cargo when to do it again.
pub fn compile(source: &str, object: &str) {
    let shared = Path::new(env!("CARGO_MANIFEST_DIR")).join("bpf");
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR")).join(object);
    // Directories: cargo looks at every file in them, so a header added later is watched too.
    println!("cargo:rerun-if-changed={source}");
    println!("cargo:rerun-if-changed=bpf");
    println!("cargo:rerun-if-changed={}", shared.display());
    let status = Command::new("clang")
        .args([
            "-g",
            "-O2",
            "-target",
            "bpf",
            "-D__TARGET_ARCH_x86",
            // v3: atomic compare-and-exchange (fp_claim), Linux 5.12+.
            "-mcpu=v3",
            "-Wall",
            "-Werror",
        ])
        .args(["-I/usr/include/x86_64-linux-gnu", "-Ibpf"])
        .arg(format!("-I{}", shared.display()))
        .args(["-c", source, "-o"])
        .arg(&out)
        .status()
        .unwrap_or_else(|e| {
            panic!("cannot run clang ({e}); install the eBPF toolchain: bash scripts/setup.sh")
        });
    assert!(status.success(), "clang failed to compile {source}");
}
