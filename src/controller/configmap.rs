//! The relay configuration as a ConfigMap body (server-side applied by the backend, and only when it differs).

use crate::render::pack::Packed;
use k8s_openapi::ByteString;
use serde_json::{Value, json};

/// Field manager of every write the controller makes.
pub const MANAGER: &str = "mailtls";
/// Annotation carrying the content hash of the rendered files.
pub const HASH_ANNOTATION: &str = "mailtls.io/config-hash";
/// Label marking ConfigMaps the controller owns (there is no owner reference: the
/// ConfigMap belongs to the namespace, not to any one policy).
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";

/// Most bytes of `data` and `binaryData` the API server stores in one ConfigMap.
pub const CONFIGMAP_LIMIT: usize = 1024 * 1024;

/// The server-side-apply body: only the fields mailtls owns. Large files go compressed into
/// `binaryData` (see [`crate::render::pack`]); a key this leaves out is removed by the apply.
pub fn desired(name: &str, namespace: &str, hash: &str, packed: &Packed) -> Value {
    let mut body = managed_body(name, namespace, packed);
    body["metadata"]["annotations"] = json!({HASH_ANNOTATION: hash});
    body
}

/// A ConfigMap of mailtls's (label, `data`, `binaryData`), as the relay and the state
/// ConfigMaps both are.
pub fn managed_body(name: &str, namespace: &str, packed: &Packed) -> Value {
    let mut body = json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {MANAGED_BY_LABEL: MANAGER},
        },
        "data": packed.text,
    });
    if !packed.gzip.is_empty() {
        let binary: serde_json::Map<String, Value> = packed
            .gzip
            .iter()
            .map(|(k, v)| (k.clone(), json!(ByteString(v.clone()))))
            .collect();
        body["binaryData"] = Value::Object(binary);
    }
    body
}
