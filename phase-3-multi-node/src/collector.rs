//! The collector's receiving side: clock exchanges answered with its own monotonic clock, each
//! node's batches taken once (a resend of a batch it holds is acknowledged and dropped), each
//! node's clock model fed with the exchanges that ride with the batches, and every sighting
//! mapped onto the collector's clock with its error bound.

use crate::clock::{ClockModel, Exchange as ClockExchange};
use crate::proto::collector_server::{Collector, CollectorServer};
use crate::proto::{Ack, Batch, Sighting, SyncReply, SyncRequest};
use harness::truth::monotonic_ns;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use tonic::{Request, Response, Status};

/// Clock window and slices of every node's model.
const CLOCK_WINDOW_NS: u64 = 30_000_000_000;
const CLOCK_SLICES: usize = 16;

/// A sighting as the collector holds it: the node's, and its time on the collector's clock.
#[derive(Clone, Debug)]
pub struct Received {
    pub node: String,
    pub sighting: Sighting,
    /// `None` until the node's clock model has two exchanges.
    pub mapped: Option<(u64, u64)>,
}

pub struct Node {
    /// Highest batch sequence taken.
    pub last_seq: u64,
    /// Sightings the node reported dropping (its queue was full).
    pub lost: u64,
    pub duplicates: u64,
    pub clock: ClockModel,
}

#[derive(Default)]
pub struct State {
    pub nodes: HashMap<String, Node>,
    pub received: Vec<Received>,
}

#[derive(Clone, Default)]
pub struct Service {
    pub state: Arc<Mutex<State>>,
}

#[tonic::async_trait]
impl Collector for Service {
    async fn sync(&self, _: Request<SyncRequest>) -> Result<Response<SyncReply>, Status> {
        let t2 = monotonic_ns();
        Ok(Response::new(SyncReply {
            t2,
            t3: monotonic_ns(),
        }))
    }

    async fn send(&self, request: Request<Batch>) -> Result<Response<Ack>, Status> {
        let batch = request.into_inner();
        let mut state = self.state.lock().unwrap();
        let State { nodes, received } = &mut *state;
        let node = nodes.entry(batch.node.clone()).or_insert_with(|| Node {
            last_seq: 0,
            lost: 0,
            duplicates: 0,
            clock: ClockModel::new(CLOCK_WINDOW_NS, CLOCK_SLICES),
        });
        if batch.seq <= node.last_seq {
            node.duplicates += 1;
        } else {
            node.last_seq = batch.seq;
            node.lost = node.lost.max(batch.lost);
            for e in &batch.exchanges {
                node.clock.add(ClockExchange {
                    t1: e.t1,
                    t2: e.t2,
                    t3: e.t3,
                    t4: e.t4,
                });
            }
            for s in batch.sightings {
                received.push(Received {
                    node: batch.node.clone(),
                    mapped: node.clock.map(s.t_ns),
                    sighting: s,
                });
            }
        }
        Ok(Response::new(Ack { seq: batch.seq }))
    }
}

/// Serves `service` on `addr` until `shutdown` resolves.
pub async fn serve(
    service: Service,
    addr: SocketAddr,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    tonic::transport::Server::builder()
        .add_service(CollectorServer::new(service))
        .serve_with_shutdown(addr, shutdown)
        .await?;
    Ok(())
}
