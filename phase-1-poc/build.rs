//! Compiles bpf/phase1.bpf.c with clang (Debian's clang 14) into $OUT_DIR/phase1.bpf.o.
use std::path::PathBuf;
use std::process::Command;

fn main() {
    let out = PathBuf::from(std::env::var("OUT_DIR").unwrap()).join("phase1.bpf.o");
    let shared = PathBuf::from("../shared/bpf");
    for f in ["bpf/phase1.bpf.c", "bpf/phase1.h"] {
        println!("cargo:rerun-if-changed={f}");
    }
    for f in ["fingerprint.bpf.h", "fingerprint_consts.h", "targets.bpf.h"] {
        println!("cargo:rerun-if-changed={}", shared.join(f).display());
    }
    let status = Command::new("clang")
        .args(["-g", "-O2", "-target", "bpf", "-D__TARGET_ARCH_x86", "-Wall", "-Werror"])
        .args(["-I/usr/include/x86_64-linux-gnu", "-Ibpf"])
        .arg(format!("-I{}", shared.display()))
        .args(["-c", "bpf/phase1.bpf.c", "-o"])
        .arg(&out)
        .status()
        .unwrap_or_else(|e| panic!("cannot run clang ({e}); install the eBPF toolchain: bash scripts/setup.sh"));
    assert!(status.success(), "clang failed to compile bpf/phase1.bpf.c");
}
