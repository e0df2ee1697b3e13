//! Service links ([`LinkKind::Service`]): once a link's reader listens, the runner gives the
//! reader's node a second address and writes, in the writer's node, a Service whose two
//! endpoints are the reader at either address. Until then the ClusterIP has no route, so a
//! writer's connect fails and is retried.

use super::external::read_port;
use super::node_of;
use super::processes::{wait_until, Running};
use crate::nodes::{Node, Nodes};
use crate::scenario::{LinkKind, Scenario};
use crate::service::{self, Service};
use anyhow::{bail, Context, Result};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::Path;

/// Link `link`'s ClusterIP and port: 10.96.0.0/12 is kube's default service range.
pub(super) fn cluster_addr(link: usize) -> SocketAddrV4 {
    let ip = u32::from(Ipv4Addr::new(10, 96, 0, 10)) + link as u32;
    SocketAddrV4::new(ip.into(), 80)
}

/// A node's second address, its first with the top bit of the last byte set.
fn second_addr(node: &Node) -> Result<Ipv4Addr> {
    let [a, b, c, d] = node.addr.octets();
    if d >= 0x80 {
        bail!("node {}: no room for a second address", node.name);
    }
    Ok(Ipv4Addr::new(a, b, c, d | 0x80))
}

/// Writes every Service link's rules, waiting for each reader to listen first.
pub(super) fn install(
    sc: &Scenario,
    dir: &Path,
    nodes: Option<&Nodes>,
    running: &mut [Running],
) -> Result<()> {
    let t = &sc.topology;
    let mut by_writer: Vec<(&Node, Vec<Service>)> = Vec::new();
    for (i, l) in t.links.iter().enumerate() {
        if l.spec.kind != LinkKind::Service {
            continue;
        }
        let on = |comp| {
            node_of(sc, nodes, comp)
                .with_context(|| format!("link {}: {} is on no node", l.name, t.comps[comp].name))
        };
        let (writer, reader) = (on(l.from)?, on(l.to)?);
        let port_file = dir.join(format!("{}.port", l.name));
        let who = &t.comps[l.to].name;
        wait_until(running, &format!("{who} to listen"), || {
            read_port(&port_file).is_ok()
        })?;
        let port = read_port(&port_file)?;
        let second = second_addr(reader)?;
        service::add_address(reader, second)?;
        let vip = cluster_addr(i);
        let svc = Service {
            name: l.name.clone(),
            cluster_ip: *vip.ip(),
            port: vip.port(),
            endpoints: vec![
                SocketAddrV4::new(reader.addr, port),
                SocketAddrV4::new(second, port),
            ],
        };
        match by_writer.iter_mut().find(|(n, _)| n.name == writer.name) {
            Some((_, svcs)) => svcs.push(svc),
            None => by_writer.push((writer, vec![svc])),
        }
    }
    // One load per node: a load declares KUBE-SERVICES, which would drop an earlier load's.
    for (node, svcs) in by_writer {
        service::install(node, &svcs)?;
    }
    Ok(())
}
