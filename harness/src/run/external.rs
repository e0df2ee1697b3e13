//! External components (a real nats-server, stunnel4, relays on other TLS stacks): the ports
//! they listen on, picked by the runner up front, and their command lines and configuration.

use super::tls_relays;
use crate::component::{End, Transport};
use crate::scenario::{External, LinkKind, Scenario};
use anyhow::{bail, Context, Result};
use std::fmt::Write as _;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

/// The loopback port in a port file.
pub(super) fn read_port(port_file: &Path) -> Result<u16> {
    Ok(std::fs::read_to_string(port_file)
        .with_context(|| format!("reading {}", port_file.display()))?
        .trim()
        .parse()?)
}

/// A port free on the IPv4 loopback for an external component to listen on, below the kernel's
/// ephemeral range: a port from that range (what binding port 0 gives) can be handed to another
/// test's outgoing connection before the component binds it, which made stunnel fail to start
/// under a full parallel suite. Someone else binding the same port first is still a small race,
/// accepted.
pub fn free_port() -> Result<u16> {
    use rand::Rng;
    let ephemeral_low: u16 = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse().ok())
        .unwrap_or(32768);
    let below = ephemeral_low.saturating_sub(12_000).max(1024)..ephemeral_low;
    if !below.is_empty() {
        let mut rng = rand::thread_rng();
        for _ in 0..64 {
            let port = rng.gen_range(below.clone());
            if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
                return Ok(port);
            }
        }
    }
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Whether something listens on IPv4 `port`. Read from /proc rather than by connecting: a
/// probe connection into stunnel would make it connect on to our components.
pub fn listening(port: u16) -> bool {
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap_or_default();
    let local = format!(":{port:04X}");
    table.lines().skip(1).any(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        f.len() > 3 && f[1].ends_with(&local) && f[3] == "0A"
    })
}

fn port_file(t: &Transport) -> Result<&Path> {
    match t {
        Transport::Tcp {
            ip: IpAddr::V4(_),
            port_file,
            ..
        }
        | Transport::Nats { port_file } => Ok(port_file),
        other => bail!("external components use TCP over IPv4, not {other:?}"),
    }
}

/// How the runner starts one external component.
pub(super) struct ExternalPlan {
    pub(super) comp: usize,
    pub(super) kind: External,
    /// Port files the runner fills before anything starts: where it will listen.
    pub(super) listens: Vec<PathBuf>,
    /// Port files our components fill: where it connects.
    pub(super) connects: Vec<PathBuf>,
}

impl ExternalPlan {
    pub(super) fn new(
        sc: &Scenario,
        comp: usize,
        kind: External,
        ends: &[(End, End)],
    ) -> Result<Self> {
        let c = &sc.topology.comps[comp];
        let files = |links: &[usize]| -> Result<Vec<PathBuf>> {
            links
                .iter()
                .map(|&l| Ok(port_file(&ends[l].0.transport)?.to_path_buf()))
                .collect()
        };
        Ok(match kind {
            // Producers and consumers alike connect to the broker's one port.
            External::Nats => {
                let mut listens = files(&c.inputs)?;
                listens.extend(files(&c.outputs)?);
                listens.sort();
                listens.dedup();
                Self {
                    comp,
                    kind,
                    listens,
                    connects: Vec::new(),
                }
            }
            External::Stunnel | External::TlsRelay(_) | External::TlsBroker => Self {
                comp,
                kind,
                listens: files(&c.inputs)?,
                connects: files(&c.outputs)?,
            },
        })
    }

    /// The command line, with its configuration written to `dir` first; `exe` is the binary our
    /// components run (the rustls relay's too).
    pub(super) fn command(
        &self,
        sc: &Scenario,
        dir: &Path,
        pem: &Path,
        exe: &Path,
    ) -> Result<std::process::Command> {
        let t = &sc.topology;
        let c = &t.comps[self.comp];
        let mut cmd = match self.kind.tls_stack() {
            Some(stack) => tls_relays::command(stack, exe)?,
            None => std::process::Command::new(self.kind.programs()[0]),
        };
        match self.kind {
            External::Nats => {
                let port = read_port(&self.listens[0])?;
                cmd.args(["-a", "127.0.0.1", "-p", &port.to_string()]);
            }
            External::Stunnel => {
                let conf = dir.join(format!("{}.conf", c.name));
                // Without TCP_NODELAY, Nagle's algorithm would hold small writes back.
                let mut text = String::from(
                    "foreground = yes\npid =\nsocket = l:TCP_NODELAY=1\nsocket = r:TCP_NODELAY=1\n",
                );
                for (i, (&input, &output)) in c.inputs.iter().zip(&c.outputs).enumerate() {
                    let tls_in = t.links[input].spec.kind == LinkKind::Tls;
                    let tls_out = t.links[output].spec.kind == LinkKind::Tls;
                    if tls_in == tls_out {
                        bail!("{}: service {i} must have exactly one TLS side", c.name);
                    }
                    write!(
                        text,
                        "[s{i}]\naccept = 127.0.0.1:{}\nconnect = 127.0.0.1:{}\n{}\n",
                        read_port(&self.listens[i])?,
                        read_port(&self.connects[i])?,
                        if tls_out {
                            "client = yes".to_string()
                        } else {
                            format!("cert = {}", pem.display())
                        }
                    )?;
                }
                std::fs::write(&conf, text)?;
                cmd.arg(conf);
            }
            External::TlsRelay(_) | External::TlsBroker => {
                cmd.arg(pem);
                let end = |link: usize, port_file: &Path| -> Result<String> {
                    let mode = match t.links[link].spec.kind {
                        LinkKind::Tls => "tls",
                        _ => "tcp",
                    };
                    Ok(format!("{mode}:{}", read_port(port_file)?))
                };
                for (i, &input) in c.inputs.iter().enumerate() {
                    // Its routes (Same, Pairs) send every call of an input alike.
                    let outputs = self
                        .kind
                        .route()
                        .outputs(i, 0, c.outputs.len())
                        .into_iter()
                        .map(|o| match c.outputs.get(o) {
                            Some(&output) => end(output, &self.connects[o]),
                            None => bail!("{}: input {i} goes to output {o}, not there", c.name),
                        })
                        .collect::<Result<Vec<_>>>()?;
                    cmd.arg(format!(
                        "{}>{}",
                        end(input, &self.listens[i])?,
                        outputs.join("+")
                    ));
                }
            }
        }
        Ok(cmd)
    }
}

/// `plans` in an order to start them: one that connects to where another listens after it
/// (a relay dials its next hop as soon as a connection comes in).
pub(super) fn in_start_order(mut plans: Vec<ExternalPlan>) -> Result<Vec<ExternalPlan>> {
    let mut ordered: Vec<ExternalPlan> = Vec::new();
    while !plans.is_empty() {
        let waits_on_another = |p: &ExternalPlan, others: &[ExternalPlan]| {
            p.connects
                .iter()
                .any(|f| others.iter().any(|o| o.listens.contains(f)))
        };
        let Some(i) = (0..plans.len()).find(|&i| !waits_on_another(&plans[i], &plans)) else {
            bail!("external components connect to each other in a cycle");
        };
        ordered.push(plans.remove(i));
    }
    Ok(ordered)
}
