//! An agent's link to the collector. The tracing loop hands over sightings without ever
//! waiting: they are batched into a bounded queue, and a background task sends the queue in
//! order until each batch is acknowledged, reconnecting as long as it takes. When the queue is
//! full the oldest batch is dropped and counted; the count travels with every later batch. The
//! same task runs the clock exchanges and ships them with the batches.

use crate::proto::collector_client::CollectorClient;
use crate::proto::{Batch, Exchange, NodeSighting, SyncRequest};
use agent::clock::monotonic_ns;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Notify;
use tonic::transport::Endpoint;

/// A node clock for tests (S9: unsynchronised nodes): the node's times as if its clock were `offset_ns`
/// ahead of the real one at `origin_ns` and ran `ppm` fast since. Production agents use the
/// identity.
#[derive(Clone, Copy, Debug, Default)]
pub struct Skew {
    pub offset_ns: i64,
    pub ppm: f64,
    pub origin_ns: u64,
}

impl Skew {
    pub fn apply(&self, t_ns: u64) -> u64 {
        let drift = (t_ns as f64 - self.origin_ns as f64) * self.ppm * 1e-6;
        (t_ns as f64 + drift + self.offset_ns as f64) as u64
    }
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

/// What the uplink did, for the agent's health line.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UplinkCounters {
    pub batches_sent: u64,
    pub resends: u64,
    pub reconnects: u64,
    /// Connects that failed: collector unreachable, or refusing this agent (see `last_error`).
    pub connect_failures: u64,
    /// Sightings dropped because the queue was full.
    pub lost: u64,
}

#[derive(Default)]
struct Queue {
    batches: VecDeque<Batch>,
    exchanges: Vec<Exchange>,
    next_seq: u64,
    counters: UplinkCounters,
    last_error: Option<String>,
    /// The batch being sent: it may still arrive, so a full queue drops the next oldest.
    in_flight: Option<u64>,
}

pub struct Uplink {
    config: UplinkConfig,
    queue: Arc<Mutex<Queue>>,
    wake: Arc<Notify>,
    task: tokio::task::JoinHandle<()>,
}

impl Uplink {
    /// Starts the sending task on the current tokio runtime.
    pub fn start(config: UplinkConfig) -> Self {
        let queue = Arc::new(Mutex::new(Queue {
            next_seq: 1,
            ..Default::default()
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
        let mut q = self.queue.lock().unwrap();
        if q.batches.len() >= self.config.capacity {
            let sending = q.in_flight.is_some() && q.in_flight == q.batches.front().map(|b| b.seq);
            let oldest = usize::from(sending && q.batches.len() > 1);
            let dropped = q.batches.remove(oldest).expect("capacity is at least 1");
            q.counters.lost += dropped.sightings.len() as u64;
        }
        let seq = q.next_seq;
        q.next_seq += 1;
        q.batches.push_back(Batch {
            node: self.config.node.clone(),
            seq,
            sightings,
            lost: 0,
            exchanges: Vec::new(),
        });
        drop(q);
        self.wake.notify_one();
    }

    pub fn counters(&self) -> UplinkCounters {
        self.queue.lock().unwrap().counters
    }

    /// Why the latest connect failed, in one line; `None` once one succeeded.
    pub fn last_error(&self) -> Option<String> {
        self.queue.lock().unwrap().last_error.clone()
    }

    /// Batches not yet acknowledged.
    pub fn pending(&self) -> usize {
        self.queue.lock().unwrap().batches.len()
    }
}

impl Drop for Uplink {
    fn drop(&mut self) {
        self.task.abort();
    }
}

type Client = CollectorClient<tonic::transport::Channel>;

/// One clock exchange, on the node's (skewed) clock.
async fn exchange(client: &mut Client, config: &UplinkConfig) -> Option<Exchange> {
    let t1 = config.skew.apply(monotonic_ns());
    let reply = client
        .sync(SyncRequest {
            node: config.node.clone(),
            t1,
        })
        .await;
    let t4 = config.skew.apply(monotonic_ns());
    let reply = reply.ok()?.into_inner();
    Some(Exchange {
        t1,
        t2: reply.t2,
        t3: reply.t3,
        t4,
    })
}

async fn connect(config: &UplinkConfig) -> anyhow::Result<Client> {
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
    client.sync(probe).await.map_err(|status| {
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
    Ok(client)
}

async fn send_loop(config: UplinkConfig, queue: Arc<Mutex<Queue>>, wake: Arc<Notify>) {
    let mut client: Option<Client> = None;
    let mut backoff = Duration::from_millis(20);
    let mut next_sync = tokio::time::Instant::now();
    let mut burst = SYNC_BURST.0;
    let mut highest_sent = 0;
    loop {
        tokio::select! {
            _ = wake.notified() => {}
            _ = tokio::time::sleep_until(next_sync) => {}
        }
        // Until the queue is empty or the collector unreachable; exchanges keep their pace
        // while a slow collector keeps the queue from emptying.
        loop {
            let c = match client.as_mut() {
                Some(c) => c,
                None => match connect(&config).await {
                    Ok(c) => {
                        {
                            let mut q = queue.lock().unwrap();
                            q.counters.reconnects += 1;
                            q.last_error = None;
                        }
                        backoff = Duration::from_millis(20);
                        client.insert(c)
                    }
                    Err(e) => {
                        {
                            let mut q = queue.lock().unwrap();
                            q.counters.connect_failures += 1;
                            q.last_error =
                                Some(format!("connecting to {}: {e:#}", config.collector));
                        }
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(Duration::from_secs(1));
                        break;
                    }
                },
            };
            if tokio::time::Instant::now() >= next_sync {
                match exchange(c, &config).await {
                    Some(e) => {
                        queue.lock().unwrap().exchanges.push(e);
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
                        continue;
                    }
                }
            }
            let batch = {
                let mut q = queue.lock().unwrap();
                let (lost, exchanges) = (q.counters.lost, std::mem::take(&mut q.exchanges));
                let Some(b) = q.batches.front_mut() else {
                    // Nothing to send: exchanges wait for the next batch.
                    q.exchanges = exchanges;
                    break;
                };
                b.lost = lost;
                b.exchanges.extend(exchanges);
                let b = b.clone();
                q.in_flight = Some(b.seq);
                b
            };
            let acked =
                matches!(c.send(batch.clone()).await, Ok(a) if a.get_ref().seq == batch.seq);
            let mut q = queue.lock().unwrap();
            q.in_flight = None;
            if batch.seq <= highest_sent {
                q.counters.resends += 1;
            }
            highest_sent = highest_sent.max(batch.seq);
            if !acked {
                // Sent again once reconnected; the collector drops what it already holds.
                client = None;
                continue;
            }
            q.counters.batches_sent += 1;
            if q.batches.front().is_some_and(|b| b.seq == batch.seq) {
                q.batches.pop_front();
            }
        }
    }
}
