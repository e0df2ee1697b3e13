//! The common result schema every phase's agent emits: one JSON line per matched hop of a moment
//! (documented in docs/results-schema.md).

use crate::clock::WallClock;
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::io::{BufRead, Write};
use std::time::SystemTime;

/// The schema version records are written in. Version 1 (records without `schema`) had no wall
/// time and spelled `kind` `writetowrite` and `readtoread`; version 2 had no `opaque` kind. Both
/// are still read.
pub const SCHEMA: u32 = 3;

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
    /// `t_ns` on the node's own clock, when `t_ns` is a collector's mapping of it (phase 3
    /// on): what joins the sighting with the node's own logs, and what audits the mapping.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_t_ns: Option<u64>,
    /// The process in Kubernetes terms, when the tracer knows them (phase 4 on).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<PodRef>,
}

impl Sighting {
    /// Who it was, as tables and metrics name it: its workload where that is known (the same
    /// on every node), else its process prefixed by its node when there are several.
    pub fn who(&self) -> String {
        if let Some(p) = &self.pod {
            return format!("{}/{}", p.namespace, p.workload);
        }
        let process = format!("{}[{}]", self.comm, self.pid);
        match &self.node {
            Some(node) => format!("{node}/{process}"),
            None => process,
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

/// What a hop spans, spelled in JSON as the metrics' `kind` label is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HopKind {
    /// Write in one component → read in the next.
    Transit,
    /// Read → write inside one component.
    Residence,
    /// Write → write: a tracer that sees only writes (transit plus residence).
    #[serde(alias = "writetowrite")]
    WriteToWrite,
    /// Read → read: a tracer that sees only reads.
    #[serde(alias = "readtoread")]
    ReadToRead,
    /// A stretch no probe sees (TLS of a stack without uprobes): from where the moment was
    /// last seen before it to where it was first seen after it, whatever their directions.
    Opaque,
}

impl HopKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Transit => "transit",
            Self::Residence => "residence",
            Self::WriteToWrite => "write_to_write",
            Self::ReadToRead => "read_to_read",
            Self::Opaque => "opaque",
        }
    }

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
    /// The schema version of the line a record was read from (1 when absent); records are
    /// made and written in [`SCHEMA`].
    #[serde(default = "version_1")]
    pub schema: u32,
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
    /// When the moment reached `to`, on the wall clock (UTC) of the node whose clock `t_ns` is
    /// on; given when written (version 2 on).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        serialize_with = "rfc3339_ser",
        deserialize_with = "rfc3339_de"
    )]
    pub timestamp: Option<SystemTime>,
    /// How far `timestamp` can be from UTC, ns: the monotonic → wall clock mapping's error plus
    /// the kernel's estimate of the wall clock's own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timestamp_error_ns: Option<u64>,
}

fn version_1() -> u32 {
    1
}

/// `a - b` in nanoseconds, saturated: stamps from another process may be anything.
pub fn signed_difference(a: u64, b: u64) -> i64 {
    (i128::from(a) - i128::from(b)).clamp(i64::MIN.into(), i64::MAX.into()) as i64
}

impl HopRecord {
    pub fn new(signature: u64, from: Sighting, to: Sighting) -> Self {
        let latency_ns = signed_difference(to.t_ns, from.t_ns);
        Self {
            schema: SCHEMA,
            signature,
            kind: HopKind::of(from.dir, to.dir),
            from,
            to,
            latency_ns,
            bound_ns: None,
            timestamp: None,
            timestamp_error_ns: None,
        }
    }

    /// The record with its wall time, unless it has one.
    pub fn dated(mut self, clock: &WallClock) -> Self {
        if self.timestamp.is_none() {
            self.timestamp = Some(clock.wall(self.to.t_ns));
            self.timestamp_error_ns = Some(clock.error_ns);
        }
        self
    }
}

fn hex_ser<S: Serializer>(v: &u64, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format!("{v:016x}"))
}

fn hex_de<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    let text = String::deserialize(d)?;
    u64::from_str_radix(&text, 16).map_err(serde::de::Error::custom)
}

fn rfc3339_ser<S: Serializer>(t: &Option<SystemTime>, s: S) -> Result<S::Ok, S::Error> {
    match t {
        Some(t) => s.serialize_str(&humantime::format_rfc3339_nanos(*t).to_string()),
        None => s.serialize_none(),
    }
}

fn rfc3339_de<'de, D: Deserializer<'de>>(d: D) -> Result<Option<SystemTime>, D::Error> {
    let text = String::deserialize(d)?;
    humantime::parse_rfc3339(&text)
        .map(Some)
        .map_err(serde::de::Error::custom)
}

/// Writes `records` as JSON lines of version [`SCHEMA`], each dated on the wall clock as it is
/// now unless it has a date.
pub fn write_jsonl(out: &mut impl Write, records: &[HopRecord]) -> Result<()> {
    let clock = WallClock::sample();
    for r in records {
        let line = HopRecord {
            schema: SCHEMA,
            ..r.clone().dated(&clock)
        };
        serde_json::to_writer(&mut *out, &line)?;
        out.write_all(b"\n")?;
    }
    Ok(())
}

/// Reads JSON lines of any schema version up to [`SCHEMA`].
pub fn read_jsonl(input: impl BufRead) -> Result<Vec<HopRecord>> {
    input
        .lines()
        .enumerate()
        .filter(|(_, l)| !matches!(l, Ok(l) if l.trim().is_empty()))
        .map(|(i, l)| {
            let r: HopRecord =
                serde_json::from_str(&l?).with_context(|| format!("result line {}", i + 1))?;
            if r.schema > SCHEMA {
                bail!(
                    "result line {}: schema version {} is newer than this reader's ({SCHEMA})",
                    i + 1,
                    r.schema
                );
            }
            Ok(r)
        })
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
            node_t_ns: None,
            pod: None,
        };
        let r = HopRecord::new(0xFFFF_FFFF_FFFF_FFF1, s(Dir::Write, 100), s(Dir::Read, 350));
        let mut buf = Vec::new();
        write_jsonl(&mut buf, std::slice::from_ref(&r)).unwrap();
        let text = String::from_utf8(buf.clone()).unwrap();
        assert!(text.starts_with(r#"{"schema":3,"#), "{text}");
        assert!(text.contains(r#""signature":"fffffffffffffff1""#), "{text}");
        assert!(text.contains(r#""kind":"transit""#), "{text}");
        let back = read_jsonl(&buf[..]).unwrap();
        assert!(back[0].timestamp.is_some() && back[0].timestamp_error_ns.is_some());
        // Dated once: written again, it keeps its time.
        let mut again = Vec::new();
        write_jsonl(&mut again, &back).unwrap();
        assert_eq!(again, buf);
        let undated = HopRecord {
            timestamp: None,
            timestamp_error_ns: None,
            ..back[0].clone()
        };
        assert_eq!(undated, r);
    }

    #[test]
    fn timestamps_are_rfc3339_utc_to_the_nanosecond() {
        let r = HopRecord {
            timestamp: Some(std::time::UNIX_EPOCH + std::time::Duration::new(1_780_000_000, 5)),
            timestamp_error_ns: Some(1234),
            ..HopRecord::new(1, sighting(Dir::Write, 1), sighting(Dir::Read, 2))
        };
        let mut buf = Vec::new();
        write_jsonl(&mut buf, std::slice::from_ref(&r)).unwrap();
        let text = String::from_utf8(buf.clone()).unwrap();
        assert!(
            text.contains(
                r#""timestamp":"2026-05-28T20:26:40.000000005Z","timestamp_error_ns":1234"#
            ),
            "{text}"
        );
        assert_eq!(read_jsonl(&buf[..]).unwrap(), vec![r]);
    }

    fn sighting(dir: Dir, t_ns: u64) -> Sighting {
        Sighting {
            pid: 1,
            comm: "c".into(),
            fd: 3,
            dir,
            t_ns,
            pos: None,
            node: None,
            node_t_ns: None,
            pod: None,
        }
    }

    #[test]
    fn version_1_lines_are_still_read() {
        let v1 = r#"{"signature":"00000000000000ff","kind":"writetowrite","from":{"pid":1,"comm":"c","fd":3,"dir":"write","t_ns":1},"to":{"pid":2,"comm":"d","fd":3,"dir":"write","t_ns":5},"latency_ns":4}"#;
        let r = &read_jsonl(v1.as_bytes()).unwrap()[0];
        assert_eq!(
            (r.schema, r.kind, r.timestamp),
            (1, HopKind::WriteToWrite, None)
        );
        // Written again, it is a line of the current version.
        let mut again = Vec::new();
        write_jsonl(&mut again, std::slice::from_ref(r)).unwrap();
        let text = String::from_utf8(again).unwrap();
        assert!(text.starts_with(r#"{"schema":3,"#), "{text}");
        assert!(text.contains(r#""kind":"write_to_write""#), "{text}");
        assert!(text.contains(r#""timestamp":""#), "{text}");
        let newer = v1.replacen('{', r#"{"schema":4,"#, 1);
        let e = read_jsonl(newer.as_bytes()).unwrap_err().to_string();
        assert_eq!(
            e,
            "result line 1: schema version 4 is newer than this reader's (3)"
        );
    }
}
