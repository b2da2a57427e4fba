//! Drift repair: the relay and the state ConfigMaps are watched (each by name, which is
//! also what the RBAC `resourceNames` grant allows to list and watch, one [`Seen`] per
//! name), and a change the controller did not make, or a deletion, marks the namespace
//! dirty. The reconcile then compares the stored content with what it would write
//! ([`differs`]) and restores it. The controller's own writes also arrive on the watch;
//! they are recognised by resource version and skipped, and even one that slips through
//! only costs a reconcile that finds nothing to write (no loop).

use super::configmap::{HASH_ANNOTATION, MANAGED_BY_LABEL, MANAGER};
use super::queue::Sender;
use super::watch::Watcher;
use crate::render::MANIFEST;
use futures::{FutureExt, StreamExt};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client, ResourceExt};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};

/// What the watch and the reconciles share: the controller's last write per namespace,
/// and the namespaces whose ConfigMap was deleted, or changed by someone else, since.
#[derive(Default)]
pub struct Seen {
    written: Mutex<HashMap<String, String>>,
    deleted: Mutex<BTreeSet<String>>,
    /// Only the state's reconcile reads this (it does not read its ConfigMap every time;
    /// the relay's does): at most one entry per namespace either way.
    changed: Mutex<BTreeSet<String>>,
}

/// Why a namespace's ConfigMap needs checking.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Drift {
    Changed,
    Deleted,
}

impl Seen {
    /// Remember the resource version of a write of ours, or of a ConfigMap a reconcile found
    /// as it would have written it.
    pub fn wrote(&self, namespace: &str, cm: &ConfigMap) {
        if let (Ok(mut w), Some(rv)) = (self.written.lock(), cm.resource_version()) {
            w.insert(namespace.to_string(), rv);
        }
    }

    /// Whether this process has written the namespace's ConfigMap or found it in order (so
    /// its absence now means it was deleted, even before the watch says so).
    pub fn has_written(&self, namespace: &str) -> bool {
        self.written.lock().is_ok_and(|w| w.contains_key(namespace))
    }

    /// Whether `cm` is another version than the one this process wrote or found in order:
    /// changed since. False while it knows of none (the reconcile then compares anyway).
    fn changed_since_known(&self, namespace: &str, cm: &ConfigMap) -> bool {
        self.has_written(namespace) && !self.is_own(namespace, cm)
    }

    fn is_own(&self, namespace: &str, cm: &ConfigMap) -> bool {
        let rv = cm.resource_version();
        self.written
            .lock()
            .is_ok_and(|w| rv.is_some() && w.get(namespace) == rv.as_ref())
    }

    /// Namespaces in `scope` (None: all) whose ConfigMap this process wrote or found in
    /// order but a complete list of them (`listed`) lacks: deleted while the watch was not
    /// watching (before its first list, or in a gap), so no deletion event will come.
    fn missing_from(&self, listed: &BTreeSet<String>, scope: Option<&str>) -> Vec<String> {
        let Ok(written) = self.written.lock() else {
            return Vec::new();
        };
        written
            .keys()
            .filter(|ns| scope.is_none_or(|s| s == ns.as_str()) && !listed.contains(*ns))
            .cloned()
            .collect()
    }

    pub(super) fn mark_deleted(&self, namespace: &str) {
        if let Ok(mut w) = self.written.lock() {
            w.remove(namespace);
        }
        if let Ok(mut d) = self.deleted.lock() {
            d.insert(namespace.to_string());
        }
    }

    pub(super) fn mark_changed(&self, namespace: &str) {
        if let Ok(mut c) = self.changed.lock() {
            c.insert(namespace.to_string());
        }
    }

    /// Whether the namespace's ConfigMap was seen deleted (and forget it).
    pub fn take_deleted(&self, namespace: &str) -> bool {
        self.deleted.lock().is_ok_and(|mut d| d.remove(namespace))
    }

    /// Whether the namespace's ConfigMap was deleted or changed by someone else since the
    /// last call (and forget it; [`Seen::restore`] puts it back when the check failed).
    pub fn take(&self, namespace: &str) -> Option<Drift> {
        let changed = self.changed.lock().is_ok_and(|mut c| c.remove(namespace));
        if self.take_deleted(namespace) {
            Some(Drift::Deleted)
        } else {
            changed.then_some(Drift::Changed)
        }
    }

    /// Put back what [`Seen::take`] returned, so a failed repair is tried again.
    pub fn restore(&self, namespace: &str, drift: Option<Drift>) {
        match drift {
            Some(Drift::Deleted) => {
                if let Ok(mut d) = self.deleted.lock() {
                    d.insert(namespace.to_string());
                }
            }
            Some(Drift::Changed) => self.mark_changed(namespace),
            None => {}
        }
    }
}

/// Watchers of the ConfigMap `name` in each namespace of `namespaces` (or everywhere).
pub fn watchers(
    client: &Client,
    namespaces: &[String],
    name: &str,
    seen: Arc<Seen>,
) -> Vec<Watcher> {
    let apis: Vec<Api<ConfigMap>> = super::stores::scoped_apis(client, namespaces);
    let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
    apis.into_iter()
        .map(|api| {
            let (config, seen, name) = (config.clone(), seen.clone(), name.to_string());
            Box::new(move |queue: Sender| drive(api, config, name, seen, queue).boxed()) as Watcher
        })
        .collect()
}

async fn drive(
    api: Api<ConfigMap>,
    config: watcher::Config,
    name: String,
    seen: Arc<Seen>,
    queue: Sender,
) {
    let scope = api.namespace().map(str::to_string);
    let stream = watcher::watcher(api, config).default_backoff();
    futures::pin_mut!(stream);
    let mut first_list = true;
    // The namespaces of the list under way.
    let mut listed = BTreeSet::new();
    while let Some(event) = stream.next().await {
        match event {
            Err(e) => tracing::warn!(%name, "ConfigMap watch failed, retrying with backoff: {e}"),
            Ok(Event::Init) => listed.clear(),
            // The first list is covered by the reconcile of every namespace at start, unless
            // that reconcile ran before it and an edit came in between (a slow first list
            // under load); a relist after a gap may hide edits or deletions, so it rechecks
            // them all.
            Ok(Event::InitApply(cm)) => {
                let ns = cm.namespace().unwrap_or_default();
                listed.insert(ns.clone());
                if !first_list || seen.changed_since_known(&ns, &cm) {
                    seen.mark_changed(&ns);
                    queue.send(ns)
                }
            }
            Ok(Event::InitDone) => {
                first_list = false;
                // A reconcile that wrote a ConfigMap the list then lacked: the reconcile
                // checks, and one that is there after all costs only that check.
                for ns in seen.missing_from(&listed, scope.as_deref()) {
                    tracing::info!(namespace = %ns, %name, "ConfigMap deleted before it was listed");
                    seen.mark_deleted(&ns);
                    queue.send(ns);
                }
            }
            Ok(Event::Apply(cm)) => {
                let ns = cm.namespace().unwrap_or_default();
                if !seen.is_own(&ns, &cm) {
                    tracing::debug!(namespace = %ns, %name, "ConfigMap changed by someone else");
                    seen.mark_changed(&ns);
                    queue.send(ns);
                }
            }
            Ok(Event::Delete(cm)) => {
                let ns = cm.namespace().unwrap_or_default();
                tracing::info!(namespace = %ns, %name, "ConfigMap deleted");
                seen.mark_deleted(&ns);
                queue.send(ns);
            }
        }
    }
}

/// Whether the stored ConfigMap differs from the apply body `desired` in anything the relay
/// (or a restarted controller) reads: the files (text or compressed, extra keys included),
/// the hash, the label.
pub fn differs(current: &ConfigMap, desired: &Value) -> bool {
    let data: BTreeMap<String, String> =
        serde_json::from_value(desired["data"].clone()).unwrap_or_default();
    let binary: BTreeMap<String, ByteString> =
        serde_json::from_value(desired["binaryData"].clone()).unwrap_or_default();
    // The hash only where the body carries one (the relay's, not the state's).
    let hash = desired["metadata"]["annotations"][HASH_ANNOTATION].as_str();
    current.data.clone().unwrap_or_default() != data
        || current.binary_data.clone().unwrap_or_default() != binary
        || hash.is_some_and(|h| {
            current
                .annotations()
                .get(HASH_ANNOTATION)
                .map(String::as_str)
                != Some(h)
        })
        || current.labels().get(MANAGED_BY_LABEL).map(String::as_str) != Some(MANAGER)
}

/// Whether the stored files differ from `desired`'s in more than the manifest's `resources`
/// (which resource made which row): that attribution is outside the hash, so a new one
/// under the same hash is the controller's own update, not an edit by hand.
pub fn files_differ(current: &ConfigMap, desired: &Value) -> bool {
    fn without_attribution(
        mut data: BTreeMap<String, String>,
    ) -> (BTreeMap<String, String>, Value) {
        let manifest = data
            .remove(MANIFEST)
            .and_then(|m| serde_json::from_str::<Value>(&m).ok())
            .map(|mut m| {
                if let Some(m) = m.as_object_mut() {
                    m.remove("resources");
                }
                m
            })
            .unwrap_or(Value::Null);
        (data, manifest)
    }
    let data: BTreeMap<String, String> =
        serde_json::from_value(desired["data"].clone()).unwrap_or_default();
    let binary: BTreeMap<String, ByteString> =
        serde_json::from_value(desired["binaryData"].clone()).unwrap_or_default();
    without_attribution(current.data.clone().unwrap_or_default()) != without_attribution(data)
        || current.binary_data.clone().unwrap_or_default() != binary
}

/// Keys of the stored ConfigMap the apply body does not have: an apply only removes keys
/// it owned, so keys someone else added need removing by hand (a merge patch with nulls).
pub fn extra_keys(current: &ConfigMap, desired: &Value) -> Option<Value> {
    let mut patch = serde_json::Map::new();
    for (field, keys) in [
        (
            "data",
            current.data.as_ref().map(|d| d.keys().collect::<Vec<_>>()),
        ),
        (
            "binaryData",
            current.binary_data.as_ref().map(|d| d.keys().collect()),
        ),
    ] {
        let extra: serde_json::Map<String, Value> = keys
            .unwrap_or_default()
            .into_iter()
            .filter(|k| desired[field].get(k.as_str()).is_none())
            .map(|k| (k.clone(), Value::Null))
            .collect();
        if !extra.is_empty() {
            patch.insert(field.into(), Value::Object(extra));
        }
    }
    (!patch.is_empty()).then_some(Value::Object(patch))
}

/// Field managers other than mailtls that own files, the hash or the label: whoever
/// edited the ConfigMap by hand (`kubectl-edit`, `kubectl-patch`, …).
pub fn editors(current: &ConfigMap) -> Vec<String> {
    let touches = |fields: &Value| {
        fields.get("f:data").is_some()
            || fields.get("f:binaryData").is_some()
            || fields["f:metadata"]["f:annotations"]
                .get(format!("f:{HASH_ANNOTATION}"))
                .is_some()
            || fields["f:metadata"]["f:labels"]
                .get(format!("f:{MANAGED_BY_LABEL}"))
                .is_some()
    };
    let mut out: Vec<String> = current
        .managed_fields()
        .iter()
        .filter(|m| m.manager.as_deref() != Some(MANAGER))
        .filter(|m| m.fields_v1.as_ref().is_some_and(|f| touches(&f.0)))
        .map(|m| m.manager.clone().unwrap_or_else(|| "unknown".into()))
        .collect();
    out.sort();
    out.dedup();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The reconcile may find the ConfigMap gone before the watch reports it: what this
    /// process wrote counts, and so does the watch's mark once it comes.
    #[test]
    fn a_deletion_is_known_from_either_side() {
        let seen = Seen::default();
        assert!(!seen.has_written("ns") && !seen.take_deleted("ns"));
        let mut cm = ConfigMap::default();
        cm.metadata.resource_version = Some("7".into());
        seen.wrote("ns", &cm);
        assert!(seen.has_written("ns") && !seen.has_written("other"));
        seen.mark_deleted("ns");
        assert!(!seen.has_written("ns"));
        assert!(seen.take_deleted("ns") && !seen.take_deleted("ns"));
    }

    /// A ConfigMap written, then deleted before the watch's list: the list's end shows it,
    /// within the watch's own namespace only.
    #[test]
    fn a_deletion_before_the_list_is_seen_at_its_end() {
        let seen = Seen::default();
        let mut cm = ConfigMap::default();
        cm.metadata.resource_version = Some("7".into());
        seen.wrote("a", &cm);
        seen.wrote("b", &cm);
        let listed = BTreeSet::from(["b".to_string()]);
        assert_eq!(seen.missing_from(&listed, None), ["a"]);
        assert_eq!(seen.missing_from(&listed, Some("a")), ["a"]);
        assert!(seen.missing_from(&listed, Some("b")).is_empty());
        assert!(seen.missing_from(&listed, Some("c")).is_empty());
    }

    /// The watch itself: a list that lacks a ConfigMap this process wrote (it was deleted
    /// before the list) marks it deleted and queues its namespace; no deletion event comes.
    #[tokio::test]
    async fn a_watch_whose_list_lacks_a_written_config_map_marks_it_deleted() {
        use http::{Request, Response};
        use kube::client::Body;
        let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let api: Api<ConfigMap> = Api::namespaced(Client::new(service, "team-a"), "team-a");
        let seen = Arc::new(Seen::default());
        let mut cm = ConfigMap::default();
        cm.metadata.resource_version = Some("7".into());
        seen.wrote("team-a", &cm);
        let mut queue = super::super::queue::Queue::new();
        let config = watcher::Config::default().fields("metadata.name=state");
        let watch = tokio::spawn(drive(
            api,
            config,
            "state".into(),
            seen.clone(),
            queue.sender(),
        ));
        let wait = std::time::Duration::from_secs(10);
        let (request, reply) = tokio::time::timeout(wait, handle.next_request())
            .await
            .expect("a request")
            .expect("the list");
        assert!(
            request
                .uri()
                .to_string()
                .starts_with("/api/v1/namespaces/team-a/configmaps?"),
            "{}",
            request.uri()
        );
        let empty = serde_json::json!({
            "apiVersion": "v1", "kind": "ConfigMapList",
            "metadata": {"resourceVersion": "9"}, "items": []
        });
        let body = Body::from(serde_json::to_vec(&empty).expect("json"));
        reply.send_response(Response::builder().body(body).expect("response"));
        let queued = tokio::time::timeout(wait, queue.rx.recv()).await;
        assert_eq!(queued.expect("queued in time").as_deref(), Some("team-a"));
        assert!(seen.take_deleted("team-a") && !seen.has_written("team-a"));
        watch.abort();
    }

    /// A first list that comes after the reconcile at start still shows an edit made in
    /// between; before any write or check there is nothing to compare with.
    #[test]
    fn an_edit_before_the_first_list_is_seen() {
        let seen = Seen::default();
        let version = |rv: &str| {
            let mut cm = ConfigMap::default();
            cm.metadata.resource_version = Some(rv.into());
            cm
        };
        assert!(!seen.changed_since_known("ns", &version("8")));
        seen.wrote("ns", &version("7"));
        assert!(!seen.changed_since_known("ns", &version("7")));
        assert!(seen.changed_since_known("ns", &version("8")));
        assert!(!seen.changed_since_known("other", &version("8")));
    }
}
