//! Faults with real processes: the collector killed mid-run and restarted, an agent killed
//! (and restarted), a slow collector, one of three collector replicas killed for good. Nothing hangs, the traced pipeline is never slowed, losses are counted. Each test runs a host-only harness scenario (S1's pipe chain, paced to 10 s)
//! whose components are real processes, traced by `agent` processes of this crate's binary
//! that ship to a `collector` process of it; the faults are signals to those processes. The
//! collector's JSON lines are scored against the pipeline's ground truth. Needs root (eBPF).

#[path = "faults/cluster.rs"]
mod cluster;

use agent::clock::monotonic_ns;
use agent::schema::HopRecord;
use cluster::*;
use harness::supervised::Supervised;
use std::collections::HashMap;
use std::process::Command;
use std::sync::Mutex;
use std::time::Duration;

/// The collector dies (SIGKILL) 4 s into the 10 s run; another starts on its address 1.5 s
/// later. The agent kept every batch whose matching windows the first had not closed (about the
/// last 3.4 s of moments) and sends them all to the second, which measures them: nothing
/// matched is lost, nothing is measured twice (the first reported the hops of a close only once
/// the agent was told their sightings were matched, and the second skips those).
#[test]
fn a_collector_killed_and_restarted_loses_nothing_matched() {
    let _serial = serial();
    let sc = scenario();
    let addr = free_addr();
    let tmp = tempfile::tempdir().unwrap();
    let (json_a, json_b) = (tmp.path().join("a.jsonl"), tmp.path().join("b.jsonl"));
    let a = collector(addr, &json_a, 0);
    let json_b2 = json_b.clone();
    let run = trace(
        &sc,
        "faults-restart",
        addr,
        one_agent(&[]),
        move |go_ns, _| {
            let mut a = a;
            sleep_until(go_ns + 4_000_000_000);
            let kill_ns = monotonic_ns();
            a.kill();
            let a = a.wait(Duration::from_secs(5));
            sleep_until(kill_ns + 1_500_000_000);
            let b = collector(addr, &json_b2, 0);
            (a, b, kill_ns, monotonic_ns())
        },
    );
    let gt = run.gt.expect("the pipeline ran through");
    let (a, b, kill_ns, b_up_ns) = run.fault.join().unwrap();
    let go_ns = run.go_ns;
    assert!(!a.status.success(), "collector A was killed: {}", a.status);
    assert!(
        run.ran <= on_time(&sc),
        "the pipeline took {:?} for {:?} of audio",
        run.ran,
        audio_wall(&sc)
    );
    let (_, agent) = run.agents.into_iter().next().unwrap();
    let agent = agent_exit(agent, Duration::from_secs(20), run.ended);
    let line = agent.last_line().to_string();
    assert!(agent.status.success(), "{}\n{}", agent.status, agent.stderr);
    assert_kernel_kept_up(&line);
    assert_eq!(counter(&line, "pending"), 0, "{line}");
    assert_eq!(counter(&line, "lost"), 0, "{line}");
    assert_eq!(counter(&line, "released"), 0, "{line}");
    assert_eq!(counter(&line, "collector_changes"), 1, "{line}");
    assert!(counter(&line, "reconnects") >= 2, "{line}");
    let health_b = stop_collector(b);
    let part_b = node_part(&health_b, "host");
    assert!(counter(part_b, "sightings") > 0, "{health_b}");
    assert_eq!(counter(part_b, "lost"), 0, "{health_b}");

    let (ra, rb) = (read_records(&json_a), read_records(&json_b));
    let mut all = ra.clone();
    all.extend(rb.iter().cloned());
    let s = score(&gt, &all);
    let ms = measurable(&gt, &all);
    let last_a = ra.iter().map(|r| r.to.t_ns).max().unwrap_or(0);
    let first_b = rb.iter().map(|r| r.from.t_ns).min().unwrap_or(u64::MAX);
    // What the first collector had open at the kill: before this change, lost.
    let (open_from, open_to) = (kill_ns - 3_400_000_000, kill_ns + 100_000_000);
    let inside: Vec<&Measurable> = ms
        .iter()
        .filter(|m| (open_from..open_to).contains(&m.t_ns))
        .collect();
    let every: Vec<&Measurable> = ms.iter().collect();
    let ((in_share, in_n), (all_share, all_n)) = (share(&inside), share(&every));
    eprintln!(
        "pipeline {:?}; killed at {:.2} s, B listening at {:.2} s\nagent: {line}\nB: {health_b}\n\
         A: {} records, last at {:.2} s; B: {} records, first at {:.2} s\n\
         measurable hop-moments: {all_n}, {:.2} % measured, {} not; {in_n} in A's open window \
         ({:.2}..{:.2} s), {:.2} % measured\nA+B {s}",
        run.ran,
        secs(kill_ns, go_ns),
        secs(b_up_ns, go_ns),
        ra.len(),
        secs(last_a, go_ns),
        rb.len(),
        secs(first_b, go_ns),
        all_share * 100.0,
        every.iter().filter(|m| !m.measured).count(),
        secs(open_from, go_ns),
        secs(open_to, go_ns),
        in_share * 100.0,
    );
    assert!(!ra.is_empty() && !rb.is_empty());
    // B measured the moments A had open: it got their batches again.
    assert!(
        first_b < kill_ns - 2_000_000_000,
        "B measured nothing A held"
    );
    assert_eq!(s.false_matches, 0, "{s}");
    assert_eq!(s.duplicates, 0, "{s}");
    assert_eq!(s.hops_found, s.hops_exist, "{s}");
    assert!(in_n > 0 && in_share >= 0.99, "{in_share} of {in_n}");
    assert!(all_share >= 0.99, "{all_share} of {all_n}");
}

/// S9 on its three network-namespace nodes, each agent sharding over three collector replicas
/// (processes); replica 1 dies (SIGKILL) 4 s into the 6 s run and stays dead, having written
/// the hops of its first second or so. Each agent finds it down, declares it lost after
/// `--reroute-after` (1 s here), hands what its queue for it held (sightings the replica had
/// not matched: its last ≈ 3 s) to the survivors now owning them, and shards over the two
/// survivors. What the three reported together covers the run as one collector does; nothing
/// false, nothing twice, every cross-node error within its bound.
#[test]
fn a_collector_replica_killed_for_good_hands_its_share_to_the_others() {
    let _serial = serial();
    let sc = harness::scenario::s9();
    let addrs: Vec<std::net::SocketAddr> = (0..3).map(|_| free_addr()).collect();
    let tmp = tempfile::tempdir().unwrap();
    let jsons: Vec<std::path::PathBuf> = (0..3)
        .map(|i| tmp.path().join(format!("replica-{i}.jsonl")))
        .collect();
    let mut replicas: Vec<Supervised> = (addrs.iter().zip(&jsons))
        .map(|(&addr, json)| collector(addr, json, 0))
        .collect();
    let doomed = replicas.remove(1);
    // The agents' first --collector is replica 0's (`trace`'s address), then the others.
    let mut extra: Vec<String> = addrs[1..]
        .iter()
        .flat_map(|a| ["--collector".to_string(), format!("http://{a}")])
        .collect();
    extra.extend(["--reroute-after".to_string(), "1s".to_string()]);
    let run = trace(
        &sc,
        "faults-replica",
        addrs[0],
        move |t| {
            (t.nodes.iter())
                .map(|(node, pids)| AgentPlan {
                    node: node.clone(),
                    pids: pids.clone(),
                    extra: extra.clone(),
                })
                .collect()
        },
        move |go_ns, _| {
            let mut doomed = doomed;
            sleep_until(go_ns + 4_000_000_000);
            let kill_ns = monotonic_ns();
            doomed.kill();
            (doomed.wait(Duration::from_secs(5)), kill_ns)
        },
    );
    let gt = run.gt.expect("the pipeline ran through");
    let (doomed, kill_ns) = run.fault.join().unwrap();
    assert!(
        !doomed.status.success(),
        "replica 1 was killed: {}",
        doomed.status
    );
    let mut rerouted = 0;
    for (node, p) in run.agents {
        let agent = agent_exit(p, Duration::from_secs(30), run.ended);
        let line = agent.last_line().to_string();
        eprintln!("agent {node}: {line}");
        assert!(
            agent.status.success(),
            "{node}: {}\n{}",
            agent.status,
            agent.stderr
        );
        assert_kernel_kept_up(&line);
        assert!(line.contains(" replicas=2/3 "), "{line}");
        assert_eq!(counter(&line, "replicas_lost"), 1, "{line}");
        assert_eq!(counter(&line, "pending"), 0, "{line}");
        assert_eq!(counter(&line, "lost"), 0, "{line}");
        rerouted += counter(&line, "rerouted");
    }
    let healths: Vec<String> = replicas.into_iter().map(stop_collector).collect();
    let mut all: Vec<HopRecord> = Vec::new();
    let mut by_replica = Vec::new();
    for json in &jsons {
        let records = read_records(json);
        by_replica.push(records.len());
        all.extend(records);
    }
    let s = score(&gt, &all);
    let ms = measurable(&gt, &all);
    let every: Vec<&Measurable> = ms.iter().collect();
    let after: Vec<&Measurable> = ms.iter().filter(|m| m.t_ns >= kill_ns).collect();
    let ((all_share, all_n), (after_share, after_n)) = (share(&every), share(&after));
    eprintln!(
        "pipeline {:?}; replica 1 killed at {:.2} s; records per replica {by_replica:?}; \
         {rerouted} sightings rerouted\nsurvivors: {}\nmeasurable hop-moments {all_n}, \
         {:.2} % measured; {after_n} from the kill on, {:.2} %\n{s}",
        run.ran,
        secs(kill_ns, run.go_ns),
        healths.join("\n"),
        all_share * 100.0,
        after_share * 100.0,
    );
    assert!(by_replica.iter().all(|&n| n > 0), "{by_replica:?}");
    assert!(rerouted > 0, "the killed replica held nothing unmatched?");
    assert_eq!(s.false_matches, 0, "{s}");
    assert_eq!(s.duplicates, 0, "{s}");
    assert_eq!(s.cross_node.outside_bound, 0, "{s}");
    assert_eq!(s.hops_found, s.hops_exist, "{s}");
    assert!(s.coverage_min >= 0.95, "{s}");
    assert!(all_share >= 0.95, "{all_share} of {all_n}");
}

/// The agent dies (SIGKILL) 3 s into the 10 s run and a new one starts on the same node at
/// once. The collector takes the new agent's batches (a new epoch: its batch numbers start
/// again at 1) and counts what the old one took and never delivered. Once the new agent has
/// traced for a second, the node is measured as before; nothing twice, nothing false.
#[test]
fn an_agent_killed_and_restarted_is_measured_from_its_first_second() {
    let _serial = serial();
    let sc = scenario();
    let addr = free_addr();
    let tmp = tempfile::tempdir().unwrap();
    let json = tmp.path().join("c.jsonl");
    let c = collector(addr, &json, 0);
    let pids = std::sync::Arc::new(Mutex::new(Vec::new()));
    let (pids2, ready) = (pids.clone(), tmp.path().join("second.ready"));
    let mut run = trace(
        &sc,
        "faults-agent-restart",
        addr,
        |t| {
            *pids2.lock().unwrap() = t.pids.clone();
            one_agent(&[])(t)
        },
        move |go_ns, agents| {
            let (_, pid) = agents[0].clone();
            sleep_until(go_ns + 3_000_000_000);
            let kill_ns = monotonic_ns();
            // Not reaped before the test waits for it: the pid is still that agent's.
            let ok = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status()
                .unwrap()
                .success();
            assert!(ok, "kill -KILL {pid}");
            let pids = pids.lock().unwrap().clone();
            let mut cmd = agent_command("host", addr, &ready, &pids);
            let second = Supervised::spawn("the second agent of host", &mut cmd);
            let second = attached(second, &ready).unwrap();
            (kill_ns, monotonic_ns(), second)
        },
    );
    let (kill_ns, ready_ns, second) = run.fault.join().unwrap();
    let gt = run.gt.expect("the pipeline ran through");
    let go_ns = run.go_ns;
    let (_, first) = run.agents.pop().unwrap();
    let first = first.wait(Duration::from_secs(5));
    assert!(
        !first.status.success(),
        "the first agent was killed: {}",
        first.status
    );
    assert!(
        run.ran <= on_time(&sc),
        "the pipeline took {:?} for {:?} of audio",
        run.ran,
        audio_wall(&sc)
    );
    let second = agent_exit(second, Duration::from_secs(20), run.ended);
    let line = second.last_line().to_string();
    assert!(
        second.status.success(),
        "{}\n{}",
        second.status,
        second.stderr
    );
    assert_kernel_kept_up(&line);
    assert_eq!(counter(&line, "pending"), 0, "{line}");
    assert_eq!(counter(&line, "lost"), 0, "{line}");
    let health = stop_collector(c);
    let part = node_part(&health, "host");

    // A restarted agent counts a flow's bytes from its own attach (what was written before is
    // not its to see), so the two agents' positions are on different bases: the records are
    // scored by signature and time instead.
    let mut records = read_records(&json);
    for r in &mut records {
        (r.from.pos, r.to.pos) = (None, None);
    }
    let s = score(&gt, &records);
    let ms = measurable(&gt, &records);
    let steady = ready_ns + 1_000_000_000;
    let before: Vec<&Measurable> = ms.iter().filter(|m| m.t_ns < kill_ns).collect();
    let gap: Vec<&Measurable> = ms
        .iter()
        .filter(|m| (kill_ns..steady).contains(&m.t_ns))
        .collect();
    let after: Vec<&Measurable> = ms.iter().filter(|m| m.t_ns >= steady).collect();
    let untraced: Vec<&Measurable> = ms
        .iter()
        .filter(|m| (kill_ns..ready_ns).contains(&m.t_ns))
        .collect();
    let ((b, b_n), (g, g_n), (a, a_n)) = (share(&before), share(&gap), share(&after));
    let (u, u_n) = share(&untraced);
    eprintln!(
        "pipeline {:?}; first agent killed at {:.2} s, second attached at {:.2} s\n\
         second: {line}\ncollector: {health}\n{} records\nmeasurable hop-moments: before the \
         kill {b_n}, {:.2} % measured; from the kill to the second's first second {g_n}, \
         {:.2} % (with no agent attached {u_n}, {:.2} %); after {a_n}, {:.2} %\n{s}",
        run.ran,
        secs(kill_ns, go_ns),
        secs(ready_ns, go_ns),
        records.len(),
        b * 100.0,
        g * 100.0,
        u * 100.0,
        a * 100.0,
    );
    assert_eq!(counter(part, "restarts"), 1, "{health}");
    assert_eq!(s.false_matches, 0, "{s}");
    assert_eq!(s.duplicates, 0, "{s}");
    assert!(a_n > 100 && a >= 0.99, "{a} of {a_n}");
    assert!(b >= 0.95, "{b} of {b_n}");
}

/// Two agents on one host: n1 traces each call's source and first relay, n2 its second relay
/// and sink. n2's agent is killed (SIGKILL) 3 s into the 10 s run: the pipeline does not notice,
/// the collector and n1 go on, n2's moments stop at the kill.
#[test]
fn a_killed_agent_stops_nothing_else() {
    let _serial = serial();
    let sc = scenario();
    let addr = free_addr();
    let tmp = tempfile::tempdir().unwrap();
    let json = tmp.path().join("c.jsonl");
    // Its hop series also name both sides' nodes (opt-in), scraped before it stops.
    let metrics = free_addr();
    let c = collector_with(
        addr,
        &json,
        0,
        &["--metrics", &metrics.to_string(), "--metrics-node-labels"],
    );
    let comms = std::sync::Arc::new(Mutex::new(HashMap::<u32, String>::new()));
    let comms2 = comms.clone();
    let mut run = trace(
        &sc,
        "faults-agent",
        addr,
        move |t| {
            let mut plans = [("n1", Vec::new()), ("n2", Vec::new())];
            for &p in &t.pids {
                let comm = std::fs::read_to_string(format!("/proc/{p}/comm")).unwrap();
                let comm = comm.trim().to_string();
                let first = comm.ends_with("-src") || comm.ends_with("-r1");
                plans[usize::from(!first)].1.push(p);
                comms2.lock().unwrap().insert(p, comm);
            }
            plans
                .into_iter()
                .map(|(node, pids)| AgentPlan {
                    node: node.into(),
                    pids,
                    extra: Vec::new(),
                })
                .collect()
        },
        |go_ns, agents| {
            let (_, pid) = agents.into_iter().find(|(n, _)| n == "n2").unwrap();
            sleep_until(go_ns + 3_000_000_000);
            let kill_ns = monotonic_ns();
            // Not reaped before the test waits for it: the pid is still that agent's.
            let ok = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status()
                .unwrap()
                .success();
            assert!(ok, "kill -KILL {pid}");
            kill_ns
        },
    );
    let kill_ns = run.fault.join().unwrap();
    let (_, n2) = run.agents.pop().unwrap();
    let e = n2.wait(Duration::from_secs(5));
    assert!(!e.status.success(), "n2's agent was killed: {}", e.status);
    let gt = run.gt.expect("the pipeline ran through");
    let go_ns = run.go_ns;
    assert!(
        run.ran <= on_time(&sc),
        "the pipeline took {:?} for {:?} of audio",
        run.ran,
        audio_wall(&sc)
    );
    let (_, n1) = run.agents.pop().unwrap();
    let n1 = agent_exit(n1, Duration::from_secs(20), run.ended);
    let line = n1.last_line().to_string();
    assert!(n1.status.success(), "{}\n{}", n1.status, n1.stderr);
    assert_kernel_kept_up(&line);
    assert_eq!(counter(&line, "pending"), 0, "{line}");
    assert_eq!(counter(&line, "lost"), 0, "{line}");
    // The collector stayed up through it all, and stops cleanly.
    let mut c = c;
    assert!(c.running(), "the collector died with the agent");
    let page = ureq::get(format!("http://{metrics}/metrics"))
        .call()
        .unwrap()
        .body_mut()
        .read_to_string()
        .unwrap();
    // Hops within each node (those across wait for clock exchanges after them, which the
    // killed agent never sends, and are written when the collector stops).
    for node in ["n1", "n2"] {
        let sides = format!(r#"src_node="{node}",dst_name"#);
        let within = page.lines().any(|l| {
            l.starts_with("audio_hop_latency_seconds_count{")
                && l.contains(&sides)
                && l.contains(&format!(r#"dst_node="{node}""#))
        });
        assert!(within, "no hop series within {node}:\n{page}");
    }
    let health = stop_collector(c);
    assert!(
        counter(node_part(&health, "n1"), "sightings") > 0,
        "{health}"
    );
    assert!(
        counter(node_part(&health, "n2"), "sightings") > 0,
        "{health}"
    );

    let records = read_records(&json);
    let s = score(&gt, &records);
    let on = |r: &HopRecord, node: &str| {
        [&r.from, &r.to]
            .iter()
            .any(|x| x.node.as_deref() == Some(node))
    };
    let n1_after: Vec<&HopRecord> = records
        .iter()
        .filter(|r| !on(r, "n2") && r.from.t_ns > kill_ns + 1_000_000_000)
        .collect();
    let n2_records: Vec<&HopRecord> = records.iter().filter(|r| on(r, "n2")).collect();
    let n2_last = n2_records.iter().map(|r| r.to.t_ns).max().unwrap_or(0);
    let comms = comms.lock().unwrap();
    let on_n2 = |pid: u32| {
        comms
            .get(&pid)
            .is_some_and(|c| !(c.ends_with("-src") || c.ends_with("-r1")))
    };
    let ms = measurable(&gt, &records);
    let n1_hops_after: Vec<&Measurable> = ms
        .iter()
        .filter(|m| !on_n2(m.from) && !on_n2(m.to) && m.t_ns > kill_ns)
        .collect();
    let n2_hops_before: Vec<&Measurable> = ms
        .iter()
        .filter(|m| on_n2(m.from) && on_n2(m.to) && m.t_ns < kill_ns)
        .collect();
    let n2_hops_after: Vec<&Measurable> = ms
        .iter()
        .filter(|m| on_n2(m.from) && on_n2(m.to) && m.t_ns > kill_ns)
        .collect();
    let ((n1a, n1a_n), (n2b, n2b_n), (n2a, n2a_n)) = (
        share(&n1_hops_after),
        share(&n2_hops_before),
        share(&n2_hops_after),
    );
    eprintln!(
        "pipeline {:?}; n2's agent killed at {:.2} s\nn1: {line}\ncollector: {health}\n\
         {} records; {} within n1 more than 1 s after the kill; {} with an n2 side, the last at \
         {:.2} s\nmeasurable hop-moments: within n1 after the kill {n1a_n}, {:.1} % measured; \
         within n2 before it {n2b_n}, {:.1} %; after it {n2a_n}, {:.1} %\n{s}",
        run.ran,
        secs(kill_ns, go_ns),
        records.len(),
        n1_after.len(),
        n2_records.len(),
        secs(n2_last, go_ns),
        n1a * 100.0,
        n2b * 100.0,
        n2a * 100.0,
    );
    assert_eq!(s.false_matches, 0, "{s}");
    // n1 is measured after the kill as before it.
    assert!(n1_after.len() > 100, "{}", n1_after.len());
    assert!(n1a >= 0.95, "{n1a}");
    // n2 was measured until its agent died, never after: every n2 sighting was drained by the
    // agent before the kill (50 ms slack for the kill's own delivery).
    assert!(n2b >= 0.95, "{n2b}");
    assert!(!n2_records.is_empty());
    assert!(n2_last <= kill_ns + 50_000_000, "{}", secs(n2_last, go_ns));
    assert_eq!(n2a, 0.0);
}

/// A collector that takes 200 ms to acknowledge each batch, and an agent that drains every
/// 50 ms into a queue of 4 batches: the queue overflows, the oldest batches are dropped and
/// counted, the count reaches the collector with later batches; the tracing itself never
/// waits (no kernel drops) and the pipeline keeps its pace.
#[test]
fn a_slow_collector_costs_counted_losses_never_a_slower_pipeline() {
    let _serial = serial();
    let sc = scenario();
    let addr = free_addr();
    let tmp = tempfile::tempdir().unwrap();
    let json = tmp.path().join("c.jsonl");
    let c = collector(addr, &json, 200);
    let run = trace(
        &sc,
        "faults-slow",
        addr,
        one_agent(&["--queue-batches", "4"]),
        |_, _| (),
    );
    let gt = run.gt.expect("the pipeline ran through");
    let ended = run.ended;
    assert!(
        run.ran <= on_time(&sc),
        "the pipeline took {:?} for {:?} of audio",
        run.ran,
        audio_wall(&sc)
    );
    let (_, agent) = run.agents.into_iter().next().unwrap();
    // The agent stops once its processes are gone (checked every 200 ms) and waits at most
    // 10 s for its queue to be acknowledged: 4 batches, 0.8 s here. Its exit then takes a few
    // more seconds (detaching phase 2's uprobes from its targets).
    let agent = agent_exit(agent, Duration::from_secs(20), ended);
    let line = agent.last_line().to_string();
    let health = stop_collector(c);
    let part = node_part(&health, "host");
    let records = read_records(&json);
    let s = score(&gt, &records);
    let ms = measurable(&gt, &records);
    let all: Vec<&Measurable> = ms.iter().collect();
    let (measured, n) = share(&all);
    let (taken, sent, lost) = (
        counter(&line, "sightings"),
        counter(part, "sightings"),
        counter(&line, "lost"),
    );
    eprintln!(
        "pipeline {:?}; agent exited {}\nagent: {line}\ncollector: {health}\n\
         sightings: {taken} taken by the agent, {sent} reached the collector, {lost} counted \
         lost: {} counted twice (delivered and lost)\n\
         measurable hop-moments {n}, {:.1} % measured\n{s}",
        run.ran,
        agent.status,
        (sent + lost).saturating_sub(taken),
        measured * 100.0
    );
    assert!(agent.status.success(), "{}\n{}", agent.status, agent.stderr);
    let delivered = agent.printed_at.expect("a health line") - ended;
    assert!(delivered < Duration::from_secs(3), "{delivered:?}");
    assert_kernel_kept_up(&line);
    assert_eq!(counter(&line, "pending"), 0, "{line}");
    assert!(lost > 0, "{line}");
    // The last batch sent left after the last drop and carried the final count.
    assert_eq!(counter(part, "lost"), lost, "{health}\n{line}");
    // Nothing lost silently, nothing counted twice: every sighting the agent took reached the
    // collector or is counted lost (a full queue never drops the batch being sent).
    assert_eq!(sent + lost, taken, "{health}\n{line}");
    // The clock kept being exchanged though the queue never emptied: stamps mapped near truth.
    assert!(s.read_stamp_offset_p50_ns.abs() < 1_000_000, "{s}");
    assert_eq!(s.false_matches, 0, "{s}");
    assert!(!records.is_empty());
    assert!(
        measured < 0.9,
        "{measured}: the slow collector lost nothing?"
    );
}
