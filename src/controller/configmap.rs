//! The rendered files as a ConfigMap, server-side applied, written only when the hash moves.

use super::context::Context;
use super::{Error, drift};
use crate::render::RelayConfig;
use crate::render::pack::{Packed, pack};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams};
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

/// Apply the configuration unless the ConfigMap already holds exactly it (the files, not
/// only the hash: a hand edit that kept or recomputed the hash is still found). A namespace
/// without mailtls resources gets no new ConfigMap; an existing one is rewritten with the
/// empty policy's files (nothing mandatory, no routes), so a relay that mounts it drops the
/// old policy instead of keeping stale files as it would after a delete.
/// Returns the stored ConfigMap when a new configuration was written; restoring one that
/// was edited or deleted by hand is a repair, reported by its own Event, and returns None.
pub async fn apply(
    ctx: &Context,
    namespace: &str,
    config: &RelayConfig,
    no_resources: bool,
) -> Result<Option<ConfigMap>, Error> {
    let name = ctx.config_map.as_str();
    let err = |source| Error::ConfigMap {
        namespace: namespace.to_string(),
        name: name.to_string(),
        source: Box::new(source),
    };
    let api: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), namespace);
    let current = api.get_opt(name).await.map_err(err)?;
    if current.is_none() && no_resources {
        return Ok(None);
    }
    let packed = pack(&config.files);
    let body = desired(name, namespace, &config.hash, &packed);
    if current.as_ref().is_some_and(|c| !drift::differs(c, &body)) {
        return Ok(None);
    }
    ctx.ensure_leader()?;
    if packed.size() > CONFIGMAP_LIMIT {
        return Err(Error::TooLarge {
            namespace: namespace.to_string(),
            name: name.to_string(),
            bytes: packed.size(),
        });
    }
    let repair = match &current {
        None => ctx
            .drift
            .take_deleted(namespace)
            .then(|| "it had been deleted".to_string()),
        Some(cm) => {
            let editors = drift::editors(cm);
            let same_hash = cm.annotations().get(HASH_ANNOTATION) == Some(&config.hash);
            (same_hash || !editors.is_empty()).then(|| match editors.as_slice() {
                [] => "its content had been changed".to_string(),
                names => format!("it had been edited by {}", names.join(", ")),
            })
        }
    };
    if let Some(extra) = current.as_ref().and_then(|c| drift::extra_keys(c, &body)) {
        let params = PatchParams {
            field_manager: Some(MANAGER.into()),
            ..PatchParams::default()
        };
        api.patch(name, &params, &Patch::Merge(extra))
            .await
            .map_err(err)?;
        ctx.metrics.write("configmap");
    }
    let params = PatchParams::apply(MANAGER).force();
    let stored = api
        .patch(name, &params, &Patch::Apply(body))
        .await
        .map_err(err)?;
    ctx.drift.wrote(namespace, &stored);
    ctx.metrics.write("configmap");
    match repair {
        None => Ok(Some(stored)),
        Some(why) => {
            tracing::warn!(namespace, hash = %config.hash, "relay configuration repaired: {why}");
            ctx.events
                .config_repaired(&stored, &config.hash, &why)
                .await;
            Ok(None)
        }
    }
}
