//! Pod attribution against a fake API server (`phase_4_k8s::testbed::api`): a minimal HTTP/1.1 server on a
//! loopback port that answers `GET /api/v1/pods` like kube-apiserver does — the PodList in
//! `fixtures/podlist*.json` (filtered by the `spec.nodeName` field selector when one is given)
//! and, for `watch=true`, a chunked stream of newline-delimited WatchEvents that each test feeds
//! line by line from `fixtures/watch-*.jsonl`. Every request is recorded, so that the tests can
//! check that the agent only ever asked for its own node's pods.
//!
//! The fixtures hold node-b pods and node-b watch events too: the server drops them only when the
//! request carries the field selector, as the real API server would.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use phase_4_k8s::pods::{self, ContainerKind, PodContainer, PodIndex, PodMeta, Selector};
use phase_4_k8s::testbed::api::FakeApi;
use serde_json::Value;
use tokio::net::TcpListener;

const NODE: &str = "node-a";
/// Every wait for the index to catch up.
const WAIT: Duration = Duration::from_secs(5);
/// Retention for the tests that watch an id expire.
const RETENTION: Duration = Duration::from_millis(1500);

const PODLIST: &str = include_str!("fixtures/podlist.json");
const PODLIST_RELIST: &str = include_str!("fixtures/podlist-relist.json");
const WATCH_CHURN: &str = include_str!("fixtures/watch-churn.jsonl");
const WATCH_RESTART: &str = include_str!("fixtures/watch-restart.jsonl");
const WATCH_GONE: &str = include_str!("fixtures/watch-gone.jsonl");

// Container ids in the fixtures (the 64-hex part of `containerd://…`).
const X2_ASR_0: &str = "3e30890462e54457ae9f3e62a97c6e4531587529616aed66315a86177249f650";
const X2_ASR_1: &str = "8f75ab45dafb392808d90928926dd1eb0b436ed55b7c78c882f85d5d8ab2fd90";
const X2_ASR_2: &str = "16063ae3c2224decd0fe4b219450974317ea4d81e0408896273ae9e14938789c";
const X2_FETCH: &str = "83018823609b988ce354513d222ee9986556e6c07b19b7bf87db025b36af2e05";
const X2_EXPORTER: &str = "f4c70f9621bb163907f0accdb689c21d39d63762517fc696fc9466adea8f33c5";
const GW0_PREVIOUS: &str = "71a012f6aee17a21b0f70aa62c4548f6ed956bd184774457cca9e4bbbf30df7b";
const GW0_CURRENT: &str = "cc540e98b26f3c863692f4983aa316a0071a6f9fc87cae44161669c4c0f85fdc";
const GW1_NODE_B: &str = "0883764538c52b45a6d686582cb304448521d6062e34ddf6c87dd9f280c49c77";
const AGENT: &str = "93ee205faa56a66d089134ada58e56a3ae814b36b77d7fa459a6432e62bf23e8";
const DBG_SHELL: &str = "e38377b485d1154b29f11702f9faaaa08979b2d6f2f767bd8c5b611b95398b8f";
const DBG_DEBUGGER: &str = "1e41b9eed7e307828eb4d357c61b4de16bc11305c5f662ed6b94624c12b8ef90";
const JOB: &str = "0b5f514e4696ccdfee5ab69bbfe94ae41ccabafd694a2e49cac28eb75bdea2b1";
const KUBE_VIP: &str = "5935f1f3df17443e746c15254734be7dc430e3315c9e9888b1ebfb6225705a38";
const TTS_NODE_B: &str = "8931f66f46829b414e4d9298c67675eb467bf287461af5d790d419783dbf68e0";
const TTS2_NODE_B: &str = "35645a76a041a1736b8ffe059e310a7f0e91ad04d670b39b357a356c2a5d72cf";
const P8_FETCH: &str = "cce863c6e23dea00bb5828cb5af599a3601677a246bc3d7c831fa576cdabece4";
const P8_ASR: &str = "515991333a0ad25a4e31a16446989b83c881db81b578696110b0e29728c2834f";
const P8_EXPORTER: &str = "99a229a44cd7d529fb3b7fa5fbafe21bf6cea54617d3af1b5cb5651ba7415576";
const VAD: &str = "6a56fe96c25378b83097c5d36f1cad2154b2ed46bd3df2951a7cbe5efc344bfc";

const X2_UID: &str = "8f6a0c4e-3b1d-4e8a-9c2f-5d7b1a0e6c3f";
const DBG_UID: &str = "d4c3b2a1-0f9e-4d8c-a7b6-c5d4e3f2a1b0";

// ---------------------------------------------------------------------------------------------
// Helpers

async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !cond() {
        assert!(Instant::now() < deadline, "not within {WAIT:?}: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn lines(jsonl: &str) -> Vec<&str> {
    jsonl.lines().filter(|l| !l.trim().is_empty()).collect()
}

fn container_names(index: &PodIndex) -> Vec<String> {
    index
        .pods()
        .iter()
        .map(|c| format!("{}/{}/{}", c.meta.namespace, c.meta.pod, c.meta.container))
        .collect()
}

fn find(index: &PodIndex, pod: &str, container: &str) -> Option<PodContainer> {
    index
        .pods()
        .into_iter()
        .find(|c| c.meta.pod == pod && c.meta.container == container)
}

fn container(index: &PodIndex, id: &str) -> Option<String> {
    index
        .by_container_id(id)
        .map(|m| format!("{}/{}/{}", m.namespace, m.pod, m.container))
}

async fn started(api: &FakeApi, retention: Duration) -> PodIndex {
    let index = pods::start_with_retention(api.client().unwrap(), NODE, retention)
        .await
        .unwrap();
    assert!(index.wait_synced(WAIT).await, "no initial list");
    // The watch is open (the fake server saw it) before a test feeds events.
    eventually("the first watch", || !api.watches().is_empty()).await;
    index
}

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Scenarios

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn initial_list_names_every_container_and_its_workload() {
    let api = FakeApi::start(PODLIST).await.unwrap();
    let index = pods::start(api.client().unwrap(), NODE).await.unwrap();
    assert!(index.wait_synced(WAIT).await, "no initial list");
    eventually("the first watch", || !api.watches().is_empty()).await;

    assert_eq!(
        container_names(&index),
        [
            "audio-tracer/audio-tracer-agent-5xkzv/agent",
            "default/debug-shell/shell",
            "default/debug-shell/debugger-8x7pq",
            "kube-system/kube-vip-node-a/kube-vip",
            "voice/asr-7d9c6b5f8d-x2k4q/fetch-model",
            "voice/asr-7d9c6b5f8d-x2k4q/asr",
            "voice/asr-7d9c6b5f8d-x2k4q/metrics-exporter",
            "voice/media-gateway-0/gateway",
            "voice/transcode-batch-28461540-7xq2p/transcode",
        ]
    );

    // A Deployment's pod, by the id as the status writes it and as a cgroup path gives it.
    let asr = PodMeta {
        namespace: "voice".into(),
        pod: "asr-7d9c6b5f8d-x2k4q".into(),
        pod_uid: X2_UID.into(),
        container: "asr".into(),
        workload: "asr".into(),
        workload_kind: "Deployment".into(),
        labels: labels(&[
            ("app", "asr"),
            ("app.kubernetes.io/part-of", "voice-pipeline"),
            ("pod-template-hash", "7d9c6b5f8d"),
            ("tier", "backend"),
        ]),
    };
    assert_eq!(
        index.by_container_id(&format!("containerd://{X2_ASR_0}")),
        Some(asr.clone())
    );
    assert_eq!(index.by_container_id(X2_ASR_0), Some(asr.clone()));
    // The init container (completed) and the sidecar.
    assert_eq!(
        index.by_container_id(X2_FETCH).map(|m| m.container),
        Some("fetch-model".into())
    );
    assert_eq!(
        find(&index, "asr-7d9c6b5f8d-x2k4q", "fetch-model")
            .unwrap()
            .kind,
        ContainerKind::Init
    );
    assert_eq!(
        index.by_container_id(X2_EXPORTER).map(|m| m.container),
        Some("metrics-exporter".into())
    );

    // A StatefulSet's pod that restarted once: both ids resolve.
    let gw = index.by_container_id(GW0_CURRENT).unwrap();
    assert_eq!(
        (
            gw.workload_kind.as_str(),
            gw.workload.as_str(),
            gw.container.as_str()
        ),
        ("StatefulSet", "media-gateway", "gateway")
    );
    assert_eq!(index.by_container_id(GW0_PREVIOUS), Some(gw));
    let gw = find(&index, "media-gateway-0", "gateway").unwrap();
    assert_eq!(gw.container_id.as_deref(), Some(GW0_CURRENT));
    assert_eq!(gw.previous_container_id.as_deref(), Some(GW0_PREVIOUS));
    assert_eq!(gw.runtime.as_deref(), Some("containerd"));
    assert_eq!((gw.restart_count, gw.running), (1, true));

    let agent = index.by_container_id(AGENT).unwrap();
    assert_eq!(
        (agent.workload_kind.as_str(), agent.workload.as_str()),
        ("DaemonSet", "audio-tracer-agent")
    );
    let job = index.by_container_id(JOB).unwrap();
    assert_eq!(
        (job.workload_kind.as_str(), job.workload.as_str()),
        ("Job", "transcode-batch-28461540")
    );
    assert!(
        !find(&index, "transcode-batch-28461540-7xq2p", "transcode")
            .unwrap()
            .running
    );
    // A bare pod and its ephemeral (kubectl debug) container.
    let debugger = index.by_container_id(DBG_DEBUGGER).unwrap();
    assert_eq!(
        (
            debugger.workload_kind.as_str(),
            debugger.workload.as_str(),
            debugger.container.as_str()
        ),
        ("Pod", "debug-shell", "debugger-8x7pq")
    );
    assert_eq!(
        find(&index, "debug-shell", "debugger-8x7pq").unwrap().kind,
        ContainerKind::Ephemeral
    );
    // A static pod (its mirror is owned by the Node).
    let vip = index.by_container_id(KUBE_VIP).unwrap();
    assert_eq!(
        (vip.workload_kind.as_str(), vip.workload.as_str()),
        ("Pod", "kube-vip-node-a")
    );

    // node-b's pods were never served, so never resolvable.
    for id in [GW1_NODE_B, TTS_NODE_B] {
        assert_eq!(index.by_container_id(id), None);
    }
    assert_eq!(index.by_container_id("containerd://"), None);
    assert_eq!(index.by_container_id("not-an-id"), None);

    // By pod uid, with dashes or with the underscores of a systemd cgroup slice name.
    let by_uid = index.by_pod_uid(X2_UID);
    let mut names: Vec<_> = by_uid.iter().map(|m| m.container.as_str()).collect();
    names.sort();
    assert_eq!(names, ["asr", "fetch-model", "metrics-exporter"]);
    assert_eq!(index.by_pod_uid(&X2_UID.replace('-', "_")), by_uid);
    assert!(index
        .by_pod_uid("00000000-0000-0000-0000-000000000000")
        .is_empty());

    // Target selection in Kubernetes terms.
    let voice = Selector::new(
        &["voice"],
        Some("app in (asr, media-gateway),tier!=debug"),
        &[],
    )
    .unwrap();
    let picked: Vec<_> = index
        .select(&voice)
        .into_iter()
        .map(|c| format!("{}/{}", c.meta.pod, c.meta.container))
        .collect();
    assert_eq!(
        picked,
        [
            "asr-7d9c6b5f8d-x2k4q/fetch-model",
            "asr-7d9c6b5f8d-x2k4q/asr",
            "asr-7d9c6b5f8d-x2k4q/metrics-exporter",
            "media-gateway-0/gateway"
        ]
    );
    let asr_only = Selector::new(&[], Some("app=asr"), &["asr"]).unwrap();
    assert_eq!(index.select(&asr_only).len(), 1);
    assert!(
        index
            .pods()
            .iter()
            .filter(|c| asr_only.matches(&c.meta))
            .count()
            == 1
    );
    let not_pipeline = Selector::new(&[], Some("!app.kubernetes.io/part-of,tier"), &[]).unwrap();
    let mut pods: Vec<_> = index
        .select(&not_pipeline)
        .into_iter()
        .map(|c| c.meta.pod)
        .collect();
    pods.dedup();
    assert_eq!(pods, ["kube-vip-node-a", "media-gateway-0"]);

    // One list, then a watch from the list's resourceVersion, both for node-a only.
    let lists = api.lists();
    assert_eq!(lists.len(), 1, "{lists:?}");
    let watch = &api.watches()[0];
    assert_eq!(
        watch.query.get("resourceVersion").map(String::as_str),
        Some("48213")
    );
    assert_eq!(
        watch.query.get("allowWatchBookmarks").map(String::as_str),
        Some("true")
    );
    api.only_node_requested(NODE).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_churn_adds_modifies_and_deletes() {
    let api = FakeApi::start(PODLIST).await.unwrap();
    let index = started(&api, RETENTION).await;
    let events = lines(WATCH_CHURN);
    assert_eq!(events.len(), 8);
    assert!(find(&index, "asr-7d9c6b5f8d-p8wzn", "asr").is_none());

    // ADDED: a new asr replica bound to node-a, no container yet; and one on node-b (dropped by
    // the server since the watch has the field selector).
    api.send(events[0]);
    api.send(events[1]);
    eventually("the new replica listed", || {
        find(&index, "asr-7d9c6b5f8d-p8wzn", "asr").is_some()
    })
    .await;
    let pending = find(&index, "asr-7d9c6b5f8d-p8wzn", "asr").unwrap();
    assert_eq!(pending.container_id, None);
    assert_eq!(
        (
            pending.meta.workload_kind.as_str(),
            pending.meta.workload.as_str()
        ),
        ("Deployment", "asr")
    );
    assert!(!container_names(&index).iter().any(|n| n.contains("tts")));

    // MODIFIED: the init container runs.
    api.send(events[2]);
    eventually("the init container resolves", || {
        container(&index, P8_FETCH).as_deref() == Some("voice/asr-7d9c6b5f8d-p8wzn/fetch-model")
    })
    .await;
    assert_eq!(index.by_container_id(P8_ASR), None);

    // MODIFIED: the pod runs.
    api.send(events[3]);
    eventually("the app containers resolve", || {
        index.by_container_id(P8_ASR).is_some() && index.by_container_id(P8_EXPORTER).is_some()
    })
    .await;
    assert_eq!(
        container(&index, P8_ASR).as_deref(),
        Some("voice/asr-7d9c6b5f8d-p8wzn/asr")
    );
    assert!(
        container(&index, P8_FETCH).is_some(),
        "a completed init container stays"
    );
    assert_eq!(index.by_container_id(TTS2_NODE_B), None);

    // BOOKMARK, then the server ends the watch: the agent watches again from the bookmark.
    api.send(events[4]);
    api.close_watch();
    eventually("a second watch", || api.watches().len() >= 2).await;
    assert_eq!(
        api.watches()[1]
            .query
            .get("resourceVersion")
            .map(String::as_str),
        Some("48300")
    );
    assert_eq!(api.lists().len(), 1, "a closed watch needs no re-list");

    // MODIFIED (deletionTimestamp), MODIFIED (terminated), DELETED: the debug pod goes.
    for e in &events[5..8] {
        api.send(e);
    }
    eventually("the debug pod gone from pods()", || {
        !container_names(&index)
            .iter()
            .any(|n| n.contains("debug-shell"))
    })
    .await;
    // ... its containers' processes may still be traced for the retention.
    assert_eq!(
        container(&index, DBG_SHELL).as_deref(),
        Some("default/debug-shell/shell")
    );
    assert_eq!(
        container(&index, DBG_DEBUGGER).as_deref(),
        Some("default/debug-shell/debugger-8x7pq")
    );
    assert_eq!(index.by_pod_uid(DBG_UID).len(), 2);
    eventually("the debug pod's ids expire", || {
        index.by_container_id(DBG_SHELL).is_none() && index.by_container_id(DBG_DEBUGGER).is_none()
    })
    .await;
    assert!(index.by_pod_uid(DBG_UID).is_empty());
    // The rest is untouched.
    assert!(index.by_container_id(X2_ASR_0).is_some());
    assert!(index.by_container_id(P8_ASR).is_some());
    api.only_node_requested(NODE).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarted_container_keeps_its_previous_id_for_a_while() {
    let api = FakeApi::start(PODLIST).await.unwrap();
    let index = started(&api, RETENTION).await;
    let events = lines(WATCH_RESTART);
    assert_eq!(events.len(), 4);
    let asr = || find(&index, "asr-7d9c6b5f8d-x2k4q", "asr").unwrap();
    assert_eq!(asr().container_id.as_deref(), Some(X2_ASR_0));

    // OOM-killed: the dead container is still the current one.
    api.send(events[0]);
    eventually("the container stops", || !asr().running).await;
    assert_eq!(
        container(&index, X2_ASR_0).as_deref(),
        Some("voice/asr-7d9c6b5f8d-x2k4q/asr")
    );

    // Restarted: a new id, the old one in lastState; both resolve to the same container.
    api.send(events[1]);
    eventually("the new container resolves", || {
        index.by_container_id(X2_ASR_1).is_some()
    })
    .await;
    let c = asr();
    assert_eq!(c.container_id.as_deref(), Some(X2_ASR_1));
    assert_eq!(c.previous_container_id.as_deref(), Some(X2_ASR_0));
    assert_eq!((c.restart_count, c.running), (1, true));
    assert_eq!(
        index.by_container_id(&format!("containerd://{X2_ASR_0}")),
        index.by_container_id(X2_ASR_1)
    );

    // Killed again (CrashLoopBackOff), then restarted: the first id left the status; it stays
    // resolvable for the retention, then goes.
    api.send(events[2]);
    api.send(events[3]);
    eventually("the third container resolves", || {
        index.by_container_id(X2_ASR_2).is_some()
    })
    .await;
    let c = asr();
    assert_eq!(c.previous_container_id.as_deref(), Some(X2_ASR_1));
    assert_eq!(c.restart_count, 2);
    assert!(index.by_container_id(X2_ASR_1).is_some());
    assert!(
        index.by_container_id(X2_ASR_0).is_some(),
        "retired id dropped at once"
    );
    eventually("the first id expires", || {
        index.by_container_id(X2_ASR_0).is_none()
    })
    .await;
    assert!(index.by_container_id(X2_ASR_1).is_some() && index.by_container_id(X2_ASR_2).is_some());
    // Its pod uid still names its three containers, once each.
    assert_eq!(index.by_pod_uid(X2_UID).len(), 3);
    api.only_node_requested(NODE).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gone_410_relists() {
    let api = FakeApi::start(PODLIST).await.unwrap();
    let index = started(&api, RETENTION).await;
    assert!(index.by_container_id(DBG_SHELL).is_some());
    assert!(index.by_container_id(VAD).is_none());

    // The watch's resourceVersion is compacted away; meanwhile the debug pod went and a vad pod
    // came: the agent re-lists.
    api.set_list(PODLIST_RELIST).unwrap();
    api.send(lines(WATCH_GONE)[0]);
    eventually("the re-listed pod resolves", || {
        index.by_container_id(VAD).is_some()
    })
    .await;
    assert_eq!(api.lists().len(), 2);
    let vad = index.by_container_id(VAD).unwrap();
    assert_eq!(
        (vad.workload_kind.as_str(), vad.workload.as_str()),
        ("Deployment", "vad")
    );
    assert!(!container_names(&index)
        .iter()
        .any(|n| n.contains("debug-shell")));
    // A pod missing from the re-list is a deletion: retained, then expired.
    eventually("the missing pod's ids expire", || {
        index.by_container_id(DBG_SHELL).is_none()
    })
    .await;
    assert!(index.by_container_id(X2_ASR_0).is_some());
    // And the watch resumes from the new list.
    eventually("a watch after the re-list", || {
        api.watches()
            .iter()
            .any(|w| w.query.get("resourceVersion").map(String::as_str) == Some("49002"))
    })
    .await;
    api.only_node_requested(NODE).unwrap();
}

#[test]
fn workloads_and_runtimes_from_pod_objects() {
    let list: Value = serde_json::from_str(PODLIST).unwrap();
    let pod_json = |name: &str| -> Value {
        list["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["metadata"]["name"] == name)
            .unwrap()
            .clone()
    };
    let pod = |v: Value| -> k8s_openapi::api::core::v1::Pod { serde_json::from_value(v).unwrap() };

    // A ReplicaSet not made by a Deployment (no pod-template-hash label): named as itself.
    let mut rs = pod_json("tts-5c8f7d6b9-lm3nq");
    rs["metadata"]["labels"]
        .as_object_mut()
        .unwrap()
        .remove("pod-template-hash");
    assert_eq!(
        pods::workload_of(&pod(rs)),
        ("ReplicaSet".into(), "tts-5c8f7d6b9".into())
    );
    // An owner that is not the controller does not make a workload.
    let mut bare = pod_json("tts-5c8f7d6b9-lm3nq");
    bare["metadata"]["ownerReferences"][0]["controller"] = Value::Bool(false);
    assert_eq!(
        pods::workload_of(&pod(bare)),
        ("Pod".into(), "tts-5c8f7d6b9-lm3nq".into())
    );

    // CRI-O and Docker ids.
    let mut crio = pod_json("media-gateway-1");
    let hex = GW1_NODE_B;
    crio["status"]["containerStatuses"][0]["containerID"] = Value::String(format!("cri-o://{hex}"));
    let c = &pods::containers_of(&pod(crio))[0];
    assert_eq!(
        (c.runtime.as_deref(), c.container_id.as_deref()),
        (Some("cri-o"), Some(hex))
    );
    let mut docker = pod_json("media-gateway-1");
    docker["status"]["containerStatuses"][0]["containerID"] =
        Value::String(format!("docker://{hex}"));
    let c = &pods::containers_of(&pod(docker))[0];
    assert_eq!(
        (c.runtime.as_deref(), c.container_id.as_deref()),
        (Some("docker"), Some(hex))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_api_server_leaves_the_index_empty_not_stuck() {
    // Nothing listens on this port once the listener is dropped.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    drop(listener);
    let client = kube::Client::try_from(kube::Config::new(url.parse().unwrap())).unwrap();
    let index = pods::start(client, NODE).await.unwrap();
    assert!(!index.wait_synced(Duration::from_millis(300)).await);
    assert!(!index.is_synced());
    assert!(index.pods().is_empty());
    assert_eq!(index.by_container_id(X2_ASR_0), None);
    assert!(pods::start(
        kube::Client::try_from(kube::Config::new(url.parse().unwrap())).unwrap(),
        "a,b"
    )
    .await
    .is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_client_builds_its_tls_on_ring() {
    // As in the cluster (https, no CA given here: the platform verifier): building the rustls
    // config must find ring as the one crypto provider compiled in, and not panic.
    let config = kube::Config::new("https://127.0.0.1:6443".parse().unwrap());
    assert!(kube::Client::try_from(config).is_ok());
}
