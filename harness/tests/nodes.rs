//! Nodes are network namespaces joined by a real network, gone once dropped; S9 runs its
//! components on them and its calls cross nodes a → b → c. Needs root.

use harness::nodes::{Nodes, HOST};
use harness::score::{score_indexed, CallTruthIndex, Observes, SAME_NODE_BAR};
use harness::{oracle, run, scenario};
use shared::FingerprintConfig;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::MetadataExt;
use std::path::Path;

#[test]
fn nodes_talk_over_tcp_and_vanish_on_drop() {
    let nodes = Nodes::create(&["a", "b"]).unwrap();
    let (a, b) = (nodes.get("a").unwrap(), nodes.get("b").unwrap());
    let listener = b
        .run_in(|| TcpListener::bind((b.addr, 0)))
        .unwrap()
        .unwrap();
    let port = listener.local_addr().unwrap().port();
    let mut client = a
        .run_in(|| TcpStream::connect((b.addr, port)))
        .unwrap()
        .unwrap();
    let (mut server, peer) = listener.accept().unwrap();
    assert_eq!(peer.ip(), a.addr);
    client.write_all(b"hello from a").unwrap();
    let mut got = [0; 12];
    server.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"hello from a");
    // Loopback is up inside a node, and is the node's own.
    a.run_in(|| {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        TcpStream::connect(l.local_addr().unwrap()).unwrap();
    })
    .unwrap();

    // Another run at the same time gets a network of its own.
    let other = Nodes::create(&["a"]).unwrap();
    assert_ne!(other.all()[0].addr.octets()[2], a.addr.octets()[2]);

    let paths: Vec<_> = nodes
        .all()
        .iter()
        .chain(other.all())
        .map(|n| n.path())
        .collect();
    assert!(paths.iter().all(|p| p.exists()));
    drop((nodes, other));
    assert!(paths.iter().all(|p| !p.exists()), "{paths:?}");
}

#[test]
fn nodes_vanish_on_panic() {
    let mut paths = Vec::new();
    let unwound = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let nodes = Nodes::create(&["x", "y"]).unwrap();
        paths.extend(nodes.all().iter().map(|n| n.path()));
        panic!("on purpose");
    }));
    assert!(unwound.is_err());
    assert_eq!(paths.len(), 2);
    assert!(paths.iter().all(|p| !p.exists()), "{paths:?}");
}

#[test]
fn bad_node_names_are_refused() {
    for names in [&["a", "a"][..], &[HOST], &["a b"], &[""]] {
        assert!(Nodes::create(names).is_err(), "{names:?}");
    }
}

#[test]
fn s9_calls_cross_nodes_a_b_c() {
    let sc = scenario::s9();
    assert!(scenario::catalogue().iter().all(|s| s.id != "S9"));
    assert_eq!(scenario::by_id("s9").unwrap().id, "S9");
    let dir = run::workdir("nodes-S9").unwrap();
    let mut targets = None;
    let gt = run::run(&sc, Path::new(env!("CARGO_BIN_EXE_harness")), &dir, |t| {
        // Every component really runs in its node's network namespace.
        for (name, pids) in &t.nodes {
            let node = t.net.iter().find(|n| &n.name == name).unwrap();
            let ns = std::fs::metadata(node.path()).unwrap().ino();
            for pid in pids {
                let own = std::fs::metadata(format!("/proc/{pid}/ns/net")).unwrap();
                assert_eq!(own.ino(), ns, "pid {pid} on node {name}");
            }
        }
        targets = Some(t.clone());
        Ok(())
    })
    .unwrap();
    let t = targets.unwrap();

    let per_node: Vec<(&str, usize)> = t.nodes.iter().map(|(n, p)| (n.as_str(), p.len())).collect();
    assert_eq!(per_node, [("a", 1), ("b", 2), ("c", 2)]);
    let mut all: Vec<u32> = t.nodes.iter().flat_map(|(_, p)| p.clone()).collect();
    all.sort();
    let mut pids = t.pids.clone();
    pids.sort();
    assert_eq!(all, pids);
    for (name, pids) in &t.nodes {
        for &pid in pids {
            let log = gt.components.iter().find(|c| c.pid == pid).unwrap();
            assert_eq!(log.node.as_deref(), Some(name.as_str()), "{}", log.name);
        }
    }
    // The nodes are gone with the run.
    assert!(t.net.iter().all(|n| !n.path().exists()));

    // Every path of every call, from its source to a consumer, goes a → b → c.
    assert_eq!(gt.calls.len(), sc.calls as usize);
    for call in &gt.calls {
        let leaves: Vec<usize> = (0..call.points.len())
            .filter(|&i| !call.parent.contains(&Some(i)))
            .collect();
        assert_eq!(
            leaves.len(),
            2,
            "call {}: fan-out to two consumers",
            call.call
        );
        for leaf in leaves {
            let mut nodes = Vec::new();
            let mut at = Some(leaf);
            while let Some(i) = at {
                let node = gt
                    .component(&call.points[i].component)
                    .unwrap()
                    .node
                    .clone();
                if nodes.last() != Some(&node) {
                    nodes.push(node);
                }
                at = call.parent[i];
            }
            nodes.reverse();
            let want = ["a", "b", "c"].map(|n| Some(n.to_string()));
            assert_eq!(nodes, want, "call {}", call.call);
        }
    }

    // Scored by pid and fd as on one node: the oracle is perfect.
    let cfg = FingerprintConfig::default();
    let calls = CallTruthIndex::build(&gt, cfg).unwrap();
    std::fs::remove_dir_all(&dir).ok();
    let records = oracle::records(&gt, &calls, Observes::ALL);
    assert!(records.iter().any(|r| r.from.node != r.to.node));
    let s = score_indexed(&gt, &calls, &records, Observes::ALL, cfg, "oracle");
    eprintln!("{s}");
    assert_eq!(s.hops_found, s.hops_exist);
    assert_eq!((s.false_matches, s.duplicates), (0, 0));
    assert_eq!(s.correct, s.records);
    assert!(
        s.misses(&SAME_NODE_BAR).is_empty(),
        "{:?}",
        s.misses(&SAME_NODE_BAR)
    );
}

/// S11's links really go through kube-proxy-style DNAT: in each writer's node, conntrack holds
/// one entry per Service connection, from the ClusterIP to one of the reader node's two
/// addresses.
#[test]
fn s11_connections_are_translated_by_the_writers_node() {
    let sc = scenario::s11();
    assert_eq!(scenario::by_id("s11").unwrap().id, "S11");
    let dir = run::workdir("nodes-S11").unwrap();
    let mut translated = Vec::new();
    run::run(&sc, Path::new(env!("CARGO_BIN_EXE_harness")), &dir, |t| {
        for (name, pids) in &t.nodes {
            let table = std::fs::read_to_string(format!("/proc/{}/net/nf_conntrack", pids[0]))?;
            for l in table.lines().filter(|l| l.contains("dport=80 ")) {
                let field = |key: &str, nth: usize| {
                    l.split_whitespace()
                        .filter_map(|f| f.strip_prefix(key))
                        .nth(nth)
                        .unwrap()
                        .to_string()
                };
                translated.push((name.clone(), field("dst=", 0), field("src=", 1)));
            }
        }
        Ok(())
    })
    .unwrap();
    std::fs::remove_dir_all(&dir).ok();
    // a → b: 4 connections, b → b: 1, b → c: 2.
    let on = |node: &str| translated.iter().filter(|(n, ..)| n == node).count();
    assert_eq!((on("a"), on("b"), on("c")), (4, 3, 0), "{translated:?}");
    for (_, cluster_ip, endpoint) in &translated {
        assert!(cluster_ip.starts_with("10.96.0."), "{translated:?}");
        let last: u8 = endpoint.rsplit('.').next().unwrap().parse().unwrap();
        assert!(
            endpoint.starts_with("10.213.") && matches!(last, 2 | 3 | 130 | 131),
            "{translated:?}"
        );
    }
}
