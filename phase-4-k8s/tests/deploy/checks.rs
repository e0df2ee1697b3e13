//! The properties every variant of the deployment must have, whatever overlay is applied:
//! the agent least privilege and wired to every collector replica, RBAC reading pods only, the
//! collector's replicas without privilege, each named through the headless Service, and
//! reachable by the agents and the scraper alone.
//! Flags and config files are parsed with the binaries' own definitions (agent::config).

use super::expected::{ExpectedAgent, ExpectedCollector, Scraper, SecretFiles};
use super::objects::Objects;
use clap::Parser;
use k8s_openapi::api::apps::v1::{DaemonSet, StatefulSet};
use k8s_openapi::api::core::v1::{Container, PodSpec, PodTemplateSpec, Volume};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

pub const NAMESPACE: &str = "audio-tracer";
/// With it the agent must allow privilege escalation (see [`check_agent`]).
const SYS_ADMIN: &str = "SYS_ADMIN";
/// The host paths the agent mounts, all read-only.
const AGENT_HOST_PATHS: [&str; 3] = ["/sys/kernel/tracing", "/sys/kernel/btf", "/sys/fs/cgroup"];

fn pod_spec_ds(ds: &DaemonSet) -> &PodSpec {
    ds.spec.as_ref().unwrap().template.spec.as_ref().unwrap()
}

fn pod_spec_sts(s: &StatefulSet) -> &PodSpec {
    s.spec.as_ref().unwrap().template.spec.as_ref().unwrap()
}

/// Every label of `selector` is on the pods `template` makes.
fn selects_template<'a>(
    selector: impl IntoIterator<Item = (&'a String, &'a String)>,
    template: &PodTemplateSpec,
    what: &str,
) {
    let labels = template.metadata.as_ref().unwrap().labels.as_ref().unwrap();
    for (k, v) in selector {
        assert_eq!(labels.get(k), Some(v), "{what} label {k}");
    }
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

/// The command line with its `--config` file taken from the ConfigMap mounted there: the
/// file's text written to a temporary file the line then names (kept as long as the guard).
fn with_config_file(
    line: &[String],
    spec: &PodSpec,
    c: &Container,
    objects: &Objects,
) -> (Vec<String>, tempfile::TempDir) {
    let at = line.iter().position(|w| w == "--config").expect("--config");
    let file = Path::new(&line[at + 1]);
    let dir = file.parent().unwrap().to_str().unwrap();
    let (volume, read_only) =
        mounted_at(spec, c, dir).unwrap_or_else(|| panic!("{dir}: nothing mounted"));
    assert!(read_only, "{dir}: read-only");
    let source = volume.config_map.as_ref().expect("a ConfigMap volume");
    let name = file.file_name().unwrap().to_str().unwrap();
    // The key the volume shows under that name.
    let key = source
        .items
        .iter()
        .flatten()
        .find(|i| i.path == name)
        .map_or(name, |i| i.key.as_str());
    let text = objects
        .config_maps
        .iter()
        .find(|cm| cm.metadata.name.as_deref() == Some(source.name.as_str()))
        .and_then(|cm| cm.data.as_ref()?.get(key))
        .unwrap_or_else(|| panic!("ConfigMap {} has no {key}", source.name));
    let tmp = tempfile::tempdir().unwrap();
    let copy = tmp.path().join(name);
    std::fs::write(&copy, text).unwrap();
    let mut line = line.to_vec();
    line[at + 1] = copy.display().to_string();
    (line, tmp)
}

/// Parses `line` (after the program and subcommand) as the binary does, config file included.
fn parse<T: Parser>(subcommand: &str, line: &[String]) -> T {
    let mut argv: Vec<std::ffi::OsString> = vec![subcommand.into()];
    argv.extend(line[2..].iter().map(Into::into));
    agent::config::parse_from::<T>(T::command(), &argv, &[])
        .unwrap_or_else(|e| panic!("{line:?}:\n{e:?}"))
}

/// Phase 3's agent flags, and the Kubernetes target selection given.
fn parse_agent(
    line: &[String],
) -> (
    phase_3_multi_node::cli::AgentArgs,
    BTreeMap<String, Vec<String>>,
) {
    assert_eq!(line[..2], ["phase-4-k8s", "agent"], "{line:?}");
    let cli: AgentCli = parse("agent", line);
    let targets = [
        ("--namespace", cli.args.namespace),
        ("--selector", cli.args.selector.into_iter().collect()),
        ("--container", cli.args.container),
    ]
    .into_iter()
    .filter(|(_, v)| !v.is_empty())
    .map(|(flag, v)| (flag.to_string(), v))
    .collect();
    (cli.args.agent, targets)
}

fn parse_collector(line: &[String]) -> phase_3_multi_node::cli::CollectorArgs {
    assert_eq!(line[..2], ["phase-4-k8s", "collector"], "{line:?}");
    parse::<CollectorCli>("collector", line).args
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

/// The checks that hold for the agent in the base and in every overlay: it adds exactly the
/// capabilities `expected` lists, and allows privilege escalation only with CAP_SYS_ADMIN
/// (which the API requires, no_new_privs being no barrier to it); it dials the collector as
/// `expected` says.
pub fn check_agent(
    objects: &Objects,
    expected: &ExpectedAgent,
) -> phase_3_multi_node::cli::AgentArgs {
    let ds = objects.daemon_set();
    assert_eq!(ds.metadata.name.as_deref(), Some("audio-tracer-agent"));
    let spec = ds.spec.as_ref().unwrap();
    let strategy = spec.update_strategy.as_ref().unwrap();
    assert_eq!(strategy.type_.as_deref(), Some("RollingUpdate"));
    assert_eq!(
        strategy.rolling_update.as_ref().unwrap().max_unavailable,
        Some(IntOrString::Int(1))
    );
    selects_template(
        spec.selector.match_labels.iter().flatten(),
        &spec.template,
        "selector",
    );

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
        Some(expected.capabilities.iter().any(|c| c == SYS_ADMIN))
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
    let documented: BTreeSet<&str> = expected.capabilities.iter().map(String::as_str).collect();
    assert_eq!(added, documented, "the documented set, exactly");

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

    // Settings: the ConfigMap's agent.yaml, parsed as the agent does; the args only what is
    // the node's own. The agent takes --node from NODE_NAME (checked above), as given here.
    let vars = env_values(c, objects);
    let (mut line, _config) = with_config_file(&command_line(c, &vars), pod, c, objects);
    let raw_args = c.args.as_ref().unwrap();
    assert!(
        !raw_args.contains(&"--node".to_string()),
        "the node from NODE_NAME alone"
    );
    line.extend(["--node".to_string(), vars["NODE_NAME"].clone()]);
    let (args, targets) = parse_agent(&line);
    args.targets
        .fingerprint()
        .validate()
        .expect("valid fingerprint settings");
    assert!(targets.contains_key("--namespace") && targets.contains_key("--selector"));
    assert!(
        args.targets.pid.is_empty() && args.targets.comm.is_none(),
        "pods, not pids"
    );

    // Its own endpoints, probed, and scraped through the pod's annotations (no Service).
    let metrics = args.metrics.expect("--metrics");
    check_endpoints(c, metrics);
    let pod_annotations = spec
        .template
        .metadata
        .as_ref()
        .and_then(|m| m.annotations.clone());
    check_scrape_annotations(&pod_annotations.unwrap_or_default(), metrics);

    // The agent dials every collector replica, each by its stable name, on the gRPC port.
    assert_eq!(
        replica_hosts(objects, &args),
        check_replica_names(objects),
        "agent.yaml's `collector:` list and the StatefulSet's replicas"
    );
    assert_eq!(args.collector, expected.collectors);
    let tls = [&args.tls_ca, &args.tls_cert, &args.tls_key];
    if let Some(files) = &expected.tls {
        // Checked on every replica: they all present the one certificate naming the Service.
        assert_eq!(
            Some(args.tls_server_name.as_str()),
            objects.service().metadata.name.as_deref(),
            "the name the collector's certificate carries"
        );
        check_secret_files(pod, c, tls, files);
        // Each node presents its own certificate: the collector admits it only as that node.
        for (flag, file) in [
            ("--tls-cert", "$(NODE_NAME).crt"),
            ("--tls-key", "$(NODE_NAME).key"),
        ] {
            let at = raw_args.iter().position(|a| a == flag).expect(flag);
            assert!(
                raw_args[at + 1].ends_with(&format!("/{file}")),
                "{flag}: the node's own"
            );
        }
    } else {
        assert!(tls.iter().all(|f| f.is_none()), "no TLS flag");
    }

    // Requests and limits for CPU and memory.
    let res = c.resources.as_ref().expect("resources");
    for set in [&res.requests, &res.limits] {
        let set = set.as_ref().expect("requests and limits");
        assert!(set.contains_key("cpu") && set.contains_key("memory"));
    }
    args
}

/// The checks that hold for the collector in the base and in every overlay, and its TLS as
/// `expected` says.
pub fn check_collector(objects: &Objects, expected: &ExpectedCollector) {
    let sts = objects.stateful_set();
    assert_eq!(sts.metadata.name.as_deref(), Some("audio-tracer-collector"));
    let spec = sts.spec.as_ref().unwrap();
    assert!(
        spec.replicas.is_some_and(|n| n >= 1),
        "replicas given, as many as the agents list"
    );
    assert_eq!(
        spec.pod_management_policy.as_deref(),
        Some("Parallel"),
        "the replicas share nothing: started and stopped together"
    );
    selects_template(
        spec.selector.match_labels.iter().flatten(),
        &spec.template,
        "selector",
    );
    let pod = pod_spec_sts(sts);
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
    let (line, _config) = with_config_file(&line, pod, c, objects);
    let args = parse_collector(&line);
    assert!(
        args.listen.ip().is_unspecified(),
        "listens on every address"
    );
    let metrics = args.metrics.expect("--metrics");
    check_endpoints(c, metrics);
    assert!(args.json.is_none(), "no file to write on a read-only root");
    let tls = [&args.tls_client_ca, &args.tls_cert, &args.tls_key];
    if let Some(files) = &expected.tls {
        check_secret_files(pod, c, tls, files);
        assert!(
            pod_sc.fs_group.is_some(),
            "the collector's user reads the files through its fsGroup"
        );
    } else {
        assert!(tls.iter().all(|f| f.is_none()), "no TLS flag");
    }

    // The headless Service names each replica, and exposes the ports the flags listen on,
    // through named container ports.
    check_replica_names(objects);
    let svc = objects.service();
    let svc_spec = svc.spec.as_ref().unwrap();
    assert_eq!(
        svc_spec.publish_not_ready_addresses,
        Some(true),
        "a replica's name resolves before it is ready: agents reconnect the moment it listens"
    );
    let selector = svc_spec.selector.as_ref().expect("a selector");
    selects_template(selector, &spec.template, "Service selector");
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
    check_scrape_annotations(
        &svc.metadata.annotations.clone().unwrap_or_default(),
        metrics,
    );
}

/// Each pod the collector's StatefulSet makes has a DNS name, `POD.SERVICE.NAMESPACE.svc`: its
/// hostname (the pod's name, `STATEFULSET-ORDINAL`) under the StatefulSet's serviceName, a
/// headless Service of its namespace that selects it. Those names, in ordinal order.
pub fn check_replica_names(objects: &Objects) -> Vec<String> {
    let sts = objects.stateful_set();
    let spec = sts.spec.as_ref().unwrap();
    let svc = objects.service();
    let service = svc.metadata.name.as_deref().unwrap();
    assert_eq!(
        spec.service_name.as_deref(),
        Some(service),
        "the StatefulSet's serviceName is the collector's Service"
    );
    let svc_spec = svc.spec.as_ref().unwrap();
    assert_eq!(
        svc_spec.cluster_ip.as_deref(),
        Some("None"),
        "headless: a DNS name per replica, no address balancing over them"
    );
    selects_template(
        svc_spec.selector.as_ref().expect("a selector"),
        &spec.template,
        "the Service's selector, on the replicas",
    );
    for namespace in [&sts.metadata.namespace, &svc.metadata.namespace] {
        assert_eq!(namespace.as_deref(), Some(NAMESPACE));
    }
    let first = spec.ordinals.as_ref().and_then(|o| o.start).unwrap_or(0);
    let replicas = spec.replicas.expect("replicas");
    let name = sts.metadata.name.as_deref().unwrap();
    (first..first + replicas)
        .map(|ordinal| format!("{name}-{ordinal}.{service}.{NAMESPACE}.svc"))
        .collect()
}

/// The host of each collector URL the agent dials, in its list's order; each URL must be
/// `https://` or `http://`, and its port the Service's gRPC port.
pub fn replica_hosts(objects: &Objects, args: &phase_3_multi_node::cli::AgentArgs) -> Vec<String> {
    let grpc = objects
        .service()
        .spec
        .as_ref()
        .unwrap()
        .ports
        .iter()
        .flatten()
        .find(|p| p.name.as_deref() == Some("grpc"))
        .expect("a grpc port");
    args.collector
        .iter()
        .map(|url| {
            let (scheme, authority) = url.split_once("://").expect("a URL");
            assert!(scheme == "http" || scheme == "https", "{url}");
            let (host, port) = authority.rsplit_once(':').expect("host:port");
            assert_eq!(port, grpc.port.to_string(), "{url}: the gRPC port");
            host.to_string()
        })
        .collect()
}

/// Whether a certificate's DNS name covers `host`: the same name, or a wildcard standing for
/// its first label (`*.b.c` covers `a.b.c`, not `b.c` nor `x.a.b.c`), as rustls checks it.
pub fn dns_name_covers(name: &str, host: &str) -> bool {
    match name.strip_prefix("*.") {
        Some(parent) => host
            .split_once('.')
            .is_some_and(|(first, rest)| !first.is_empty() && rest == parent),
        None => name == host,
    }
}

/// The container serves its metrics, /healthz and /readyz on every address at `metrics`, a
/// port named "metrics", and its liveness and readiness probes ask /healthz and /readyz there.
fn check_endpoints(c: &Container, metrics: std::net::SocketAddr) {
    assert!(metrics.ip().is_unspecified(), "--metrics on every address");
    let port = c
        .ports
        .iter()
        .flatten()
        .find(|p| p.name.as_deref() == Some("metrics"))
        .expect("a metrics port");
    assert_eq!(port.container_port, i32::from(metrics.port()));
    for (probe, path) in [
        (&c.liveness_probe, "/healthz"),
        (&c.readiness_probe, "/readyz"),
    ] {
        let get = probe
            .as_ref()
            .and_then(|p| p.http_get.as_ref())
            .unwrap_or_else(|| panic!("{path}: an HTTP probe"));
        assert_eq!(get.path.as_deref(), Some(path));
        assert_eq!(get.port, IntOrString::String("metrics".into()), "{path}");
    }
}

/// The common "kubernetes-service-endpoints" and "kubernetes-pods" scrape jobs find
/// `metrics` through these annotations.
fn check_scrape_annotations(annotations: &BTreeMap<String, String>, metrics: std::net::SocketAddr) {
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
}

/// RBAC: the agent may read pods, and nothing else.
pub fn check_rbac(objects: &Objects) {
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

/// The files the TLS flags name (CA, certificate, key) are `expected`'s keys of its Secret,
/// mounted read-only with its mode.
fn check_secret_files(
    pod: &PodSpec,
    c: &Container,
    flags: [&Option<PathBuf>; 3],
    expected: &SecretFiles,
) {
    let files: Vec<(String, String)> = flags
        .into_iter()
        .map(|f| secret_file(pod, c, f.as_ref().expect("TLS flags")))
        .collect();
    let wanted: Vec<(String, String)> = expected
        .keys
        .iter()
        .map(|key| (expected.secret.clone(), key.clone()))
        .collect();
    assert_eq!(files, wanted);
    let mode = pod
        .volumes
        .iter()
        .flatten()
        .find_map(|v| v.secret.as_ref()?.default_mode)
        .expect("a defaultMode");
    assert_eq!(
        mode, expected.default_mode,
        "the Secret volume's defaultMode"
    );
}

/// The collector's NetworkPolicy: it selects the collector's pods and admits, on ingress, the
/// gRPC port from the agent's pods of this namespace only and the metrics port from the
/// scraper only. Nothing else gets in.
pub fn check_network_policy(objects: &Objects, scraper: &Scraper) {
    let np = objects.network_policy();
    let spec = np.spec.as_ref().expect("a spec");
    let labels = |s: &Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector>| {
        let s = s.as_ref().expect("a selector");
        assert!(s.match_expressions.is_none(), "labels only");
        s.match_labels.clone().unwrap_or_default()
    };
    let collector = objects.stateful_set().spec.as_ref().unwrap();
    let agent = objects.daemon_set().spec.as_ref().unwrap();
    assert_eq!(
        labels(&spec.pod_selector),
        collector.selector.match_labels.clone().unwrap(),
        "selects the collector's pods"
    );
    selects_template(
        &labels(&spec.pod_selector),
        &collector.template,
        "NetworkPolicy podSelector",
    );
    assert_eq!(
        spec.policy_types.as_deref(),
        Some(&["Ingress".to_string()][..])
    );
    let rules = spec.ingress.as_ref().expect("ingress rules");
    assert_eq!(rules.len(), 2, "one rule per port");
    let rule_for = |port: &str| {
        let matching: Vec<_> = rules
            .iter()
            .filter(|r| {
                let ports = r.ports.as_ref().expect("every rule names its ports");
                ports
                    .iter()
                    .any(|p| p.port == Some(IntOrString::String(port.into())))
            })
            .collect();
        assert_eq!(matching.len(), 1, "{port}: one rule");
        let rule = matching[0];
        assert_eq!(
            rule.ports.as_ref().unwrap().len(),
            1,
            "{port}: that port only"
        );
        let from = rule
            .from
            .as_ref()
            .expect("a rule without `from` admits everyone");
        assert_eq!(from.len(), 1, "{port}: one kind of peer");
        assert!(from[0].ip_block.is_none(), "{port}: pods, not addresses");
        &from[0]
    };
    let grpc = rule_for("grpc");
    assert!(
        grpc.namespace_selector.is_none(),
        "agents of this namespace only"
    );
    assert_eq!(
        labels(&grpc.pod_selector),
        agent.selector.match_labels.clone().unwrap(),
        "gRPC: the agent's pods"
    );
    selects_template(&labels(&grpc.pod_selector), &agent.template, "gRPC peers");
    let metrics = rule_for("metrics");
    assert_eq!(
        labels(&metrics.namespace_selector),
        BTreeMap::from([(
            "kubernetes.io/metadata.name".to_string(),
            scraper.namespace.clone()
        )]),
        "metrics: the scraper's namespace"
    );
    assert_eq!(
        labels(&metrics.pod_selector),
        scraper.pod_labels,
        "metrics: the scraper's pods"
    );
    // The named ports are the collector container's.
    let pod = pod_spec_sts(objects.stateful_set());
    for port in ["grpc", "metrics"] {
        assert!(
            pod.containers[0]
                .ports
                .iter()
                .flatten()
                .any(|p| p.name.as_deref() == Some(port)),
            "{port}: a port of the collector"
        );
    }
}
