//! What every reconcile shares: the [`Context`].

use super::Error;
use super::events::Events;
use super::metrics::Metrics;
use super::stores::Stores;
use crate::policy::LastValid;
use crate::render::RenderOptions;
use kube::Client;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio::sync::watch;

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

    pub(super) fn get(&self, namespace: &str) -> Option<Arc<LastValid>> {
        self.cache.lock().ok()?.get(namespace).cloned()
    }

    pub(super) fn put(&self, namespace: &str, last: Arc<LastValid>) {
        if let Ok(mut cache) = self.cache.lock() {
            cache.insert(namespace.to_string(), last);
        }
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
    pub states: States,
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
