//! The Rust mirror of `bpf/phase2.h`.

use harness::truth::Dir;
use phase_1_poc::event::COMM_LEN;

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
    /// Decodes one ring-buffer record into its moments; `None` if it is malformed.
    pub fn parse(bytes: &[u8]) -> Option<impl Iterator<Item = Phase2Event> + '_> {
        let head = std::mem::size_of::<Self>();
        if bytes.len() < head {
            return None;
        }
        // SAFETY: the length is checked; the struct is plain old data, read unaligned.
        let call: Self = unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast()) };
        let body = &bytes[head..];
        if body.len() < call.n as usize * std::mem::size_of::<Phase2Moment>() {
            return None;
        }
        Some(
            body.chunks_exact(16)
                .take(call.n as usize)
                .map(move |m| Phase2Event {
                    call,
                    signature: u64::from_le_bytes(m[..8].try_into().unwrap()),
                    end: u64::from_le_bytes(m[8..].try_into().unwrap()),
                }),
        )
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
    #[test]
    fn counter_names_follow_the_c_enum() {
        let header = include_str!("../bpf/phase2.h");
        let names = phase_1_poc::counters::c_enum_names(header, "phase2_counter", "P2_C_");
        assert_eq!(names, super::PHASE2_COUNTERS);
    }
}
