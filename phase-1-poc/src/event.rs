//! The Rust mirror of `bpf/phase1.h`.

pub const COMM_LEN: usize = 16;
pub const DIR_WRITE: u32 = 1;

/// `struct phase1_event`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Phase1Event {
    pub signature: u64,
    /// `bpf_ktime_get_ns()` at write() entry.
    pub t_ns: u64,
    /// Offset just past the moment's window, from the write's first byte.
    pub end: u64,
    pub tgid: u32,
    pub tid: u32,
    pub fd: i32,
    pub dir: u32,
    pub comm: [u8; COMM_LEN],
}

const _: () = {
    use std::mem::{offset_of, size_of};
    assert!(size_of::<Phase1Event>() == 56);
    assert!(offset_of!(Phase1Event, signature) == 0);
    assert!(offset_of!(Phase1Event, t_ns) == 8);
    assert!(offset_of!(Phase1Event, end) == 16);
    assert!(offset_of!(Phase1Event, tgid) == 24);
    assert!(offset_of!(Phase1Event, tid) == 28);
    assert!(offset_of!(Phase1Event, fd) == 32);
    assert!(offset_of!(Phase1Event, dir) == 36);
    assert!(offset_of!(Phase1Event, comm) == 40);
};

impl Phase1Event {
    /// Decodes one ring-buffer record; `None` if it is too short.
    pub fn parse(bytes: &[u8]) -> Option<Self> {
        if bytes.len() < std::mem::size_of::<Self>() {
            return None;
        }
        // SAFETY: the length is checked; the struct is plain old data, read unaligned.
        Some(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<Self>()) })
    }

    pub fn comm(&self) -> String {
        let n = self.comm.iter().position(|&b| b == 0).unwrap_or(COMM_LEN);
        String::from_utf8_lossy(&self.comm[..n]).into_owned()
    }
}
