//! The Kubernetes manifests under deploy/: every document parses as its k8s-openapi type and
//! loses no field doing so, and the deployment has the properties its comments and
//! deploy/README.md promise. The agent is least privilege (the exact capability set, read-only
//! mounts). RBAC grants only reading pods. The collector is a StatefulSet without privilege
//! whose headless Service gives each replica a DNS name. The settings (the args and the
//! ConfigMap's config files) parse as the binaries parse them, and the agents' collector list
//! names exactly the StatefulSet's replicas by those names. Agent and collector serve their
//! metrics, are probed at /healthz (liveness) and /readyz (readiness) and carry Prometheus's
//! scrape annotations (the agent's on its pods). Mutual TLS is the default, each agent
//! presenting its node's own certificate, and a NetworkPolicy admits only the agents to the
//! collector's gRPC port and only the scraper to its metrics. The overlays apply: cert-manager
//! issues the collector's certificate, valid for every replica's name, and adds nothing else;
//! sys-admin adds CAP_SYS_ADMIN and nothing else. When `kubectl` is on PATH, its kustomize
//! renders the same objects.
//!
//! Table-driven: [`CASES`] names each variant of the deployment (the base, each overlay) and
//! its fixture under tests/fixtures/manifests/, which says what that variant must hold beyond
//! the checks all pass (tests/deploy/checks.rs). The tests run every case; a failure names it.

mod deploy;

use deploy::checks::{
    check_agent, check_collector, check_network_policy, check_rbac, dns_name_covers, replica_hosts,
    NAMESPACE,
};
use deploy::expected::{Added, Expected};
use deploy::objects::Objects;
use deploy::render::{base_docs, kubectl_kustomize, same_as_kustomize, Variant};
use deploy::{all_files, base_dir, deploy_dir, kustomization, strings};
use serde_json::Value;
use shared::FingerprintConfig;
use std::collections::BTreeSet;

/// A variant of the deployment and the fixture of what it must hold.
struct Case {
    variant: Variant,
    fixture: &'static str,
}

const CASES: [Case; 3] = [
    Case {
        variant: Variant::Base,
        fixture: "base.yaml",
    },
    Case {
        variant: Variant::Overlay("cert-manager"),
        fixture: "cert-manager.yaml",
    },
    Case {
        variant: Variant::Overlay("sys-admin"),
        fixture: "sys-admin.yaml",
    },
];

/// A case as the checks see it: its variant rendered, and its fixture.
struct Rendered {
    variant: Variant,
    docs: Vec<(String, Value)>,
    objects: Objects,
    expected: Expected,
}

/// Runs `check` on every case, saying which case it is so that a failure names it.
fn for_each_case(check: impl Fn(&Rendered)) {
    for case in &CASES {
        eprintln!("case {} ({})", case.variant, case.fixture);
        let docs = case.variant.docs();
        check(&Rendered {
            variant: case.variant,
            objects: Objects::parse(&docs),
            docs,
            expected: Expected::load(case.fixture),
        });
    }
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
    let objects = Objects::parse(&docs);
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
fn the_config_map_holds_the_fingerprint_defaults() {
    let objects = Objects::parse(&base_docs());
    let cm = objects.config_map();
    assert_eq!(cm.metadata.name.as_deref(), Some("audio-tracer-config"));
    let data = cm.data.as_ref().expect("data");
    assert_eq!(
        data.keys().map(String::as_str).collect::<Vec<_>>(),
        ["agent.yaml", "collector.yaml"]
    );
    let agent: std::collections::BTreeMap<String, serde_json::Value> =
        serde_saphyr::from_str(&data["agent.yaml"]).expect("agent.yaml: a mapping");
    let defaults = FingerprintConfig::default();
    assert_eq!(
        agent["window"], defaults.window,
        "shared::FingerprintConfig::default().window"
    );
    assert_eq!(
        agent["keep-per-256"], defaults.keep_per_256,
        "…keep_per_256"
    );
    // And the agent reads them from its file.
    let args = check_agent(&objects, &Expected::load("base.yaml").agent);
    assert_eq!(args.targets.window, defaults.window);
    assert_eq!(args.targets.keep_per_256, defaults.keep_per_256);
}

#[test]
fn overlay_kustomizations_list_every_file() {
    let overlays: Vec<&str> = CASES
        .iter()
        .filter_map(|case| match case.variant {
            Variant::Overlay(name) => Some(name),
            Variant::Base => None,
        })
        .collect();
    let dirs = all_files(&deploy_dir().join("overlays"));
    assert_eq!(
        dirs,
        overlays.iter().map(|name| name.to_string()).collect(),
        "every overlay is a case here"
    );
    for name in overlays {
        let dir = Variant::Overlay(name).dir();
        let k = kustomization(&dir);
        let patches = k["patches"].as_array().into_iter().flatten();
        let mut listed: BTreeSet<String> = patches
            .map(|p| p["path"].as_str().unwrap().to_string())
            .collect();
        listed.extend(strings(&k["resources"]).into_iter().skip(1));
        let mut files = all_files(&dir);
        files.remove("kustomization.yaml");
        assert_eq!(
            listed, files,
            "{name}: every patch and resource file used, and nothing else"
        );
    }
}

#[test]
fn agent_is_least_privilege_and_wired() {
    for_each_case(|case| {
        check_agent(&case.objects, &case.expected.agent);
    });
}

#[test]
fn cluster_role_reads_pods_only() {
    for_each_case(|case| check_rbac(&case.objects));
}

#[test]
fn collector_replicas_have_no_privilege_and_the_headless_service_their_ports() {
    for_each_case(|case| check_collector(&case.objects, &case.expected.collector));
}

#[test]
fn overlays_change_only_what_their_fixture_lists() {
    let base = base_docs();
    for_each_case(|case| {
        let changes = &case.expected.changes;
        if let Variant::Base = case.variant {
            assert!(changes.is_empty(), "the base changes nothing");
            return;
        }
        let mut applied = 0;
        for ((file, patched), (_, original)) in case.docs.iter().zip(&base) {
            let mut patched = patched.clone();
            let mut original = original.clone();
            let kind = patched["kind"].clone();
            for change in changes.iter().filter(|c| kind == c.kind.as_str()) {
                assert!(
                    remove_at(&mut patched, &change.path),
                    "{file}: the overlay has no {}",
                    change.path
                );
                remove_at(&mut original, &change.path);
                applied += 1;
            }
            assert_eq!(patched, original, "{file}");
        }
        assert_eq!(applied, changes.len(), "every change names an object");
        let added: Vec<Added> = case.docs[base.len()..]
            .iter()
            .map(|(_, d)| Added {
                kind: d["kind"].as_str().unwrap().into(),
                name: d["metadata"]["name"].as_str().unwrap().into(),
            })
            .collect();
        assert_eq!(added, case.expected.added, "the objects the overlay adds");
    });
}

#[test]
fn mutual_tls_is_the_default_in_every_variant() {
    for_each_case(|case| {
        let (agent, collector) = (&case.expected.agent, &case.expected.collector);
        for url in &agent.collectors {
            assert!(url.starts_with("https://"), "{url}");
        }
        assert!(
            agent.tls.is_some() && collector.tls.is_some(),
            "both sides' certificates"
        );
    });
}

#[test]
fn network_policy_admits_only_agents_and_the_scraper() {
    for_each_case(|case| check_network_policy(&case.objects, &case.expected.scraper));
}

/// cert-manager's CA signs the collector's certificate into the Secret every replica mounts,
/// with the name the agents check and each replica's own; the agents' certificates come from
/// certs.sh with that CA.
#[test]
fn cert_manager_issues_the_certificate_the_collector_mounts() {
    let objects = Objects::parse(&Variant::Overlay("cert-manager").docs());
    let agent_args = check_agent(&objects, &Expected::load("cert-manager.yaml").agent);
    let cert = objects.cert_manager("Certificate", "audio-tracer-collector");
    let spec = &cert["spec"];
    assert_eq!(spec["secretName"], "audio-tracer-collector-tls");
    let names = strings(&spec["dnsNames"]);
    assert!(names.contains(&agent_args.tls_server_name), "{names:?}");
    for host in replica_hosts(&objects, &agent_args) {
        assert!(
            names.iter().any(|name| dns_name_covers(name, &host)),
            "{host}: not covered by {names:?}"
        );
    }
    assert_eq!(strings(&spec["usages"]), ["server auth"]);
    let issuer = objects.cert_manager("Issuer", spec["issuerRef"]["name"].as_str().unwrap());
    let ca_secret = issuer["spec"]["ca"]["secretName"]
        .as_str()
        .expect("a CA issuer");
    let ca = objects.cert_manager("Certificate", "audio-tracer-ca");
    assert_eq!(ca["spec"]["isCA"], true);
    assert_eq!(ca["spec"]["secretName"], ca_secret);
    let root = objects.cert_manager("Issuer", ca["spec"]["issuerRef"]["name"].as_str().unwrap());
    assert!(root["spec"]["selfSigned"].is_object());
    for o in &objects.cert_manager {
        assert_eq!(o["metadata"]["namespace"], NAMESPACE);
        assert_eq!(
            o["spec"]["issuerRef"]["kind"].as_str().unwrap_or("Issuer"),
            "Issuer"
        );
    }
    // The kustomization's first lines tell how the agents' Secret is made.
    let text = std::fs::read_to_string(
        Variant::Overlay("cert-manager")
            .dir()
            .join("kustomization.yaml"),
    )
    .unwrap();
    assert!(text.contains(&format!("certs.sh --ca-secret {ca_secret}")));
}

/// Removes what the JSON pointer `path` names in `doc`; whether there was anything.
fn remove_at(doc: &mut Value, path: &str) -> bool {
    let (parent, key) = path.rsplit_once('/').expect("a JSON pointer");
    match doc.pointer_mut(parent) {
        Some(Value::Object(m)) => m.remove(key).is_some(),
        _ => false,
    }
}

#[test]
fn kustomize_renders_the_objects_tested_here() {
    for_each_case(|case| {
        let dir = case.variant.dir();
        if let Some(rendered) = kubectl_kustomize(&dir) {
            same_as_kustomize(&case.docs, &rendered, &dir);
        }
    });
}
