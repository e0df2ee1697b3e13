//! The agent's `targets` bitmap, read from outside the agent: S10 checks which processes the
//! agent traces by what its eBPF programs see, not by what it says.

use serde_json::Value;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The agent's `targets` bitmap (shared/bpf/targets.bpf.h: bit `pid % 64` of word `pid / 64`),
/// found through the map ids in the agent's /proc fdinfo and read with bpftool.
pub struct TargetsMap {
    bpftool: PathBuf,
    id: u32,
}

impl TargetsMap {
    pub fn of(bpftool: &Path, agent: u32) -> TargetsMap {
        let mut found = Vec::new();
        for entry in fs::read_dir(format!("/proc/{agent}/fd")).unwrap().flatten() {
            let is_map = fs::read_link(entry.path())
                .is_ok_and(|l| l.to_string_lossy() == "anon_inode:bpf-map");
            if !is_map {
                continue;
            }
            let fd = entry.file_name().to_string_lossy().into_owned();
            let info = fs::read_to_string(format!("/proc/{agent}/fdinfo/{fd}")).unwrap_or_default();
            let Some(id) = info
                .lines()
                .find_map(|l| l.strip_prefix("map_id:"))
                .and_then(|v| v.trim().parse::<u32>().ok())
            else {
                continue;
            };
            let out = Command::new(bpftool)
                .args(["-j", "map", "show", "id", &id.to_string()])
                .output()
                .expect("running bpftool");
            let show: Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
            if show["name"] == "targets" {
                found.push(id);
            }
        }
        found.sort_unstable();
        found.dedup();
        assert_eq!(
            found.len(),
            1,
            "the agent (pid {agent}) holds one `targets` map: {found:?}"
        );
        TargetsMap {
            bpftool: bpftool.to_path_buf(),
            id: found[0],
        }
    }

    /// Whether `pid` is a target.
    pub fn has(&self, pid: u32) -> bool {
        let word = pid / 64;
        let mut cmd = Command::new(&self.bpftool);
        cmd.args(["-j", "map", "lookup", "id", &self.id.to_string(), "key"]);
        for b in word.to_le_bytes() {
            cmd.arg(b.to_string());
        }
        let out = cmd.output().expect("running bpftool");
        assert!(
            out.status.success(),
            "bpftool map lookup: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: Value = serde_json::from_slice(&out.stdout).expect("bpftool's JSON");
        let bytes: Vec<u8> = v["value"]
            .as_array()
            .expect("a value")
            .iter()
            .map(|b| u8::from_str_radix(b.as_str().unwrap().trim_start_matches("0x"), 16).unwrap())
            .collect();
        let bits = u64::from_le_bytes(bytes.try_into().expect("8 bytes"));
        (bits >> (pid % 64)) & 1 == 1
    }
}
