//! Kernel-side per-CPU counters, summed over CPUs, by name. `SCAN_COUNTERS` mirrors
//! `enum fp_counter` of shared/bpf/fingerprint.bpf.h.

use std::fmt;

/// Names in the order of `enum fp_counter`.
pub const SCAN_COUNTERS: [&str; 10] = [
    "calls",
    "bytes",
    "candidates",
    "moments",
    "drops",
    "truncated",
    "candidate_overflow",
    "read_errors",
    "nested_scans",
    "unscanned_nested",
];

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    pub names: &'static [&'static str],
    pub values: Vec<u64>,
}

impl Counters {
    pub fn get(&self, name: &str) -> u64 {
        self.names
            .iter()
            .position(|n| *n == name)
            .map_or(0, |i| self.values[i])
    }

    fn pairs(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        self.names.iter().copied().zip(self.values.iter().copied())
    }
}

/// Parses the counter names of a C enum (`PREFIX_NAME,` lines up to `PREFIX_NR`), lower-cased:
/// how the Rust mirrors are checked against the headers.
pub fn c_enum_names(header: &str, enum_name: &str, prefix: &str) -> Vec<String> {
    let body = &header[header
        .find(&format!("enum {enum_name} {{"))
        .expect("enum in header")..];
    let body = &body[..body.find("};").expect("end of enum")];
    body.lines()
        .filter_map(|l| l.trim().strip_prefix(prefix))
        .map(|l| l.split(',').next().unwrap().to_lowercase())
        .filter(|n| n != "nr")
        .collect()
}

/// The first `name=N` in a health line (the rendering of [`Counters`] and the agent's own).
pub fn in_health(health: &str, name: &str) -> Option<u64> {
    health
        .split_whitespace()
        .find_map(|w| w.strip_prefix(name)?.strip_prefix('=')?.parse().ok())
}

impl fmt::Display for Counters {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self.pairs().map(|(n, v)| format!("{n}={v}")).collect();
        write!(f, "{}", parts.join(" "))
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_counter_is_read_back_by_its_whole_name() {
        let health = "kernel: calls=7 tls_calls=3 | agent: unmatched=0 events=9";
        assert_eq!(super::in_health(health, "calls"), Some(7));
        assert_eq!(super::in_health(health, "tls_calls"), Some(3));
        assert_eq!(super::in_health(health, "events"), Some(9));
        assert_eq!(super::in_health(health, "drops"), None);
    }

    #[test]
    fn names_follow_the_c_enum() {
        let header = include_str!("../../shared/bpf/fingerprint.bpf.h");
        assert_eq!(
            super::c_enum_names(header, "fp_counter", "FP_C_"),
            super::SCAN_COUNTERS
        );
    }
}
