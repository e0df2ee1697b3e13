//! The cross-phase guard: a subset of the catalogue that still exercises every phase (pipes,
//! envelopes over TCP, sockets with vectors, nodes) runs against every phase, and which
//! scenarios each phase passes must match the snapshot. A phase that stops passing, or starts
//! failing, fails CI; an intended change is accepted by updating the snapshot
//! (`INSTA_UPDATE=always cargo test --release -p bench --test compare`, then review the diff).

#[test]
fn every_phase_passes_what_it_passed() {
    let dir = std::env::temp_dir().join(format!("compare-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let page = dir.join("comparison.md");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_bench"))
        .args(["compare", "--scenarios", "S1,S3,S4,S9", "--out"])
        .arg(&page)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let matrix = String::from_utf8(out.stdout).unwrap();
    let matrix = matrix
        .lines()
        .filter(|l| !l.starts_with("wrote "))
        .collect::<Vec<_>>()
        .join("\n");
    eprintln!("{}", std::fs::read_to_string(&page).unwrap());
    std::fs::remove_dir_all(&dir).ok();
    insta::assert_snapshot!("passes", matrix);
}
