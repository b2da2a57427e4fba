//! Reflectors for the three kinds, and the predicate that turns their events into dirty
//! namespaces: an object whose generation did not move (a status write, ours or the test
//! loop's, or a label edit) does not mark its namespace, so status writes never loop.

use super::queue::Sender;
use super::stores::Stores;
use crate::api::{AddressList, OutboundGateway, TlsCompliance};
use crate::engine::Managed;
use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};
use kube::runtime::WatchStreamExt;
use kube::runtime::reflector::{self, store::Writer};
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client, Resource, ResourceExt};
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
    K: Managed,
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

/// The generation predicate: which namespaces a watch event makes dirty.
#[derive(Default)]
pub struct Tracker {
    /// uid → (namespace, generation) as last seen.
    seen: HashMap<String, (String, Option<i64>)>,
    /// Objects of a relist in progress.
    relist: Option<HashMap<String, (String, Option<i64>)>>,
}

impl Tracker {
    /// The namespaces to reconcile after `event`.
    pub fn dirty<K: Resource>(&mut self, event: &Event<K>) -> BTreeSet<String> {
        let mut dirty = BTreeSet::new();
        match event {
            Event::Init => self.relist = Some(HashMap::new()),
            Event::InitApply(o) => {
                let (id, ns) = key(o);
                self.relist
                    .get_or_insert_with(HashMap::new)
                    .insert(id, (ns, o.meta().generation));
            }
            Event::InitDone => {
                let new = self.relist.take().unwrap_or_default();
                // Anything that appeared, moved or vanished while not watching.
                for (id, (ns, generation)) in &new {
                    if self.seen.get(id).map(|(_, g)| g) != Some(generation) {
                        dirty.insert(ns.clone());
                    }
                }
                for (id, (ns, _)) in &self.seen {
                    if !new.contains_key(id) {
                        dirty.insert(ns.clone());
                    }
                }
                self.seen = new;
            }
            Event::Apply(o) => {
                let (id, ns) = key(o);
                let generation = o.meta().generation;
                let previous = self.seen.insert(id, (ns.clone(), generation));
                if previous.map(|(_, g)| g) != Some(generation) {
                    dirty.insert(ns);
                }
            }
            Event::Delete(o) => {
                let (id, ns) = key(o);
                self.seen.remove(&id);
                dirty.insert(ns);
            }
        }
        dirty
    }
}

async fn drive<K: Managed>(
    api: Api<K>,
    writer: Writer<K>,
    queue: Sender,
    synced: Arc<AtomicUsize>,
) {
    let kind = K::kind(&()).to_string();
    let mut tracker = Tracker::default();
    let mut first_sync = true;
    let stream = watcher::watcher(api, watcher::Config::default())
        .default_backoff()
        .reflect(writer);
    futures::pin_mut!(stream);
    while let Some(event) = stream.next().await {
        match event {
            Err(e) => tracing::warn!(%kind, "watch failed, retrying with backoff: {e}"),
            Ok(event) => {
                if first_sync && matches!(event, Event::InitDone) {
                    first_sync = false;
                    synced.fetch_add(1, Ordering::AcqRel);
                    tracing::debug!(%kind, "cache synced");
                }
                for ns in tracker.dirty(&event) {
                    queue.send(ns);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::AddressListSpec;

    fn list(ns: &str, uid: &str, generation: i64) -> AddressList {
        let mut l = AddressList::new("l", AddressListSpec::default());
        l.metadata.namespace = Some(ns.into());
        l.metadata.uid = Some(uid.into());
        l.metadata.generation = Some(generation);
        l
    }

    fn set(items: &[&str]) -> BTreeSet<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn only_spec_changes_and_deletions_mark_a_namespace() {
        let mut t = Tracker::default();
        assert_eq!(t.dirty(&Event::<AddressList>::Init), set(&[]));
        assert_eq!(t.dirty(&Event::InitApply(list("a", "1", 1))), set(&[]));
        assert_eq!(t.dirty(&Event::InitApply(list("b", "2", 1))), set(&[]));
        assert_eq!(t.dirty(&Event::<AddressList>::InitDone), set(&["a", "b"]));
        // A status write: same generation, nothing to do.
        assert_eq!(t.dirty(&Event::Apply(list("a", "1", 1))), set(&[]));
        // A spec edit re-renders exactly its namespace.
        assert_eq!(t.dirty(&Event::Apply(list("a", "1", 2))), set(&["a"]));
        assert_eq!(t.dirty(&Event::Apply(list("c", "3", 1))), set(&["c"]));
        assert_eq!(t.dirty(&Event::Delete(list("b", "2", 1))), set(&["b"]));
        // A relist after a watch gap: "c" vanished, "a" is unchanged, "d" is new.
        t.dirty(&Event::<AddressList>::Init);
        t.dirty(&Event::InitApply(list("a", "1", 2)));
        t.dirty(&Event::InitApply(list("d", "4", 1)));
        assert_eq!(t.dirty(&Event::<AddressList>::InitDone), set(&["c", "d"]));
    }
}
