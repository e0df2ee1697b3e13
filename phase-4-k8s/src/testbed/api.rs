//! A fake Kubernetes API server: a minimal HTTP/1.1 server on a loopback port that answers
//! `GET /api/v1/pods` like kube-apiserver does — a PodList (filtered by the `spec.nodeName`
//! field selector when one is given) and, for `watch=true`, a chunked stream of
//! newline-delimited WatchEvents that a test feeds line by line ([`FakeApi::send`]). Every
//! request is recorded, so that a test can check that an agent only ever asked for its own
//! node's pods. Needs a multi-threaded tokio runtime: [`FakeApi::start`] spawns the server on
//! the current one.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};

use anyhow::{ensure, Context, Result};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

#[derive(Clone, Debug)]
pub struct Request {
    pub path: String,
    pub query: HashMap<String, String>,
}

impl Request {
    pub fn is_watch(&self) -> bool {
        self.query.get("watch").map(String::as_str) == Some("true")
    }
}

enum Script {
    /// One WatchEvent line, written to the open watch (or the next one) as one chunk.
    Event(String),
    /// The server ends the open watch, as it does after `timeoutSeconds`.
    Close,
}

struct ApiState {
    list: Mutex<Value>,
    requests: Mutex<Vec<Request>>,
    script: tokio::sync::Mutex<mpsc::UnboundedReceiver<Script>>,
}

pub struct FakeApi {
    pub addr: SocketAddr,
    state: Arc<ApiState>,
    script: mpsc::UnboundedSender<Script>,
}

impl FakeApi {
    /// Serves `podlist` (a PodList's JSON) until dropped with its runtime.
    pub async fn start(podlist: &str) -> Result<FakeApi> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (tx, rx) = mpsc::unbounded_channel();
        let state = Arc::new(ApiState {
            list: Mutex::new(serde_json::from_str(podlist).context("the pod list")?),
            requests: Mutex::new(Vec::new()),
            script: tokio::sync::Mutex::new(rx),
        });
        let server_state = state.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let state = server_state.clone();
                tokio::spawn(async move {
                    let _ = serve(stream, state).await;
                });
            }
        });
        Ok(FakeApi {
            addr,
            state,
            script: tx,
        })
    }

    /// A client of this server (plain HTTP, no credentials).
    pub fn client(&self) -> Result<kube::Client> {
        let url = format!("http://{}", self.addr).parse()?;
        Ok(kube::Client::try_from(kube::Config::new(url))?)
    }

    /// Writes a kubeconfig to `path` that points a client at this server (plain HTTP, no
    /// credentials), for an agent process started with `KUBECONFIG=<path>`.
    pub fn write_kubeconfig(&self, path: &Path) -> Result<()> {
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: http://{}\n\
             contexts:\n- name: fake\n  context:\n    cluster: fake\n    user: fake\n\
             current-context: fake\nusers:\n- name: fake\n  user: {{}}\n",
            self.addr
        );
        std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
    }

    /// What the next lists return.
    pub fn set_list(&self, podlist: &str) -> Result<()> {
        *self.state.list.lock().unwrap() = serde_json::from_str(podlist).context("the pod list")?;
        Ok(())
    }

    /// Writes one WatchEvent line to the open watch (or the next one).
    pub fn send(&self, line: &str) {
        // The receiving end lives as long as `self`: sending cannot fail.
        let _ = self.script.send(Script::Event(line.to_string()));
    }

    /// Ends the open watch (or the next one), as the API server does after `timeoutSeconds`.
    pub fn close_watch(&self) {
        let _ = self.script.send(Script::Close);
    }

    pub fn requests(&self) -> Vec<Request> {
        self.state.requests.lock().unwrap().clone()
    }

    pub fn lists(&self) -> Vec<Request> {
        self.requests()
            .into_iter()
            .filter(|r| !r.is_watch())
            .collect()
    }

    pub fn watches(&self) -> Vec<Request> {
        self.requests()
            .into_iter()
            .filter(|r| r.is_watch())
            .collect()
    }

    /// Checks that there were requests and that every one was for `node`'s pods only (no
    /// label selector: selection happens in the agent).
    pub fn only_node_requested(&self, node: &str) -> Result<()> {
        let selector = format!("spec.nodeName={node}");
        let requests = self.requests();
        ensure!(!requests.is_empty(), "no request");
        for r in &requests {
            ensure!(
                r.path == "/api/v1/pods"
                    && r.query.get("fieldSelector") == Some(&selector)
                    && !r.query.contains_key("labelSelector"),
                "a request for more than {node}'s pods: {r:?}"
            );
        }
        Ok(())
    }
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                match std::str::from_utf8(&bytes[i + 1..i + 3])
                    .ok()
                    .and_then(|hex| u8::from_str_radix(hex, 16).ok())
                {
                    Some(b) => {
                        out.push(b);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn parse_target(target: &str) -> Request {
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let query = query
        .split('&')
        .filter(|kv| !kv.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect();
    Request {
        path: path.to_string(),
        query,
    }
}

/// The node a `spec.nodeName=<node>` field selector asks for.
fn selected_node(r: &Request) -> Option<String> {
    r.query
        .get("fieldSelector")?
        .split(',')
        .find_map(|term| term.strip_prefix("spec.nodeName=").map(str::to_string))
}

fn on_node(pod: &Value, node: &Option<String>) -> bool {
    match node {
        Some(node) => pod["spec"]["nodeName"].as_str() == Some(node.as_str()),
        None => true,
    }
}

async fn serve(stream: TcpStream, state: Arc<ApiState>) -> std::io::Result<()> {
    let (rd, mut wr) = stream.into_split();
    let mut rd = BufReader::new(rd);
    let mut request_line = String::new();
    if rd.read_line(&mut request_line).await? == 0 {
        return Ok(());
    }
    loop {
        let mut header = String::new();
        if rd.read_line(&mut header).await? == 0 || header == "\r\n" {
            break;
        }
    }
    let mut parts = request_line.split_whitespace();
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let request = parse_target(target);
    state.requests.lock().unwrap().push(request.clone());
    let node = selected_node(&request);

    if method != "GET" || request.path != "/api/v1/pods" {
        let body = r#"{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"the server could not find the requested resource","reason":"NotFound","details":{},"code":404}"#;
        let head = format!(
            "HTTP/1.1 404 Not Found\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        );
        wr.write_all(head.as_bytes()).await?;
        wr.write_all(body.as_bytes()).await?;
        return wr.shutdown().await;
    }

    if !request.is_watch() {
        let mut list = state.list.lock().unwrap().clone();
        if let Some(items) = list["items"].as_array_mut() {
            items.retain(|pod| on_node(pod, &node));
        }
        let body = serde_json::to_vec(&list)?;
        let head = format!(
            "HTTP/1.1 200 OK\r\nAudit-Id: 5d0c3e6f-list\r\nCache-Control: no-cache, private\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        );
        wr.write_all(head.as_bytes()).await?;
        wr.write_all(&body).await?;
        return wr.shutdown().await;
    }

    wr.write_all(
        b"HTTP/1.1 200 OK\r\nAudit-Id: 5d0c3e6f-watch\r\nCache-Control: no-cache, private\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n",
    )
    .await?;
    wr.flush().await?;
    // One watch at a time holds the script; a watch whose client went away lets go of it.
    let mut script = state.script.lock().await;
    let mut probe = [0u8; 64];
    loop {
        tokio::select! {
            cmd = script.recv() => match cmd {
                Some(Script::Event(line)) => {
                    let event: Value = serde_json::from_str(&line).unwrap_or_default();
                    let kind = event["type"].as_str().unwrap_or("");
                    if matches!(kind, "ADDED" | "MODIFIED" | "DELETED") && !on_node(&event["object"], &node) {
                        continue;
                    }
                    let chunk = format!("{:x}\r\n{}\n\r\n", line.len() + 1, line);
                    wr.write_all(chunk.as_bytes()).await?;
                    wr.flush().await?;
                    // The API server ends a watch after an ERROR event.
                    if kind == "ERROR" {
                        break;
                    }
                }
                Some(Script::Close) | None => break,
            },
            n = rd.read(&mut probe) => {
                if matches!(n, Ok(0) | Err(_)) {
                    return Ok(());
                }
            }
        }
    }
    wr.write_all(b"0\r\n\r\n").await?;
    wr.shutdown().await
}
