//! Ground truth as a component records it: every syscall on its links, and where the calls'
//! audio sits in each link's flow, attributed to the syscalls that moved it when it is saved.

use super::spec::Spec;
use crate::truth::{ComponentLog, Io, Segment};
use agent::schema::Dir;
use anyhow::Result;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

/// Ground truth being recorded; shared by a component's threads.
pub(super) struct Recorder {
    log: Mutex<ComponentLog>,
    /// Where payload bytes sit in each link's flows, by direction (`Dir as usize`).
    payloads: Mutex<HashMap<String, [Vec<Segment>; 2]>>,
    truth: PathBuf,
}

impl Recorder {
    pub(super) fn start(spec: &Spec) -> Result<Arc<Self>> {
        let comm = format!("hx-{}", spec.name);
        let cname = std::ffi::CString::new(comm.clone())?;
        // SAFETY: PR_SET_NAME reads a NUL-terminated string (truncated to 15 bytes by the kernel).
        unsafe { libc::prctl(libc::PR_SET_NAME, cname.as_ptr()) };
        let log = ComponentLog {
            name: spec.name.clone(),
            pid: std::process::id(),
            comm: comm.chars().take(15).collect(),
            ios: Vec::new(),
            external: false,
            node: None,
        };
        Ok(Arc::new(Self {
            log: Mutex::new(log),
            payloads: Mutex::new(HashMap::new()),
            truth: spec.truth.clone(),
        }))
    }

    pub(super) fn io(&self, io: Io) {
        self.log.lock().unwrap().ios.push(io);
    }

    pub(super) fn payload(&self, link: &str, dir: Dir, seg: Segment) {
        let mut payloads = self.payloads.lock().unwrap();
        let flows = match payloads.get_mut(link) {
            Some(f) => f,
            None => payloads.entry(link.to_string()).or_default(),
        };
        flows[dir as usize].push(seg);
    }

    /// Attributes payload bytes to the syscalls that moved them, and saves. A flow's payload
    /// segments never overlap: sorted by flow offset, the ones a syscall moved are found by
    /// binary search.
    pub(super) fn finish(&self) -> Result<()> {
        let mut payloads = self.payloads.lock().unwrap();
        for flows in payloads.values_mut() {
            for segs in flows.iter_mut() {
                segs.sort_by_key(|s| s.flow_off);
                debug_assert!(segs
                    .windows(2)
                    .all(|w| w[0].flow_off + w[0].len <= w[1].flow_off));
            }
        }
        let mut log = self.log.lock().unwrap();
        for io in &mut log.ios {
            let Some(flows) = payloads.get(&io.link) else {
                io.segments = Vec::new();
                continue;
            };
            let segs = &flows[io.dir as usize];
            let (lo, hi) = (io.flow_off, io.flow_off + io.len);
            let first = segs.partition_point(|s| s.flow_off + s.len <= lo);
            io.segments = segs[first..]
                .iter()
                .take_while(|s| s.flow_off < hi)
                .filter(|s| lo < s.flow_off + s.len)
                .map(|s| {
                    let (a, b) = (s.flow_off.max(lo), (s.flow_off + s.len).min(hi));
                    Segment {
                        flow_off: a,
                        call: s.call,
                        audio_off: s.audio_off + (a - s.flow_off),
                        len: b - a,
                    }
                })
                .collect();
        }
        log.ios.sort_by_key(|io| io.t_ns);
        log.save(&self.truth)
    }
}
