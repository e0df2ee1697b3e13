//! The objects of a set of manifests, each parsed into its k8s-openapi type, and failing on
//! any field the type does not know.

use k8s_openapi::api::apps::v1::{DaemonSet, StatefulSet};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Service, ServiceAccount};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use k8s_openapi::serde::de::DeserializeOwned;
use k8s_openapi::serde::Serialize;
use serde_json::Value;
use std::collections::BTreeSet;

/// `value` as `T`, which must give back exactly `value` when serialized. k8s-openapi's
/// deserializers skip fields they do not know, so a misspelled or misplaced field would
/// otherwise vanish without a word (and the API server would drop it too).
fn exact<T: DeserializeOwned + Serialize>(what: &str, value: &Value) -> T {
    let typed: T = serde_json::from_value(value.clone())
        .unwrap_or_else(|e| panic!("{what}: does not parse as its kind: {e}"));
    let back = serde_json::to_value(&typed).unwrap();
    if &back != value {
        panic!(
            "{what}: fields the Kubernetes type does not have (or values it reads differently):\n{}",
            differences(value, &back, "").join("\n")
        );
    }
    typed
}

/// Where `a` (the manifest) and `b` (its typed round trip) differ, as JSON paths.
pub fn differences(a: &Value, b: &Value, path: &str) -> Vec<String> {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let keys: BTreeSet<&String> = x.keys().chain(y.keys()).collect();
            keys.into_iter()
                .flat_map(|k| match (x.get(k), y.get(k)) {
                    (Some(u), Some(v)) => differences(u, v, &format!("{path}/{k}")),
                    (Some(_), None) => vec![format!("  {path}/{k}: unknown field, dropped")],
                    (None, Some(_)) => vec![format!("  {path}/{k}: added by the type")],
                    (None, None) => unreachable!(),
                })
                .collect()
        }
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => x
            .iter()
            .zip(y)
            .enumerate()
            .flat_map(|(i, (u, v))| differences(u, v, &format!("{path}/{i}")))
            .collect(),
        _ if a == b => vec![],
        _ => vec![format!("  {path}: {a} read as {b}")],
    }
}

/// The objects of a set of manifests, each parsed into its k8s-openapi type.
#[derive(Default)]
pub struct Objects {
    pub namespaces: Vec<Namespace>,
    pub config_maps: Vec<ConfigMap>,
    pub service_accounts: Vec<ServiceAccount>,
    pub cluster_roles: Vec<ClusterRole>,
    pub cluster_role_bindings: Vec<ClusterRoleBinding>,
    pub daemon_sets: Vec<DaemonSet>,
    pub stateful_sets: Vec<StatefulSet>,
    pub services: Vec<Service>,
    pub network_policies: Vec<NetworkPolicy>,
    /// cert-manager's Issuers and Certificates (no k8s-openapi type: checked as JSON).
    pub cert_manager: Vec<Value>,
}

impl Objects {
    /// The objects of `docs`, as (file name, JSON).
    pub fn parse(docs: &[(String, Value)]) -> Objects {
        let mut objects = Objects::default();
        for (file, doc) in docs {
            objects.add(file, doc);
        }
        objects
    }

    /// Adds one document; a kind this deployment does not use fails.
    fn add(&mut self, what: &str, doc: &Value) {
        let api_version = doc["apiVersion"].as_str().unwrap_or_default();
        let kind = doc["kind"].as_str().unwrap_or_default();
        match (api_version, kind) {
            ("v1", "Namespace") => self.namespaces.push(exact(what, doc)),
            ("v1", "ConfigMap") => self.config_maps.push(exact(what, doc)),
            ("v1", "ServiceAccount") => self.service_accounts.push(exact(what, doc)),
            ("v1", "Service") => self.services.push(exact(what, doc)),
            ("rbac.authorization.k8s.io/v1", "ClusterRole") => {
                self.cluster_roles.push(exact(what, doc))
            }
            ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding") => {
                self.cluster_role_bindings.push(exact(what, doc))
            }
            ("apps/v1", "DaemonSet") => self.daemon_sets.push(exact(what, doc)),
            ("apps/v1", "StatefulSet") => self.stateful_sets.push(exact(what, doc)),
            ("networking.k8s.io/v1", "NetworkPolicy") => {
                self.network_policies.push(exact(what, doc))
            }
            ("cert-manager.io/v1", "Issuer" | "Certificate") => self.cert_manager.push(doc.clone()),
            other => panic!("{what}: unexpected kind {other:?}"),
        }
    }

    pub fn one<'a, T>(items: &'a [T], kind: &str) -> &'a T {
        assert_eq!(items.len(), 1, "expected exactly one {kind}");
        &items[0]
    }

    pub fn daemon_set(&self) -> &DaemonSet {
        Self::one(&self.daemon_sets, "DaemonSet")
    }

    pub fn stateful_set(&self) -> &StatefulSet {
        Self::one(&self.stateful_sets, "StatefulSet")
    }

    pub fn service(&self) -> &Service {
        Self::one(&self.services, "Service")
    }

    pub fn network_policy(&self) -> &NetworkPolicy {
        Self::one(&self.network_policies, "NetworkPolicy")
    }

    /// The cert-manager object of `kind` named `name`.
    pub fn cert_manager(&self, kind: &str, name: &str) -> &Value {
        self.cert_manager
            .iter()
            .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
            .unwrap_or_else(|| panic!("no {kind} {name}"))
    }

    pub fn config_map(&self) -> &ConfigMap {
        Self::one(&self.config_maps, "ConfigMap")
    }
}
