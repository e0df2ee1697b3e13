//! Pod attribution for the agent of one node: container id → pod, container and workload.
//!
//! A kube-rs reflector watches only the pods bound to this node (field selector
//! `spec.nodeName=<node>`, the node name coming from the downward API in `NODE_NAME`), and a
//! [`PodIndex`] derived from its store answers, from sync code, which pod a container id (as
//! found in a cgroup path) belongs to. Ids of containers that went away — a restarted
//! container's previous id, a deleted pod's containers — stay resolvable for a retention period
//! (a process of the old container may still be traced for a moment).
//!
//! Target selection speaks Kubernetes: a namespace, a label selector string
//! (`app=asr,tier!=debug,env in (prod,staging)`) and a container name, see [`Selector`].

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::str::FromStr;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use futures_util::StreamExt;
use k8s_openapi::api::core::v1::{ContainerStatus, Pod};
use kube::runtime::{reflector, watcher, WatchStreamExt};
use kube::{Api, Client, ResourceExt};

/// The environment variable the DaemonSet sets from `fieldRef: spec.nodeName`.
pub const NODE_NAME_ENV: &str = "NODE_NAME";

/// How long the id of a container that left every pod status stays resolvable.
pub const DEFAULT_RETENTION: Duration = Duration::from_secs(120);

/// The label the Deployment controller puts on a ReplicaSet's pods (and appends to its name).
const POD_TEMPLATE_HASH: &str = "pod-template-hash";

/// This node's name, from the downward API.
pub fn node_name() -> anyhow::Result<String> {
    match std::env::var(NODE_NAME_ENV) {
        Ok(name) if !name.trim().is_empty() => Ok(name.trim().to_string()),
        _ => bail!(
            "{NODE_NAME_ENV} is not set: give the agent env {NODE_NAME_ENV} from the downward API (fieldRef spec.nodeName)"
        ),
    }
}

/// A client for the agent: in the cluster, the service account's token and CA; elsewhere the
/// kubeconfig. Installs ring as rustls's crypto provider first (the only one built), so that
/// building the TLS config can never panic on an ambiguous provider.
pub async fn client() -> anyhow::Result<Client> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    Client::try_default()
        .await
        .context("no Kubernetes client configuration (in-cluster service account or kubeconfig)")
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
        while let Some(event) = events.next().await {
            match event {
                // The store swaps in a fresh list atomically at InitDone.
                Ok(watcher::Event::Init | watcher::Event::InitApply(_)) => {}
                Ok(
                    watcher::Event::InitDone | watcher::Event::Apply(_) | watcher::Event::Delete(_),
                ) => {
                    task_shared.rebuild(&reader.state());
                }
                // The watcher re-lists or re-watches by itself (with backoff); 410 Gone included.
                Err(e) => eprintln!("pods: watching the pods of node {node}: {e}"),
            }
        }
    });
    Ok(PodIndex {
        shared,
        _task: Arc::new(TaskGuard(task)),
    })
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

/// Which pods' containers to trace, in Kubernetes terms. Every field left `None` matches all.
#[derive(Clone, Debug, Default)]
pub struct Selector {
    pub namespace: Option<String>,
    /// A label selector as `kubectl -l` takes it: `app=asr,tier!=debug,env in (prod,staging)`.
    pub labels: Option<String>,
    pub container: Option<String>,
}

impl Selector {
    /// A selector whose label selector is checked now, so that [`matches`](Self::matches) never
    /// meets a malformed one.
    pub fn new(
        namespace: Option<&str>,
        labels: Option<&str>,
        container: Option<&str>,
    ) -> anyhow::Result<Self> {
        let selector = Selector {
            namespace: namespace.map(str::to_string),
            labels: labels.map(str::to_string),
            container: container.map(str::to_string),
        };
        selector.validate()?;
        Ok(selector)
    }

    /// Errors (naming the problem) if the label selector does not parse.
    pub fn validate(&self) -> anyhow::Result<()> {
        self.label_selector().map(|_| ())
    }

    /// The parsed label selector (matching everything when `labels` is `None`).
    pub fn label_selector(&self) -> anyhow::Result<LabelSelector> {
        match &self.labels {
            Some(s) => s.parse(),
            None => Ok(LabelSelector::default()),
        }
    }

    /// Whether the container `meta` names is selected; a malformed label selector selects
    /// nothing (use [`validate`](Self::validate) or [`new`](Self::new) to reject it up front).
    pub fn matches(&self, meta: &PodMeta) -> bool {
        match self.label_selector() {
            Ok(labels) => self.matches_with(&labels, meta),
            Err(_) => false,
        }
    }

    fn matches_with(&self, labels: &LabelSelector, meta: &PodMeta) -> bool {
        self.namespace
            .as_ref()
            .is_none_or(|ns| *ns == meta.namespace)
            && self.container.as_ref().is_none_or(|c| *c == meta.container)
            && labels.matches(&meta.labels)
    }
}

/// One requirement of a label selector.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Requirement {
    /// `key=value` or `key==value`
    Equals(String, String),
    /// `key!=value`: also true when the label is absent
    NotEquals(String, String),
    /// `key in (a,b)`
    In(String, BTreeSet<String>),
    /// `key notin (a,b)`: also true when the label is absent
    NotIn(String, BTreeSet<String>),
    /// `key`
    Exists(String),
    /// `!key`
    DoesNotExist(String),
}

impl Requirement {
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        match self {
            Requirement::Equals(k, v) => labels.get(k) == Some(v),
            Requirement::NotEquals(k, v) => labels.get(k) != Some(v),
            Requirement::In(k, vs) => labels.get(k).is_some_and(|v| vs.contains(v)),
            Requirement::NotIn(k, vs) => labels.get(k).is_none_or(|v| !vs.contains(v)),
            Requirement::Exists(k) => labels.contains_key(k),
            Requirement::DoesNotExist(k) => !labels.contains_key(k),
        }
    }
}

/// A parsed label selector: every requirement must hold (the empty selector matches all).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LabelSelector {
    pub requirements: Vec<Requirement>,
}

impl LabelSelector {
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.requirements.iter().all(|r| r.matches(labels))
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Token {
    Ident(String),
    Eq,
    DoubleEq,
    NotEq,
    Bang,
    Comma,
    Open,
    Close,
}

impl fmt::Display for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Token::Ident(s) => write!(f, "'{s}'"),
            Token::Eq => f.write_str("'='"),
            Token::DoubleEq => f.write_str("'=='"),
            Token::NotEq => f.write_str("'!='"),
            Token::Bang => f.write_str("'!'"),
            Token::Comma => f.write_str("','"),
            Token::Open => f.write_str("'('"),
            Token::Close => f.write_str("')'"),
        }
    }
}

fn tokenize(s: &str) -> anyhow::Result<Vec<Token>> {
    let mut tokens = Vec::new();
    let mut chars = s.chars().peekable();
    while let Some(&c) = chars.peek() {
        match c {
            c if c.is_whitespace() => {
                chars.next();
            }
            ',' | '(' | ')' => {
                chars.next();
                tokens.push(match c {
                    ',' => Token::Comma,
                    '(' => Token::Open,
                    _ => Token::Close,
                });
            }
            '=' => {
                chars.next();
                if chars.peek() == Some(&'=') {
                    chars.next();
                    tokens.push(Token::DoubleEq);
                } else {
                    tokens.push(Token::Eq);
                }
            }
            '!' => {
                chars.next();
                if chars.peek() == Some(&'=') {
                    chars.next();
                    tokens.push(Token::NotEq);
                } else {
                    tokens.push(Token::Bang);
                }
            }
            '<' | '>' => bail!("operator '{c}' is not supported in a pod label selector"),
            _ => {
                let mut ident = String::new();
                while let Some(&c) = chars.peek() {
                    if c.is_whitespace() || ",()=!<>".contains(c) {
                        break;
                    }
                    ident.push(c);
                    chars.next();
                }
                tokens.push(Token::Ident(ident));
            }
        }
    }
    Ok(tokens)
}

/// `[a-z0-9A-Z]([-a-z0-9A-Z_.]*[a-z0-9A-Z])?`, at most 63 characters.
fn is_qualified_part(s: &str) -> bool {
    let alnum = |c: char| c.is_ascii_alphanumeric();
    !s.is_empty()
        && s.len() <= 63
        && s.starts_with(alnum)
        && s.ends_with(alnum)
        && s.chars().all(|c| alnum(c) || "-_.".contains(c))
}

/// A DNS subdomain: lower-case alphanumerics, '-' and '.', at most 253 characters.
fn is_dns_subdomain(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|part| {
            !part.is_empty()
                && part.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
                && part.ends_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
                && part
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        })
}

fn check_key(key: &str) -> anyhow::Result<String> {
    let ok = match key.split_once('/') {
        Some((prefix, name)) => is_dns_subdomain(prefix) && is_qualified_part(name),
        None => is_qualified_part(key),
    };
    if !ok {
        bail!("invalid label key '{key}': [prefix/]name, name of at most 63 alphanumerics, '-', '_', '.' starting and ending alphanumeric");
    }
    Ok(key.to_string())
}

fn check_value(value: &str) -> anyhow::Result<String> {
    if !value.is_empty() && !is_qualified_part(value) {
        bail!("invalid label value '{value}': at most 63 alphanumerics, '-', '_', '.' starting and ending alphanumeric");
    }
    Ok(value.to_string())
}

impl FromStr for LabelSelector {
    type Err = anyhow::Error;

    /// The grammar of `kubectl -l`: requirements separated by commas, each `key`, `!key`,
    /// `key=value`, `key==value`, `key!=value`, `key in (v1,v2)` or `key notin (v1,v2)`.
    fn from_str(s: &str) -> anyhow::Result<Self> {
        parse_label_selector(s).with_context(|| format!("label selector {s:?}"))
    }
}

fn parse_label_selector(s: &str) -> anyhow::Result<LabelSelector> {
    let tokens = tokenize(s)?;
    let mut requirements = Vec::new();
    if tokens.is_empty() {
        return Ok(LabelSelector { requirements });
    }
    let mut it = tokens.into_iter().peekable();
    loop {
        let requirement = match it.next() {
            Some(Token::Bang) => match it.next() {
                Some(Token::Ident(key)) => Requirement::DoesNotExist(check_key(&key)?),
                other => bail!("expected a label key after '!', found {}", describe(other)),
            },
            Some(Token::Ident(key)) => {
                let key = check_key(&key)?;
                match it.peek() {
                    None | Some(Token::Comma) => Requirement::Exists(key),
                    Some(Token::Eq | Token::DoubleEq | Token::NotEq) => {
                        let op = it.next();
                        let value = match it.peek() {
                            Some(Token::Ident(_)) => match it.next() {
                                Some(Token::Ident(v)) => check_value(&v)?,
                                _ => unreachable!(),
                            },
                            None | Some(Token::Comma) => String::new(),
                            Some(other) => bail!("expected a value after '{key}' and its operator, found {other}"),
                        };
                        if op == Some(Token::NotEq) {
                            Requirement::NotEquals(key, value)
                        } else {
                            Requirement::Equals(key, value)
                        }
                    }
                    Some(Token::Ident(word)) if word == "in" || word == "notin" => {
                        let not = word == "notin";
                        it.next();
                        let values = parse_set(&mut it, &key)?;
                        if not {
                            Requirement::NotIn(key, values)
                        } else {
                            Requirement::In(key, values)
                        }
                    }
                    Some(other) => bail!(
                        "expected '=', '==', '!=', 'in', 'notin', ',' or the end after '{key}', found {other}"
                    ),
                }
            }
            other => bail!("expected a requirement, found {}", describe(other)),
        };
        requirements.push(requirement);
        match it.next() {
            None => break,
            Some(Token::Comma) => {}
            Some(other) => bail!("expected ',' or the end, found {other}"),
        }
    }
    Ok(LabelSelector { requirements })
}

fn describe(token: Option<Token>) -> String {
    token.map_or_else(|| "the end".to_string(), |t| t.to_string())
}

fn parse_set(
    it: &mut std::iter::Peekable<std::vec::IntoIter<Token>>,
    key: &str,
) -> anyhow::Result<BTreeSet<String>> {
    match it.next() {
        Some(Token::Open) => {}
        other => bail!(
            "expected '(' after '{key} in/notin', found {}",
            describe(other)
        ),
    }
    let mut values = BTreeSet::new();
    loop {
        match it.next() {
            Some(Token::Ident(v)) => {
                values.insert(check_value(&v)?);
            }
            other => bail!(
                "expected a value in the set of '{key}', found {}",
                describe(other)
            ),
        }
        match it.next() {
            Some(Token::Comma) => {}
            Some(Token::Close) => break,
            other => bail!(
                "expected ',' or ')' in the set of '{key}', found {}",
                describe(other)
            ),
        }
    }
    Ok(values)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn sel(s: &str) -> LabelSelector {
        s.parse().unwrap_or_else(|e| panic!("{s:?}: {e:#}"))
    }

    fn set(vs: &[&str]) -> BTreeSet<String> {
        vs.iter().map(|v| v.to_string()).collect()
    }

    #[test]
    fn parses_every_operator() {
        let s = sel(
            "app=asr, tier!=debug,env in (prod, staging),track notin(canary),owner,!legacy,a==b",
        );
        assert_eq!(
            s.requirements,
            vec![
                Requirement::Equals("app".into(), "asr".into()),
                Requirement::NotEquals("tier".into(), "debug".into()),
                Requirement::In("env".into(), set(&["prod", "staging"])),
                Requirement::NotIn("track".into(), set(&["canary"])),
                Requirement::Exists("owner".into()),
                Requirement::DoesNotExist("legacy".into()),
                Requirement::Equals("a".into(), "b".into()),
            ]
        );
    }

    #[test]
    fn empty_selector_matches_everything() {
        assert!(sel("").matches(&labels(&[])));
        assert!(sel("   ").matches(&labels(&[("a", "b")])));
    }

    #[test]
    fn semantics_follow_kubernetes() {
        let pod = labels(&[("app", "asr"), ("tier", "backend"), ("env", "prod")]);
        let bare = labels(&[]);
        assert!(sel("app=asr").matches(&pod));
        assert!(sel("app==asr").matches(&pod));
        assert!(!sel("app=tts").matches(&pod));
        assert!(sel("tier!=debug").matches(&pod));
        assert!(!sel("tier!=backend").matches(&pod));
        // != and notin hold when the label is absent; = and in do not.
        assert!(sel("tier!=debug").matches(&bare));
        assert!(sel("env notin (dev)").matches(&bare));
        assert!(!sel("app=asr").matches(&bare));
        assert!(!sel("env in (prod)").matches(&bare));
        assert!(sel("env in (staging,prod)").matches(&pod));
        assert!(!sel("env notin (staging,prod)").matches(&pod));
        assert!(sel("app").matches(&pod));
        assert!(!sel("!app").matches(&pod));
        assert!(sel("!canary").matches(&pod));
        assert!(sel("app=asr,tier!=debug,env in (prod)").matches(&pod));
        assert!(!sel("app=asr,tier=debug").matches(&pod));
    }

    #[test]
    fn empty_value_and_prefixed_keys() {
        let pod = labels(&[("app.kubernetes.io/name", "asr"), ("flag", "")]);
        assert!(sel("app.kubernetes.io/name=asr").matches(&pod));
        assert!(sel("flag=").matches(&pod));
        assert!(!sel("flag!=").matches(&pod));
        assert!(sel("app.kubernetes.io/name in (asr, tts),flag").matches(&pod));
    }

    #[test]
    fn keywords_are_keys_where_a_key_is_expected() {
        assert_eq!(
            sel("in=x").requirements,
            vec![Requirement::Equals("in".into(), "x".into())]
        );
        assert_eq!(
            sel("notin").requirements,
            vec![Requirement::Exists("notin".into())]
        );
    }

    #[test]
    fn rejects_malformed_selectors() {
        for bad in [
            "app=asr,",
            ",app",
            "app asr",
            "app in asr",
            "app in ()",
            "app in (a,)",
            "app in (a b)",
            "app in (a",
            "=asr",
            "!",
            "!app=asr",
            "app=a=b",
            "app>3",
            "-app=x",
            "app=x-",
            "UPPER.example/app=x",
            "app=(x)",
        ] {
            assert!(bad.parse::<LabelSelector>().is_err(), "{bad:?} parsed");
        }
        let err = format!("{:#}", "app in asr".parse::<LabelSelector>().unwrap_err());
        assert!(err.contains("expected '('"), "{err}");
    }

    fn meta() -> PodMeta {
        PodMeta {
            namespace: "voice".into(),
            pod: "asr-7d9c6b5f8d-x2k4q".into(),
            pod_uid: "8f6a0c4e-3b1d-4e8a-9c2f-5d7b1a0e6c3f".into(),
            container: "asr".into(),
            workload: "asr".into(),
            workload_kind: "Deployment".into(),
            labels: labels(&[("app", "asr"), ("tier", "backend")]),
        }
    }

    #[test]
    fn selector_combines_namespace_labels_and_container() {
        let m = meta();
        assert!(Selector::default().matches(&m));
        assert!(Selector::new(Some("voice"), Some("app=asr"), Some("asr"))
            .unwrap()
            .matches(&m));
        assert!(!Selector::new(Some("default"), None, None)
            .unwrap()
            .matches(&m));
        assert!(!Selector::new(None, Some("app=tts"), None)
            .unwrap()
            .matches(&m));
        assert!(!Selector::new(None, None, Some("envoy"))
            .unwrap()
            .matches(&m));
        assert!(Selector::new(None, Some("app=asr,("), None).is_err());
        let malformed = Selector {
            labels: Some("app in".into()),
            ..Default::default()
        };
        assert!(malformed.validate().is_err());
        assert!(!malformed.matches(&m));
    }

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
            meta().pod_uid
        );
    }

    #[test]
    fn node_name_comes_from_the_downward_api() {
        // The only test touching NODE_NAME.
        std::env::remove_var(NODE_NAME_ENV);
        let err = node_name().unwrap_err().to_string();
        assert!(
            err.contains("NODE_NAME is not set") && !err.contains('\n'),
            "{err}"
        );
        std::env::set_var(NODE_NAME_ENV, "node-a");
        assert_eq!(node_name().unwrap(), "node-a");
        std::env::remove_var(NODE_NAME_ENV);
    }
}
