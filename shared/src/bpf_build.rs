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

/// A struct of a phase's header that the user side mirrors, and the fields its mirror has.
pub struct Mirrored<'a> {
    pub name: &'a str,
    pub fields: &'a [&'a str],
}

/// Writes `$OUT_DIR/layout.rs`, the phase header's layout as C lays it out, for its Rust mirror
/// to `include!` and assert against at compile time. The header (`header`, relative to the
/// calling crate) is included by a small host C program, compiled with `$CC` (else `cc`) and
/// run. For each mirrored struct the file has a module named after it, `SIZE` its `sizeof` and
/// one constant per field, its `offsetof` (`phase2_call::T_NS`); each of `constants`, a name
/// the header defines and its Rust type, is a `pub const` of its value (`PHASE2_DIR_WRITE: u32`).
pub fn layout(header: &str, structs: &[Mirrored], constants: &[(&str, &str)]) {
    println!("cargo:rerun-if-changed={header}");
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR"));
    let header_path = Path::new(header)
        .canonicalize()
        .expect("the phase's header");
    let mut c = format!(
        "#include <stdio.h>\n#include <stddef.h>\n#include <linux/types.h>\n#include \"{}\"\n\n\
         int main(void)\n{{\n",
        header_path.display()
    );
    for s in structs {
        c += &format!(
            "\tprintf(\"/// `struct {n}`.\\npub mod {n} {{\\n    pub const SIZE: usize = %zu;\\n\", \
             sizeof(struct {n}));\n",
            n = s.name
        );
        for f in s.fields {
            c += &format!(
                "\tprintf(\"    pub const {}: usize = %zu;\\n\", offsetof(struct {}, {f}));\n",
                f.to_uppercase(),
                s.name
            );
        }
        c += "\tprintf(\"}\\n\");\n";
    }
    for (name, ty) in constants {
        c += &format!("\tprintf(\"pub const {name}: {ty} = %lld;\\n\", (long long)({name}));\n");
    }
    c += "\treturn 0;\n}\n";
    let source = out.join("layout.c");
    let program = out.join("layout");
    std::fs::write(&source, c).expect("write layout.c");
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    let status = Command::new(&cc)
        .args(["-Wall", "-Werror", "-o"])
        .arg(&program)
        .arg(&source)
        .status()
        .unwrap_or_else(|e| panic!("cannot run the C compiler {cc} ({e})"));
    assert!(
        status.success(),
        "{cc} failed to compile the layout of {header}"
    );
    let run = Command::new(&program)
        .output()
        .expect("run the layout program");
    assert!(
        run.status.success(),
        "the layout program of {header} failed"
    );
    std::fs::write(out.join("layout.rs"), run.stdout).expect("write layout.rs");
}
