//! What a variant's fixture (tests/fixtures/manifests/<variant>.yaml) says it must hold beyond
//! the checks every variant passes. Unknown fields fail, so that a misspelt expectation cannot
//! silently check nothing.

use k8s_openapi::serde::Deserialize;
use std::path::Path;

#[derive(Deserialize)]
#[serde(crate = "k8s_openapi::serde", deny_unknown_fields)]
pub struct Expected {
    pub agent: ExpectedAgent,
    pub collector: ExpectedCollector,
    /// Who may reach the collector's metrics port.
    pub scraper: Scraper,
    /// An overlay's changes to the base's objects; it must change nothing else.
    #[serde(default)]
    pub changes: Vec<Change>,
    /// The objects an overlay adds to the base's, in its files' order.
    #[serde(default)]
    pub added: Vec<Added>,
}

/// The pods the NetworkPolicy lets scrape the metrics port: these labels, in that namespace.
#[derive(Deserialize)]
#[serde(crate = "k8s_openapi::serde", deny_unknown_fields)]
pub struct Scraper {
    pub namespace: String,
    pub pod_labels: std::collections::BTreeMap<String, String>,
}

#[derive(Deserialize, Debug, PartialEq)]
#[serde(crate = "k8s_openapi::serde", deny_unknown_fields)]
pub struct Added {
    pub kind: String,
    pub name: String,
}

#[derive(Deserialize)]
#[serde(crate = "k8s_openapi::serde", deny_unknown_fields)]
pub struct ExpectedAgent {
    /// Exactly the capabilities added after dropping ALL.
    pub capabilities: Vec<String>,
    /// The `--collector` URLs: every collector replica, in the config's order.
    pub collectors: Vec<String>,
    pub tls: Option<SecretFiles>,
}

#[derive(Deserialize)]
#[serde(crate = "k8s_openapi::serde", deny_unknown_fields)]
pub struct ExpectedCollector {
    pub tls: Option<SecretFiles>,
}

/// Where the TLS flags' files come from: one Secret volume, mounted read-only.
#[derive(Deserialize)]
#[serde(crate = "k8s_openapi::serde", deny_unknown_fields)]
pub struct SecretFiles {
    pub secret: String,
    /// The keys the CA, certificate and key flags name, in that order (the agent's, with the
    /// downward API's node name taken as `node-0`).
    pub keys: Vec<String>,
    pub default_mode: i32,
}

/// A subtree of one kind of object that an overlay replaces, adds or removes.
#[derive(Deserialize)]
#[serde(crate = "k8s_openapi::serde", deny_unknown_fields)]
pub struct Change {
    pub kind: String,
    /// A JSON pointer into the object.
    pub path: String,
}

impl Expected {
    pub fn load(fixture: &str) -> Expected {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/manifests")
            .join(fixture);
        let text =
            std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        serde_saphyr::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }
}
