//! What agent and collector serve over HTTP for operators: GET /metrics (a Prometheus registry
//! in the text exposition format 0.0.4, with `audio_tracer_build_info` and the `process_*`
//! metrics every Prometheus client exports), /healthz and /readyz.
//!
//! /healthz answers 200 while the process's main loop has beaten within [`STALLED_AFTER`] (or
//! has not started yet: loading the eBPF programs takes seconds), 503 naming how long it has
//! been stuck otherwise: a liveness probe restarts a process whose loop hangs. /readyz answers
//! 200 once its owner says it is ready, 503 with what it waits for until then.

use agent::clock::monotonic_ns;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
pub use prometheus_client::registry::Registry;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpListener;

/// A main loop that has not beaten for this long is reported stuck (it beats every 200 ms).
pub const STALLED_AFTER: Duration = Duration::from_secs(10);

/// Liveness and readiness as the process's main loop reports them; clones share them.
#[derive(Clone)]
pub struct Health {
    /// Monotonic ns of the last beat; 0 until the loop starts.
    beat_ns: Arc<AtomicU64>,
    /// `Err(what is awaited)` until ready.
    ready: Arc<Mutex<Result<(), String>>>,
}

impl Health {
    /// Not ready, waiting for `what`.
    pub fn waiting_for(what: &str) -> Self {
        Self {
            beat_ns: Arc::new(AtomicU64::new(0)),
            ready: Arc::new(Mutex::new(Err(what.to_string()))),
        }
    }

    /// The main loop is alive.
    pub fn beat(&self) {
        self.beat_ns.store(monotonic_ns(), Ordering::Relaxed);
    }

    pub fn set_ready(&self) {
        *self.ready.lock().unwrap() = Ok(());
    }

    pub fn set_waiting_for(&self, what: &str) {
        *self.ready.lock().unwrap() = Err(what.to_string());
    }

    /// Ok, or why the process is not alive.
    fn alive_at(&self, now_ns: u64) -> Result<(), String> {
        let beat = self.beat_ns.load(Ordering::Relaxed);
        let silent = Duration::from_nanos(now_ns.saturating_sub(beat));
        match beat {
            0 => Ok(()),
            _ if silent < STALLED_AFTER => Ok(()),
            _ => Err(format!(
                "main loop stalled for {:.1} s",
                silent.as_secs_f64()
            )),
        }
    }

    fn ready(&self) -> Result<(), String> {
        self.ready.lock().unwrap().clone()
    }
}

/// A registry holding what both processes export about themselves: `audio_tracer_build_info`
/// and the `process_*` metrics.
pub fn registry() -> Registry {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(BuildInfo));
    registry.register_collector(Box::new(Process));
    registry
}

/// The registry in the text exposition format 0.0.4.
pub fn render(registry: &Registry) -> String {
    let mut out = String::new();
    prometheus_client::encoding::prometheus_text::encode(&mut out, registry)
        .expect("writing to a String");
    out
}

/// Serves GET /metrics, /healthz and /readyz on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    registry: Arc<Registry>,
    health: Health,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    use axum::http::{header::CONTENT_TYPE, StatusCode};
    use axum::routing::get;
    let answer = |state: Result<(), String>, ok: &'static str| match state {
        Ok(()) => (StatusCode::OK, ok.to_string()),
        Err(why) => (StatusCode::SERVICE_UNAVAILABLE, why + "\n"),
    };
    let live = health.clone();
    let app = axum::Router::new()
        .route(
            "/metrics",
            get(move || async move {
                (
                    [(
                        CONTENT_TYPE,
                        prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
                    )],
                    render(&registry),
                )
            }),
        )
        .route(
            "/healthz",
            get(move || async move { answer(live.alive_at(monotonic_ns()), "ok\n") }),
        )
        .route(
            "/readyz",
            get(move || async move { answer(health.ready(), "ready\n") }),
        );
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await?;
    Ok(())
}

/// Encodes one metric family without labels.
pub fn encode_one(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    metric: impl EncodeMetric,
) -> std::fmt::Result {
    metric.encode(encoder.encode_descriptor(name, help, None, metric.metric_type())?)
}

/// `audio_tracer_build_info{version}` 1: which build runs, joined onto other series by
/// `instance`.
#[derive(Debug)]
struct BuildInfo;

impl Collector for BuildInfo {
    fn encode(&self, mut encoder: DescriptorEncoder) -> std::fmt::Result {
        let gauge = ConstGauge::new(1i64);
        let mut family = encoder.encode_descriptor(
            "audio_tracer_build_info",
            "The running build: its version (value always 1)",
            None,
            gauge.metric_type(),
        )?;
        gauge.encode(family.encode_family(&[("version", env!("CARGO_PKG_VERSION"))])?)
    }
}

/// The process metrics Prometheus's own clients export, read at each scrape.
#[derive(Debug)]
struct Process;

impl Collector for Process {
    fn encode(&self, mut encoder: DescriptorEncoder) -> std::fmt::Result {
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: getrusage only writes the struct it is given.
        if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) } == 0 {
            let seconds = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
            encode_one(
                &mut encoder,
                "process_cpu_seconds",
                "Total user and system CPU time spent in seconds",
                ConstCounter::new(seconds(usage.ru_utime) + seconds(usage.ru_stime)),
            )?;
        }
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(1) as f64;
        if let Some([virt, rss]) = statm() {
            encode_one(
                &mut encoder,
                "process_resident_memory_bytes",
                "Resident memory size in bytes",
                ConstGauge::new(rss * page),
            )?;
            encode_one(
                &mut encoder,
                "process_virtual_memory_bytes",
                "Virtual memory size in bytes",
                ConstGauge::new(virt * page),
            )?;
        }
        if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
            encode_one(
                &mut encoder,
                "process_open_fds",
                "Number of open file descriptors",
                ConstGauge::new(fds.count() as i64),
            )?;
        }
        let mut limit: libc::rlimit = unsafe { std::mem::zeroed() };
        // SAFETY: getrlimit only writes the struct it is given.
        if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0 {
            encode_one(
                &mut encoder,
                "process_max_fds",
                "Maximum number of open file descriptors",
                ConstGauge::new(limit.rlim_cur as f64),
            )?;
        }
        if let Some(start) = start_time_seconds() {
            encode_one(
                &mut encoder,
                "process_start_time_seconds",
                "Start time of the process since unix epoch in seconds",
                ConstGauge::new(start),
            )?;
        }
        Ok(())
    }
}

/// Virtual and resident size, in pages.
fn statm() -> Option<[f64; 2]> {
    let text = std::fs::read_to_string("/proc/self/statm").ok()?;
    let mut fields = text.split_whitespace().map(|f| f.parse::<f64>().ok());
    Some([fields.next()??, fields.next()??])
}

/// Boot time plus the process's start in clock ticks since boot (/proc/self/stat field 22).
fn start_time_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name, which may hold spaces and parentheses: state is field 3.
    let after_comm = &stat[stat.rfind(')')? + 1..];
    let ticks: f64 = after_comm.split_whitespace().nth(19)?.parse().ok()?;
    let boot: f64 = std::fs::read_to_string("/proc/stat")
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("btime "))?
        .trim()
        .parse()
        .ok()?;
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    (hz > 0).then(|| boot + ticks / hz as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_loop_is_alive_until_it_stops_beating() {
        let health = Health::waiting_for("x");
        // Not started yet (loading): alive.
        assert_eq!(health.alive_at(monotonic_ns()), Ok(()));
        health.beat();
        let now = monotonic_ns();
        assert_eq!(health.alive_at(now), Ok(()));
        let later = now + STALLED_AFTER.as_nanos() as u64 + 1;
        let stuck = health.alive_at(later).unwrap_err();
        assert!(stuck.starts_with("main loop stalled for 10."), "{stuck}");
    }

    #[test]
    fn process_metrics_describe_this_process() {
        let text = render(&registry());
        let value = |name: &str| -> f64 {
            let line = text
                .lines()
                .find(|l| l.starts_with(&format!("{name} ")))
                .unwrap_or_else(|| panic!("{name} in\n{text}"));
            line.rsplit_once(' ').unwrap().1.parse().unwrap()
        };
        assert!(value("process_resident_memory_bytes") > 1e5);
        assert!(value("process_open_fds") >= 3.0);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        let start = value("process_start_time_seconds");
        assert!(
            start <= now + 1.0 && start > now - 3600.0,
            "{start} vs {now}"
        );
        assert!(
            text.contains("# TYPE process_cpu_seconds_total counter"),
            "{text}"
        );
        assert!(text.contains(&format!(
            "audio_tracer_build_info{{version=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION")
        )));
    }
}
