//! The common result schema every phase's agent emits: one JSON line per matched hop of a moment
//! (documented in docs/results-schema.md).

use anyhow::{Context, Result};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::io::{BufRead, Write};

/// Which way bytes moved through a process's fd.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Dir {
    Read,
    Write,
}

/// One side of a hop: who read or wrote the moment, and when (ns, CLOCK_MONOTONIC of its node).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sighting {
    pub pid: u32,
    pub comm: String,
    pub fd: i32,
    pub dir: Dir,
    pub t_ns: u64,
    /// Flow position just past the moment's window (bytes since the flow began), when the
    /// tracer follows flows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pos: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// The process in Kubernetes terms, when the tracer knows them (phase 4 on).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<PodRef>,
}

impl Sighting {
    /// Who it was, as tables name it: its pod where that is known, else its process; prefixed
    /// by its node when there are several.
    pub fn who(&self) -> String {
        let who = match &self.pod {
            Some(p) => format!("{}/{}", p.namespace, p.pod),
            None => format!("{}[{}]", self.comm, self.pid),
        };
        match &self.node {
            Some(node) => format!("{node}/{who}"),
            None => who,
        }
    }
}

/// Where a process runs in Kubernetes terms.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PodRef {
    pub namespace: String,
    pub pod: String,
    pub container: String,
    /// The owning workload (a Deployment, StatefulSet, DaemonSet, Job), or the pod itself.
    pub workload: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HopKind {
    /// Write in one component → read in the next.
    Transit,
    /// Read → write inside one component.
    Residence,
    /// Write → write: a tracer that sees only writes (transit plus residence).
    WriteToWrite,
    /// Read → read: a tracer that sees only reads.
    ReadToRead,
}

impl HopKind {
    pub fn of(from: Dir, to: Dir) -> Self {
        match (from, to) {
            (Dir::Write, Dir::Read) => Self::Transit,
            (Dir::Read, Dir::Write) => Self::Residence,
            (Dir::Write, Dir::Write) => Self::WriteToWrite,
            (Dir::Read, Dir::Read) => Self::ReadToRead,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HopRecord {
    /// The moment's 64-bit signature as 16 hex digits (JSON numbers lose bits past 2^53).
    #[serde(serialize_with = "hex_ser", deserialize_with = "hex_de")]
    pub signature: u64,
    pub kind: HopKind,
    pub from: Sighting,
    pub to: Sighting,
    /// `to.t_ns - from.t_ns` on one node's clock; across nodes, after clock alignment.
    pub latency_ns: i64,
    /// Across nodes: how far `latency_ns` can be off because the two clocks are aligned only
    /// this well (phase 3 on).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bound_ns: Option<u64>,
}

/// `a - b` in nanoseconds, saturated: stamps from another process may be anything.
pub fn signed_difference(a: u64, b: u64) -> i64 {
    (i128::from(a) - i128::from(b)).clamp(i64::MIN.into(), i64::MAX.into()) as i64
}

impl HopRecord {
    pub fn new(signature: u64, from: Sighting, to: Sighting) -> Self {
        let latency_ns = signed_difference(to.t_ns, from.t_ns);
        Self {
            signature,
            kind: HopKind::of(from.dir, to.dir),
            from,
            to,
            latency_ns,
            bound_ns: None,
        }
    }
}

fn hex_ser<S: Serializer>(v: &u64, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format!("{v:016x}"))
}

fn hex_de<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    let text = String::deserialize(d)?;
    u64::from_str_radix(&text, 16).map_err(serde::de::Error::custom)
}

pub fn write_jsonl(out: &mut impl Write, records: &[HopRecord]) -> Result<()> {
    for r in records {
        serde_json::to_writer(&mut *out, r)?;
        out.write_all(b"\n")?;
    }
    Ok(())
}

pub fn read_jsonl(input: impl BufRead) -> Result<Vec<HopRecord>> {
    input
        .lines()
        .enumerate()
        .filter(|(_, l)| !matches!(l, Ok(l) if l.trim().is_empty()))
        .map(|(i, l)| serde_json::from_str(&l?).with_context(|| format!("result line {}", i + 1)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_full_64_bit_signatures() {
        let s = |dir, t_ns| Sighting {
            pid: 7,
            comm: "hx-c0-src".into(),
            fd: 1,
            dir,
            t_ns,
            pos: Some(99),
            node: None,
            pod: None,
        };
        let r = HopRecord::new(0xFFFF_FFFF_FFFF_FFF1, s(Dir::Write, 100), s(Dir::Read, 350));
        let mut buf = Vec::new();
        write_jsonl(&mut buf, std::slice::from_ref(&r)).unwrap();
        let text = String::from_utf8(buf.clone()).unwrap();
        assert!(text.contains(r#""signature":"fffffffffffffff1""#), "{text}");
        assert!(text.contains(r#""kind":"transit""#), "{text}");
        assert_eq!(read_jsonl(&buf[..]).unwrap(), vec![r]);
    }
}
