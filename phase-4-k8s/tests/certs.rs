//! deploy/certs.sh, run without a cluster (--no-apply): its Secrets hold the keys the
//! manifests mount, and a collector serving its collector certificate admits an agent with a
//! node's certificate as that node and as no other. That certificate, which every collector
//! replica presents, is valid for the name the agents check and for each replica's own name
//! that the agents' config lists. A second run keeps what exists and adds a new node. Needs
//! openssl and kubectl (for the Secrets' YAML) on PATH.

use clap::{CommandFactory, Parser};
use phase_3_multi_node::cli::AgentArgs;
use phase_3_multi_node::collector::{serve, Service};
use phase_3_multi_node::mtls::{ClientTls, ServerTls};
use phase_3_multi_node::proto::collector_client::CollectorClient;
use phase_3_multi_node::proto::SyncRequest;
use serde_json::Value;
use std::path::Path;
use std::process::Command;
use tonic::transport::Endpoint;
use tonic::Code;

fn certs_sh(dir: &Path, nodes: &[&str]) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/certs.sh");
    let out = Command::new(script)
        .args(["--no-apply", "--dir"])
        .arg(dir)
        .args(nodes)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "certs.sh: {stderr}");
}

/// Secret name → its keys, from secrets.yaml.
fn secret_keys(dir: &Path) -> Vec<(String, Vec<String>)> {
    let text = std::fs::read_to_string(dir.join("secrets.yaml")).unwrap();
    let docs: Vec<Value> = serde_saphyr::from_multiple(&text).unwrap();
    docs.iter()
        .map(|d| {
            let name = d["metadata"]["name"].as_str().unwrap().to_string();
            (
                name,
                d["data"].as_object().unwrap().keys().cloned().collect(),
            )
        })
        .collect()
}

#[derive(Parser)]
struct AgentCli {
    #[command(flatten)]
    args: phase_4_k8s::cli::PodAgentArgs,
}

/// The agents' settings: agent.yaml of deploy/base's ConfigMap, parsed as the agent parses it.
fn agent_config() -> AgentArgs {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/base/config-configmap.yaml");
    let config_map: Value =
        serde_saphyr::from_str(&std::fs::read_to_string(manifest).unwrap()).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("agent.yaml");
    std::fs::write(&file, config_map["data"]["agent.yaml"].as_str().unwrap()).unwrap();
    let argv = [
        "agent",
        "--node",
        "node-0",
        "--config",
        file.to_str().unwrap(),
    ]
    .map(Into::into);
    agent::config::parse_from::<AgentCli>(AgentCli::command(), &argv, &[])
        .unwrap_or_else(|e| panic!("agent.yaml: {e:?}"))
        .args
        .agent
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_certificate_admits_its_node_and_no_other() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("pki");
    certs_sh(&dir, &["node-0", "node-1"]);
    let keys = |list: &[&str]| list.iter().map(|k| k.to_string()).collect::<Vec<_>>();
    assert_eq!(
        secret_keys(&dir),
        [
            (
                "audio-tracer-collector-tls".to_string(),
                keys(&["ca.crt", "tls.crt", "tls.key"])
            ),
            (
                "audio-tracer-agent-tls".to_string(),
                keys(&[
                    "ca.crt",
                    "node-0.crt",
                    "node-0.key",
                    "node-1.crt",
                    "node-1.key"
                ])
            ),
        ]
    );

    let tls = ServerTls::from_files(
        &dir.join("collector.crt"),
        &dir.join("collector.key"),
        &dir.join("ca.crt"),
    )
    .unwrap();
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let service = Service::default();
    tokio::spawn(serve(
        service.clone(),
        addr,
        Some(tls),
        std::future::pending(),
    ));
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let nodes = dir.join("nodes");
    // node-0's agent, checking that the collector's certificate carries `server_name`.
    let connect = |server_name: String| {
        let tls = ClientTls::from_files(
            &dir.join("ca.crt"),
            &nodes.join("node-0.crt"),
            &nodes.join("node-0.key"),
            &server_name,
        )
        .unwrap();
        let endpoint = Endpoint::from_shared(format!("https://{addr}")).unwrap();
        async move {
            let channel = endpoint.tls_config(tls.into()).unwrap().connect().await;
            channel.map(CollectorClient::new)
        }
    };
    let sync = |node: &str| SyncRequest {
        node: node.into(),
        t1: 0,
    };

    // The name the agents check on every replica, and each replica's own name in their list.
    let config = agent_config();
    let replicas: Vec<String> = config
        .collector
        .iter()
        .map(|url| tonic::transport::Uri::try_from(url.as_str()).unwrap())
        .map(|uri| uri.host().unwrap().to_string())
        .collect();
    assert!(replicas.len() > 1, "{replicas:?}");
    for name in std::iter::once(&config.tls_server_name).chain(&replicas) {
        let mut client = connect(name.clone())
            .await
            .unwrap_or_else(|e| panic!("{name}: {e:?}"));
        assert!(client.sync(sync("node-0")).await.is_ok(), "{name}");
    }
    // A name the certificate does not carry: the wildcard stands for one label only.
    let stranger = format!("x.{}", replicas[0]);
    assert!(connect(stranger.clone()).await.is_err(), "{stranger}");

    let mut client = connect(config.tls_server_name.clone()).await.unwrap();
    assert!(client.sync(sync("node-0")).await.is_ok());
    let refused = client.sync(sync("node-1")).await.unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    assert!(service.health().contains("node_mismatch=1"));

    // Again, with one more node: the CA and the certificates already made are kept.
    let before = std::fs::read(nodes.join("node-0.crt")).unwrap();
    certs_sh(&dir, &["node-0", "node-1", "node-2"]);
    assert_eq!(std::fs::read(nodes.join("node-0.crt")).unwrap(), before);
    let agent_keys = &secret_keys(&dir)[1].1;
    assert!(
        agent_keys.contains(&"node-2.key".to_string()),
        "{agent_keys:?}"
    );
}
