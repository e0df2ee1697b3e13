//! An agent's link to the collector. The tracing loop hands over sightings without ever
//! waiting: they are batched into a bounded queue, and a background task sends the queue in
//! order until each batch is acknowledged, reconnecting as long as it takes. When the queue is
//! full the oldest batch is dropped and counted; the count travels with every later batch. The
//! same task runs the clock exchanges and ships them with the batches.

use crate::proto::collector_client::CollectorClient;
use crate::proto::{Batch, Exchange, Sighting, SyncRequest};
use harness::truth::monotonic_ns;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Notify;

/// A node clock for tests (BRIEF §6, S9): the node's times as if its clock ran `ppm` fast and
/// `offset_ns` ahead of the real one. Production agents use the identity.
#[derive(Clone, Copy, Debug, Default)]
pub struct Skew {
    pub offset_ns: i64,
    pub ppm: f64,
}

impl Skew {
    pub fn apply(&self, t_ns: u64) -> u64 {
        (t_ns as f64 * (1.0 + self.ppm * 1e-6) + self.offset_ns as f64) as u64
    }
}

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
}

/// What the uplink did, for the agent's health line.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UplinkCounters {
    pub batches_sent: u64,
    pub resends: u64,
    pub reconnects: u64,
    /// Sightings dropped because the queue was full.
    pub lost: u64,
}

#[derive(Default)]
struct Queue {
    batches: VecDeque<Batch>,
    exchanges: Vec<Exchange>,
    next_seq: u64,
    counters: UplinkCounters,
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
    pub fn push(&self, mut sightings: Vec<Sighting>) {
        for s in &mut sightings {
            s.t_ns = self.config.skew.apply(s.t_ns);
        }
        let mut q = self.queue.lock().unwrap();
        if q.batches.len() >= self.config.capacity {
            let dropped = q.batches.pop_front().expect("capacity is at least 1");
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

async fn send_loop(config: UplinkConfig, queue: Arc<Mutex<Queue>>, wake: Arc<Notify>) {
    let mut client: Option<Client> = None;
    let mut backoff = Duration::from_millis(20);
    let mut sync = tokio::time::interval(config.sync_every);
    let mut sync_due = true;
    let mut highest_sent = 0;
    loop {
        tokio::select! {
            _ = wake.notified() => {}
            _ = sync.tick() => sync_due = true,
        }
        // Until the queue is empty or the collector unreachable.
        loop {
            let c = match client.as_mut() {
                Some(c) => c,
                None => match CollectorClient::connect(config.collector.clone()).await {
                    Ok(c) => {
                        queue.lock().unwrap().counters.reconnects += 1;
                        backoff = Duration::from_millis(20);
                        client.insert(c)
                    }
                    Err(_) => {
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(Duration::from_secs(1));
                        break;
                    }
                },
            };
            if sync_due {
                match exchange(c, &config).await {
                    Some(e) => {
                        queue.lock().unwrap().exchanges.push(e);
                        sync_due = false;
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
                b.clone()
            };
            let acked =
                matches!(c.send(batch.clone()).await, Ok(a) if a.get_ref().seq == batch.seq);
            let mut q = queue.lock().unwrap();
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
