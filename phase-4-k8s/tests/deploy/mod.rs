//! What tests/manifests.rs needs of deploy/ as code: reading its YAML (here), the objects typed
//! exactly (`objects`), the base and each overlay rendered as kustomize would (`render`), and
//! the checks every variant of the deployment must pass (`checks`).

pub mod checks;
pub mod expected;
pub mod objects;
pub mod render;

use serde_json::Value;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

pub fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy")
}

pub fn base_dir() -> PathBuf {
    deploy_dir().join("base")
}

pub fn overlay_dir(name: &str) -> PathBuf {
    deploy_dir().join("overlays").join(name)
}

/// The documents of a YAML file as JSON values, which is what kubectl turns YAML into before
/// decoding it. Empty documents are skipped.
pub fn yaml_docs(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_saphyr::from_multiple::<Value>(&text)
        .unwrap_or_else(|e| panic!("{}: not YAML: {e}", path.display()))
}

/// The YAML files of `dir`, by file name.
pub fn yaml_files(dir: &Path) -> BTreeSet<String> {
    std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with(".yaml") || n.ends_with(".yml"))
        .collect()
}

/// Every file of `dir` (not only YAML), by name.
pub fn all_files(dir: &Path) -> BTreeSet<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect()
}

pub fn kustomization(dir: &Path) -> Value {
    let mut docs = yaml_docs(&dir.join("kustomization.yaml"));
    assert_eq!(docs.len(), 1);
    let k = docs.remove(0);
    assert_eq!(k["apiVersion"], "kustomize.config.k8s.io/v1beta1");
    assert_eq!(k["kind"], "Kustomization");
    k
}

pub fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap_or_else(|| panic!("not a list: {v}"))
        .iter()
        .map(|s| s.as_str().unwrap().to_string())
        .collect()
}
