//! The objects a variant of the deployment (deploy/base or one of deploy/overlays) gives the
//! API server: the base's files, an overlay's JSON patches applied to them the way kustomize
//! applies them, and, to compare with, what `kubectl kustomize` renders.

use super::objects::differences;
use super::{base_dir, kustomization, overlay_dir, strings, yaml_docs, yaml_files};
use serde_json::Value;
use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::process::Command;

/// One way to deploy: the base alone, or an overlay of deploy/overlays applied to it.
#[derive(Clone, Copy)]
pub enum Variant {
    Base,
    Overlay(&'static str),
}

impl Variant {
    pub fn dir(self) -> PathBuf {
        match self {
            Variant::Base => base_dir(),
            Variant::Overlay(name) => overlay_dir(name),
        }
    }

    /// Its objects as (file name, JSON), in the base's file-name order.
    pub fn docs(self) -> Vec<(String, Value)> {
        match self {
            Variant::Base => base_docs(),
            Variant::Overlay(name) => overlay_docs(name),
        }
    }
}

impl fmt::Display for Variant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Variant::Base => f.write_str("deploy/base"),
            Variant::Overlay(name) => write!(f, "deploy/overlays/{name}"),
        }
    }
}

/// deploy/base: one object per file, as (file name, JSON) in file-name order.
pub fn base_docs() -> Vec<(String, Value)> {
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

/// An overlay: the base with its JSON patches applied, then the objects of its own files, as
/// (name, JSON).
fn overlay_docs(name: &str) -> Vec<(String, Value)> {
    let dir = overlay_dir(name);
    let k = kustomization(&dir);
    let resources = strings(&k["resources"]);
    assert_eq!(resources[0], "../../base", "{name}: the base first");
    let mut docs = base_docs();
    for patch in k["patches"].as_array().into_iter().flatten() {
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
    for file in &resources[1..] {
        docs.extend(
            yaml_docs(&dir.join(file))
                .into_iter()
                .map(|d| (file.clone(), d)),
        );
    }
    docs
}

/// The objects `kubectl kustomize DIR` renders, or None without kubectl.
pub fn kubectl_kustomize(dir: &Path) -> Option<Vec<Value>> {
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
pub fn same_as_kustomize(ours: &[(String, Value)], rendered: &[Value], dir: &Path) {
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
