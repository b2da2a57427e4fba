//! The last valid generation of every resource ([`LastValid`]), kept per namespace in the
//! ConfigMap `<config-map>-state` so it survives restarts: without it a controller that
//! restarts after a bad edit would no longer know what to keep in force. Read once per
//! namespace while leading, then cached; written only when it changes, and before the
//! relay ConfigMap, so what is rendered never runs ahead of what is kept.

use super::configmap::{CONFIGMAP_LIMIT, MANAGER};
use super::{Error, reconcile::Context};
use crate::policy::LastValid;
use crate::render::pack::{GZ_SUFFIX, Packed, UNPACKED_LIMIT, gunzip, pack};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, Patch, PatchParams};
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

/// Key of the snapshot (JSON); compressed it is `last-valid.json.gz` in `binaryData`.
pub const STATE_KEY: &str = "last-valid.json";

/// Name of the state ConfigMap next to the relay ConfigMap `config_map`.
pub fn name(config_map: &str) -> String {
    format!("{config_map}-state")
}

/// Snapshots by namespace, as last read or written by this instance.
#[derive(Default)]
pub struct States {
    cache: Mutex<HashMap<String, Arc<LastValid>>>,
}

impl States {
    /// Forget everything: on gaining the lease another instance may have written since.
    pub fn clear(&self) {
        if let Ok(mut cache) = self.cache.lock() {
            cache.clear();
        }
    }

    fn get(&self, namespace: &str) -> Option<Arc<LastValid>> {
        self.cache.lock().ok()?.get(namespace).cloned()
    }

    fn put(&self, namespace: &str, last: Arc<LastValid>) {
        if let Ok(mut cache) = self.cache.lock() {
            cache.insert(namespace.to_string(), last);
        }
    }
}

/// The snapshot of a namespace: cached, or read from its ConfigMap (none: empty). One
/// that cannot be read is an error, so nothing is written until it is repaired.
pub async fn load(ctx: &Context, namespace: &str) -> Result<Arc<LastValid>, Error> {
    if let Some(last) = ctx.states.get(namespace) {
        return Ok(last);
    }
    let name = name(&ctx.config_map);
    let api: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), namespace);
    let cm = api.get_opt(&name).await.map_err(|e| Error::ConfigMap {
        namespace: namespace.to_string(),
        name: name.clone(),
        source: Box::new(e),
    })?;
    let last = match cm {
        None => LastValid::default(),
        Some(cm) => parse(&cm).map_err(|message| Error::State {
            namespace: namespace.to_string(),
            name: name.clone(),
            message,
        })?,
    };
    let last = Arc::new(last);
    ctx.states.put(namespace, last.clone());
    Ok(last)
}

fn parse(cm: &ConfigMap) -> Result<LastValid, String> {
    let gz_key = format!("{STATE_KEY}{GZ_SUFFIX}");
    let text = match (
        cm.data.as_ref().and_then(|d| d.get(STATE_KEY)),
        cm.binary_data.as_ref().and_then(|d| d.get(&gz_key)),
    ) {
        (Some(text), _) => text.clone(),
        (None, Some(bytes)) => {
            gunzip(&bytes.0, UNPACKED_LIMIT).map_err(|e| format!("{gz_key}: {e}"))?
        }
        (None, None) => {
            return Err(format!(
                "neither data[{STATE_KEY}] nor binaryData[{gz_key}]"
            ));
        }
    };
    LastValid::from_json(&text).map_err(|e| format!("{STATE_KEY}: {e}"))
}

/// The snapshot as ConfigMap keys: text, or compressed when large.
pub fn packed(json: String) -> Packed {
    pack(&BTreeMap::from([(STATE_KEY.to_string(), json)]))
}

/// The server-side-apply body of the state ConfigMap.
pub fn desired(name: &str, namespace: &str, packed: Packed) -> Value {
    super::configmap::managed_body(name, namespace, &packed)
}

/// Store the snapshot unless it is the one already stored.
pub async fn store(ctx: &Context, namespace: &str, last: &LastValid) -> Result<(), Error> {
    if ctx.states.get(namespace).is_some_and(|c| *c == *last) {
        return Ok(());
    }
    ctx.ensure_leader()?;
    let name = name(&ctx.config_map);
    let json = serde_json::to_string(last).map_err(|source| Error::Serialise {
        what: format!("the state of {namespace}"),
        source,
    })?;
    let packed = packed(json);
    if packed.size() > CONFIGMAP_LIMIT {
        return Err(Error::TooLarge {
            namespace: namespace.to_string(),
            name,
            bytes: packed.size(),
        });
    }
    let body = desired(&name, namespace, packed);
    let api: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), namespace);
    api.patch(
        &name,
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(body),
    )
    .await
    .map_err(|e| Error::ConfigMap {
        namespace: namespace.to_string(),
        name: name.clone(),
        source: Box::new(e),
    })?;
    ctx.metrics.write("state");
    ctx.states.put(namespace, Arc::new(last.clone()));
    Ok(())
}
