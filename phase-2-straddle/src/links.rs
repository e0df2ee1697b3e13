//! Which fds are two ends of one link: a pipe (both ends share its inode), a TCP connection
//! (one end's local address is the other's remote), or a connected unix socket (peer inodes).
//! Through NAT (a Kubernetes Service) a TCP connection is named by its post-NAT tuple from
//! conntrack (`conntrack`), which both ends see.
//! A moment written on a link and read on the same link is one transit hop, whatever else
//! carries the same bytes (shared hold music, a tone).

use crate::conntrack;
use crate::event::Phase2Event;
use crate::unix_peers;
use procfs::net::TcpNetEntries;
use procfs::FromReadSI;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Link {
    Pipe(u64),
    /// The two endpoints, sorted.
    Tcp(SocketAddr, SocketAddr),
    /// The two socket inodes, sorted.
    Unix(u64, u64),
    /// No peer known: a file, a device, a socket of another kind, or an fd already closed.
    Unpaired(u32, i32, u64),
}

impl Link {
    pub fn is_paired(&self) -> bool {
        !matches!(self, Link::Unpaired(..))
    }
}

/// A moment's sighting and the link it was seen on: what the matcher works with.
#[derive(Clone, Debug)]
pub struct Seen {
    pub e: Phase2Event,
    pub link: Link,
}

/// What the tracer hands the matcher.
#[derive(Clone, Debug)]
pub enum Observed {
    Moment(Seen),
    /// The processes holding sockets whose plaintext no probe sees, and those sockets' links,
    /// as they are now: sent when they change.
    OpaqueSockets(Vec<(u32, Link)>),
}

/// Resolves (pid, fd, flow birth) to a link through /proc, once per flow.
#[derive(Default)]
pub struct Links {
    cache: HashMap<(u32, i32, u64), Link>,
    unix_peers: HashMap<u64, u64>,
    unix_refreshed: Option<Instant>,
    untracked: u64,
}

/// Unix socket peers are listed at most this often.
const UNIX_REFRESH: Duration = Duration::from_millis(100);

impl Links {
    pub fn resolve(&mut self, pid: u32, fd: i32, birth: u64) -> Link {
        if let Some(l) = self.cache.get(&(pid, fd, birth)) {
            return l.clone();
        }
        let link = self
            .lookup(pid, fd)
            .unwrap_or(Link::Unpaired(pid, fd, birth));
        self.cache.insert((pid, fd, birth), link.clone());
        link
    }

    /// TCP links named by their socket's own tuple because neither their network namespace's
    /// conntrack nor the node's tracked them: through NAT, their two ends may not match.
    pub fn untracked(&self) -> u64 {
        self.untracked
    }

    /// The link fd is an end of now, uncached; `None` when it has no known other end.
    pub fn lookup(&mut self, pid: u32, fd: i32) -> Option<Link> {
        use std::os::unix::fs::{FileTypeExt, MetadataExt};
        // Following the fd's link reaches the object itself: a pipe (anonymous or named) has
        // one inode for both ends; a socket's inode names one end.
        let meta = std::fs::metadata(format!("/proc/{pid}/fd/{fd}")).ok()?;
        if meta.file_type().is_fifo() {
            return Some(Link::Pipe(meta.ino()));
        }
        if !meta.file_type().is_socket() {
            return None;
        }
        let ino = meta.ino();
        let net = PathBuf::from(format!("/proc/{pid}/net"));
        if let Some((link, tracked)) = tcp_link(&net, Path::new(NODE_CONNTRACK), ino) {
            self.untracked += u64::from(!tracked);
            return Some(link);
        }
        let peer = match self.unix_peers.get(&ino) {
            Some(&p) => p,
            None => {
                self.refresh_unix_peers(pid);
                *self.unix_peers.get(&ino)?
            }
        };
        Some(Link::Unix(ino.min(peer), ino.max(peer)))
    }

    /// Learns unix socket peers in the process's network namespace.
    fn refresh_unix_peers(&mut self, pid: u32) {
        if self
            .unix_refreshed
            .is_some_and(|t| t.elapsed() < UNIX_REFRESH)
        {
            return;
        }
        self.unix_refreshed = Some(Instant::now());
        // A process already gone, or a namespace not readable: its sockets stay unpaired.
        if let Ok(peers) = unix_peers::unix_peers(pid) {
            self.unix_peers.extend(peers);
        }
    }
}

/// Where a pod's connection to a Service is translated in Kubernetes: the node's own network
/// namespace (kube-proxy's PREROUTING), which is the host's init's (the agent has hostPID, not
/// hostNetwork).
const NODE_CONNTRACK: &str = "/proc/1/net/nf_conntrack";

/// The TCP connection of socket inode `ino`, from a network namespace's view (`net`, a
/// process's /proc/<pid>/net): named by conntrack's reply tuple when that namespace or the
/// node's (`node_conntrack`) tracks it (true), else by the socket's own addresses (false).
fn tcp_link(net: &Path, node_conntrack: &Path, ino: u64) -> Option<(Link, bool)> {
    let system = procfs::current_system_info();
    let entry = ["tcp", "tcp6"]
        .iter()
        .filter_map(|file| TcpNetEntries::from_file(net.join(file), system).ok())
        .find_map(|TcpNetEntries(table)| table.into_iter().find(|e| e.inode == ino))?;
    // A v4 peer seen through a v6 socket is the same address.
    let canonical = |a: SocketAddr| SocketAddr::new(a.ip().to_canonical(), a.port());
    let (local, remote) = (
        canonical(entry.local_address),
        canonical(entry.remote_address),
    );
    let tracked = [net.join("nf_conntrack").as_path(), node_conntrack]
        .iter()
        .filter_map(|p| std::fs::read_to_string(p).ok())
        .find_map(|ct| conntrack::reply_tuple(&ct, local, remote));
    Some(match tracked {
        Some((a, b)) => (Link::Tcp(a, b), true),
        None => (Link::Tcp(local.min(remote), local.max(remote)), false),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::Ipv4Addr;
    use std::os::fd::AsRawFd;

    proptest::proptest! {
        /// /proc/<pid>/net/tcp{,6} is the kernel's, but read while the kernel rewrites it:
        /// whatever the text, a table or an error, never a panic.
        #[test]
        fn any_proc_net_tcp_text_is_a_table_or_an_error(
            text in "(  sl +local_address rem_address[^\n]*\n)?( *[0-9]+: [0-9A-Fa-f]{0,33}:[0-9A-F]{0,5} [0-9A-Fa-f:]{0,40}[ 0-9A-F:]{0,80}\n){0,3}|\\PC{0,80}"
        ) {
            let _ = TcpNetEntries::from_read(text.as_bytes(), procfs::current_system_info());
        }
    }

    fn me() -> u32 {
        std::process::id()
    }

    #[test]
    fn both_ends_of_a_named_pipe_are_one_link() {
        let path = std::env::temp_dir().join(format!("links-test-{}.fifo", me()));
        harness::component::mkfifo(&path).unwrap();
        let reader = std::thread::spawn({
            let path = path.clone();
            move || std::fs::File::open(path).unwrap()
        });
        let w = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        let r = reader.join().unwrap();
        std::fs::remove_file(&path).unwrap();
        let mut links = Links::default();
        let a = links.resolve(me(), r.as_raw_fd(), 1);
        assert!(matches!(a, Link::Pipe(_)), "{a:?}");
        assert_eq!(a, links.resolve(me(), w.as_raw_fd(), 1));
    }

    #[test]
    fn both_ends_of_a_pipe_are_one_link() {
        let (r, w) = std::io::pipe().unwrap();
        let mut links = Links::default();
        let a = links.resolve(me(), r.as_raw_fd(), 1);
        assert!(matches!(a, Link::Pipe(_)));
        assert_eq!(a, links.resolve(me(), w.as_raw_fd(), 1));
    }

    /// The last case is a v4 client of a dual-stack v6 listener: the accepted socket is in
    /// /proc/<pid>/net/tcp6 with v4-mapped addresses, the client's in tcp with plain ones.
    #[test]
    fn both_ends_of_a_tcp_connection_are_one_link_on_v4_and_v6() {
        for (bind, connect) in [
            ("127.0.0.1:0", "127.0.0.1"),
            ("[::1]:0", "::1"),
            ("[::]:0", "127.0.0.1"),
        ] {
            let listener = std::net::TcpListener::bind(bind).unwrap();
            let to = SocketAddr::new(
                connect.parse().unwrap(),
                listener.local_addr().unwrap().port(),
            );
            let mut client = std::net::TcpStream::connect(to).unwrap();
            let (mut server, _) = listener.accept().unwrap();
            client.write_all(b"x").unwrap();
            server.read_exact(&mut [0]).unwrap();
            let mut links = Links::default();
            let a = links.resolve(me(), client.as_raw_fd(), 1);
            assert!(matches!(a, Link::Tcp(..)), "{a:?}");
            assert_eq!(a, links.resolve(me(), server.as_raw_fd(), 1));
            let Link::Tcp(end, _) = a else { unreachable!() };
            assert_eq!(end.ip(), to.ip(), "{a:?}");
            let other = std::net::TcpStream::connect(to).unwrap();
            assert_ne!(a, links.resolve(me(), other.as_raw_fd(), 1));
        }
    }

    /// Through a Service (kube-proxy's DNAT, two endpoints on the node), the client's socket
    /// names the ClusterIP and the endpoint's its own address: both ends name one link, each
    /// connection its own. Needs root (a network namespace).
    #[test]
    fn both_ends_of_a_connection_through_a_service_are_one_link() {
        use harness::service::{install, Service};
        let nodes = harness::nodes::Nodes::create(&["a"]).expect("a node (run as root)");
        let node = &nodes.all()[0];
        node.run_in(|| {
            let listeners: Vec<_> = (0..2)
                .map(|_| std::net::TcpListener::bind((node.addr, 0)).unwrap())
                .collect();
            let endpoints = listeners
                .iter()
                .map(|l| match l.local_addr().unwrap() {
                    SocketAddr::V4(a) => a,
                    SocketAddr::V6(_) => unreachable!("bound to v4"),
                })
                .collect();
            let vip = Ipv4Addr::new(10, 96, 0, 10);
            let svc = Service {
                name: "audio".into(),
                cluster_ip: vip,
                port: 80,
                endpoints,
            };
            install(node, &[svc]).unwrap();
            // /proc/<pid>/net is the main thread's namespace; this thread's is the node's.
            // SAFETY: gettid cannot fail.
            let net = PathBuf::from(format!("/proc/self/task/{}/net", unsafe { libc::gettid() }));
            let untracked = PathBuf::from("/nonexistent");
            let ino = |fd: &dyn AsRawFd| {
                use std::os::unix::fs::MetadataExt;
                std::fs::metadata(format!("/proc/self/fd/{}", fd.as_raw_fd()))
                    .unwrap()
                    .ino()
            };
            let (mut names, mut hit) = (Vec::new(), [false; 2]);
            for _ in 0..16 {
                let client = std::net::TcpStream::connect((vip, 80)).unwrap();
                // Each endpoint listens on its own port: which one was picked, by its backlog.
                let (which, server) = listeners
                    .iter()
                    .enumerate()
                    .find_map(|(i, l)| {
                        l.set_nonblocking(true).unwrap();
                        l.accept().ok().map(|(s, _)| (i, s))
                    })
                    .expect("an endpoint accepted");
                hit[which] = true;
                let (a, tracked) = tcp_link(&net, &untracked, ino(&client)).unwrap();
                assert!(tracked, "{a:?}");
                let (b, _) = tcp_link(&net, &untracked, ino(&server)).unwrap();
                assert_eq!(a, b, "client and endpoint {which}");
                names.push(a);
            }
            assert_eq!(hit, [true; 2], "16 connections reach both endpoints");
            names.sort();
            names.dedup();
            assert_eq!(names.len(), 16);
        })
        .unwrap();
    }

    /// A process holding a node's network namespace, whose /proc/<pid>/net is the node's.
    struct InNode(std::process::Child);

    impl InNode {
        fn start(node: &harness::nodes::Node) -> Self {
            let mut c = std::process::Command::new("sleep");
            c.arg("60");
            node.place(&mut c).unwrap();
            Self(c.spawn().unwrap())
        }

        fn net(&self) -> PathBuf {
            PathBuf::from(format!("/proc/{}/net", self.0.id()))
        }
    }

    impl Drop for InNode {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    /// As in Kubernetes, a client in a pod's namespace ("pod") reaches a Service through its
    /// node ("node"), whose PREROUTING rules DNAT it to an endpoint: the pod's namespace
    /// tracks nothing, the node's conntrack names the link. Needs root.
    #[test]
    fn a_pods_connection_translated_in_its_nodes_prerouting_is_one_link() {
        use harness::service::{install, Service};
        use std::os::unix::fs::MetadataExt;
        let nodes = harness::nodes::Nodes::create(&["pod", "node"]).expect("nodes (run as root)");
        let (pod, node) = (&nodes.all()[0], &nodes.all()[1]);
        let vip = Ipv4Addr::new(10, 96, 0, 11);
        let run = |args: &[&str]| {
            let out = std::process::Command::new("ip")
                .args(args)
                .output()
                .unwrap();
            assert!(out.status.success(), "ip {args:?}: {out:?}");
        };
        run(&[
            "-n",
            &pod.netns,
            "route",
            "add",
            &format!("{vip}/32"),
            "via",
            &node.addr.to_string(),
        ]);
        let listeners: Vec<_> = node
            .run_in(|| {
                (0..2)
                    .map(|_| std::net::TcpListener::bind((node.addr, 0)).unwrap())
                    .collect()
            })
            .unwrap();
        let endpoints = listeners
            .iter()
            .map(|l| match l.local_addr().unwrap() {
                SocketAddr::V4(a) => a,
                SocketAddr::V6(_) => unreachable!("bound to v4"),
            })
            .collect();
        let svc = Service {
            name: "audio".into(),
            cluster_ip: vip,
            port: 80,
            endpoints,
        };
        install(node, &[svc]).unwrap();
        let (in_pod, in_node) = (InNode::start(pod), InNode::start(node));
        let ino = |fd: &dyn AsRawFd| {
            std::fs::metadata(format!("/proc/self/fd/{}", fd.as_raw_fd()))
                .unwrap()
                .ino()
        };
        for _ in 0..4 {
            let client = pod
                .run_in(|| std::net::TcpStream::connect((vip, 80)).unwrap())
                .unwrap();
            let server = listeners
                .iter()
                .find_map(|l| {
                    l.set_nonblocking(true).unwrap();
                    l.accept().ok().map(|(s, _)| s)
                })
                .expect("an endpoint accepted");
            let node_ct = in_node.net().join("nf_conntrack");
            let (a, tracked) = tcp_link(&in_pod.net(), &node_ct, ino(&client)).unwrap();
            assert!(tracked, "{a:?}");
            let (b, _) = tcp_link(&in_node.net(), &node_ct, ino(&server)).unwrap();
            assert_eq!(a, b);
        }
    }

    #[test]
    fn both_ends_of_a_unix_socket_are_one_link() {
        let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        let mut links = Links::default();
        let la = links.resolve(me(), a.as_raw_fd(), 1);
        assert!(matches!(la, Link::Unix(..)), "{la:?}");
        assert_eq!(la, links.resolve(me(), b.as_raw_fd(), 1));
    }

    /// A pod's unix socket pair lives in the pod's network namespace, where only a sock_diag
    /// dump from inside that namespace lists it: both ends of a pair held by a process in
    /// another namespace are still one link, and the agent's own namespace does not hold them.
    /// Needs root (a network namespace, setns).
    #[test]
    fn both_ends_of_a_unix_socket_in_another_network_namespace_are_one_link() {
        use std::os::unix::fs::MetadataExt;
        use std::os::unix::process::CommandExt;
        let nodes = harness::nodes::Nodes::create(&["unix"]).expect("a node (run as root)");
        let node = &nodes.all()[0];
        let (a, b) = node
            .run_in(|| std::os::unix::net::UnixStream::pair().unwrap())
            .unwrap();
        let ino = |s: &std::os::unix::net::UnixStream| {
            std::fs::metadata(format!("/proc/self/fd/{}", s.as_raw_fd()))
                .unwrap()
                .ino()
        };
        let (ino_a, ino_b) = (ino(&a), ino(&b));
        let mut holder = std::process::Command::new("sleep");
        holder.arg("60");
        node.place(&mut holder).unwrap();
        let (fd_a, fd_b) = (a.as_raw_fd(), b.as_raw_fd());
        // SAFETY: dup2 is async-signal-safe; both fds stay open in this process until the spawn.
        unsafe {
            holder.pre_exec(move || {
                for (fd, to) in [(fd_a, 3), (fd_b, 4)] {
                    if libc::dup2(fd, to) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                Ok(())
            })
        };
        let in_node = InNode(holder.spawn().unwrap());
        let pid = in_node.0.id();
        let mut links = Links::default();
        let la = links.resolve(pid, 3, 1);
        assert_eq!(la, Link::Unix(ino_a.min(ino_b), ino_a.max(ino_b)));
        assert_eq!(la, links.resolve(pid, 4, 1));
        let here = crate::unix_peers::unix_peers(me()).unwrap();
        assert!(
            !here.contains_key(&ino_a),
            "the pair is the node's, not this namespace's"
        );
    }

    #[test]
    fn files_and_closed_fds_are_unpaired() {
        let f = std::fs::File::open("/dev/null").unwrap();
        let mut links = Links::default();
        assert_eq!(
            links.resolve(me(), f.as_raw_fd(), 5),
            Link::Unpaired(me(), f.as_raw_fd(), 5)
        );
        assert!(!links.resolve(me(), 999_999, 5).is_paired());
    }
}
