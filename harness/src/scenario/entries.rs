//! Each scenario's definition: S1 to S8 and S12 to S16 (the catalogue every phase runs), S9 and
//! S11 (across nodes; S10 is phase 4's, on its fake cluster) and SCALE (many calls at once), the
//! last three found by id only.

use super::{AudioPlan, External, Kind, LinkKind, LinkSpec, Scenario, TlsStack, Topology};
use crate::component::{Framing, IoCall, Route};

/// S1 pipe chain: source → relay → relay → sink over pipes, 2048-byte writes, holds 2 and 5 ms.
pub fn s1() -> Scenario {
    let p = LinkSpec::pipe(2048, 64);
    Scenario::speech(
        "S1",
        "pipe chain, 2048-byte writes",
        2,
        20.0,
        4.0,
        Topology::chains(2, &[2_000, 5_000], &[p, p, p]),
    )
}

/// S2 re-chunk: relays re-chunk to 160, 1000 and 3001 bytes behind headers of odd lengths.
pub fn s2() -> Scenario {
    let links = [
        LinkSpec::pipe(2048, 45),
        LinkSpec::pipe(160, 1001),
        LinkSpec::pipe(1000, 17),
        LinkSpec::pipe(3001, 64),
    ];
    Scenario::speech(
        "S2",
        "re-chunk to 160/1000/3001 bytes, odd header offsets",
        2,
        20.0,
        4.0,
        Topology::chains(2, &[1_000, 2_000, 500], &links),
    )
}

/// S3 envelopes: per-call pipes into one relay that re-frames every call into Pulsar-style
/// envelopes (variable headers, several envelopes batched per write) on one TCP connection; a
/// second relay takes them apart into per-call unix links with smaller envelopes.
pub fn s3() -> Scenario {
    let calls = 3;
    let mut t = Topology::default();
    let r1 = t.comp(
        "env-r1",
        Kind::Relay {
            hold_us: 1_000,
            route: Route::First,
        },
    );
    let r2 = t.comp(
        "env-r2",
        Kind::Relay {
            hold_us: 2_000,
            route: Route::ByCall,
        },
    );
    for c in 0..calls {
        let src = t.comp(
            format!("c{c}-src"),
            Kind::Source {
                calls: vec![(c, 0)],
            },
        );
        t.link(src, r1, LinkSpec::pipe(2048, 64));
    }
    let batched = LinkSpec {
        kind: LinkKind::Tcp4,
        framing: Framing::Envelope { max_payload: 1000 },
        write: IoCall::Plain,
        read: IoCall::Plain,
        chunk: 64 * 1024,
    };
    t.link(r1, r2, batched);
    for c in 0..calls {
        let sink = t.comp(format!("c{c}-sink"), Kind::Sink);
        let small = LinkSpec {
            kind: LinkKind::Unix,
            framing: Framing::Envelope { max_payload: 333 },
            write: IoCall::Message,
            read: IoCall::Vector,
            chunk: 4096,
        };
        t.link(r2, sink, small);
    }
    Scenario::speech(
        "S3",
        "Pulsar-style envelopes, batched and multiplexed on TCP, re-framed",
        calls,
        15.0,
        3.0,
        t,
    )
}

/// S4 sockets: unix with writev/readv, TCP over IPv4 with sendmsg/recvmsg, TCP over IPv6 with
/// send/recv; three iovecs per vector call.
pub fn s4() -> Scenario {
    let links = [
        LinkSpec {
            kind: LinkKind::Unix,
            framing: Framing::Stream { header_len: 64 },
            write: IoCall::Vector,
            read: IoCall::Vector,
            chunk: 2048,
        },
        LinkSpec {
            kind: LinkKind::Tcp4,
            framing: Framing::Stream { header_len: 33 },
            write: IoCall::Message,
            read: IoCall::Message,
            chunk: 1500,
        },
        LinkSpec {
            kind: LinkKind::Tcp6,
            framing: Framing::Stream { header_len: 64 },
            write: IoCall::Socket,
            read: IoCall::Socket,
            chunk: 4096,
        },
    ];
    Scenario::speech(
        "S4",
        "unix writev/readv, TCPv4 sendmsg/recvmsg, TCPv6 send/recv",
        2,
        15.0,
        3.0,
        Topology::chains(2, &[1_000, 3_000], &links),
    )
}

/// S5 broker: one producer publishes three calls on one connection to a real nats-server
/// (Debian's), which fans every call out to two consumers that subscribe to all of them.
pub fn s5() -> Scenario {
    let calls = 3;
    let mut t = Topology::default();
    let producer = t.comp(
        "producer",
        Kind::Source {
            calls: (0..calls).map(|c| (c, 0)).collect(),
        },
    );
    let nats = t.comp("nats", Kind::External(External::Nats));
    let (a, b) = (
        t.comp("consumer-a", Kind::Sink),
        t.comp("consumer-b", Kind::Sink),
    );
    let link = LinkSpec {
        kind: LinkKind::Nats,
        framing: Framing::Nats { max_payload: 2048 },
        write: IoCall::Socket,
        read: IoCall::Plain,
        chunk: 16 * 1024,
    };
    t.link(producer, nats, link);
    t.link(nats, a, link);
    t.link(
        nats,
        b,
        LinkSpec {
            read: IoCall::Vector,
            ..link
        },
    );
    Scenario::speech(
        "S5",
        "a real broker (nats-server), one producer, fan-out to two consumers",
        calls,
        15.0,
        3.0,
        t,
    )
}

/// S6 TLS: per call, source --TLS--> stunnel --TCP--> relay --TCP--> stunnel --TLS--> sink, one
/// stunnel4 process for all of it. Our ends use SSL_write_ex/SSL_read_ex, stunnel SSL_write
/// and SSL_read; every TLS hop is measured on its plaintext.
pub fn s6() -> Scenario {
    let calls = 2;
    let mut t = Topology::default();
    let stunnel = t.comp("stunnel", Kind::External(External::Stunnel));
    let tls = LinkSpec {
        kind: LinkKind::Tls,
        framing: Framing::Stream { header_len: 64 },
        write: IoCall::Plain,
        read: IoCall::Plain,
        chunk: 2048,
    };
    let plain = LinkSpec {
        kind: LinkKind::Tcp4,
        framing: Framing::Stream { header_len: 40 },
        write: IoCall::Message,
        read: IoCall::Socket,
        chunk: 1500,
    };
    for c in 0..calls {
        let src = t.comp(
            format!("c{c}-src"),
            Kind::Source {
                calls: vec![(c, 0)],
            },
        );
        let relay = t.comp(
            format!("c{c}-relay"),
            Kind::Relay {
                hold_us: 1_000,
                route: Route::Same,
            },
        );
        let sink = t.comp(format!("c{c}-sink"), Kind::Sink);
        t.link(src, stunnel, tls);
        t.link(stunnel, relay, plain);
        t.link(relay, stunnel, plain);
        t.link(stunnel, sink, tls);
    }
    Scenario::speech(
        "S6",
        "TLS hops through stunnel4, measured on plaintext",
        calls,
        15.0,
        3.0,
        t,
    )
}

/// A TLS link's spec in the TLS scenarios: our ends write and read it through OpenSSL.
const TLS_STREAM: LinkSpec = LinkSpec {
    kind: LinkKind::Tls,
    framing: Framing::Stream { header_len: 64 },
    write: IoCall::Plain,
    read: IoCall::Plain,
    chunk: 2048,
};

/// A plain TCP link's spec in the TLS scenarios.
const TCP_STREAM: LinkSpec = LinkSpec {
    kind: LinkKind::Tcp4,
    framing: Framing::Stream { header_len: 40 },
    write: IoCall::Message,
    read: IoCall::Socket,
    chunk: 1500,
};

/// A TLS-stack scenario: two calls, each a source and a sink, and the relay processes
/// `relays` (name, stack) that serve both; `chain(topology, call, source, relays, sink)` links
/// one call's path.
fn tls_stack_scenario(
    id: &'static str,
    title: &'static str,
    relays: &[(&str, TlsStack)],
    chain: impl Fn(&mut Topology, u32, usize, &[usize], usize),
) -> Scenario {
    let calls = 2;
    let mut t = Topology::default();
    let relays: Vec<usize> = relays
        .iter()
        .map(|&(name, stack)| t.comp(name, Kind::External(External::TlsRelay(stack))))
        .collect();
    for c in 0..calls {
        let src = t.comp(
            format!("c{c}-src"),
            Kind::Source {
                calls: vec![(c, 0)],
            },
        );
        let sink = t.comp(format!("c{c}-sink"), Kind::Sink);
        chain(&mut t, c, src, &relays, sink);
    }
    Scenario::speech(id, title, calls, 15.0, 3.0, t)
}

/// S12 Go crypto/tls: per call, source --TLS--> Go relay --TCP--> sink, one relay process
/// (harness/relays/go) for both calls. The source writes through OpenSSL; the relay decrypts
/// inside Go, where only probes on crypto/tls see the plaintext: without them, the hop runs
/// from the source's SSL_write to the relay's write of the TCP link.
pub fn s12() -> Scenario {
    tls_stack_scenario(
        "S12",
        "TLS into Go's crypto/tls: OpenSSL source → Go relay → TCP sink",
        &[("go-relay", TlsStack::Go)],
        |t, _, src, relays, sink| {
            t.link(src, relays[0], TLS_STREAM);
            t.link(relays[0], sink, TCP_STREAM);
        },
    )
}

/// S13 JDK TLS: per call, source --TCP--> Java relay --TLS--> sink, one relay process
/// (harness/relays/java) for both calls; the sink reads through OpenSSL. The relay encrypts
/// inside the JDK: the hop runs from its read of the TCP link to the sink's SSL_read.
pub fn s13() -> Scenario {
    tls_stack_scenario(
        "S13",
        "TLS out of the JDK: TCP source → Java relay → OpenSSL sink",
        &[("java-relay", TlsStack::Java)],
        |t, _, src, relays, sink| {
            t.link(src, relays[0], TCP_STREAM);
            t.link(relays[0], sink, TLS_STREAM);
        },
    )
}

/// S14 rustls: per call, source --TLS--> rustls relay --TCP--> relay (ours, holds 1 ms)
/// --TCP--> the same rustls relay process (a second service) --TLS--> sink: S6 with rustls in
/// stunnel's place. The hops into and out of rustls are each one opaque stretch.
pub fn s14() -> Scenario {
    tls_stack_scenario(
        "S14",
        "rustls decrypts and re-encrypts around our relay (S6 with rustls for stunnel)",
        &[("rustls-relay", TlsStack::Rustls)],
        |t, c, src, relays, sink| {
            let relay = t.comp(
                format!("c{c}-relay"),
                Kind::Relay {
                    hold_us: 1_000,
                    route: Route::Same,
                },
            );
            t.link(src, relays[0], TLS_STREAM);
            t.link(relays[0], relay, TCP_STREAM);
            t.link(relay, relays[0], TCP_STREAM);
            t.link(relays[0], sink, TLS_STREAM);
        },
    )
}

/// S15 sidecars: per call, source --TCP--> proxy A (rustls: plain in, TLS out) --TLS--> proxy
/// B (rustls: TLS in, plain out) --TCP--> sink, as an app talks through its local proxy to
/// another proxy that hands on to the next app. The proxies' TLS between them is never
/// plaintext to a syscall: one hop from A's read to B's write.
pub fn s15() -> Scenario {
    tls_stack_scenario(
        "S15",
        "sidecars: app → rustls proxy → TLS → rustls proxy → app",
        &[("proxy-a", TlsStack::Rustls), ("proxy-b", TlsStack::Rustls)],
        |t, _, src, relays, sink| {
            t.link(src, relays[0], TCP_STREAM);
            t.link(relays[0], relays[1], TLS_STREAM);
            t.link(relays[1], sink, TCP_STREAM);
        },
    )
}

/// S16 TLS fan-out: per call, source --TLS--> a rustls broker --TLS--> two sinks, one broker
/// process for both calls, delivering every byte it reads to both sinks of its call, as a
/// Pulsar broker delivers a topic to two subscriptions. The source writes and the sinks read
/// through OpenSSL; the broker's plaintext is seen nowhere: one opaque stretch with one entry
/// and two far ends, a hop from the source to each sink.
pub fn s16() -> Scenario {
    let calls = 2;
    let mut t = Topology::default();
    let broker = t.comp("rustls-broker", Kind::External(External::TlsBroker));
    for c in 0..calls {
        let src = t.comp(
            format!("c{c}-src"),
            Kind::Source {
                calls: vec![(c, 0)],
            },
        );
        t.link(src, broker, TLS_STREAM);
        // Outputs 2c and 2c + 1: the broker's route (Pairs).
        for sub in ["a", "b"] {
            let sink = t.comp(format!("c{c}-sink-{sub}"), Kind::Sink);
            t.link(broker, sink, TLS_STREAM);
        }
    }
    Scenario::speech(
        "S16",
        "TLS fan-out: OpenSSL source → rustls broker → two OpenSSL sinks",
        calls,
        15.0,
        3.0,
        t,
    )
}

/// S7 quiet and repeats: silences, comfort noise, tones, DTMF and the same hold music at the
/// same time on every call, through one relay process serving all calls on their own
/// connections and a broker that fans every call out to two consumers.
pub fn s7() -> Scenario {
    let calls = 6;
    let mut t = Topology::default();
    let relay = t.comp(
        "relay",
        Kind::Relay {
            hold_us: 1_000,
            route: Route::Same,
        },
    );
    let broker = t.comp(
        "broker",
        Kind::Relay {
            hold_us: 500,
            route: Route::Pairs,
        },
    );
    let (a, b) = (
        t.comp("consumer-a", Kind::Sink),
        t.comp("consumer-b", Kind::Sink),
    );
    let unix = LinkSpec {
        kind: LinkKind::Unix,
        framing: Framing::Stream { header_len: 64 },
        write: IoCall::Plain,
        read: IoCall::Plain,
        chunk: 2048,
    };
    let tcp = LinkSpec {
        kind: LinkKind::Tcp4,
        framing: Framing::Envelope { max_payload: 800 },
        write: IoCall::Plain,
        read: IoCall::Plain,
        chunk: 8192,
    };
    for c in 0..calls {
        let src = t.comp(
            format!("c{c}-src"),
            Kind::Source {
                calls: vec![(c, 0)],
            },
        );
        t.link(src, relay, unix);
    }
    for _ in 0..calls {
        t.link(relay, broker, tcp);
    }
    for _ in 0..calls {
        t.link(broker, a, tcp);
        t.link(broker, b, tcp);
    }
    Scenario {
        audio: AudioPlan::QuietAndShared,
        ..Scenario::speech(
            "S7",
            "silence, comfort noise, tones, shared hold music, fan-out to two consumers",
            calls,
            24.0,
            3.0,
            t,
        )
    }
}

/// S8 concurrency: 16 calls multiplexed on one TCP connection end to end, and 16 calls each on
/// its own connection through the same relay process.
pub fn s8() -> Scenario {
    let per_group = 16;
    let mut t = Topology::default();
    let env = LinkSpec {
        kind: LinkKind::Tcp4,
        framing: Framing::Envelope { max_payload: 640 },
        write: IoCall::Plain,
        read: IoCall::Plain,
        chunk: 16 * 1024,
    };
    let src_m = t.comp(
        "mux-src",
        Kind::Source {
            calls: (0..per_group).map(|c| (c, 0)).collect(),
        },
    );
    let relay_m = t.comp(
        "mux-relay",
        Kind::Relay {
            hold_us: 1_000,
            route: Route::First,
        },
    );
    let sink_m = t.comp("mux-sink", Kind::Sink);
    t.link(src_m, relay_m, env);
    t.link(relay_m, sink_m, env);
    let stream = LinkSpec {
        kind: LinkKind::Tcp6,
        framing: Framing::Stream { header_len: 40 },
        write: IoCall::Socket,
        read: IoCall::Socket,
        chunk: 2048,
    };
    let calls: Vec<(u32, usize)> = (0..per_group)
        .map(|i| (per_group + i, i as usize))
        .collect();
    let src_p = t.comp("conn-src", Kind::Source { calls });
    let relay_p = t.comp(
        "conn-relay",
        Kind::Relay {
            hold_us: 2_000,
            route: Route::Same,
        },
    );
    let sink_p = t.comp("conn-sink", Kind::Sink);
    for _ in 0..per_group {
        t.link(src_p, relay_p, stream);
        t.link(
            relay_p,
            sink_p,
            LinkSpec {
                kind: LinkKind::Unix,
                ..stream
            },
        );
    }
    Scenario::speech(
        "S8",
        "16 calls multiplexed on one connection, 16 on their own connections",
        2 * per_group,
        12.0,
        2.0,
        t,
    )
}

/// S9 multi-node: four calls, each on its own TCP connection from node a to a relay on node b,
/// which multiplexes them as envelopes over a unix socket to a second relay on node b (a hop
/// inside one node), which sends every call on to two consumers on node c over two TCP
/// connections. Not in the catalogue, which phases 1 and 2 run and which has no nodes;
/// [`by_id`](super::by_id) finds it. Running it needs root (network namespaces).
pub fn s9() -> Scenario {
    Scenario::speech(
        "S9",
        "nodes a → b → c over TCP between network namespaces, a unix hop inside node b, fan-out",
        NODE_CHAIN_CALLS,
        12.0,
        2.0,
        node_chain(LinkKind::Tcp4, LinkKind::Unix),
    )
}

/// S11 Kubernetes Services: S9's pipeline with every link a TCP connection to a Service's
/// ClusterIP, translated by kube-proxy's iptables-mode rules (DNAT in the writer's node, one of
/// two endpoint addresses at random): the calls from node a to the relay on node b (endpoints
/// on another node), the envelopes between node b's relays (endpoints on the writer's node),
/// on to node c. No socket's addresses are the other end's: the link is found through
/// conntrack. Found by [`by_id`](super::by_id); needs root.
pub fn s11() -> Scenario {
    Scenario::speech(
        "S11",
        "S9's nodes with every link through a Kubernetes Service (kube-proxy iptables DNAT, two endpoints)",
        NODE_CHAIN_CALLS,
        12.0,
        2.0,
        node_chain(LinkKind::Service, LinkKind::Service),
    )
}

const NODE_CHAIN_CALLS: u32 = 4;

/// S9's and S11's topology: the calls from node a to node b over links of kind `across`, between
/// node b's two relays over `inside_b`, on to node c's two consumers over `across`.
fn node_chain(across: LinkKind, inside_b: LinkKind) -> Topology {
    let calls = NODE_CHAIN_CALLS;
    let mut t = Topology::default();
    let src = t.comp_on(
        "a",
        "a-src",
        Kind::Source {
            calls: (0..calls).map(|c| (c, c as usize)).collect(),
        },
    );
    let r1 = t.comp_on(
        "b",
        "b-r1",
        Kind::Relay {
            hold_us: 1_000,
            route: Route::First,
        },
    );
    let r2 = t.comp_on(
        "b",
        "b-r2",
        Kind::Relay {
            hold_us: 2_000,
            route: Route::All,
        },
    );
    let sinks = [
        t.comp_on("c", "c-sink1", Kind::Sink),
        t.comp_on("c", "c-sink2", Kind::Sink),
    ];
    let stream = LinkSpec {
        kind: across,
        ..LinkSpec::pipe(2048, 64)
    };
    for _ in 0..calls {
        t.link(src, r1, stream);
    }
    let envelopes = |kind, max_payload, chunk| LinkSpec {
        kind,
        framing: Framing::Envelope { max_payload },
        write: IoCall::Plain,
        read: IoCall::Plain,
        chunk,
    };
    t.link(r1, r2, envelopes(inside_b, 640, 8192));
    for sink in sinks {
        t.link(r2, sink, envelopes(across, 1000, 16 * 1024));
    }
    t
}

/// SCALE, whether the tracer keeps up with many calls at once: `calls` concurrent calls in
/// real time through a 3-hop chain of four processes: one source multiplexes every call on
/// [`SCALE_CONNECTIONS`] TCP connections (call `c` on connection `c % 8`) as Pulsar-style
/// envelopes batched into writes of up to 64 KiB; relay 1 holds each read 1 ms and relay 2
/// passes it on at once, each connection to the next stage's same connection; a sink reads them
/// all. Not in the catalogue (the catalogue is run by tests): `bench -- scale` runs it.
pub fn scale(calls: u32, seconds: f64) -> Scenario {
    let conns = SCALE_CONNECTIONS.min(calls.max(1) as usize);
    let mut t = Topology::default();
    let src = t.comp(
        "src",
        Kind::Source {
            calls: (0..calls).map(|c| (c, c as usize % conns)).collect(),
        },
    );
    let r1 = t.comp(
        "r1",
        Kind::Relay {
            hold_us: 1_000,
            route: Route::Same,
        },
    );
    let r2 = t.comp(
        "r2",
        Kind::Relay {
            hold_us: 0,
            route: Route::Same,
        },
    );
    let sink = t.comp("sink", Kind::Sink);
    let env = LinkSpec {
        kind: LinkKind::Tcp4,
        framing: Framing::Envelope { max_payload: 1000 },
        write: IoCall::Plain,
        read: IoCall::Plain,
        chunk: 64 * 1024,
    };
    for (from, to) in [(src, r1), (r1, r2), (r2, sink)] {
        for _ in 0..conns {
            t.link(from, to, env);
        }
    }
    Scenario::speech(
        "SCALE",
        "concurrent calls multiplexed through a 3-hop chain in real time",
        calls,
        seconds,
        1.0,
        t,
    )
}

/// Connections per stage of [`scale`].
pub const SCALE_CONNECTIONS: usize = 8;
