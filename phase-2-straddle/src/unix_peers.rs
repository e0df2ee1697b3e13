//! The peers of connected unix sockets, from the kernel's sock_diag netlink interface (what
//! `ss -xa` reads) in a process's network namespace. A unix socket belongs to the network
//! namespace it was created in, and a sock_diag socket lists those of its own namespace only:
//! the dump runs on a short-lived thread that has joined the target's namespace (setns, which
//! needs CAP_SYS_ADMIN), so the rest of the agent stays where it is, and no tool is run.

use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_DUMP, NLM_F_REQUEST,
};
use netlink_packet_sock_diag::unix::{ShowFlags, StateFlags, UnixRequest};
use netlink_packet_sock_diag::SockDiagMessage;
use netlink_sys::{protocols::NETLINK_SOCK_DIAG, Socket, SocketAddr};
use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;

/// Socket inode → its peer's inode, for every connected unix socket in the network namespace
/// of process `pid`. Where joining that namespace is not allowed (no CAP_SYS_ADMIN), the
/// agent's own namespace is listed, which holds the sockets of processes that share it.
pub fn unix_peers(pid: u32) -> io::Result<HashMap<u64, u64>> {
    let target = File::open(format!("/proc/{pid}/ns/net"))?;
    let own = std::fs::metadata("/proc/thread-self/ns/net")?;
    if target.metadata()?.ino() == own.ino() {
        return dump();
    }
    std::thread::scope(|s| {
        s.spawn(|| {
            // Where this fails, the thread stays in the agent's namespace and lists that.
            // SAFETY: a valid namespace fd; only this thread, which ends with the dump, moves.
            let _ = unsafe { libc::setns(target.as_raw_fd(), libc::CLONE_NEWNET) };
            dump()
        })
        .join()
        .unwrap_or_else(|_| Err(io::Error::other("the sock_diag thread panicked")))
    })
}

/// Dumps the unix sockets of the calling thread's network namespace, with their peers.
fn dump() -> io::Result<HashMap<u64, u64>> {
    let mut socket = Socket::new(NETLINK_SOCK_DIAG)?;
    socket.bind_auto()?;
    socket.connect(&SocketAddr::new(0, 0))?;
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | NLM_F_DUMP;
    let mut request = NetlinkMessage::new(
        header,
        SockDiagMessage::UnixRequest(UnixRequest {
            // Every state, as `ss -a`: a connected datagram socket is not "established" on
            // every kernel.
            state_flags: StateFlags::from_bits_retain(u32::MAX),
            inode: 0,
            show_flags: ShowFlags::PEER,
            cookie: [0; 8],
        })
        .into(),
    );
    request.finalize();
    let mut bytes = vec![0; request.buffer_len()];
    request.serialize(&mut bytes);
    socket.send(&bytes, 0)?;
    let mut peers = HashMap::new();
    loop {
        let (reply, _) = socket.recv_from_full()?;
        let mut at = 0;
        while at < reply.len() {
            let message =
                NetlinkMessage::<SockDiagMessage>::deserialize(&reply[at..]).map_err(invalid)?;
            match message.payload {
                NetlinkPayload::InnerMessage(SockDiagMessage::UnixResponse(socket)) => {
                    if let Some(peer) = socket.peer().filter(|&p| p != 0) {
                        peers.insert(u64::from(socket.header.inode), u64::from(peer));
                    }
                }
                NetlinkPayload::Done(_) => return Ok(peers),
                NetlinkPayload::Error(e) => return Err(e.to_io()),
                _ => {}
            }
            // Messages are 4-byte aligned in a datagram; a zero length would never advance.
            let len = message.header.length as usize;
            if len == 0 {
                return Err(invalid("a message of length 0"));
            }
            at += len.next_multiple_of(4);
        }
    }
}

fn invalid(why: impl std::fmt::Display) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("sock_diag reply: {why}"),
    )
}
