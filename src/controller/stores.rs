//! The reflector stores of the three kinds, and the namespaces they cover.

use crate::api::{AddressList, OutboundGateway, TlsCompliance};
use crate::engine::Managed;
use crate::policy::{Inputs, Kind};
use kube::runtime::reflector::Store;
use kube::{Api, Client, ResourceExt};
use std::any::Any;
use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

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

/// One Api per watched namespace, or one for all namespaces when none is given.
pub fn scoped_apis<K>(client: &Client, namespaces: &[String]) -> Vec<Api<K>>
where
    K: kube::Resource<Scope = kube::core::NamespaceResourceScope>,
    K::DynamicType: Default,
{
    if namespaces.is_empty() {
        vec![Api::all(client.clone())]
    } else {
        namespaces
            .iter()
            .map(|ns| Api::namespaced(client.clone(), ns))
            .collect()
    }
}
