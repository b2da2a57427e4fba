//! What every reconcile shares: the reflector stores and the [`Context`].

use super::events::Events;
use super::metrics::Metrics;
use super::{Error, state};
use crate::api::{AddressList, OutboundGateway, TlsCompliance};
use crate::engine::Managed;
use crate::policy::{Inputs, Kind};
use crate::render::RenderOptions;
use kube::runtime::reflector::Store;
use kube::{Client, ResourceExt};
use std::any::Any;
use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use tokio::sync::watch;

/// Reflector stores of the three kinds: one per watched namespace, or one for all.
#[derive(Clone)]
pub struct Stores {
    pub lists: Vec<Store<AddressList>>,
    pub policies: Vec<Store<TlsCompliance>>,
    pub gateways: Vec<Store<OutboundGateway>>,
    /// Watchers that have completed their first list.
    pub(super) synced: Arc<AtomicUsize>,
}

impl Stores {
    /// Stores filled by the caller (tests, tools): counted as synced.
    pub fn filled(
        lists: Store<AddressList>,
        policies: Store<TlsCompliance>,
        gateways: Store<OutboundGateway>,
    ) -> Self {
        Stores {
            lists: vec![lists],
            policies: vec![policies],
            gateways: vec![gateways],
            synced: Arc::new(AtomicUsize::new(3)),
        }
    }

    /// Whether every watcher has listed once; before that a namespace would look empty.
    pub fn is_ready(&self) -> bool {
        self.synced.load(Ordering::Acquire)
            >= self.lists.len() + self.policies.len() + self.gateways.len()
    }

    /// The resources of one namespace, sorted by name.
    pub fn inputs(&self, namespace: &str) -> Inputs {
        fn of<K: kube::Resource<DynamicType = ()> + Clone + 'static>(
            stores: &[Store<K>],
            ns: &str,
        ) -> Vec<K> {
            let mut items: Vec<K> = stores
                .iter()
                .flat_map(|s| s.state_filter(|o| o.meta().namespace.as_deref() == Some(ns)))
                .map(|o| (*o).clone())
                .collect();
            items.sort_by_key(|o| o.meta().name.clone());
            items
        }
        Inputs {
            namespace: namespace.to_string(),
            address_lists: of(&self.lists, namespace),
            policies: of(&self.policies, namespace),
            gateways: of(&self.gateways, namespace),
        }
    }

    /// The stores of kind `K`.
    pub fn of<K: Managed>(&self) -> &[Store<K>] {
        let stores: &dyn Any = match K::KIND {
            Kind::AddressList => &self.lists,
            Kind::TlsCompliance => &self.policies,
            Kind::OutboundGateway => &self.gateways,
        };
        // `K::KIND` names the field of type `Vec<Store<K>>`, so this always succeeds.
        stores
            .downcast_ref::<Vec<Store<K>>>()
            .map_or(&[], Vec::as_slice)
    }

    /// The resource of kind `K` named `name` in `namespace`, as last seen.
    pub fn find<K: Managed>(&self, namespace: &str, name: &str) -> Option<K> {
        self.of::<K>()
            .iter()
            .flat_map(|s| s.state())
            .find(|o| o.namespace().as_deref() == Some(namespace) && o.name_any() == name)
            .map(|o| (*o).clone())
    }

    /// Every namespace holding at least one mailtls resource.
    pub fn namespaces(&self) -> BTreeSet<String> {
        fn of<K: kube::Resource<DynamicType = ()> + Clone + 'static>(
            stores: &[Store<K>],
            out: &mut BTreeSet<String>,
        ) {
            for s in stores {
                out.extend(s.state().iter().filter_map(|o| o.namespace()));
            }
        }
        let mut out = BTreeSet::new();
        of(&self.lists, &mut out);
        of(&self.policies, &mut out);
        of(&self.gateways, &mut out);
        out
    }
}

/// What a reconcile needs; shared by every reconcile.
pub struct Context {
    pub client: Client,
    pub stores: Stores,
    pub render: RenderOptions,
    /// Name of the ConfigMap in each namespace.
    pub config_map: String,
    /// Watched namespaces; empty means all.
    pub namespaces: Vec<String>,
    pub metrics: Arc<Metrics>,
    pub events: Events,
    /// Whether this instance may write (always true without leader election).
    pub leader: watch::Receiver<bool>,
    /// Relay pods and the hashes they applied; `None`: not tracked.
    pub relays: Option<Arc<super::RelayPods>>,
    /// The last valid generations of each namespace.
    pub states: state::States,
    /// Our relay ConfigMap writes and its deletions seen by the drift watch.
    pub drift: Arc<super::drift::Seen>,
    /// The same for the state ConfigMap.
    pub state_drift: Arc<super::drift::Seen>,
}

impl Context {
    /// Checked before every write, so an instance that lost the lease stops at once.
    pub(super) fn ensure_leader(&self) -> Result<(), Error> {
        if *self.leader.borrow() {
            Ok(())
        } else {
            Err(Error::NotLeader)
        }
    }
}
