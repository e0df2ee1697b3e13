//! The Rust mirror of `bpf/phase2.h`.

use agent::schema::Dir;
use agent::targets::COMM_LEN;

/// `struct phase2_call`: the header of one call's record; `n` `Phase2Moment`s follow it.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Phase2Call {
    /// Writes: syscall entry; reads: when the call's scan was done.
    pub t_ns: u64,
    /// When the flow's scan state was created: (tgid, fd, birth) names one flow.
    pub flow_birth_ns: u64,
    pub cgroup_id: u64,
    pub tgid: u32,
    pub tid: u32,
    pub fd: i32,
    pub dir: u32,
    pub n: u32,
    /// 1: the bytes were taken at the TLS library (plaintext); 0: at the syscall.
    pub tls: u32,
    pub comm: [u8; COMM_LEN],
}

/// `struct phase2_moment`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Phase2Moment {
    pub signature: u64,
    /// Flow position just past the moment's window.
    pub end: u64,
}

const _: () = {
    use std::mem::{offset_of, size_of};
    assert!(size_of::<Phase2Call>() == 64);
    assert!(offset_of!(Phase2Call, t_ns) == 0);
    assert!(offset_of!(Phase2Call, flow_birth_ns) == 8);
    assert!(offset_of!(Phase2Call, cgroup_id) == 16);
    assert!(offset_of!(Phase2Call, tgid) == 24);
    assert!(offset_of!(Phase2Call, tid) == 28);
    assert!(offset_of!(Phase2Call, fd) == 32);
    assert!(offset_of!(Phase2Call, dir) == 36);
    assert!(offset_of!(Phase2Call, n) == 40);
    assert!(offset_of!(Phase2Call, tls) == 44);
    assert!(offset_of!(Phase2Call, comm) == 48);
    assert!(size_of::<Phase2Moment>() == 16);
};

/// One moment as the agent handles it: the call's header and the moment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Phase2Event {
    pub call: Phase2Call,
    pub signature: u64,
    pub end: u64,
}

impl Phase2Call {
    /// Decodes one ring-buffer record, a batch of call records back to back (a header, then
    /// its `n` moments), into its moments; a malformed call record ends the batch.
    pub fn parse(bytes: &[u8]) -> impl Iterator<Item = Phase2Event> + '_ {
        let mut rest = bytes;
        std::iter::from_fn(move || {
            let head = std::mem::size_of::<Self>();
            if rest.len() < head {
                return None;
            }
            // SAFETY: the length is checked; the struct is plain old data, read unaligned.
            let call: Self = unsafe { std::ptr::read_unaligned(rest.as_ptr().cast()) };
            let body = call.n as usize * std::mem::size_of::<Phase2Moment>();
            let moments = rest.get(head..head + body)?;
            rest = &rest[head + body..];
            Some(moments.chunks_exact(16).map(move |m| Phase2Event {
                call,
                signature: u64::from_le_bytes(m[..8].try_into().unwrap()),
                end: u64::from_le_bytes(m[8..].try_into().unwrap()),
            }))
        })
        .flatten()
    }
}

/// `enum phase2_counter`.
pub const PHASE2_COUNTERS: [&str; 12] = [
    "flows_created",
    "flows_closed",
    "peeks_skipped",
    "iov_truncated",
    "broken_flows",
    "unseen_calls",
    "tls_calls",
    "tls_sockets",
    "tls_handshakes",
    "ciphertext_skipped",
    "tls_unattributed",
    "tls_unprobed",
];

impl Phase2Event {
    pub fn dir(&self) -> Dir {
        if self.call.dir == 1 {
            Dir::Write
        } else {
            Dir::Read
        }
    }

    pub fn comm(&self) -> String {
        let n = self
            .call
            .comm
            .iter()
            .position(|&b| b == 0)
            .unwrap_or(COMM_LEN);
        String::from_utf8_lossy(&self.call.comm[..n]).into_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(tgid: u32, moments: &[(u64, u64)]) -> Vec<u8> {
        let call = Phase2Call {
            t_ns: 5,
            flow_birth_ns: 1,
            cgroup_id: 2,
            tgid,
            tid: tgid,
            fd: 3,
            dir: 1,
            n: moments.len() as u32,
            tls: 0,
            comm: [b'x'; COMM_LEN],
        };
        // SAFETY: a #[repr(C)] struct without padding, read as bytes.
        let mut bytes = unsafe {
            std::slice::from_raw_parts((&call as *const Phase2Call).cast::<u8>(), 64)
        }
        .to_vec();
        for &(signature, end) in moments {
            bytes.extend(signature.to_le_bytes());
            bytes.extend(end.to_le_bytes());
        }
        bytes
    }

    #[test]
    fn a_batch_yields_every_call_in_it_and_stops_at_a_torn_one() {
        let mut batch = record(10, &[(1, 100), (2, 200)]);
        batch.extend(record(11, &[(3, 300)]));
        let mut torn = record(12, &[(4, 400), (5, 500)]);
        torn.truncate(64 + 16);
        batch.extend(torn);
        let got: Vec<(u32, u64, u64)> = Phase2Call::parse(&batch)
            .map(|e| (e.call.tgid, e.signature, e.end))
            .collect();
        assert_eq!(got, [(10, 1, 100), (10, 2, 200), (11, 3, 300)]);
    }

    #[test]
    fn counter_names_follow_the_c_enum() {
        let header = include_str!("../bpf/phase2.h");
        let names = agent::counters::c_enum_names(header, "phase2_counter", "P2_C_");
        assert_eq!(names, super::PHASE2_COUNTERS);
    }
}
