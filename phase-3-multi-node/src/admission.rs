//! Which nodes the collector takes clock exchanges and batches from. Over mutual TLS a node is
//! who its client certificate says: the certificate's first DNS subjectAltName must be the
//! `node` the request claims, so an agent cannot speak for another node. With or without TLS,
//! at most `max_nodes` distinct node names are admitted, so that invented names cannot grow the
//! per-node state and Prometheus series without bound. Refusals are counted by reason, never by
//! the name claimed (a series per invented name is what the limit is there to prevent).

use openssl::x509::X509;
use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
use tonic::{Request, Status};

/// Far above any cluster this runs on, far below what would exhaust the collector.
pub const DEFAULT_MAX_NODES: usize = 1000;

/// Why a request was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The claimed node is not the client certificate's (or the certificate names none).
    NodeMismatch,
    /// A node beyond the `max_nodes` first ones.
    NodeLimit,
}

impl Refusal {
    pub const ALL: [Refusal; 2] = [Refusal::NodeMismatch, Refusal::NodeLimit];

    /// Its name in the health line and the `reason` label.
    pub fn reason(self) -> &'static str {
        match self {
            Refusal::NodeMismatch => "node_mismatch",
            Refusal::NodeLimit => "node_limit",
        }
    }
}

/// A refused request: why, and the one line the agent is told.
#[derive(Debug)]
pub struct Refused {
    pub why: Refusal,
    pub message: String,
}

impl From<Refused> for Status {
    fn from(refused: Refused) -> Self {
        match refused.why {
            Refusal::NodeMismatch => Status::permission_denied(refused.message),
            Refusal::NodeLimit => Status::resource_exhausted(refused.message),
        }
    }
}

#[derive(Default)]
struct Admitted {
    nodes: HashSet<String>,
    /// Per [`Refusal::ALL`].
    refused: [u64; 2],
}

impl Admitted {
    fn refuse(&mut self, why: Refusal, message: String) -> Result<(), Refused> {
        self.refused[why as usize] += 1;
        Err(Refused { why, message })
    }
}

/// The nodes admitted so far and the refusals; clones share them.
#[derive(Clone)]
pub struct Admission {
    max_nodes: usize,
    admitted: Arc<Mutex<Admitted>>,
}

impl Default for Admission {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_NODES)
    }
}

impl Admission {
    pub fn new(max_nodes: usize) -> Self {
        Self {
            max_nodes,
            admitted: Arc::default(),
        }
    }

    /// Admits a request claiming to come from `node`: over TLS only from the node its client
    /// certificate names, and only while `node` is one of the first `max_nodes` names seen.
    /// The error becomes the gRPC status to answer with.
    pub fn check<T>(&self, request: &Request<T>, node: &str) -> Result<(), Refused> {
        let tls = request.extensions().get::<TlsConnectInfo<TcpConnectInfo>>();
        let certified = tls.map(|info| match info.peer_certs() {
            Some(chain) if !chain.is_empty() => certificate_node(&chain[0]),
            _ => Err("no client certificate".to_string()),
        });
        self.admit(node, certified)
    }

    /// `certified`: `None` in plaintext (nobody vouches for the name), else the node the
    /// client certificate names or why it names none.
    fn admit(
        &self,
        claimed: &str,
        certified: Option<Result<String, String>>,
    ) -> Result<(), Refused> {
        let mut admitted = self.admitted.lock().unwrap();
        match certified {
            None => {}
            Some(Ok(node)) if node == claimed => {}
            Some(identity) => {
                let why = match identity {
                    Ok(node) => format!("the client certificate is node {node:?}'s"),
                    Err(why) => why,
                };
                let message = format!("node {claimed:?} is not this agent's: {why}");
                return admitted.refuse(Refusal::NodeMismatch, message);
            }
        }
        if !admitted.nodes.contains(claimed) {
            if admitted.nodes.len() >= self.max_nodes {
                let message = format!(
                    "node {claimed:?} is one too many: the collector admits {} nodes (--max-nodes)",
                    self.max_nodes
                );
                return admitted.refuse(Refusal::NodeLimit, message);
            }
            admitted.nodes.insert(claimed.to_string());
        }
        Ok(())
    }

    /// Requests refused so far, per reason.
    pub fn refused(&self) -> [(Refusal, u64); 2] {
        let refused = self.admitted.lock().unwrap().refused;
        Refusal::ALL.map(|why| (why, refused[why as usize]))
    }
}

/// The node a client certificate (DER) names: its first DNS subjectAltName. Not the CN, which
/// webpki ignores too, and which certificate tools fill with anything.
pub fn certificate_node(der: &[u8]) -> Result<String, String> {
    let cert = X509::from_der(der).map_err(|_| "the client certificate does not parse")?;
    cert.subject_alt_names()
        .iter()
        .flatten()
        .find_map(|name| name.dnsname().map(str::to_string))
        .ok_or_else(|| "the client certificate has no DNS subjectAltName naming its node".into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Code;

    #[test]
    fn a_certificate_speaks_only_for_its_node() {
        let admission = Admission::new(10);
        let own = || Some(Ok("node-a".to_string()));
        assert!(admission.admit("node-a", own()).is_ok());
        let refused = Status::from(admission.admit("node-b", own()).unwrap_err());
        assert_eq!(refused.code(), Code::PermissionDenied);
        assert_eq!(
            refused.message(),
            r#"node "node-b" is not this agent's: the client certificate is node "node-a"'s"#
        );
        let nameless = admission.admit("node-a", Some(Err("no name".into())));
        assert_eq!(nameless.unwrap_err().why, Refusal::NodeMismatch);
        let counts = admission.refused();
        assert_eq!(
            counts,
            [(Refusal::NodeMismatch, 2), (Refusal::NodeLimit, 0)]
        );
    }

    #[test]
    fn nodes_beyond_the_limit_are_refused_and_known_ones_still_admitted() {
        let admission = Admission::new(2);
        for node in ["a", "b", "a", "b"] {
            assert!(admission.admit(node, None).is_ok(), "{node}");
        }
        let refused = Status::from(admission.admit("c\nd", None).unwrap_err());
        assert_eq!(refused.code(), Code::ResourceExhausted);
        assert_eq!(
            refused.message(),
            r#"node "c\nd" is one too many: the collector admits 2 nodes (--max-nodes)"#
        );
        assert!(admission.admit("a", None).is_ok());
        // A mismatch is refused before it can take a place.
        let _ = admission.admit("e", Some(Ok("f".into())));
        assert_eq!(
            admission.refused(),
            [(Refusal::NodeMismatch, 1), (Refusal::NodeLimit, 1)]
        );
    }
}
