//! The last valid generation of every resource ([`LastValid`]), kept per namespace in the
//! ConfigMap `<config-map>-state` so it survives restarts: without it a controller that
//! restarts after a bad edit would no longer know what to keep in force. Read once per
//! namespace while leading, then cached; written only when it changes, and before the
//! relay ConfigMap, so what is rendered never runs ahead of what is kept.
//!
//! While running, the cache is the truth and the ConfigMap its copy: the drift watch
//! ([`super::drift`]) flags a deletion or someone else's edit, and the next reconcile of
//! the namespace rewrites the copy from the cache, with a Warning Event.

use super::Error;
use super::configmap::{CONFIGMAP_LIMIT, MANAGER};
use super::context::Context;
use super::drift::{self, Drift};
use super::metrics::Written;
use crate::policy::LastValid;
use crate::render::pack::{GZ_SUFFIX, Packed, UNPACKED_LIMIT, gunzip, pack};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, Patch, PatchParams};
use serde_json::Value;
use std::collections::BTreeMap;
use std::sync::Arc;

/// Key of the snapshot (JSON); compressed it is `last-valid.json.gz` in `binaryData`.
pub const STATE_KEY: &str = "last-valid.json";

/// Name of the state ConfigMap next to the relay ConfigMap `config_map`.
pub fn name(config_map: &str) -> String {
    format!("{config_map}-state")
}

/// The snapshot of a namespace: cached, or read from its ConfigMap (none: empty). One
/// that cannot be read is an error, so nothing is written until it is repaired.
pub async fn load(ctx: &Context, namespace: &str) -> Result<Arc<LastValid>, Error> {
    if let Some(last) = ctx.states.get(namespace) {
        return Ok(last);
    }
    // After a restart (or on gaining the lease) the ConfigMap is the only source of truth:
    // there is nothing else to check it against, so what it holds now is what is kept
    // (and what a drift flag raised before this read would have been repaired to).
    ctx.state_drift.take(namespace);
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

/// The apply body of `last` and its size.
fn body_of(ctx: &Context, namespace: &str, last: &LastValid) -> Result<(Value, usize), Error> {
    let json = serde_json::to_string(last).map_err(|source| Error::Serialise {
        what: format!("the state of {namespace}"),
        source,
    })?;
    let packed = packed(json);
    let size = packed.size();
    Ok((desired(&name(&ctx.config_map), namespace, packed), size))
}

/// Store the snapshot unless it is the one already stored; rewrite the stored one when the
/// drift watch saw it deleted or edited by someone else and it no longer holds the cache.
pub async fn store(ctx: &Context, namespace: &str, last: &LastValid) -> Result<(), Error> {
    let drift = ctx.state_drift.take(namespace);
    let result = store_checked(ctx, namespace, last, drift).await;
    if result.is_err() {
        ctx.state_drift.restore(namespace, drift);
    }
    result
}

async fn store_checked(
    ctx: &Context,
    namespace: &str,
    last: &LastValid,
    drift: Option<Drift>,
) -> Result<(), Error> {
    let cached = ctx.states.get(namespace);
    let unchanged = cached.as_ref().is_some_and(|c| **c == *last);
    if unchanged && drift.is_none() {
        return Ok(());
    }
    let name = name(&ctx.config_map);
    let err = |e| Error::ConfigMap {
        namespace: namespace.to_string(),
        name: name.clone(),
        source: Box::new(e),
    };
    let api: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), namespace);
    let (body, size) = body_of(ctx, namespace, last)?;
    // Only a flagged namespace is read: the stored copy is compared with what this
    // instance believes it holds (the cache), not with the snapshot about to be written.
    let current = match drift {
        Some(_) => api.get_opt(&name).await.map_err(err)?,
        None => None,
    };
    let repair = match (&current, drift) {
        (_, None) | (None, Some(Drift::Changed)) => None,
        (None, Some(Drift::Deleted)) => Some("it had been deleted".to_string()),
        (Some(cm), Some(_)) => {
            let believed = match &cached {
                Some(c) if !unchanged => body_of(ctx, namespace, c)?.0,
                _ => body.clone(),
            };
            drift::differs(cm, &believed).then(|| match drift::editors(cm).as_slice() {
                [] => "its content had been changed".to_string(),
                names => format!("it had been edited by {}", names.join(", ")),
            })
        }
    };
    if unchanged && repair.is_none() {
        return Ok(());
    }
    ctx.ensure_leader()?;
    if size > CONFIGMAP_LIMIT {
        return Err(Error::TooLarge {
            namespace: namespace.to_string(),
            name: name.clone(),
            bytes: size,
        });
    }
    if let Some(extra) = current.as_ref().and_then(|c| drift::extra_keys(c, &body)) {
        let params = PatchParams {
            field_manager: Some(MANAGER.into()),
            ..PatchParams::default()
        };
        api.patch(&name, &params, &Patch::Merge(extra))
            .await
            .map_err(err)?;
        ctx.metrics.write(Written::State);
    }
    let stored = api
        .patch(
            &name,
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(body),
        )
        .await
        .map_err(err)?;
    ctx.state_drift.wrote(namespace, &stored);
    ctx.metrics.write(Written::State);
    ctx.states.put(namespace, Arc::new(last.clone()));
    if let Some(why) = repair {
        tracing::warn!(namespace, %name, "last valid generations repaired: {why}");
        ctx.events.state_repaired(&stored, &why).await;
    }
    Ok(())
}
