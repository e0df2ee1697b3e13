//! The Rust mirror of `enum fp_counter` in shared/bpf/fingerprint.bpf.h: the kernel side's
//! per-CPU counters, summed over CPUs.

use std::fmt;

/// Names in the order of `enum fp_counter`.
pub const NAMES: [&str; 8] =
    ["calls", "bytes", "candidates", "moments", "drops", "truncated", "candidate_overflow", "read_errors"];

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters(pub [u64; NAMES.len()]);

impl Counters {
    pub fn get(&self, name: &str) -> u64 {
        NAMES.iter().position(|n| *n == name).map_or(0, |i| self.0[i])
    }
}

impl fmt::Display for Counters {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = NAMES.iter().zip(self.0).map(|(n, v)| format!("{n}={v}")).collect();
        write!(f, "{}", parts.join(" "))
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn names_follow_the_c_enum() {
        let header = include_str!("../../shared/bpf/fingerprint.bpf.h");
        let body = &header[header.find("enum fp_counter {").unwrap()..];
        let body = &body[..body.find("};").unwrap()];
        let c_names: Vec<String> = body
            .lines()
            .filter_map(|l| l.trim().strip_prefix("FP_C_"))
            .map(|l| l.split(',').next().unwrap().to_lowercase())
            .filter(|n| n != "nr")
            .collect();
        assert_eq!(c_names, super::NAMES);
    }
}
