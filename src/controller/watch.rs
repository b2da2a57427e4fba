//! Reflectors for the three kinds, and the predicate that turns their events into dirty
//! namespaces: an object whose generation did not move (a status write, ours or the test
//! loop's, or a label edit) does not mark its namespace, so status writes never loop.

use super::queue::Sender;
use super::reconcile::Stores;
use crate::api::{AddressList, OutboundGateway, TlsCompliance};
use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};
use kube::runtime::WatchStreamExt;
use kube::runtime::reflector::{self, store::Writer};
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// A watcher not yet polled: it needs the queue to report to.
pub type Watcher = Box<dyn FnOnce(Sender) -> BoxFuture<'static, ()> + Send>;

/// Stores for every kind (one per namespace in `namespaces`, or one cluster-wide) and the
/// watchers that fill them.
pub fn start(client: Client, namespaces: &[String]) -> (Stores, Vec<Watcher>) {
    let synced = Arc::new(AtomicUsize::new(0));
    let scopes: Vec<Option<&str>> = if namespaces.is_empty() {
        vec![None]
    } else {
        namespaces.iter().map(|n| Some(n.as_str())).collect()
    };
    let mut watchers = Vec::new();
    let mut stores = Stores {
        lists: Vec::new(),
        policies: Vec::new(),
        gateways: Vec::new(),
        synced: synced.clone(),
    };
    for scope in scopes {
        stores
            .lists
            .push(add::<AddressList>(&client, scope, &synced, &mut watchers));
        stores
            .policies
            .push(add::<TlsCompliance>(&client, scope, &synced, &mut watchers));
        stores.gateways.push(add::<OutboundGateway>(
            &client,
            scope,
            &synced,
            &mut watchers,
        ));
    }
    (stores, watchers)
}

fn add<K>(
    client: &Client,
    scope: Option<&str>,
    synced: &Arc<AtomicUsize>,
    watchers: &mut Vec<Watcher>,
) -> reflector::Store<K>
where
    K: Resource<DynamicType = (), Scope = kube::core::NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    let api: Api<K> = match scope {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    let writer = Writer::default();
    let store = writer.as_reader();
    let synced = synced.clone();
    watchers.push(Box::new(move |queue| {
        drive(api, writer, queue, synced).boxed()
    }));
    store
}

/// Runs every watcher until the process stops.
pub async fn feed(watchers: Vec<Watcher>, queue: Sender) {
    futures::future::join_all(watchers.into_iter().map(|w| w(queue.clone()))).await;
}

/// Identity of an object for the predicate: uid, else namespace/name.
fn key<K: Resource>(o: &K) -> (String, String) {
    let ns = o.namespace().unwrap_or_default();
    let id = o.uid().unwrap_or_else(|| format!("{ns}/{}", o.name_any()));
    (id, ns)
}

async fn drive<K>(api: Api<K>, writer: Writer<K>, queue: Sender, synced: Arc<AtomicUsize>)
where
    K: Resource<DynamicType = ()>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    let kind = K::kind(&()).to_string();
    // uid → (namespace, generation) of what the last reconcile-triggering event saw.
    let mut seen: HashMap<String, (String, Option<i64>)> = HashMap::new();
    let mut relist: Option<HashMap<String, (String, Option<i64>)>> = None;
    let mut first_sync = true;
    let stream = watcher::watcher(api, watcher::Config::default())
        .default_backoff()
        .reflect(writer);
    futures::pin_mut!(stream);
    while let Some(event) = stream.next().await {
        match event {
            Err(e) => tracing::warn!(%kind, "watch failed, retrying with backoff: {e}"),
            Ok(Event::Init) => relist = Some(HashMap::new()),
            Ok(Event::InitApply(o)) => {
                let (id, ns) = key(&o);
                relist
                    .get_or_insert_with(HashMap::new)
                    .insert(id, (ns, o.meta().generation));
            }
            Ok(Event::InitDone) => {
                let new = relist.take().unwrap_or_default();
                // Namespaces where anything appeared, moved or vanished while not watching.
                let mut dirty = BTreeSet::new();
                for (id, (ns, generation)) in &new {
                    if seen.get(id).map(|(_, g)| g) != Some(generation) {
                        dirty.insert(ns.clone());
                    }
                }
                for (id, (ns, _)) in &seen {
                    if !new.contains_key(id) {
                        dirty.insert(ns.clone());
                    }
                }
                seen = new;
                if first_sync {
                    first_sync = false;
                    synced.fetch_add(1, Ordering::AcqRel);
                    tracing::debug!(%kind, objects = seen.len(), "cache synced");
                }
                for ns in dirty {
                    queue.send(ns);
                }
            }
            Ok(Event::Apply(o)) => {
                let (id, ns) = key(&o);
                let generation = o.meta().generation;
                let previous = seen.insert(id, (ns.clone(), generation));
                if previous.map(|(_, g)| g) != Some(generation) {
                    queue.send(ns);
                }
            }
            Ok(Event::Delete(o)) => {
                let (id, ns) = key(&o);
                seen.remove(&id);
                queue.send(ns);
            }
        }
    }
}
