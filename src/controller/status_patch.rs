//! Status writes: a JSON merge patch of exactly what changed, sent only when something other
//! than a timestamp changed.
//!
//! Merge patch rather than server-side apply: conditions are an atomic list in the schema,
//! so an apply would take the whole list from the test loop that owns `Tested` and
//! `Compliant`. The patch carries `metadata.resourceVersion`, so when another writer got
//! there first it fails with 409 and is retried on a fresh store instead of overwriting.

use super::Error;
use super::context::Context;
use super::metrics::Written;
use crate::engine::Managed;
use kube::api::{Api, Patch, PatchParams};
use kube::core::object::HasStatus;
use kube::{Resource, ResourceExt};
use serde::Serialize;
use serde_json::{Map, Value, json};

/// The patch turning `old`'s status into `new`'s, or `None` when they differ at most in
/// condition timestamps.
pub fn patch_body<K>(old: &K, new: &K) -> Result<Option<Value>, Error>
where
    K: HasStatus + Resource,
    K::Status: Serialize,
{
    let value = |r: &K| {
        serde_json::to_value(r.status()).map_err(|source| Error::Serialise {
            what: format!(
                "the status of {}",
                r.meta().name.as_deref().unwrap_or_default()
            ),
            source,
        })
    };
    let (before, after) = (value(old)?, value(new)?);
    if without_timestamps(&before) == without_timestamps(&after) {
        return Ok(None);
    }
    Ok(Some(json!({
        "metadata": {"resourceVersion": old.meta().resource_version},
        "status": merge_diff(&before, &after),
    })))
}

/// Patch the status subresource when it changed, and record Events for condition changes.
pub async fn update<K: Managed>(
    ctx: &Context,
    api: &Api<K>,
    old: &K,
    new: &K,
) -> Result<(), Error> {
    let Some(body) = patch_body(old, new)? else {
        return Ok(());
    };
    ctx.ensure_leader()?;
    let name = old.name_any();
    api.patch_status(&name, &PatchParams::default(), &Patch::Merge(&body))
        .await
        .map_err(|source| Error::Status {
            kind: K::KIND,
            namespace: old.namespace().unwrap_or_default(),
            name: name.clone(),
            source: Box::new(source),
        })?;
    ctx.metrics.write(Written::Status);
    ctx.events
        .conditions_changed(old, old.conditions().to_vec(), new.conditions().to_vec())
        .await;
    if let Some(failure) = new.observed().and_then(|o| o.last_tls_failure.as_ref()) {
        ctx.events.tls_bounce(new, failure).await;
    }
    Ok(())
}

/// A status with every condition's `lastTransitionTime` removed.
fn without_timestamps(status: &Value) -> Value {
    let mut v = status.clone();
    if let Some(list) = v.get_mut("conditions").and_then(Value::as_array_mut) {
        for c in list {
            if let Some(c) = c.as_object_mut() {
                c.remove("lastTransitionTime");
            }
        }
    }
    v
}

/// RFC 7386 merge patch from `before` to `after`: changed keys, and `null` for removed ones.
pub fn merge_diff(before: &Value, after: &Value) -> Value {
    match (before, after) {
        (Value::Object(a), Value::Object(b)) => {
            let mut out = Map::new();
            for (k, new) in b {
                match a.get(k) {
                    Some(old) if old == new => {}
                    Some(old) => {
                        out.insert(k.clone(), merge_diff(old, new));
                    }
                    None => {
                        out.insert(k.clone(), new.clone());
                    }
                }
            }
            for k in a.keys().filter(|k| !b.contains_key(*k)) {
                out.insert(k.clone(), Value::Null);
            }
            Value::Object(out)
        }
        _ => after.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_diff_nulls_removed_keys_and_keeps_unchanged_out() {
        let a = json!({"x": 1, "y": {"a": 1, "b": 2}, "gone": [1]});
        let b = json!({"x": 1, "y": {"a": 1, "b": 3}, "new": "v"});
        assert_eq!(
            merge_diff(&a, &b),
            json!({"y": {"b": 3}, "new": "v", "gone": null})
        );
        assert_eq!(merge_diff(&Value::Null, &b), b);
    }
}
