//! The two processes of phase 3: `agent` (one per node) and `collector` (one per cluster).

use crate::admission::Admission;
use crate::agent::{NodeAgent, DRAIN_EVERY};
use crate::agent_metrics::AgentMetrics;
use crate::collector::{serve_on, Service};
use crate::endpoints::Health;
use crate::metrics::Metrics;
use crate::mtls::{ClientTls, ServerTls};
use crate::outputs::Outputs;
use crate::shards::Shards;
use crate::uplink::UplinkConfig;
use agent::cli::{listen, listen_address, parse_duration, parse_interval, report_period, FOREVER};
use agent::clock::{monotonic_ns, Skew};
use agent::stats::{HopStats, Retention};
use anyhow::{bail, Context, Result};
use clap::Args;
use phase_2_straddle::tracer::Tracer;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use tokio::signal::unix::{signal, SignalKind};

#[derive(Args, Debug, Clone)]
pub struct AgentArgs {
    /// This node's name, as the collector reports it.
    #[arg(long)]
    pub node: String,
    /// The collector, `http://host:port` (`https://` with the --tls-* files). Repeated (or a
    /// list): the collector's replicas, each sighting sent to the one owning its signature.
    /// Every agent must list the same replicas, by the same names.
    #[arg(long, value_name = "URL", value_parser = collector_url, required = true)]
    pub collector: Vec<String>,
    /// A collector replica unreachable this long is lost: its share of signatures goes to the
    /// others (and what it had not matched with it) until it answers again: `5s`, `500ms`.
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = parse_duration)]
    pub reroute_after: Duration,
    #[command(flatten)]
    pub targets: agent::cli::TargetArgs,
    /// Test only (S9): pretend this node's clock is ahead by this much …
    #[arg(
        long,
        value_name = "MS",
        default_value_t = 0.0,
        allow_hyphen_values = true,
        value_parser = finite
    )]
    pub skew_offset_ms: f64,
    /// … and runs this many ppm fast.
    #[arg(
        long,
        value_name = "PPM",
        default_value_t = 0.0,
        allow_hyphen_values = true,
        value_parser = finite
    )]
    pub skew_ppm: f64,
    /// … since this `CLOCK_MONOTONIC` time, ns (default: the agent's start).
    #[arg(long, value_name = "NS")]
    pub skew_origin_ns: Option<u64>,
    /// Batches held while the collector is slow or gone (then the oldest are dropped, counted).
    #[arg(long, default_value_t = 4096)]
    pub queue_batches: usize,
    /// Mutual TLS: the CA that signed the collector's certificate, and this agent's own.
    #[arg(long)]
    pub tls_ca: Option<PathBuf>,
    #[arg(long)]
    pub tls_cert: Option<PathBuf>,
    #[arg(long)]
    pub tls_key: Option<PathBuf>,
    /// The name the collector's certificate must carry.
    #[arg(long, default_value = "localhost")]
    pub tls_server_name: String,
    /// Touched once tracing is attached (for scripts and tests that start the pipeline next).
    #[arg(long, value_name = "FILE")]
    pub ready_file: Option<PathBuf>,
    /// Serve this agent's Prometheus metrics on http://ADDR/metrics, and /healthz and /readyz
    /// (ready once tracing is attached and the collector has taken a first batch; `:9090`:
    /// every interface).
    #[arg(long, value_name = "ADDR", value_parser = listen_address)]
    pub metrics: Option<SocketAddr>,
}

#[derive(Args, Debug, Clone)]
pub struct CollectorArgs {
    /// Where agents connect (gRPC): `IP:PORT`, `HOST:PORT`, or `:PORT` for every interface.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:50051", value_parser = listen_address)]
    pub listen: SocketAddr,
    /// Serve Prometheus metrics on http://ADDR/metrics, and /healthz and /readyz (`:9090`:
    /// every interface).
    #[arg(long, value_name = "ADDR", value_parser = listen_address)]
    pub metrics: Option<SocketAddr>,
    /// Label hop series with the nodes of their two sides too (a series per pair of nodes a
    /// workload's hops cross).
    #[arg(long)]
    pub metrics_node_labels: bool,
    /// Also write every matched hop as JSON lines (docs/results-schema.md) to this file.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// Print the live hop table this often: `2` (seconds), `500ms` (0: only at the end).
    #[arg(long, value_name = "DURATION", default_value = "2", value_parser = parse_interval, allow_hyphen_values = true)]
    pub report_every: Duration,
    /// Stop after this long: `30` (seconds), `500ms`, `2m` (default: on Ctrl-C or SIGTERM).
    #[arg(short, long, value_name = "DURATION", value_parser = parse_duration, allow_hyphen_values = true)]
    pub duration: Option<Duration>,
    /// Drop a hop from the table and the metrics, and a node from the metrics, after this long
    /// without news of it: `10m`, `600` (seconds).
    #[arg(long, value_name = "DURATION", default_value = "10m", value_parser = parse_duration)]
    pub forget_after: Duration,
    /// Mutual TLS: the collector's certificate and key, and the CA agents' certificates must
    /// be signed by.
    #[arg(long)]
    pub tls_cert: Option<PathBuf>,
    #[arg(long)]
    pub tls_key: Option<PathBuf>,
    #[arg(long)]
    pub tls_client_ca: Option<PathBuf>,
    /// Admit at most this many distinct node names; requests from more are refused (counted,
    /// no new series). Over mutual TLS a node is also only who its certificate names.
    #[arg(long, default_value_t = crate::admission::DEFAULT_MAX_NODES, value_parser = at_least_one)]
    pub max_nodes: usize,
    /// Test only: take each batch this late (a slow collector).
    #[arg(long, value_name = "MS", default_value_t = 0, hide = true)]
    pub ack_delay_ms: u64,
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?)
}

/// Resolves on Ctrl-C or SIGTERM.
async fn stopped() {
    let Ok(mut term) = signal(SignalKind::terminate()) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

/// A number that is one: NaN and infinities are refused.
fn finite(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(v) if v.is_finite() => Ok(v),
        _ => Err(format!("{text:?} is not a finite number")),
    }
}

/// A URL an agent can dial: `http://` or `https://`, a host, and a port (the collector has
/// no well-known one).
fn collector_url(text: &str) -> Result<String, String> {
    let example = "e.g. http://collector:50051";
    let uri: tonic::transport::Uri = text
        .parse()
        .map_err(|e| format!("{text:?} is not a URL ({e}); {example}"))?;
    if !matches!(uri.scheme_str(), Some("http" | "https")) {
        return Err(format!(
            "{text:?} must start with http:// or https://; {example}"
        ));
    }
    if uri.host().is_none_or(str::is_empty) || uri.port_u16().is_none() {
        return Err(format!("{text:?} must name a host and a port; {example}"));
    }
    Ok(text.to_string())
}

/// Files that go together (mutual TLS): all of them, or none. Checked here rather than by clap,
/// which would not count a value from the config file.
fn all_or_none<'a>(files: [(&str, &'a Option<PathBuf>); 3]) -> Result<Option<[&'a PathBuf; 3]>> {
    let given: Vec<&str> = files
        .iter()
        .filter(|(_, f)| f.is_some())
        .map(|(flag, _)| *flag)
        .collect();
    match given.len() {
        0 => Ok(None),
        3 => Ok(Some(files.map(|(_, f)| f.as_ref().expect("given")))),
        _ => {
            let all: Vec<&str> = files.iter().map(|(flag, _)| *flag).collect();
            bail!(
                "{} go together; given only {}",
                all.join(", "),
                given.join(", ")
            )
        }
    }
}

/// A count of at least one.
fn at_least_one(text: &str) -> Result<usize, String> {
    match text.parse::<usize>() {
        Ok(n) if n >= 1 => Ok(n),
        _ => Err(format!("{text:?} is not a whole number of at least 1")),
    }
}

/// What a deployment adds to the agent: who its processes are in its own terms, and which to
/// trace.
#[derive(Default)]
pub struct AgentHooks {
    /// Names each event's process (`PodRef`) where it can.
    pub annotate: Option<crate::agent::Annotate>,
    /// More targets, looked up again every second; with it, the agent runs until stopped,
    /// whatever its targets do.
    pub targets: Option<Box<dyn FnMut() -> Result<Vec<u32>>>>,
}

/// Traces this node's targets and ships their sightings until stopped; then waits (a bounded
/// time) for the collector to hold them all.
pub fn run_agent(args: &AgentArgs) -> Result<()> {
    run_agent_with(args, AgentHooks::default())
}

pub fn run_agent_with(args: &AgentArgs, mut hooks: AgentHooks) -> Result<()> {
    let t = &args.targets;
    if t.has_no_targets() && hooks.targets.is_none() {
        bail!("an agent needs targets: --pid or --comm");
    }
    t.check_targets()?;
    let tls = match all_or_none([
        ("--tls-ca", &args.tls_ca),
        ("--tls-cert", &args.tls_cert),
        ("--tls-key", &args.tls_key),
    ])? {
        Some([ca, cert, key]) => Some(ClientTls::from_files(ca, cert, key, &args.tls_server_name)?),
        None => None,
    };
    // tonic speaks TLS only to an https:// address and plaintext to any other: a mismatch
    // would fail every connect after the programs were loaded.
    for url in &args.collector {
        let https = url.starts_with("https://");
        if tls.is_some() != https {
            bail!(
                "--collector {url}: {}",
                match https {
                    true => "an https:// collector needs --tls-ca, --tls-cert and --tls-key",
                    false => "with the --tls-* files the collector's address must be https://",
                }
            );
        }
    }
    // A replica listed twice would get a second uplink that never owns a signature: a typo.
    let mut names = args.collector.clone();
    names.sort();
    if let Some(twice) = names.windows(2).find(|w| w[0] == w[1]) {
        bail!("--collector {} is given twice", twice[0]);
    }
    let rt = runtime()?;
    let _guard = rt.enter();
    let health = Health::waiting_for("the eBPF programs to attach");
    let metrics = AgentMetrics::default();
    // Before the seconds the eBPF load takes: a liveness probe gets its answer meanwhile.
    if let Some(addr) = args.metrics {
        let listener = tokio::net::TcpListener::from_std(listen(addr)?)?;
        let mut registry = crate::endpoints::registry();
        // The node, as the collector's per-node series name it: dashboards join on it.
        registry
            .sub_registry_with_label(("node".into(), args.node.clone().into()))
            .register_collector(Box::new(metrics.clone()));
        rt.spawn(crate::endpoints::serve(
            listener,
            std::sync::Arc::new(registry),
            health.clone(),
            std::future::pending(),
        ));
    }
    let mut tracer = Tracer::start(&t.fingerprint(), t.comm.as_deref())?;
    tracer.add_targets(&t.pid)?;
    // The hook's targets as last looked up: a process that leaves the selection (relabelled or
    // gone, its pid reused) stops being traced.
    let mut selected = std::collections::HashSet::new();
    if let Some(more) = &mut hooks.targets {
        selected = more()?.into_iter().collect();
        tracer.add_targets(&selected.iter().copied().collect::<Vec<_>>())?;
    }
    let uplink = UplinkConfig {
        node: args.node.clone(),
        collector: String::new(),
        capacity: args.queue_batches.max(1),
        sync_every: Duration::from_millis(100),
        skew: Skew {
            offset_ns: (args.skew_offset_ms * 1e6) as i64,
            ppm: args.skew_ppm,
            origin_ns: args.skew_origin_ns.unwrap_or_else(monotonic_ns),
        },
        tls,
    };
    let shards = Shards::start(&uplink, &args.collector, args.reroute_after);
    let mut agent = NodeAgent::new(tracer, &args.node, shards);
    agent.annotate = hooks.annotate.take();
    let collectors = args.collector.join(", ");
    let first_exchange = match args.collector.len() {
        1 => format!("a first batch taken by the collector at {collectors}"),
        _ => format!("a first batch taken by one of the collector replicas at {collectors}"),
    };
    health.set_waiting_for(&first_exchange);
    if let Some(f) = &args.ready_file {
        std::fs::write(f, b"").with_context(|| format!("writing {}", f.display()))?;
    }
    tracing::info!("agent {} tracing; Ctrl-C to stop", args.node);
    rt.block_on(async {
        let mut drain = tokio::time::interval(DRAIN_EVERY);
        let mut liveness = tokio::time::interval(Duration::from_millis(200));
        let mut lookup = tokio::time::interval(Duration::from_secs(1));
        let mut sample = tokio::time::interval(Duration::from_secs(1));
        let until = tokio::time::sleep(t.duration.unwrap_or(FOREVER));
        let stop = stopped();
        tokio::pin!(until, stop);
        loop {
            tokio::select! {
                _ = drain.tick() => agent.tick(),
                _ = liveness.tick() => {
                    health.beat();
                    if agent.shards.uplink_counters().batches_sent > 0 {
                        health.set_ready();
                    }
                    let alive = t.pid.iter().any(|&p| agent::targets::process_exists(p));
                    if t.comm.is_none() && hooks.targets.is_none() && !alive {
                        break;
                    }
                    agent.tracer.refresh()?;
                }
                _ = lookup.tick(), if hooks.targets.is_some() => {
                    let now: std::collections::HashSet<u32> =
                        (hooks.targets.as_mut().expect("checked"))()?.into_iter().collect();
                    let gone: Vec<u32> = selected
                        .difference(&now)
                        .filter(|p| !t.pid.contains(p))
                        .copied()
                        .collect();
                    let new: Vec<u32> = now.difference(&selected).copied().collect();
                    agent.tracer.add_targets(&new)?;
                    agent::pipeline::Kernel::remove_targets(&mut agent.tracer, &gone)?;
                    selected = now;
                }
                _ = sample.tick(), if args.metrics.is_some() => {
                    let traced = traced(&t.pid, &selected, t.comm.as_deref())?;
                    metrics.update(agent.snapshot(traced)?);
                }
                _ = &mut stop => break,
                _ = &mut until => break,
            }
        }
        agent.tick();
        let deadline = Instant::now() + Duration::from_secs(10);
        while agent.shards.pending() > 0 && Instant::now() < deadline {
            // A replica lost meanwhile hands its batches to the others.
            agent.shards.rebalance();
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        anyhow::Ok(())
    })?;
    let pending = agent.shards.pending();
    println!("{}", agent.health()?);
    if pending > 0 {
        bail!("{pending} batches not delivered: the collectors at {collectors} did not take them within 10 s");
    }
    Ok(())
}

/// Processes traced: the live ones of `pids` and `selected`, and those named `comm*`.
fn traced(
    pids: &[u32],
    selected: &std::collections::HashSet<u32>,
    comm: Option<&str>,
) -> Result<u64> {
    let mut all: std::collections::HashSet<u32> = selected.clone();
    all.extend(pids.iter().filter(|&&p| agent::targets::process_exists(p)));
    if let Some(prefix) = comm {
        all.extend(agent::targets::pids_with_comm_prefix(prefix)?);
    }
    Ok(all.len() as u64)
}

/// Collects, matches and reports until stopped.
pub fn run_collector(args: &CollectorArgs) -> Result<()> {
    let tls = match all_or_none([
        ("--tls-cert", &args.tls_cert),
        ("--tls-key", &args.tls_key),
        ("--tls-client-ca", &args.tls_client_ca),
    ])? {
        Some([cert, key, ca]) => Some(ServerTls::from_files(cert, key, ca)?),
        None => None,
    };
    let mut outputs = Outputs {
        stats: HopStats::new(Retention {
            forget_after: args.forget_after,
            ..Retention::default()
        }),
        metrics: Metrics::new(args.forget_after),
        node_labels: args.metrics_node_labels,
        ..Outputs::default()
    };
    if let Some(p) = &args.json {
        outputs.json = Some(Box::new(std::io::BufWriter::new(
            std::fs::File::create(p).with_context(|| format!("creating {}", p.display()))?,
        )));
    }
    // Both sockets before anything is said to listen: a busy port is one line naming it.
    let grpc_socket = listen(args.listen)?;
    let metrics_socket = args.metrics.map(listen).transpose()?;
    let rt = runtime()?;
    let service = Service {
        ack_delay: Duration::from_millis(args.ack_delay_ms),
        admission: Admission::new(args.max_nodes),
        ..Default::default()
    };
    rt.block_on(async {
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let wait = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
            rx.wait_for(|&s| s).await.ok();
        };
        let mut grpc = tokio::spawn(serve_on(
            service.clone(),
            grpc_socket,
            tls,
            wait(stop_rx.clone()),
        ));
        let health = Health::waiting_for("the gRPC server to listen");
        let mut ticked = false;
        if let Some(socket) = metrics_socket {
            tokio::spawn(crate::endpoints::serve(
                tokio::net::TcpListener::from_std(socket)?,
                outputs.metrics.registry(),
                health.clone(),
                wait(stop_rx.clone()),
            ));
        }
        tracing::info!("collector listening on {}; Ctrl-C to stop", args.listen);
        let every = report_period(args.report_every);
        let mut report = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        let mut close = tokio::time::interval(Duration::from_millis(200));
        let until = tokio::time::sleep(args.duration.unwrap_or(FOREVER));
        let stop = stopped();
        tokio::pin!(until, stop);
        loop {
            tokio::select! {
                _ = close.tick() => {
                    health.beat();
                    // A gRPC port that cannot be bound ends the task at once (and then the
                    // collector): still running a tick later, it serves.
                    if ticked && !grpc.is_finished() {
                        health.set_ready();
                    }
                    ticked = true;
                    outputs.take(service.close_due(Some(monotonic_ns())))?;
                    outputs.update_nodes(&service);
                }
                _ = service.told.notified() => outputs.take(service.released())?,
                _ = report.tick() => eprintln!("{}{}", outputs.stats.table(), service.health()),
                _ = &mut stop => break,
                _ = &mut until => break,
                r = &mut grpc => {
                    r??;
                    bail!("the gRPC server stopped");
                }
            }
        }
        stop_tx.send(true).ok();
        anyhow::Ok(())
    })?;
    outputs.take(service.close_due(None))?;
    println!("{}{}", outputs.stats.table(), service.health());
    Ok(())
}
