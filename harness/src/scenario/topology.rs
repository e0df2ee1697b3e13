//! What a scenario runs: components (sources, relays, sinks, programs the harness did not
//! write), the links between them and how each link carries bytes, and the builder that joins
//! them into a [`Topology`].

use crate::component::{Framing, IoCall, Route};
use crate::truth::TlsStack;
use serde::Serialize;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum LinkKind {
    Pipe,
    Tcp4,
    Tcp6,
    Unix,
    /// TCP over IPv4 with TLS: OpenSSL at our components' ends and stunnel's, an external TLS
    /// relay's own stack at its end (both ends may be relays).
    Tls,
    /// A TCP connection to or from a NATS broker (one end is `External::Nats`).
    Nats,
    /// TCP over IPv4 to a Kubernetes Service's ClusterIP, translated by kube-proxy-style rules
    /// in the writer's node to one of two endpoints, both the reader (its node's address and a
    /// second one): both ends on nodes (`crate::run::services`).
    Service,
}

/// How a link carries bytes: transport, framing, the syscall family of each end, write size.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct LinkSpec {
    pub kind: LinkKind,
    pub framing: Framing,
    pub write: IoCall,
    pub read: IoCall,
    pub chunk: usize,
}

impl LinkSpec {
    /// A pipe with write/read, a stream of `chunk`-byte writes behind a `header_len` header.
    pub const fn pipe(chunk: usize, header_len: usize) -> Self {
        Self {
            kind: LinkKind::Pipe,
            framing: Framing::Stream { header_len },
            write: IoCall::Plain,
            read: IoCall::Plain,
            chunk,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub enum Kind {
    /// Sends (call, output index) pairs.
    Source {
        calls: Vec<(u32, usize)>,
    },
    Relay {
        hold_us: u64,
        route: Route,
    },
    Sink,
    /// A real program the harness runs but did not write; it records no ground truth.
    External(External),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum External {
    /// Debian's nats-server: every input's messages go to every output (all consumers
    /// subscribe to every call).
    Nats,
    /// One stunnel4 process; service i takes input i to output i, exactly one side TLS.
    Stunnel,
    /// One relay process on a TLS stack other than OpenSSL (harness/relays, the rustls one in
    /// `crate::tls_relay`); service i takes input i to output i, either side TLS or plain.
    TlsRelay(TlsStack),
    /// The rustls relay as a broker delivering a topic to two subscriptions: service i
    /// (`IN>OUT1+OUT2`) takes input i to outputs 2i and 2i + 1, each side TLS or plain.
    TlsBroker,
}

impl External {
    /// What it is, in messages.
    pub fn name(self) -> &'static str {
        match self {
            External::Nats => "nats-server",
            External::Stunnel => "stunnel4",
            External::TlsRelay(TlsStack::Go) => "the Go crypto/tls relay",
            External::TlsRelay(TlsStack::Java) => "the JDK TLS relay",
            External::TlsRelay(TlsStack::Rustls) => "the rustls relay",
            External::TlsBroker => "the rustls broker",
        }
    }

    /// The programs it needs, as Debian installs them (scripts/setup.sh): the Go and Java
    /// relays are built from source at run time; the rustls one is the component binary.
    pub fn programs(self) -> &'static [&'static str] {
        match self {
            External::Nats => &["nats-server"],
            External::Stunnel => &["stunnel4"],
            External::TlsRelay(TlsStack::Go) => &["go"],
            External::TlsRelay(TlsStack::Java) => &["javac", "java"],
            External::TlsRelay(TlsStack::Rustls) | External::TlsBroker => &[],
        }
    }

    /// Which outputs it sends what an input brought to.
    pub fn route(self) -> Route {
        match self {
            External::Nats => Route::All,
            External::Stunnel | External::TlsRelay(_) => Route::Same,
            External::TlsBroker => Route::Pairs,
        }
    }

    /// The TLS stack its TLS links end in, when not OpenSSL.
    pub fn tls_stack(self) -> Option<TlsStack> {
        match self {
            External::TlsRelay(stack) => Some(stack),
            External::TlsBroker => Some(TlsStack::Rustls),
            External::Nats | External::Stunnel => None,
        }
    }
}

impl Kind {
    /// Which outputs a component that forwards sends a call's audio to.
    pub fn route(&self) -> Option<Route> {
        match self {
            Kind::Relay { route, .. } => Some(*route),
            Kind::External(kind) => Some(kind.route()),
            Kind::Source { .. } | Kind::Sink => None,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Comp {
    pub name: String,
    pub kind: Kind,
    /// The node ([`crate::nodes`]) it runs on; `None`: the machine's own network namespace.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    pub inputs: Vec<usize>,
    pub outputs: Vec<usize>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Link {
    pub name: String,
    pub spec: LinkSpec,
    pub from: usize,
    pub to: usize,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Topology {
    pub comps: Vec<Comp>,
    pub links: Vec<Link>,
}

impl Topology {
    pub fn comp(&mut self, name: impl Into<String>, kind: Kind) -> usize {
        self.comps.push(Comp {
            name: name.into(),
            kind,
            node: None,
            inputs: Vec::new(),
            outputs: Vec::new(),
        });
        self.comps.len() - 1
    }

    /// A component on node `node`.
    pub fn comp_on(&mut self, node: &str, name: impl Into<String>, kind: Kind) -> usize {
        let i = self.comp(name, kind);
        self.comps[i].node = Some(node.to_string());
        i
    }

    pub fn link(&mut self, from: usize, to: usize, spec: LinkSpec) -> usize {
        let i = self.links.len();
        self.links.push(Link {
            name: format!("l{i}"),
            spec,
            from,
            to,
        });
        self.comps[from].outputs.push(i);
        self.comps[to].inputs.push(i);
        i
    }

    /// One chain of processes per call: source → relays → sink, `links[i]` between stage i
    /// and i + 1, relay i holding each read `holds[i]` µs.
    pub fn chains(calls: u32, holds: &[u64], links: &[LinkSpec]) -> Self {
        assert_eq!(links.len(), holds.len() + 1);
        let mut t = Self::default();
        for c in 0..calls {
            let mut prev = t.comp(
                format!("c{c}-src"),
                Kind::Source {
                    calls: vec![(c, 0)],
                },
            );
            for (i, &hold_us) in holds.iter().enumerate() {
                let r = t.comp(
                    format!("c{c}-r{}", i + 1),
                    Kind::Relay {
                        hold_us,
                        route: Route::Same,
                    },
                );
                t.link(prev, r, links[i]);
                prev = r;
            }
            let sink = t.comp(format!("c{c}-sink"), Kind::Sink);
            t.link(prev, sink, links[holds.len()]);
        }
        t
    }

    pub fn processes(&self) -> usize {
        self.comps.len()
    }

    /// The nodes components are placed on, in the order of their first component.
    pub fn nodes(&self) -> Vec<&str> {
        let mut nodes = Vec::new();
        for n in self.comps.iter().filter_map(|c| c.node.as_deref()) {
            if !nodes.contains(&n) {
                nodes.push(n);
            }
        }
        nodes
    }
}
