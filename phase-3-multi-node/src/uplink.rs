//! An agent's link to the collector. The tracing loop hands over sightings without ever
//! waiting: they are batched into a bounded queue (`outbox`), and a background task sends the
//! queue in order, reconnecting as long as it takes. Each batch stays queued until the
//! collector says the matching windows of all its sightings have closed; a new collector
//! instance (restarted or replaced) gets every batch still queued. When the queue is full the
//! oldest batch is dropped and counted; the count travels with every later batch. The same
//! task runs the clock exchanges and ships them with the batches.

use crate::outbox::Outbox;
pub use crate::outbox::UplinkCounters;
use crate::proto::collector_client::CollectorClient;
use crate::proto::{Exchange, NodeSighting, OpaqueSocket, SyncRequest};
use agent::clock::{monotonic_ns, Skew};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Notify;
use tonic::transport::Endpoint;

/// Delays between failed connects: doubling from 20 ms to 0.5 s, each stretched by a random
/// part of itself (so never over 1 s), so that the agents of a cluster do not all reconnect in
/// the same instant after a collector restart.
fn reconnect_delays() -> impl Iterator<Item = Duration> {
    use backon::BackoffBuilder;
    backon::ExponentialBuilder::new()
        .with_min_delay(Duration::from_millis(20))
        .with_max_delay(Duration::from_millis(500))
        .with_jitter()
        .without_max_times()
        .build()
}

/// Clock exchanges at the start come this fast, so that the first sightings are mapped well.
const SYNC_BURST: (u32, Duration) = (20, Duration::from_millis(10));

#[derive(Clone, Debug)]
pub struct UplinkConfig {
    pub node: String,
    /// `http://host:port` of the collector.
    pub collector: String,
    /// Batches held while the collector is slow or gone.
    pub capacity: usize,
    /// How often the clock is exchanged (and a batch sent even without sightings).
    pub sync_every: Duration,
    pub skew: Skew,
    /// Mutual TLS to the collector, whose address is then `https://`.
    pub tls: Option<crate::mtls::ClientTls>,
}

struct Queue {
    outbox: Outbox,
    last_error: Option<String>,
    /// Since when no collector has answered (from the start until the first connect).
    down_since: Option<std::time::Instant>,
}

pub struct Uplink {
    config: UplinkConfig,
    queue: Arc<Mutex<Queue>>,
    wake: Arc<Notify>,
    task: tokio::task::JoinHandle<()>,
}

impl Uplink {
    /// Starts the sending task on the current tokio runtime, as a new epoch of the node.
    pub fn start(config: UplinkConfig) -> Self {
        let epoch = crate::delivery::random_id();
        let queue = Arc::new(Mutex::new(Queue {
            outbox: Outbox::new(&config.node, epoch, config.capacity),
            last_error: None,
            down_since: Some(std::time::Instant::now()),
        }));
        let wake = Arc::new(Notify::new());
        let task = tokio::spawn(send_loop(config.clone(), queue.clone(), wake.clone()));
        Self {
            config,
            queue,
            wake,
            task,
        }
    }

    /// Queues one batch of sightings (their `t_ns` on this node's clock); never waits.
    pub fn push(&self, mut sightings: Vec<NodeSighting>) {
        for s in &mut sightings {
            s.t_ns = self.config.skew.apply(s.t_ns);
        }
        self.queue.lock().unwrap().outbox.push(sightings);
        self.wake.notify_one();
    }

    /// Queues sightings already on the node's clock (taken over from another uplink).
    pub fn hand_over(&self, sightings: Vec<NodeSighting>) {
        self.queue.lock().unwrap().outbox.push(sightings);
        self.wake.notify_one();
    }

    /// The node's opaque sockets now, for the next batch to carry.
    pub fn set_opaque(&self, sockets: Vec<OpaqueSocket>) {
        self.queue.lock().unwrap().outbox.set_opaque(sockets);
    }

    /// Empties the queue of every sighting the collector has not matched, for another to take.
    pub fn take_unmatched(&self) -> Vec<NodeSighting> {
        self.queue.lock().unwrap().outbox.take_unmatched()
    }

    /// How long no collector has answered; `None` while one does.
    pub fn down_for(&self) -> Option<Duration> {
        self.queue.lock().unwrap().down_since.map(|t| t.elapsed())
    }

    pub fn counters(&self) -> UplinkCounters {
        self.queue.lock().unwrap().outbox.counters
    }

    /// Why the latest connect failed, in one line; `None` once one succeeded.
    pub fn last_error(&self) -> Option<String> {
        self.queue.lock().unwrap().last_error.clone()
    }

    /// Batches the collector does not hold yet.
    pub fn pending(&self) -> usize {
        self.queue.lock().unwrap().outbox.undelivered()
    }

    /// Batches kept: not held yet, or held with matching windows still open.
    pub fn kept(&self) -> usize {
        self.queue.lock().unwrap().outbox.kept()
    }
}

impl Drop for Uplink {
    fn drop(&mut self) {
        self.task.abort();
    }
}

type Client = CollectorClient<tonic::transport::Channel>;

/// One clock exchange, on the node's (skewed) clock, and the collector instance that answered.
async fn exchange(client: &mut Client, config: &UplinkConfig) -> Option<(Exchange, u64)> {
    let t1 = config.skew.apply(monotonic_ns());
    let reply = client
        .sync(SyncRequest {
            node: config.node.clone(),
            t1,
        })
        .await;
    let t4 = config.skew.apply(monotonic_ns());
    let reply = reply.ok()?.into_inner();
    let e = Exchange {
        t1,
        t2: reply.t2,
        t3: reply.t3,
        t4,
    };
    Some((e, reply.instance))
}

/// A client, and the collector instance that answered it.
async fn connect(config: &UplinkConfig) -> anyhow::Result<(Client, u64)> {
    // A collector that accepts and then never answers must not stall the uplink for good.
    let mut endpoint = Endpoint::from_shared(config.collector.clone())?
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(5));
    if let Some(tls) = &config.tls {
        // tonic speaks TLS only to an https:// address and plaintext to any other.
        anyhow::ensure!(
            endpoint.uri().scheme_str() == Some("https"),
            "TLS is configured, so the address must be https://"
        );
        endpoint = endpoint.tls_config(tls.clone().into())?;
    }
    let mut client = CollectorClient::new(endpoint.connect().await?);
    // Connected means answered: a TLS 1.3 client ends its handshake before the collector has
    // checked its certificate, and plaintext HTTP/2 sends before hearing back, so a refused
    // agent would otherwise reconnect at once, forever, each time counted a success.
    let probe = SyncRequest {
        node: config.node.clone(),
        t1: 0,
    };
    let reply = client.sync(probe).await.map_err(|status| {
        // Status's Display pads every line with empty details and metadata; its sources say why.
        let why: Vec<String> =
            std::iter::successors(std::error::Error::source(&status), |e| e.source())
                .map(|e| e.to_string())
                .collect();
        let why = match why.is_empty() {
            true => status.message().to_string(),
            false => why.join(": "),
        };
        // The collector answered, and said no (admission.rs): which node, and why.
        if matches!(
            status.code(),
            tonic::Code::PermissionDenied | tonic::Code::ResourceExhausted
        ) {
            return anyhow::anyhow!("refused: {why}");
        }
        anyhow::anyhow!("no answer: {why}")
    })?;
    Ok((client, reply.into_inner().instance))
}

/// The collector stopped answering: down from now, unless it already was.
fn down(queue: &Mutex<Queue>) {
    (queue.lock().unwrap().down_since).get_or_insert_with(std::time::Instant::now);
}

async fn send_loop(config: UplinkConfig, queue: Arc<Mutex<Queue>>, wake: Arc<Notify>) {
    let mut client: Option<Client> = None;
    let mut delays = reconnect_delays();
    let mut next_sync = tokio::time::Instant::now();
    let mut burst = SYNC_BURST.0;
    // A new collector maps with its own clock: it gets a burst of exchanges, as at the start.
    let answered_by = |instance: u64, burst: &mut u32, next_sync: &mut tokio::time::Instant| {
        if queue.lock().unwrap().outbox.answered_by(instance) {
            *burst = SYNC_BURST.0;
            *next_sync = tokio::time::Instant::now();
        }
    };
    loop {
        tokio::select! {
            _ = wake.notified() => {}
            _ = tokio::time::sleep_until(next_sync) => {}
        }
        // Until the collector holds every batch or is unreachable; exchanges keep their pace
        // while a slow collector keeps the queue from emptying.
        loop {
            let c = match client.as_mut() {
                Some(c) => c,
                None => match connect(&config).await {
                    Ok((c, instance)) => {
                        {
                            let mut q = queue.lock().unwrap();
                            q.outbox.counters.reconnects += 1;
                            q.last_error = None;
                            q.down_since = None;
                        }
                        answered_by(instance, &mut burst, &mut next_sync);
                        delays = reconnect_delays();
                        client.insert(c)
                    }
                    Err(e) => {
                        {
                            let mut q = queue.lock().unwrap();
                            q.outbox.counters.connect_failures += 1;
                            q.last_error =
                                Some(format!("connecting to {}: {e:#}", config.collector));
                        }
                        down(&queue);
                        // Never ends: built without a limit on tries.
                        tokio::time::sleep(delays.next().unwrap_or_default()).await;
                        break;
                    }
                },
            };
            if tokio::time::Instant::now() >= next_sync {
                match exchange(c, &config).await {
                    Some((e, instance)) => {
                        answered_by(instance, &mut burst, &mut next_sync);
                        queue.lock().unwrap().outbox.exchanged(e);
                        let pace = if burst > 0 {
                            burst -= 1;
                            SYNC_BURST.1
                        } else {
                            config.sync_every
                        };
                        next_sync = tokio::time::Instant::now() + pace;
                    }
                    None => {
                        client = None;
                        down(&queue);
                        continue;
                    }
                }
            }
            // Nothing to send: exchanges wait for the next batch.
            let Some(batch) = queue.lock().unwrap().outbox.to_send() else {
                break;
            };
            let seq = batch.seq;
            let ack = c.send(batch).await.ok().map(|a| a.into_inner());
            if !queue.lock().unwrap().outbox.sent(seq, ack.as_ref()) {
                // Sent again once reconnected; the collector drops what it already holds, and a
                // new collector instance refuses batches addressed to the one before.
                client = None;
                down(&queue);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Jittered: two agents whose collector went away at once do not retry in step; bounded:
    /// each delay within [base, 2 × base) of a doubling base capped at 0.5 s.
    #[test]
    fn reconnect_delays_are_jittered_and_bounded() {
        let tries: Vec<Vec<Duration>> = (0..8)
            .map(|_| reconnect_delays().take(12).collect())
            .collect();
        for delays in &tries {
            let mut base = Duration::from_millis(20);
            for d in delays {
                assert!(
                    *d >= base && *d < base * 2,
                    "{d:?} for base {base:?}: {delays:?}"
                );
                base = (base * 2).min(Duration::from_millis(500));
            }
            assert!(delays.iter().all(|d| *d < Duration::from_secs(1)));
        }
        // 8 agents, 12 tries each: if they were in step, every column would hold one value.
        let in_step = (0..12)
            .filter(|&i| tries.iter().all(|t| t[i] == tries[0][i]))
            .count();
        assert_eq!(in_step, 0, "{tries:?}");
    }
}
