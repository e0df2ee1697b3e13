//! The Kubernetes manifests under deploy/: every document parses as its k8s-openapi type and
//! loses no field doing so, and the deployment has the properties its comments and
//! deploy/README.md promise. The agent is least privilege (the exact capability set, read-only
//! mounts). RBAC grants only reading pods. The collector has no privilege. The flags parse
//! (phase 3's clap definitions) and agree with the Service and the ConfigMap. The overlays'
//! patches apply: mtls wires the certificates, sys-admin adds CAP_SYS_ADMIN and nothing else.
//! When `kubectl` is on PATH, its kustomize renders the same objects.

use clap::Parser;
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::core::v1::{
    ConfigMap, Container, Namespace, PodSpec, Service, ServiceAccount, Volume,
};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use k8s_openapi::serde::de::DeserializeOwned;
use k8s_openapi::serde::Serialize;
use serde_json::Value;
use shared::FingerprintConfig;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

const NAMESPACE: &str = "audio-tracer";
/// The capabilities the agent adds after dropping ALL, each explained in agent-daemonset.yaml
/// and deploy/README.md.
const AGENT_CAPABILITIES: [&str; 4] = ["BPF", "PERFMON", "SYS_PTRACE", "DAC_READ_SEARCH"];
/// What deploy/overlays/sys-admin adds to them (uprobes since CVE-2025-38466's fix, setns).
const SYS_ADMIN: &str = "SYS_ADMIN";
/// The overlays under deploy/overlays, each tested below.
const OVERLAYS: [&str; 2] = ["mtls", "sys-admin"];
/// The host paths the agent mounts, all read-only.
const AGENT_HOST_PATHS: [&str; 3] = ["/sys/kernel/tracing", "/sys/kernel/btf", "/sys/fs/cgroup"];

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy")
}

fn base_dir() -> PathBuf {
    deploy_dir().join("base")
}

fn overlay_dir(name: &str) -> PathBuf {
    deploy_dir().join("overlays").join(name)
}

/// The documents of a YAML file as JSON values, which is what kubectl turns YAML into before
/// decoding it. Empty documents are skipped.
fn yaml_docs(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_saphyr::from_multiple::<Value>(&text)
        .unwrap_or_else(|e| panic!("{}: not YAML: {e}", path.display()))
}

/// The YAML files of `dir`, by file name.
fn yaml_files(dir: &Path) -> BTreeSet<String> {
    std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with(".yaml") || n.ends_with(".yml"))
        .collect()
}

/// Every file of `dir` (not only YAML), by name.
fn all_files(dir: &Path) -> BTreeSet<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect()
}

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
fn differences(a: &Value, b: &Value, path: &str) -> Vec<String> {
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
struct Objects {
    namespaces: Vec<Namespace>,
    config_maps: Vec<ConfigMap>,
    service_accounts: Vec<ServiceAccount>,
    cluster_roles: Vec<ClusterRole>,
    cluster_role_bindings: Vec<ClusterRoleBinding>,
    daemon_sets: Vec<DaemonSet>,
    deployments: Vec<Deployment>,
    services: Vec<Service>,
}

impl Objects {
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
            ("apps/v1", "Deployment") => self.deployments.push(exact(what, doc)),
            other => panic!("{what}: unexpected kind {other:?}"),
        }
    }

    fn one<'a, T>(items: &'a [T], kind: &str) -> &'a T {
        assert_eq!(items.len(), 1, "expected exactly one {kind}");
        &items[0]
    }

    fn daemon_set(&self) -> &DaemonSet {
        Self::one(&self.daemon_sets, "DaemonSet")
    }

    fn deployment(&self) -> &Deployment {
        Self::one(&self.deployments, "Deployment")
    }

    fn service(&self) -> &Service {
        Self::one(&self.services, "Service")
    }

    fn config_map(&self) -> &ConfigMap {
        Self::one(&self.config_maps, "ConfigMap")
    }
}

/// deploy/base: one object per file, as (file name, JSON) in file-name order.
fn base_docs() -> Vec<(String, Value)> {
    let mut docs = Vec::new();
    for file in yaml_files(&base_dir()) {
        if file == "kustomization.yaml" {
            continue;
        }
        let mut in_file = yaml_docs(&base_dir().join(&file));
        assert_eq!(in_file.len(), 1, "{file}: one object per file");
        docs.push((file, in_file.remove(0)));
    }
    docs
}

fn objects(docs: &[(String, Value)]) -> Objects {
    let mut objects = Objects::default();
    for (file, doc) in docs {
        objects.add(file, doc);
    }
    objects
}

fn kustomization(dir: &Path) -> Value {
    let mut docs = yaml_docs(&dir.join("kustomization.yaml"));
    assert_eq!(docs.len(), 1);
    let k = docs.remove(0);
    assert_eq!(k["apiVersion"], "kustomize.config.k8s.io/v1beta1");
    assert_eq!(k["kind"], "Kustomization");
    k
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap_or_else(|| panic!("not a list: {v}"))
        .iter()
        .map(|s| s.as_str().unwrap().to_string())
        .collect()
}

fn pod_spec_ds(ds: &DaemonSet) -> &PodSpec {
    ds.spec.as_ref().unwrap().template.spec.as_ref().unwrap()
}

fn pod_spec_dep(d: &Deployment) -> &PodSpec {
    d.spec.as_ref().unwrap().template.spec.as_ref().unwrap()
}

fn only_container<'a>(spec: &'a PodSpec, name: &str) -> &'a Container {
    assert_eq!(spec.containers.len(), 1, "one container");
    assert!(spec.init_containers.is_none(), "no init containers");
    let c = &spec.containers[0];
    assert_eq!(c.name, name);
    c
}

/// The container's command line, with `$(VAR)` references replaced by what `vars` gives, as
/// the kubelet does (a reference to an undefined variable stays verbatim there: here it fails).
fn command_line(c: &Container, vars: &BTreeMap<String, String>) -> Vec<String> {
    let words = c.command.iter().flatten().chain(c.args.iter().flatten());
    words
        .map(|w| {
            let mut out = String::new();
            let mut rest = w.as_str();
            while let Some(at) = rest.find("$(") {
                out.push_str(&rest[..at]);
                let end = rest[at..]
                    .find(')')
                    .unwrap_or_else(|| panic!("unclosed $( in {w:?}"))
                    + at;
                let var = &rest[at + 2..end];
                out.push_str(
                    vars.get(var)
                        .unwrap_or_else(|| panic!("{w:?} refers to ${var}, which is not in env")),
                );
                rest = &rest[end + 1..];
            }
            out.push_str(rest);
            out
        })
        .collect()
}

/// The value each env var of `c` takes: literal values, ConfigMap keys looked up in `objects`,
/// and the downward API's spec.nodeName as `node-0`.
fn env_values(c: &Container, objects: &Objects) -> BTreeMap<String, String> {
    let mut vars = BTreeMap::new();
    for e in c.env.iter().flatten() {
        let value = match (&e.value, &e.value_from) {
            (Some(v), None) => v.clone(),
            (None, Some(from)) => {
                if let Some(f) = &from.field_ref {
                    assert_eq!(
                        f.field_path, "spec.nodeName",
                        "{}: unexpected field",
                        e.name
                    );
                    "node-0".to_string()
                } else if let Some(k) = &from.config_map_key_ref {
                    let cm = objects
                        .config_maps
                        .iter()
                        .find(|cm| cm.metadata.name.as_deref() == Some(k.name.as_str()))
                        .unwrap_or_else(|| panic!("{}: no ConfigMap {}", e.name, k.name));
                    assert_ne!(k.optional, Some(true), "{}: a required key", e.name);
                    cm.data
                        .as_ref()
                        .and_then(|d| d.get(&k.key))
                        .unwrap_or_else(|| {
                            panic!("{}: ConfigMap {} has no {}", e.name, k.name, k.key)
                        })
                        .clone()
                } else {
                    panic!("{}: unexpected valueFrom", e.name)
                }
            }
            _ => panic!("{}: a value or a valueFrom", e.name),
        };
        vars.insert(e.name.clone(), value);
    }
    vars
}

/// Phase 4's agent flags: phase 3's and the Kubernetes target selection.
#[derive(Parser)]
struct AgentCli {
    #[command(flatten)]
    args: phase_4_k8s::cli::PodAgentArgs,
}

#[derive(Parser)]
struct CollectorCli {
    #[command(flatten)]
    args: phase_3_multi_node::cli::CollectorArgs,
}

/// Phase 3's agent flags, and the Kubernetes target selection flags given.
fn parse_agent(line: &[String]) -> (phase_3_multi_node::cli::AgentArgs, BTreeMap<String, String>) {
    assert_eq!(line[..2], ["phase-4-k8s", "agent"], "{line:?}");
    let mut rest = vec!["agent".to_string()];
    rest.extend(line[2..].iter().cloned());
    let cli = AgentCli::try_parse_from(&rest).unwrap_or_else(|e| panic!("{line:?}:\n{e}"));
    let targets = [
        ("--namespace", cli.args.namespace),
        ("--selector", cli.args.selector),
        ("--container", cli.args.container),
    ]
    .into_iter()
    .filter_map(|(flag, v)| Some((flag.to_string(), v?)))
    .collect();
    (cli.args.agent, targets)
}

fn parse_collector(line: &[String]) -> phase_3_multi_node::cli::CollectorArgs {
    assert_eq!(line[..2], ["phase-4-k8s", "collector"], "{line:?}");
    let mut rest = vec!["collector".to_string()];
    rest.extend(line[2..].iter().cloned());
    CollectorCli::try_parse_from(&rest)
        .unwrap_or_else(|e| panic!("{line:?}:\n{e}"))
        .args
}

/// The volume a mount of `c` at exactly `path` comes from, and whether the mount is read-only.
fn mounted_at<'a>(spec: &'a PodSpec, c: &Container, path: &str) -> Option<(&'a Volume, bool)> {
    let m = c
        .volume_mounts
        .iter()
        .flatten()
        .find(|m| m.mount_path == path)?;
    let v = spec
        .volumes
        .iter()
        .flatten()
        .find(|v| v.name == m.name)
        .unwrap_or_else(|| panic!("mount {path}: no volume {}", m.name));
    Some((v, m.read_only == Some(true)))
}

/// The Secret whose key `file` names (a path below a Secret volume's read-only mount).
fn secret_file(spec: &PodSpec, c: &Container, file: &Path) -> (String, String) {
    let dir = file.parent().unwrap().to_str().unwrap();
    let (volume, read_only) = mounted_at(spec, c, dir)
        .unwrap_or_else(|| panic!("{}: nothing mounted at {dir}", file.display()));
    assert!(read_only, "{dir}: mounted read-only");
    let secret = volume
        .secret
        .as_ref()
        .unwrap_or_else(|| panic!("{dir}: not a Secret volume"));
    let name = secret.secret_name.clone().unwrap();
    let key = file.file_name().unwrap().to_str().unwrap().to_string();
    if let Some(items) = &secret.items {
        assert!(items.iter().any(|i| i.path == key), "{key} not projected");
    }
    (name, key)
}

/// The checks that hold for the agent in the base and in every overlay: it adds exactly
/// `capabilities`, and allows privilege escalation only with CAP_SYS_ADMIN (which the API
/// requires, no_new_privs being no barrier to it).
fn check_agent(objects: &Objects, capabilities: &[&str]) -> phase_3_multi_node::cli::AgentArgs {
    let ds = objects.daemon_set();
    assert_eq!(ds.metadata.name.as_deref(), Some("audio-tracer-agent"));
    let spec = ds.spec.as_ref().unwrap();
    let strategy = spec.update_strategy.as_ref().unwrap();
    assert_eq!(strategy.type_.as_deref(), Some("RollingUpdate"));
    assert_eq!(
        strategy.rolling_update.as_ref().unwrap().max_unavailable,
        Some(IntOrString::Int(1))
    );
    // The selector selects the template's pods.
    let template_labels = spec
        .template
        .metadata
        .as_ref()
        .unwrap()
        .labels
        .clone()
        .unwrap();
    for (k, v) in spec.selector.match_labels.iter().flatten() {
        assert_eq!(template_labels.get(k), Some(v), "selector label {k}");
    }

    let pod = pod_spec_ds(ds);
    assert_eq!(
        pod.host_pid,
        Some(true),
        "the agent sees the node's processes"
    );
    assert_ne!(pod.host_network, Some(true), "no host network");
    assert_ne!(pod.host_ipc, Some(true), "no host IPC");
    assert!(
        pod.tolerations
            .iter()
            .flatten()
            .any(|t| t.operator.as_deref() == Some("Exists")
                && t.key.is_none()
                && t.effect.is_none()),
        "tolerates every taint, so that every node has an agent"
    );

    let c = only_container(pod, "agent");
    let sc = c.security_context.as_ref().expect("a securityContext");
    assert_eq!(sc.privileged, Some(false), "not privileged");
    assert_eq!(
        sc.allow_privilege_escalation,
        Some(capabilities.contains(&SYS_ADMIN))
    );
    assert_eq!(sc.read_only_root_filesystem, Some(true));
    assert_eq!(
        sc.run_as_user,
        Some(0),
        "capabilities need uid 0 (no ambient caps)"
    );
    assert_eq!(
        sc.seccomp_profile.as_ref().map(|s| s.type_.as_str()),
        Some("RuntimeDefault")
    );
    assert!(pod
        .security_context
        .as_ref()
        .and_then(|s| s.seccomp_profile.as_ref())
        .is_none());
    let caps = sc.capabilities.as_ref().expect("capabilities");
    assert_eq!(
        caps.drop.as_deref(),
        Some(&["ALL".to_string()][..]),
        "drops ALL"
    );
    let added: BTreeSet<&str> = caps.add.iter().flatten().map(String::as_str).collect();
    assert_eq!(
        caps.add.as_ref().map(Vec::len),
        Some(added.len()),
        "no capability added twice"
    );
    let expected: BTreeSet<&str> = capabilities.iter().copied().collect();
    assert_eq!(added, expected, "the documented set, exactly");

    // Read-only host mounts: tracefs, BTF, the cgroup hierarchy; and no other host path.
    for path in AGENT_HOST_PATHS {
        let (volume, read_only) =
            mounted_at(pod, c, path).unwrap_or_else(|| panic!("{path} not mounted"));
        assert!(read_only, "{path}: mounted read-only");
        let host = volume
            .host_path
            .as_ref()
            .unwrap_or_else(|| panic!("{path}: not a hostPath volume"));
        assert_eq!(host.path, path, "{path}: the host's own");
        assert_eq!(host.type_.as_deref(), Some("Directory"));
    }
    for v in pod.volumes.iter().flatten() {
        if let Some(h) = &v.host_path {
            assert!(
                AGENT_HOST_PATHS.contains(&h.path.as_str()),
                "unexpected host path {}",
                h.path
            );
        }
    }
    for m in c.volume_mounts.iter().flatten() {
        assert_eq!(
            m.read_only,
            Some(true),
            "{}: every mount read-only",
            m.mount_path
        );
    }

    // The node's name from the downward API.
    let node = c
        .env
        .iter()
        .flatten()
        .find(|e| e.name == "NODE_NAME")
        .expect("NODE_NAME in env");
    let field = node
        .value_from
        .as_ref()
        .and_then(|f| f.field_ref.as_ref())
        .expect("NODE_NAME from fieldRef");
    assert_eq!(field.field_path, "spec.nodeName");

    // The ServiceAccount bound to the pod-reading ClusterRole.
    let sa_name = pod
        .service_account_name
        .as_deref()
        .expect("serviceAccountName");
    assert_ne!(
        pod.automount_service_account_token,
        Some(false),
        "the agent needs its token"
    );
    let sa = objects
        .service_accounts
        .iter()
        .find(|s| s.metadata.name.as_deref() == Some(sa_name))
        .unwrap_or_else(|| panic!("no ServiceAccount {sa_name}"));
    assert_eq!(sa.metadata.namespace.as_deref(), Some(NAMESPACE));
    let binding = objects
        .cluster_role_bindings
        .iter()
        .find(|b| {
            b.subjects.iter().flatten().any(|s| {
                s.kind == "ServiceAccount"
                    && s.name == sa_name
                    && s.namespace.as_deref() == Some(NAMESPACE)
            })
        })
        .unwrap_or_else(|| panic!("no ClusterRoleBinding of ServiceAccount {sa_name}"));
    assert_eq!(
        binding.subjects.as_ref().unwrap().len(),
        1,
        "binds the agent alone"
    );
    assert_eq!(binding.role_ref.kind, "ClusterRole");
    assert_eq!(binding.role_ref.api_group, "rbac.authorization.k8s.io");
    assert!(
        objects
            .cluster_roles
            .iter()
            .any(|r| r.metadata.name.as_deref() == Some(binding.role_ref.name.as_str())),
        "the binding's ClusterRole {} exists",
        binding.role_ref.name
    );

    // Flags: phase 3's definitions parse them; fingerprint settings from the ConfigMap.
    let vars = env_values(c, objects);
    let line = command_line(c, &vars);
    let (args, targets) = parse_agent(&line);
    assert_eq!(args.node, "node-0", "--node $(NODE_NAME)");
    let raw_args = c.args.as_ref().unwrap();
    for (flag, var) in [
        ("--node", "$(NODE_NAME)"),
        ("--window", "$(FP_WINDOW)"),
        ("--keep-per-256", "$(FP_KEEP_PER_256)"),
    ] {
        let at = raw_args
            .iter()
            .position(|a| a == flag)
            .unwrap_or_else(|| panic!("{flag}"));
        assert_eq!(raw_args[at + 1], var, "{flag} from env");
    }
    let fingerprint = objects.config_map();
    let fp = args.targets.fingerprint();
    assert_eq!(
        fp.window.to_string(),
        fingerprint.data.as_ref().unwrap()["window"]
    );
    fp.validate().expect("valid fingerprint settings");
    assert!(targets.contains_key("--namespace") && targets.contains_key("--selector"));
    assert!(
        args.targets.pid.is_empty() && args.targets.comm.is_none(),
        "pods, not pids"
    );

    // The collector the agent dials is the Service's gRPC port.
    let url = args.collector.as_str();
    let (scheme, authority) = url.split_once("://").expect("a URL");
    assert!(scheme == "http" || scheme == "https", "{url}");
    let (host, port) = authority.rsplit_once(':').expect("host:port");
    let svc = objects.service();
    assert_eq!(
        Some(host),
        svc.metadata.name.as_deref(),
        "{url}: the collector's Service"
    );
    let grpc = svc
        .spec
        .as_ref()
        .unwrap()
        .ports
        .iter()
        .flatten()
        .find(|p| p.name.as_deref() == Some("grpc"))
        .expect("a grpc port");
    assert_eq!(port, grpc.port.to_string(), "{url}");

    // Requests and limits for CPU and memory.
    let res = c.resources.as_ref().expect("resources");
    for set in [&res.requests, &res.limits] {
        let set = set.as_ref().expect("requests and limits");
        assert!(set.contains_key("cpu") && set.contains_key("memory"));
    }
    args
}

/// The checks that hold for the collector in the base and in every overlay.
fn check_collector(objects: &Objects) -> phase_3_multi_node::cli::CollectorArgs {
    let d = objects.deployment();
    assert_eq!(d.metadata.name.as_deref(), Some("audio-tracer-collector"));
    let spec = d.spec.as_ref().unwrap();
    assert_eq!(spec.replicas, Some(1), "one collector matches all moments");
    let pod = pod_spec_dep(d);
    assert_ne!(pod.host_pid, Some(true));
    assert_ne!(pod.host_network, Some(true));
    assert_ne!(pod.host_ipc, Some(true));
    assert_eq!(
        pod.automount_service_account_token,
        Some(false),
        "no API token"
    );
    assert!(
        pod.service_account_name.is_none(),
        "the collector gets no ServiceAccount of its own"
    );
    for v in pod.volumes.iter().flatten() {
        assert!(v.host_path.is_none(), "{}: no host path", v.name);
    }

    let c = only_container(pod, "collector");
    let pod_sc = pod.security_context.clone().unwrap_or_default();
    let sc = c.security_context.as_ref().expect("a securityContext");
    assert_ne!(sc.privileged, Some(true));
    assert_eq!(sc.allow_privilege_escalation, Some(false));
    assert_eq!(sc.read_only_root_filesystem, Some(true));
    let caps = sc.capabilities.as_ref().expect("capabilities");
    assert_eq!(
        caps.drop.as_deref(),
        Some(&["ALL".to_string()][..]),
        "drops ALL"
    );
    assert!(
        caps.add.iter().flatten().next().is_none(),
        "adds no capability"
    );
    let non_root = sc.run_as_non_root.or(pod_sc.run_as_non_root);
    assert_eq!(non_root, Some(true), "runAsNonRoot");
    let uid = sc.run_as_user.or(pod_sc.run_as_user).expect("a uid");
    assert_ne!(uid, 0, "non-root uid");
    let seccomp = sc
        .seccomp_profile
        .as_ref()
        .or(pod_sc.seccomp_profile.as_ref());
    assert_eq!(seccomp.map(|s| s.type_.as_str()), Some("RuntimeDefault"));

    let line = command_line(c, &env_values(c, objects));
    let args = parse_collector(&line);
    assert!(
        args.listen.ip().is_unspecified(),
        "listens on every address"
    );
    let metrics = args.metrics.expect("--metrics");
    assert!(metrics.ip().is_unspecified());

    // The Service exposes the ports the flags listen on, through named container ports.
    let svc = objects.service();
    let svc_spec = svc.spec.as_ref().unwrap();
    let template_labels = spec
        .template
        .metadata
        .as_ref()
        .unwrap()
        .labels
        .clone()
        .unwrap();
    let selector = svc_spec.selector.as_ref().expect("a selector");
    for (k, v) in selector {
        assert_eq!(
            template_labels.get(k),
            Some(v),
            "Service selector label {k}"
        );
    }
    for (name, listen) in [("grpc", args.listen), ("metrics", metrics)] {
        let port = svc_spec
            .ports
            .iter()
            .flatten()
            .find(|p| p.name.as_deref() == Some(name))
            .unwrap_or_else(|| panic!("Service port {name}"));
        assert_eq!(port.port, i32::from(listen.port()), "Service port {name}");
        let container_port = match port.target_port.as_ref().expect("targetPort") {
            IntOrString::Int(n) => c.ports.iter().flatten().find(|p| p.container_port == *n),
            IntOrString::String(s) => c
                .ports
                .iter()
                .flatten()
                .find(|p| p.name.as_deref() == Some(s.as_str())),
        }
        .unwrap_or_else(|| panic!("Service port {name}: no such container port"));
        assert_eq!(container_port.container_port, i32::from(listen.port()));
    }
    let annotations = svc.metadata.annotations.clone().unwrap_or_default();
    assert_eq!(
        annotations.get("prometheus.io/scrape").map(String::as_str),
        Some("true")
    );
    assert_eq!(
        annotations.get("prometheus.io/port"),
        Some(&metrics.port().to_string())
    );
    assert_eq!(
        annotations.get("prometheus.io/path").map(String::as_str),
        Some("/metrics")
    );
    args
}

fn check_rbac(objects: &Objects) {
    assert_eq!(objects.cluster_roles.len(), 1, "one ClusterRole");
    assert_eq!(
        objects.cluster_role_bindings.len(),
        1,
        "one ClusterRoleBinding"
    );
    let role = &objects.cluster_roles[0];
    assert!(role.aggregation_rule.is_none());
    let rules = role.rules.as_ref().expect("rules");
    assert_eq!(rules.len(), 1, "one rule: {rules:?}");
    let rule = &rules[0];
    assert_eq!(
        rule.api_groups.as_deref(),
        Some(&[String::new()][..]),
        "the core group only"
    );
    assert_eq!(
        rule.resources.as_deref(),
        Some(&["pods".to_string()][..]),
        "pods only"
    );
    let verbs: BTreeSet<&str> = rule.verbs.iter().map(String::as_str).collect();
    assert_eq!(
        verbs,
        BTreeSet::from(["get", "list", "watch"]),
        "reading only"
    );
    assert_eq!(rule.verbs.len(), 3);
    assert!(rule.resource_names.is_none() && rule.non_resource_urls.is_none());
}

#[test]
fn base_kustomization_lists_every_file() {
    let k = kustomization(&base_dir());
    assert_eq!(k["namespace"], NAMESPACE);
    let listed: BTreeSet<String> = strings(&k["resources"]).into_iter().collect();
    assert_eq!(
        strings(&k["resources"]).len(),
        listed.len(),
        "listed once each"
    );
    let mut files = all_files(&base_dir());
    files.remove("kustomization.yaml");
    assert_eq!(
        listed, files,
        "kustomization.yaml's resources and the files of deploy/base"
    );
    // The image kustomize sets is the one the manifests name.
    for image in k["images"].as_array().unwrap() {
        let name = image["name"].as_str().unwrap();
        let docs = base_docs();
        assert!(
            docs.iter()
                .any(|(_, d)| d.to_string().contains(&format!("\"{name}:"))),
            "images: {name} appears in no manifest"
        );
    }
}

#[test]
fn base_objects_parse_exactly_and_live_in_one_namespace() {
    let docs = base_docs();
    let objects = objects(&docs);
    let ns = Objects::one(&objects.namespaces, "Namespace");
    assert_eq!(ns.metadata.name.as_deref(), Some(NAMESPACE));
    // hostPID and hostPath volumes need the privileged Pod Security level.
    assert_eq!(
        ns.metadata
            .labels
            .as_ref()
            .and_then(|l| l.get("pod-security.kubernetes.io/enforce"))
            .map(String::as_str),
        Some("privileged")
    );
    let mut names = BTreeSet::new();
    for (file, doc) in &docs {
        let kind = doc["kind"].as_str().unwrap();
        let name = doc["metadata"]["name"].as_str().expect("a name");
        assert!(names.insert((kind, name)), "{file}: {kind} {name} twice");
        let cluster_scoped = matches!(kind, "Namespace" | "ClusterRole" | "ClusterRoleBinding");
        let namespace = doc["metadata"]["namespace"].as_str();
        if cluster_scoped {
            assert_eq!(namespace, None, "{file}: cluster-scoped");
        } else {
            assert_eq!(namespace, Some(NAMESPACE), "{file}");
        }
    }
    assert_eq!(
        objects.service_accounts.len(),
        1,
        "a ServiceAccount for the agent only"
    );
}

#[test]
fn agent_is_least_privilege_and_wired() {
    let objects = objects(&base_docs());
    let args = check_agent(&objects, &AGENT_CAPABILITIES);
    assert!(
        args.collector.starts_with("http://"),
        "plain gRPC in the base"
    );
    assert!(args.tls_ca.is_none());
}

#[test]
fn cluster_role_reads_pods_only() {
    check_rbac(&objects(&base_docs()));
}

#[test]
fn collector_has_no_privilege_and_the_service_its_ports() {
    let objects = objects(&base_docs());
    let args = check_collector(&objects);
    assert!(args.tls_cert.is_none());
    assert!(args.json.is_none(), "no file to write on a read-only root");
}

#[test]
fn fingerprint_config_map_holds_the_defaults() {
    let objects = objects(&base_docs());
    let cm = objects.config_map();
    assert_eq!(
        cm.metadata.name.as_deref(),
        Some("audio-tracer-fingerprint")
    );
    let data = cm.data.as_ref().expect("data");
    assert_eq!(
        data.keys().map(String::as_str).collect::<Vec<_>>(),
        ["keep_per_256", "window"]
    );
    let window: usize = data["window"].parse().expect("window: a number");
    let keep: u16 = data["keep_per_256"]
        .parse()
        .expect("keep_per_256: a number");
    let defaults = FingerprintConfig::default();
    assert_eq!(
        window, defaults.window,
        "shared::FingerprintConfig::default().window"
    );
    assert_eq!(keep, defaults.keep_per_256, "…keep_per_256");
    // And the agent passes both on.
    let args = check_agent(&objects, &AGENT_CAPABILITIES);
    assert_eq!(args.targets.window, window);
    assert_eq!(args.targets.keep_per_256, keep);
}

/// Applies an RFC 6902 patch (the operations kustomize's JSON patches use here: test, add,
/// replace, remove) to `doc`.
fn json_patch(doc: &mut Value, ops: &[Value], what: &str) {
    fn tokens(path: &str) -> Vec<String> {
        assert!(path.starts_with('/'), "{path}");
        path[1..]
            .split('/')
            .map(|t| t.replace("~1", "/").replace("~0", "~"))
            .collect()
    }
    fn parent<'a>(doc: &'a mut Value, tokens: &[String], what: &str) -> &'a mut Value {
        let mut at = doc;
        for t in tokens {
            at = match at {
                Value::Object(m) => m.get_mut(t),
                Value::Array(a) => t.parse::<usize>().ok().and_then(|i| a.get_mut(i)),
                _ => None,
            }
            .unwrap_or_else(|| panic!("{what}: no {t} in the path"));
        }
        at
    }
    for op in ops {
        let path = op["path"].as_str().expect("a path");
        let all = tokens(path);
        let (last, up) = all.split_last().unwrap();
        let target = parent(doc, up, what);
        match op["op"].as_str().unwrap() {
            "test" => {
                let at = match target {
                    Value::Object(m) => m.get(last),
                    Value::Array(a) => last.parse::<usize>().ok().and_then(|i| a.get(i)),
                    _ => None,
                };
                assert_eq!(at, Some(&op["value"]), "{what}: test {path} failed");
            }
            "add" => match target {
                Value::Object(m) => {
                    m.insert(last.clone(), op["value"].clone());
                }
                Value::Array(a) if last == "-" => a.push(op["value"].clone()),
                Value::Array(a) => a.insert(last.parse().unwrap(), op["value"].clone()),
                _ => panic!("{what}: add {path}: not a container"),
            },
            "replace" => {
                let slot = match target {
                    Value::Object(m) => m.get_mut(last),
                    Value::Array(a) => last.parse::<usize>().ok().and_then(|i| a.get_mut(i)),
                    _ => None,
                }
                .unwrap_or_else(|| panic!("{what}: replace {path}: nothing there"));
                *slot = op["value"].clone();
            }
            "remove" => match target {
                Value::Object(m) => {
                    m.remove(last).expect("something to remove");
                }
                Value::Array(a) => {
                    a.remove(last.parse().unwrap());
                }
                _ => panic!("{what}: remove {path}"),
            },
            other => panic!("{what}: operation {other} not used here"),
        }
    }
}

/// An overlay: the base with its JSON patches applied, as (name, JSON).
fn overlay_docs(name: &str) -> Vec<(String, Value)> {
    let dir = overlay_dir(name);
    let k = kustomization(&dir);
    assert_eq!(strings(&k["resources"]), ["../../base"]);
    let mut docs = base_docs();
    for patch in k["patches"].as_array().expect("patches") {
        let file = patch["path"].as_str().expect("a patch file");
        let target = &patch["target"];
        let ops = yaml_docs(&dir.join(file));
        assert_eq!(ops.len(), 1, "{file}: one list of operations");
        let ops = ops[0]
            .as_array()
            .unwrap_or_else(|| panic!("{file}: a JSON patch (a list)"));
        let matching: Vec<&mut (String, Value)> = docs
            .iter_mut()
            .filter(|(_, d)| {
                let (group, version) = d["apiVersion"]
                    .as_str()
                    .unwrap()
                    .rsplit_once('/')
                    .unwrap_or(("", d["apiVersion"].as_str().unwrap()));
                d["kind"] == target["kind"]
                    && d["metadata"]["name"] == target["name"]
                    && group == target["group"].as_str().unwrap_or("")
                    && version == target["version"].as_str().unwrap_or(version)
            })
            .collect();
        assert_eq!(
            matching.len(),
            1,
            "{file}: its target is one object of the base"
        );
        for (name, doc) in matching {
            json_patch(doc, ops, file);
            *name = format!("{name} + {file}");
        }
    }
    docs
}

#[test]
fn overlay_kustomizations_list_every_file() {
    let dirs = all_files(&deploy_dir().join("overlays"));
    assert_eq!(
        dirs,
        OVERLAYS.map(String::from).into(),
        "every overlay is tested here"
    );
    for name in OVERLAYS {
        let k = kustomization(&overlay_dir(name));
        let listed: BTreeSet<String> = k["patches"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["path"].as_str().unwrap().to_string())
            .collect();
        let mut files = all_files(&overlay_dir(name));
        files.remove("kustomization.yaml");
        assert_eq!(
            listed, files,
            "{name}: every patch file used, and nothing else"
        );
    }
}

#[test]
fn mtls_overlay_wires_the_certificates_and_keeps_privileges() {
    let docs = overlay_docs("mtls");
    let objects = objects(&docs);
    check_rbac(&objects);
    let agent = check_agent(&objects, &AGENT_CAPABILITIES);
    let collector = check_collector(&objects);

    let svc = objects.service().metadata.name.clone().unwrap();
    assert_eq!(agent.collector, format!("https://{svc}:50051"));
    assert_eq!(
        agent.tls_server_name, svc,
        "the name the collector's certificate carries"
    );
    let ds_pod = pod_spec_ds(objects.daemon_set());
    let ds_c = &ds_pod.containers[0];
    let agent_files: Vec<(String, String)> = [&agent.tls_ca, &agent.tls_cert, &agent.tls_key]
        .into_iter()
        .map(|f| secret_file(ds_pod, ds_c, f.as_ref().expect("TLS flags")))
        .collect();
    let dep_pod = pod_spec_dep(objects.deployment());
    let dep_c = &dep_pod.containers[0];
    let collector_files: Vec<(String, String)> = [
        &collector.tls_client_ca,
        &collector.tls_cert,
        &collector.tls_key,
    ]
    .into_iter()
    .map(|f| secret_file(dep_pod, dep_c, f.as_ref().expect("TLS flags")))
    .collect();
    // The Secrets and keys deploy/README.md tells users to create.
    for (files, secret) in [
        (&agent_files, "audio-tracer-agent-tls"),
        (&collector_files, "audio-tracer-collector-tls"),
    ] {
        let keys: Vec<(&str, &str)> = files
            .iter()
            .map(|(s, k)| (s.as_str(), k.as_str()))
            .collect();
        assert_eq!(
            keys,
            [(secret, "ca.crt"), (secret, "tls.crt"), (secret, "tls.key")]
        );
    }
    // Readable by the container's user: the agent is uid 0 (owner), the collector reads
    // through its fsGroup.
    let mode = |pod: &PodSpec| {
        pod.volumes
            .iter()
            .flatten()
            .find_map(|v| v.secret.as_ref()?.default_mode)
            .expect("a defaultMode")
    };
    assert_eq!(mode(ds_pod), 0o400);
    assert_eq!(mode(dep_pod), 0o440);
    assert!(dep_pod
        .security_context
        .as_ref()
        .unwrap()
        .fs_group
        .is_some());
}

#[test]
fn sys_admin_overlay_adds_exactly_sys_admin() {
    let docs = overlay_docs("sys-admin");
    let objects = objects(&docs);
    check_rbac(&objects);
    let mut capabilities = AGENT_CAPABILITIES.to_vec();
    capabilities.push(SYS_ADMIN);
    check_agent(&objects, &capabilities);
    check_collector(&objects);
    // Nothing but the agent's securityContext changes.
    let base = base_docs();
    for ((file, patched), (_, original)) in docs.iter().zip(&base) {
        let mut patched = patched.clone();
        let mut original = original.clone();
        if patched["kind"] == "DaemonSet" {
            for doc in [&mut patched, &mut original] {
                doc["spec"]["template"]["spec"]["containers"][0]
                    .as_object_mut()
                    .unwrap()
                    .remove("securityContext");
            }
        }
        assert_eq!(patched, original, "{file}");
    }
}

/// The objects `kubectl kustomize DIR` renders, or None without kubectl.
fn kubectl_kustomize(dir: &Path) -> Option<Vec<Value>> {
    let out = match Command::new("kubectl").arg("kustomize").arg(dir).output() {
        Ok(out) => out,
        Err(e) => {
            eprintln!("kubectl not runnable ({e}): kustomize's rendering not compared");
            return None;
        }
    };
    assert!(
        out.status.success(),
        "kubectl kustomize {}: {}",
        dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    Some(serde_saphyr::from_multiple::<Value>(&text).expect("kustomize's YAML"))
}

/// `rendered` (kustomize's output) is `ours` plus the labels kustomization.yaml adds and the
/// namespace it sets.
fn same_as_kustomize(ours: &[(String, Value)], rendered: &[Value], dir: &Path) {
    assert_eq!(
        ours.len(),
        rendered.len(),
        "{}: object count",
        dir.display()
    );
    let k = kustomization(&base_dir());
    let added: BTreeMap<String, Value> = k["labels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|l| l["pairs"].as_object().unwrap().clone())
        .collect();
    for (file, doc) in ours {
        let mut expected = doc.clone();
        let labels = expected["metadata"]
            .as_object_mut()
            .unwrap()
            .entry("labels")
            .or_insert_with(|| Value::Object(Default::default()));
        for (k, v) in &added {
            labels[k] = v.clone();
        }
        let got = rendered
            .iter()
            .find(|r| r["kind"] == doc["kind"] && r["metadata"]["name"] == doc["metadata"]["name"])
            .unwrap_or_else(|| panic!("{file}: not in kustomize's output"));
        assert!(
            got == &expected,
            "{file}: kustomize renders it differently:\n{}",
            differences(&expected, got, "").join("\n")
        );
    }
}

#[test]
fn kustomize_renders_the_objects_tested_here() {
    if let Some(rendered) = kubectl_kustomize(&base_dir()) {
        same_as_kustomize(&base_docs(), &rendered, &base_dir());
    }
    for name in OVERLAYS {
        if let Some(rendered) = kubectl_kustomize(&overlay_dir(name)) {
            same_as_kustomize(&overlay_docs(name), &rendered, &overlay_dir(name));
        }
    }
}
