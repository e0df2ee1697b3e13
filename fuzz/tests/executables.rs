//! Target executables, read to place the Go TLS probes: a Go executable whose runtime tables or
//! symbol table hold anything at all is placed or refused with an error, never a panic. The
//! executables are the Go relay the harness runs, built as Go builds by default and stripped.

use object::{Object, ObjectSection};
use phase_2_straddle::go_tls::inspect_elf;
use proptest::prelude::*;
use std::ops::Range;
use std::sync::OnceLock;

/// An executable and the byte ranges of its file where the readers look.
struct Target {
    bytes: Vec<u8>,
    regions: Vec<Range<usize>>,
}

/// The relay built fixed with its symbol table, and stripped and position-independent; none
/// without a Go toolchain (outside CI: under CI=true it fails).
fn targets() -> &'static [Target] {
    static TARGETS: OnceLock<Vec<Target>> = OnceLock::new();
    TARGETS.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("fuzz-go-relay-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut targets = Vec::new();
        for (mode, flags) in [("exe", ""), ("pie", "-s -w")] {
            let out = dir.join(mode);
            let built = harness::run::go_relay_build("go", mode, flags, &out).status();
            if !built.as_ref().is_ok_and(|s| s.success()) {
                let ci = std::env::var("CI").is_ok_and(|v| v == "true");
                assert!(!ci, "go build: {built:?}: run `bash scripts/setup.sh`");
                eprintln!("no Go toolchain: the executable properties are skipped");
                break;
            }
            let bytes = std::fs::read(&out).unwrap();
            let file = object::File::parse(&*bytes).unwrap();
            let regions = file
                .sections()
                .filter(|s| {
                    let name = s.name().unwrap_or_default();
                    [
                        "gopclntab",
                        "itablink",
                        ".data.rel.ro",
                        ".symtab",
                        ".strtab",
                        ".go.buildinfo",
                    ]
                    .iter()
                    .any(|n| name.ends_with(n))
                })
                .filter_map(|s| s.file_range())
                .map(|(at, len)| at as usize..(at + len) as usize)
                .collect();
            targets.push(Target { bytes, regions });
        }
        std::fs::remove_dir_all(&dir).ok();
        targets
    })
}

/// A value to write: any, or one at an edge.
fn value() -> impl Strategy<Value = u64> {
    prop_oneof![
        any::<u64>(),
        Just(0),
        Just(u64::MAX),
        Just(u64::from(u32::MAX)),
        0u64..0x1_0000
    ]
}

proptest! {
    /// Up to 8 words overwritten (4 or 8 bytes, little-endian) where the readers look, the
    /// start of a table more often (its header, the first function entries).
    #[test]
    fn a_corrupted_go_executable_is_read_without_a_panic(
        target in any::<prop::sample::Index>(),
        writes in prop::collection::vec(
            (any::<prop::sample::Index>(), 0usize..256, any::<prop::sample::Index>(), any::<bool>(), value()),
            1..8,
        ),
    ) {
        let targets = targets();
        if targets.is_empty() {
            return Ok(());
        }
        let target = &targets[target.index(targets.len())];
        let mut bytes = target.bytes.clone();
        for (region, near_start, anywhere, wide, value) in writes {
            let region = &target.regions[region.index(target.regions.len())];
            let width = if wide { 8 } else { 4 };
            let span = region.len().saturating_sub(width).max(1);
            let at = region.start + if near_start < 128 { near_start % span } else { anywhere.index(span) };
            let end = (at + width).min(bytes.len());
            bytes[at..end].copy_from_slice(&value.to_le_bytes()[..end - at]);
        }
        let _ = inspect_elf(&bytes);
    }
}
