//! Pod attribution for the agent of one node: container id → pod, container and workload.
//!
//! A kube-rs reflector watches only the pods bound to this node (field selector
//! `spec.nodeName=<node>`, the node name coming from the downward API in `NODE_NAME`), and a
//! [`PodIndex`] derived from its store answers, from sync code, which pod a container id (as
//! found in a cgroup path) belongs to. Ids of containers that went away — a restarted
//! container's previous id, a deleted pod's containers — stay resolvable for a retention period
//! (a process of the old container may still be traced for a moment). Which of these
//! containers to trace is the [`Selector`]'s business ([`PodIndex::select`]).

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use futures_util::StreamExt;
use k8s_openapi::api::core::v1::{ContainerStatus, Pod};
use kube::runtime::{reflector, watcher, WatchStreamExt};
use kube::{Api, Client, ResourceExt};

// Selection is its own module; its types are this one's API, as `PodIndex::select` takes them.
pub use crate::selector::{LabelSelector, Requirement, Selector};

/// The environment variable the DaemonSet sets from `fieldRef: spec.nodeName`: the agent's
/// --node when that is not given otherwise.
pub const NODE_NAME_ENV: &str = "NODE_NAME";

/// How long the id of a container that left every pod status stays resolvable.
pub const DEFAULT_RETENTION: Duration = Duration::from_secs(120);

/// The label the Deployment controller puts on a ReplicaSet's pods (and appends to its name).
const POD_TEMPLATE_HASH: &str = "pod-template-hash";

/// A client for the agent: in the cluster, the service account's token and CA; elsewhere the
/// kubeconfig. Installs ring as rustls's crypto provider first (the only one built), so that
/// building the TLS config can never panic on an ambiguous provider.
pub async fn client() -> anyhow::Result<Client> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let config = kube::Config::infer().await.map_err(|e| {
        // kube's message repeats its cause several times; the kubeconfig's is the one to fix
        // outside a cluster.
        let kubeconfig = std::error::Error::source(&e).map_or(e.to_string(), |c| c.to_string());
        anyhow::anyhow!("no Kubernetes configuration: not in a cluster, and {kubeconfig}")
    })?;
    Client::try_from(config).context("building the Kubernetes client")
}

/// Who a container belongs to.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PodMeta {
    pub namespace: String,
    pub pod: String,
    pub pod_uid: String,
    pub container: String,
    /// The owning workload: the Deployment (a ReplicaSet owner with its `pod-template-hash`
    /// suffix stripped), StatefulSet, DaemonSet, Job or other controller's name; the pod's own
    /// name for a bare or static pod.
    pub workload: String,
    /// `Deployment`, `ReplicaSet` (not made by a Deployment), `StatefulSet`, `DaemonSet`, `Job`,
    /// any other controller kind as written in the owner reference, or `Pod`.
    pub workload_kind: String,
    pub labels: BTreeMap<String, String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ContainerKind {
    Init,
    App,
    Ephemeral,
}

/// One container of a pod on this node, for target selection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodContainer {
    pub meta: PodMeta,
    pub kind: ContainerKind,
    /// The current container's id without the runtime scheme (64 hex digits for containerd,
    /// CRI-O and Docker); `None` until the runtime created it.
    pub container_id: Option<String>,
    /// `containerd`, `cri-o`, `docker`, …: the scheme of `status.containerStatuses[].containerID`.
    pub runtime: Option<String>,
    /// `lastState.terminated.containerID`: the container before the last restart.
    pub previous_container_id: Option<String>,
    pub restart_count: i32,
    pub running: bool,
}

/// Splits `containerd://<id>` into (`Some("containerd")`, `<id>`); a bare id has no runtime.
pub fn split_container_id(id: &str) -> (Option<&str>, &str) {
    let id = id.trim();
    match id.split_once("://") {
        Some((runtime, bare)) => (Some(runtime), bare),
        None => (None, id),
    }
}

/// Pod uids in systemd cgroup names use `_` for `-`; accept both.
fn normalize_uid(uid: &str) -> String {
    uid.trim().replace('_', "-")
}

#[derive(Default)]
struct State {
    synced: bool,
    containers: Vec<PodContainer>,
    /// Bare container id (current and previous) → owner, for every pod in the store.
    live: HashMap<String, PodMeta>,
    /// Ids that left the store, with when they left.
    retired: HashMap<String, (PodMeta, Instant)>,
}

struct Shared {
    state: RwLock<State>,
    retention: Duration,
    synced: tokio::sync::watch::Sender<bool>,
}

/// Aborts the reflector task when the last [`PodIndex`] clone goes.
struct TaskGuard(tokio::task::JoinHandle<()>);

impl Drop for TaskGuard {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The pods of this node, indexed by container id and pod uid. Cheap to clone; queries take a
/// read lock and never wait on the API server.
#[derive(Clone)]
pub struct PodIndex {
    shared: Arc<Shared>,
    _task: Arc<TaskGuard>,
}

impl fmt::Debug for PodIndex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.shared.state.read().unwrap();
        f.debug_struct("PodIndex")
            .field("synced", &state.synced)
            .field("containers", &state.containers.len())
            .field("retired_ids", &state.retired.len())
            .finish()
    }
}

/// Starts watching the pods of `node` (with [`DEFAULT_RETENTION`]); returns at once, the index
/// fills when the first list arrives (see [`PodIndex::wait_synced`]).
pub async fn start(client: Client, node: &str) -> anyhow::Result<PodIndex> {
    start_with_retention(client, node, DEFAULT_RETENTION).await
}

/// [`start`] with how long ids of containers that went away stay resolvable.
pub async fn start_with_retention(
    client: Client,
    node: &str,
    retention: Duration,
) -> anyhow::Result<PodIndex> {
    if node.trim().is_empty() || node.contains([',', '=', '!']) {
        bail!("invalid node name {node:?}");
    }
    let api: Api<Pod> = Api::all(client);
    let config = watcher::Config::default().fields(&format!("spec.nodeName={node}"));
    let (reader, writer) = reflector::store();
    // The store keeps what attribution reads: managed fields and annotations (a kubectl
    // last-applied-configuration can be kilobytes) are dropped on arrival.
    let trimmed = watcher(api, config).modify(|pod| {
        pod.managed_fields_mut().clear();
        pod.annotations_mut().clear();
    });
    let events = reflector(writer, trimmed).default_backoff();
    let shared = Arc::new(Shared {
        state: RwLock::new(State::default()),
        retention,
        synced: tokio::sync::watch::channel(false).0,
    });
    let task_shared = shared.clone();
    let node = node.to_string();
    let task = tokio::spawn(async move {
        let mut events = std::pin::pin!(events);
        let mut failures = Failures::default();
        while let Some(event) = events.next().await {
            match event {
                // The store swaps in a fresh list atomically at InitDone.
                Ok(watcher::Event::Init | watcher::Event::InitApply(_)) => {}
                Ok(
                    watcher::Event::InitDone | watcher::Event::Apply(_) | watcher::Event::Delete(_),
                ) => {
                    failures.recovered(&node);
                    task_shared.rebuild(&reader.state());
                }
                // The watcher re-lists or re-watches by itself (with backoff); 410 Gone included.
                Err(e) => failures.failed(&node, &e),
            }
        }
    });
    Ok(PodIndex {
        shared,
        _task: Arc::new(TaskGuard(task)),
    })
}

/// The watch's errors, said without flooding: the first at once, then at most one line a
/// minute with how many there were, and one when the watch works again.
#[derive(Default)]
struct Failures {
    /// Errors since the last line, and when that line was.
    unsaid: u64,
    said_at: Option<Instant>,
}

impl Failures {
    const EVERY: Duration = Duration::from_secs(60);

    fn failed(&mut self, node: &str, e: &dyn fmt::Display) {
        self.unsaid += 1;
        match self.said_at {
            None => tracing::warn!("pods: watching the pods of node {node}: {e} (retrying)"),
            Some(at) if at.elapsed() >= Self::EVERY => tracing::warn!(
                "pods: watching the pods of node {node}: still failing, {} errors in the last {} s: {e}",
                self.unsaid,
                at.elapsed().as_secs()
            ),
            Some(_) => return,
        }
        self.unsaid = 0;
        self.said_at = Some(Instant::now());
    }

    fn recovered(&mut self, node: &str) {
        if self.said_at.take().is_some() {
            tracing::info!("pods: watching the pods of node {node} again");
            self.unsaid = 0;
        }
    }
}

impl Shared {
    fn rebuild(&self, pods: &[Arc<Pod>]) {
        let now = Instant::now();
        let mut containers: Vec<PodContainer> =
            pods.iter().flat_map(|p| containers_of(p)).collect();
        containers.sort_by(|a, b| {
            (&a.meta.namespace, &a.meta.pod, a.kind, &a.meta.container).cmp(&(
                &b.meta.namespace,
                &b.meta.pod,
                b.kind,
                &b.meta.container,
            ))
        });
        let mut live = HashMap::new();
        for c in &containers {
            if let Some(id) = &c.container_id {
                live.insert(id.clone(), c.meta.clone());
            }
        }
        for c in &containers {
            if let Some(id) = &c.previous_container_id {
                live.entry(id.clone()).or_insert_with(|| c.meta.clone());
            }
        }
        let mut guard = self.state.write().unwrap();
        let state = &mut *guard;
        let old = std::mem::replace(&mut state.live, live);
        for (id, meta) in old {
            if !state.live.contains_key(&id) {
                state.retired.entry(id).or_insert((meta, now));
            }
        }
        let (live, retention) = (&state.live, self.retention);
        state.retired.retain(|id, (_, since)| {
            !live.contains_key(id) && now.duration_since(*since) < retention
        });
        state.containers = containers;
        let first = !state.synced;
        state.synced = true;
        drop(guard);
        if first {
            self.synced.send_replace(true);
        }
    }
}

impl PodIndex {
    /// The pod and container of a container id: `containerd://<hex>`, `cri-o://<hex>`,
    /// `docker://<hex>` or the bare id (as in a cgroup path). Current containers, their
    /// previous instance (`lastState`), and ids that went away less than the retention ago.
    pub fn by_container_id(&self, id: &str) -> Option<PodMeta> {
        let (_, bare) = split_container_id(id);
        if bare.is_empty() {
            return None;
        }
        let state = self.shared.state.read().unwrap();
        if let Some(meta) = state.live.get(bare) {
            return Some(meta.clone());
        }
        state
            .retired
            .get(bare)
            .filter(|(_, since)| since.elapsed() < self.shared.retention)
            .map(|(meta, _)| meta.clone())
    }

    /// Every container (init, app, ephemeral) of the pod with this uid (`-` or the `_` of
    /// systemd cgroup names), including the pods deleted less than the retention ago.
    pub fn by_pod_uid(&self, uid: &str) -> Vec<PodMeta> {
        let uid = normalize_uid(uid);
        let state = self.shared.state.read().unwrap();
        let mut out: Vec<PodMeta> = Vec::new();
        let live = state.containers.iter().map(|c| &c.meta);
        let retired = state
            .retired
            .values()
            .filter(|(_, since)| since.elapsed() < self.shared.retention)
            .map(|(meta, _)| meta);
        for meta in live.chain(retired) {
            if meta.pod_uid == uid && !out.contains(meta) {
                out.push(meta.clone());
            }
        }
        out
    }

    /// Every container of every pod now on this node (sorted by namespace, pod, kind, name).
    pub fn pods(&self) -> Vec<PodContainer> {
        self.shared.state.read().unwrap().containers.clone()
    }

    /// The containers of [`pods`](Self::pods) that `selector` matches.
    pub fn select(&self, selector: &Selector) -> Vec<PodContainer> {
        let state = self.shared.state.read().unwrap();
        let labels = match selector.label_selector() {
            Ok(labels) => labels,
            Err(_) => return Vec::new(),
        };
        state
            .containers
            .iter()
            .filter(|c| selector.matches_with(&labels, &c.meta))
            .cloned()
            .collect()
    }

    /// Whether the first list of this node's pods has arrived.
    pub fn is_synced(&self) -> bool {
        self.shared.state.read().unwrap().synced
    }

    /// Waits up to `timeout` for the first list; returns whether it arrived.
    pub async fn wait_synced(&self, timeout: Duration) -> bool {
        let mut rx = self.shared.synced.subscribe();
        tokio::time::timeout(timeout, rx.wait_for(|synced| *synced))
            .await
            .is_ok_and(|r| r.is_ok())
    }
}

/// The owning workload of a pod: (kind, name).
pub fn workload_of(pod: &Pod) -> (String, String) {
    let meta = &pod.metadata;
    let name = meta.name.clone().unwrap_or_default();
    let owner = meta
        .owner_references
        .iter()
        .flatten()
        .find(|o| o.controller == Some(true));
    let Some(owner) = owner else {
        return ("Pod".into(), name);
    };
    match owner.kind.as_str() {
        "ReplicaSet" => {
            let hash = meta.labels.as_ref().and_then(|l| l.get(POD_TEMPLATE_HASH));
            let deployment =
                hash.and_then(|h| owner.name.strip_suffix(h.as_str())?.strip_suffix('-'));
            match deployment {
                Some(d) if !d.is_empty() => ("Deployment".into(), d.to_string()),
                _ => ("ReplicaSet".into(), owner.name.clone()),
            }
        }
        // A static pod's mirror: the kubelet of that node owns it.
        "Node" => ("Pod".into(), name),
        kind => (kind.to_string(), owner.name.clone()),
    }
}

/// A kind of container: the names in the spec, the statuses.
type Group<'a> = (
    ContainerKind,
    Vec<&'a str>,
    Option<&'a Vec<ContainerStatus>>,
);

/// Every container of a pod, spec order, with what its statuses say.
pub fn containers_of(pod: &Pod) -> Vec<PodContainer> {
    let meta = &pod.metadata;
    let (workload_kind, workload) = workload_of(pod);
    let base = PodMeta {
        namespace: meta.namespace.clone().unwrap_or_default(),
        pod: meta.name.clone().unwrap_or_default(),
        pod_uid: meta.uid.clone().unwrap_or_default(),
        container: String::new(),
        workload,
        workload_kind,
        labels: meta.labels.clone().unwrap_or_default(),
    };
    let spec = pod.spec.as_ref();
    let status = pod.status.as_ref();
    let groups: [Group; 3] = [
        (
            ContainerKind::Init,
            spec.and_then(|s| s.init_containers.as_ref())
                .map(|v| v.iter().map(|c| c.name.as_str()).collect())
                .unwrap_or_default(),
            status.and_then(|s| s.init_container_statuses.as_ref()),
        ),
        (
            ContainerKind::App,
            spec.map(|s| s.containers.iter().map(|c| c.name.as_str()).collect())
                .unwrap_or_default(),
            status.and_then(|s| s.container_statuses.as_ref()),
        ),
        (
            ContainerKind::Ephemeral,
            spec.and_then(|s| s.ephemeral_containers.as_ref())
                .map(|v| v.iter().map(|c| c.name.as_str()).collect())
                .unwrap_or_default(),
            status.and_then(|s| s.ephemeral_container_statuses.as_ref()),
        ),
    ];
    let mut out = Vec::new();
    for (kind, mut names, statuses) in groups {
        let statuses = statuses.map(Vec::as_slice).unwrap_or_default();
        for s in statuses {
            if !names.contains(&s.name.as_str()) {
                names.push(&s.name);
            }
        }
        for name in names {
            let status = statuses.iter().find(|s| s.name == name);
            let (runtime, id) = match status.and_then(|s| s.container_id.as_deref()) {
                Some(full) => match split_container_id(full) {
                    (runtime, bare) if !bare.is_empty() => {
                        (runtime.map(str::to_string), Some(bare.to_string()))
                    }
                    _ => (None, None),
                },
                None => (None, None),
            };
            let previous = status
                .and_then(|s| {
                    s.last_state
                        .as_ref()?
                        .terminated
                        .as_ref()?
                        .container_id
                        .as_deref()
                })
                .map(|full| split_container_id(full).1.to_string())
                .filter(|bare| !bare.is_empty() && Some(bare) != id.as_ref());
            out.push(PodContainer {
                meta: PodMeta {
                    container: name.to_string(),
                    ..base.clone()
                },
                kind,
                container_id: id,
                runtime,
                previous_container_id: previous,
                restart_count: status.map_or(0, |s| s.restart_count),
                running: status
                    .is_some_and(|s| s.state.as_ref().is_some_and(|st| st.running.is_some())),
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn container_ids_of_every_runtime() {
        let hex = "3f4e1b2a9c8d7e6f5a4b3c2d1e0f9a8b7c6d5e4f3a2b1c0d9e8f7a6b5c4d3e2f";
        for runtime in ["containerd", "cri-o", "docker"] {
            let full = format!("{runtime}://{hex}");
            assert_eq!(split_container_id(&full), (Some(runtime), hex));
        }
        assert_eq!(split_container_id(hex), (None, hex));
        assert_eq!(
            normalize_uid("8f6a0c4e_3b1d_4e8a_9c2f_5d7b1a0e6c3f"),
            "8f6a0c4e-3b1d-4e8a-9c2f-5d7b1a0e6c3f"
        );
    }
}
