//! Kubernetes Services on the harness's nodes, as kube-proxy's iptables mode writes them: in
//! the nat table, OUTPUT (clients on the node) and PREROUTING (traffic from elsewhere) jump to
//! KUBE-SERVICES, which sends a ClusterIP:port to its KUBE-SVC-… chain, which picks one of the
//! endpoints' KUBE-SEP-… chains at random (`statistic --mode random`, probability 1/n, then
//! 1/(n-1), …, the last unconditional), each a DNAT to the endpoint's pod address. Loaded with
//! `iptables-restore --noflush`, as kube-proxy loads them. kube-proxy names chains by a hash of
//! the service; these are named by the service so that a failing run reads plainly.

use crate::nodes::Node;
use anyhow::{bail, Context, Result};
use std::io::Write;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::process::{Command, Stdio};

/// A ClusterIP Service: its virtual address and the endpoints it spreads connections over.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Service {
    /// Letters and digits, at most 12: it names the chains (iptables allows 28 characters).
    pub name: String,
    pub cluster_ip: Ipv4Addr,
    pub port: u16,
    pub endpoints: Vec<SocketAddrV4>,
}

/// The nat table's rules for `services`, in iptables-restore's format.
pub fn rules(services: &[Service]) -> String {
    let mut chains = vec![":KUBE-SERVICES - [0:0]".to_string()];
    let mut rules = vec![
        "-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES".into(),
        "-A OUTPUT -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES".into(),
    ];
    for s in services {
        let svc = format!("KUBE-SVC-{}", s.name.to_uppercase());
        chains.push(format!(":{svc} - [0:0]"));
        rules.push(format!(
            "-A KUBE-SERVICES -m comment --comment \"default/{}:audio cluster IP\" -d {}/32 \
             -p tcp -m tcp --dport {} -j {svc}",
            s.name, s.cluster_ip, s.port
        ));
        let n = s.endpoints.len();
        for (i, ep) in s.endpoints.iter().enumerate() {
            let sep = format!("KUBE-SEP-{}-{i}", s.name.to_uppercase());
            chains.push(format!(":{sep} - [0:0]"));
            let pick = if i + 1 < n {
                format!(
                    "-m statistic --mode random --probability {:.10} ",
                    1.0 / (n - i) as f64
                )
            } else {
                String::new()
            };
            rules.push(format!(
                "-A {svc} -m comment --comment \"default/{}:audio -> {ep}\" {pick}-j {sep}",
                s.name
            ));
            rules.push(format!(
                "-A {sep} -p tcp -m tcp -j DNAT --to-destination {ep}"
            ));
        }
    }
    format!(
        "*nat\n{}\n{}\nCOMMIT\n",
        chains.join("\n"),
        rules.join("\n")
    )
}

/// Writes `services`' rules into `node`, and routes their ClusterIPs out of its network
/// interface (a ClusterIP is on no interface; a node's default route takes it).
pub fn install(node: &Node, services: &[Service]) -> Result<()> {
    for s in services {
        if s.name.is_empty()
            || s.name.len() > 12
            || !s.name.bytes().all(|b| b.is_ascii_alphanumeric())
            || s.endpoints.is_empty()
        {
            bail!("bad service {s:?}");
        }
    }
    let what = format!("writing kube-proxy's rules in node {}", node.name);
    let mut child = Command::new("ip")
        .args([
            "netns",
            "exec",
            &node.netns,
            "iptables-restore",
            "--noflush",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("{what}: running ip netns exec iptables-restore"))?;
    child
        .stdin
        .take()
        .context("iptables-restore's stdin")?
        .write_all(rules(services).as_bytes())?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "{what}: {} (iptables: `bash scripts/setup.sh` installs it)",
            String::from_utf8_lossy(&out.stderr)
                .trim()
                .replace('\n', "; ")
        );
    }
    for s in services {
        let vip = format!("{}/32", s.cluster_ip);
        let out = Command::new("ip")
            .args(["-n", &node.netns, "route", "replace", &vip, "dev", "eth0"])
            .output()?;
        if !out.status.success() {
            bail!(
                "routing {vip} in node {}: {}",
                node.name,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
    }
    Ok(())
}

/// Gives `node` a second address on its network (an endpoint pod's address, in the scenario).
pub fn add_address(node: &Node, addr: Ipv4Addr) -> Result<()> {
    let cidr = format!("{addr}/24");
    let out = Command::new("ip")
        .args(["-n", &node.netns, "addr", "replace", &cidr, "dev", "eth0"])
        .output()?;
    if !out.status.success() {
        bail!(
            "adding {cidr} to node {}: {}",
            node.name,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_are_kube_proxys_chains_with_equal_odds() {
        let s = Service {
            name: "audio".into(),
            cluster_ip: Ipv4Addr::new(10, 96, 0, 10),
            port: 80,
            endpoints: vec![
                "10.213.0.2:8080".parse().unwrap(),
                "10.213.0.3:8080".parse().unwrap(),
                "10.213.0.3:8081".parse().unwrap(),
            ],
        };
        let r = rules(&[s]);
        assert!(r.contains("-d 10.96.0.10/32 -p tcp -m tcp --dport 80 -j KUBE-SVC-AUDIO"));
        assert!(r.contains("--probability 0.3333333333 -j KUBE-SEP-AUDIO-0"));
        assert!(r.contains("--probability 0.5000000000 -j KUBE-SEP-AUDIO-1"));
        assert!(r.contains("10.213.0.3:8081\" -j KUBE-SEP-AUDIO-2"));
        assert!(r.contains(
            "-A KUBE-SEP-AUDIO-2 -p tcp -m tcp -j DNAT --to-destination 10.213.0.3:8081"
        ));
        assert!(r.starts_with("*nat\n") && r.ends_with("COMMIT\n"));
    }
}
