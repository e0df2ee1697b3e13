//! What a component is told (its [`Spec`], JSON written by the runner): its role, and each
//! link end's transport, framing and syscall family.

use serde::{Deserialize, Serialize};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Transport {
    Fifo(PathBuf),
    /// The reader binds an ephemeral port on `ip` (loopback, or its node's address when the
    /// writer is on another node) and writes it to `port_file` (the runner does, when the
    /// reader is an external component); the writer connects there. With `tls`, the reader
    /// serves TLS with that PEM file (key and self-signed certificate) and the writer accepts
    /// any certificate: a test link, encrypted for real. With `service`, the writer connects
    /// there instead, once the port is written: a Service's ClusterIP:port, which the writer's
    /// node translates to the reader (`crate::service`).
    Tcp {
        ip: IpAddr,
        port_file: PathBuf,
        tls: Option<PathBuf>,
        service: Option<SocketAddr>,
    },
    Unix(PathBuf),
    /// A TCP connection to the NATS broker listening on the IPv4 loopback port in `port_file`:
    /// both ends connect to it.
    Nats {
        port_file: PathBuf,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Framing {
    /// A header line of `header_len` bytes, then one call's PCM.
    Stream { header_len: usize },
    /// Envelopes carrying at most `max_payload` bytes of one call's audio each.
    Envelope { max_payload: usize },
    /// NATS messages (`PUB` written, `MSG` read) carrying at most `max_payload` bytes of one
    /// call's audio each; the writer ends with a message on `audio.end`.
    Nats { max_payload: usize },
}

/// The syscall family an end uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum IoCall {
    /// write / read
    Plain,
    /// writev / readv
    Vector,
    /// sendto / recvfrom
    Socket,
    /// sendmsg / recvmsg
    Message,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct End {
    pub link: String,
    pub transport: Transport,
    pub framing: Framing,
    pub call: IoCall,
    /// Bytes per write (stream framing writes only whole chunks until the end).
    pub chunk: usize,
}

/// Which outputs a relay sends a call to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Route {
    /// Output i gets what input i brought.
    Same,
    /// Output 0 gets everything (merge / multiplex).
    First,
    /// Output `call % outputs` (demultiplex).
    ByCall,
    /// Outputs 2i and 2i + 1 get what input i brought (fan-out to two consumers per link).
    Pairs,
    /// Every output gets everything (a broker's subscribers).
    All,
}

impl Route {
    pub fn outputs(self, input: usize, call: u32, n: usize) -> Vec<usize> {
        match self {
            Route::Same => vec![input],
            Route::First => vec![0],
            Route::ByCall => vec![call as usize % n],
            Route::Pairs => vec![2 * input, 2 * input + 1],
            Route::All => (0..n).collect(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SourceCall {
    pub call: u32,
    pub wav: PathBuf,
    pub output: usize,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Role {
    /// Sends its calls' audio paced in (scaled) real time.
    Source {
        calls: Vec<SourceCall>,
        speed: f64,
    },
    /// Holds each read, then sends its audio on by `route`.
    Relay {
        hold_us: u64,
        route: Route,
    },
    Sink,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Spec {
    /// Component name; its comm becomes `hx-<name>`.
    pub name: String,
    pub truth: PathBuf,
    /// Created once every link is set up.
    pub ready: PathBuf,
    /// Nothing is read or written before this exists (the tracer is attached by then, so no
    /// call is already in flight when it starts).
    pub go: PathBuf,
    pub role: Role,
    pub inputs: Vec<End>,
    pub outputs: Vec<End>,
}
