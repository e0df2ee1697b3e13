//! The kernel's connection tracking, to name a TCP connection the same at both ends through
//! NAT. A client of a Kubernetes Service connects to `ClusterIP:port`, which kube-proxy's rules
//! DNAT to one endpoint pod; the pod's socket never sees the ClusterIP. Conntrack, in the
//! namespace where the translation happened, holds both tuples: the reply direction is what
//! the far end sees, so a link is named by it.
//!
//! Read from `/proc/<pid>/net/nf_conntrack` (the process's network namespace), then the
//! node's (`links`); a namespace with no NAT rules may track nothing, and then a socket keeps
//! its own tuple.

use std::net::{IpAddr, SocketAddr};

/// One tracked TCP connection: its original and reply directions, each (source, destination).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tracked {
    pub original: (SocketAddr, SocketAddr),
    pub reply: (SocketAddr, SocketAddr),
}

/// A line of nf_conntrack, e.g. `ipv4 2 tcp 6 431999 ESTABLISHED src=10.0.0.1 dst=10.96.0.10
/// sport=40000 dport=80 src=10.244.1.5 dst=10.0.0.1 sport=8080 dport=40000 [ASSURED] …`; a
/// TCP entry or nothing.
pub fn parse_line(line: &str) -> Option<Tracked> {
    let mut fields = line.split_whitespace();
    if fields.nth(2) != Some("tcp") {
        return None;
    }
    // The first src/dst/sport/dport are the original direction, the second the reply's.
    let (mut ips, mut ports) = (Vec::with_capacity(4), Vec::with_capacity(4));
    for f in fields {
        match f.split_once('=') {
            Some(("src" | "dst", v)) => ips.push(v.parse::<IpAddr>().ok()?),
            Some(("sport" | "dport", v)) => ports.push(v.parse::<u16>().ok()?),
            _ => {}
        }
    }
    let [os, od, rs, rd] = ips.try_into().ok()?;
    let [osp, odp, rsp, rdp] = ports.try_into().ok()?;
    let at = |ip: IpAddr, port| SocketAddr::new(ip.to_canonical(), port);
    Some(Tracked {
        original: (at(os, osp), at(od, odp)),
        reply: (at(rs, rsp), at(rd, rdp)),
    })
}

/// The connection a socket with addresses (`local`, `remote`) is, named by its reply
/// direction (sorted), if `table` tracks it in either direction.
pub fn reply_tuple(
    table: &str,
    local: SocketAddr,
    remote: SocketAddr,
) -> Option<(SocketAddr, SocketAddr)> {
    table
        .lines()
        .filter_map(parse_line)
        .find(|t| t.original == (local, remote) || t.reply == (local, remote))
        .map(|t| (t.reply.0.min(t.reply.1), t.reply.0.max(t.reply.1)))
}

#[cfg(test)]
mod tests {
    use super::*;

    const DNAT: &str = "ipv4     2 tcp      6 431999 ESTABLISHED src=10.213.0.1 dst=10.96.0.10 \
        sport=40000 dport=80 src=10.213.0.2 dst=10.213.0.1 sport=8080 dport=40000 [ASSURED] \
        mark=0 zone=0 use=2";

    fn a(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn parses_both_directions_of_a_tcp_entry() {
        assert_eq!(
            parse_line(DNAT),
            Some(Tracked {
                original: (a("10.213.0.1:40000"), a("10.96.0.10:80")),
                reply: (a("10.213.0.2:8080"), a("10.213.0.1:40000")),
            })
        );
        let v6 = "ipv6 10 tcp 6 100 SYN_SENT src=::1 dst=::1 sport=1 dport=2 [UNREPLIED] \
                  src=::1 dst=::1 sport=2 dport=1 mark=0 use=1";
        assert_eq!(parse_line(v6).unwrap().reply, (a("[::1]:2"), a("[::1]:1")));
        let udp = "ipv4 2 udp 17 20 src=1.1.1.1 dst=2.2.2.2 sport=1 dport=2 src=2.2.2.2 \
                   dst=1.1.1.1 sport=2 dport=1 use=1";
        assert_eq!(parse_line(udp), None);
        assert_eq!(parse_line("ipv4 2 tcp 6 1 src=1.1.1.1 dst=2.2.2.2"), None);
    }

    #[test]
    fn a_service_client_and_its_endpoint_name_the_same_tuple() {
        let server_view = (a("10.213.0.2:8080"), a("10.213.0.1:40000"));
        let want = Some((server_view.1, server_view.0));
        // The client's socket, connected to the ClusterIP.
        assert_eq!(
            reply_tuple(DNAT, a("10.213.0.1:40000"), a("10.96.0.10:80")),
            want
        );
        // The endpoint's socket, in the same namespace (an endpoint on the client's node).
        assert_eq!(reply_tuple(DNAT, server_view.0, server_view.1), want);
        assert_eq!(
            reply_tuple(DNAT, a("10.213.0.1:40001"), a("10.96.0.10:80")),
            None
        );
    }

    proptest::proptest! {
        /// The file is the kernel's, read while it changes: any text, an entry or nothing.
        #[test]
        fn any_line_parses_or_is_none(line in "\\PC{0,200}") {
            let _ = parse_line(&line);
        }
    }
}
