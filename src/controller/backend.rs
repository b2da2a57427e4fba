//! The cluster backend of the engine: the snapshot and the relay configuration in
//! ConfigMaps, statuses as patches, resources from the reflector stores.

use super::context::Context;
use super::{Error, configmap, state, status};
use crate::api::RelayConfigRef;
use crate::engine::{Backend, Managed};
use crate::policy::{Inputs, LastValid};
use crate::probe::DestinationReport;
use crate::render::RelayConfig;
use kube::Api;
use std::sync::Arc;

impl Backend for Context {
    type Error = Error;

    fn aborts(error: &Error) -> bool {
        matches!(error, Error::NotLeader)
    }

    fn is_conflict(error: &Error) -> bool {
        error.is_conflict()
    }

    async fn last_valid(&self, namespace: &str) -> Result<Arc<LastValid>, Error> {
        state::load(self, namespace).await
    }

    async fn store_last_valid(
        &self,
        namespace: &str,
        _last: &LastValid,
        next: &LastValid,
    ) -> Result<(), Error> {
        // Always called: it also repairs a snapshot edited or deleted by hand.
        state::store(self, namespace, next).await
    }

    async fn write_config(
        &self,
        namespace: &str,
        config: &RelayConfig,
        inputs: &Inputs,
    ) -> Result<(), Error> {
        let empty = inputs.address_lists.is_empty()
            && inputs.policies.is_empty()
            && inputs.gateways.is_empty();
        if let Some(cm) = configmap::apply(self, namespace, config, empty).await? {
            tracing::info!(namespace, hash = %config.hash, "relay configuration written");
            self.events.config_written(&cm, &config.hash, inputs).await;
        }
        Ok(())
    }

    fn relay_ref(&self, namespace: &str, hash: &str) -> RelayConfigRef {
        let pods = self
            .relays
            .as_ref()
            .and_then(|r| r.counts(namespace))
            .map(|c| c.of(hash));
        RelayConfigRef {
            name: self.config_map.clone(),
            hash: hash.to_string(),
            applied_pods: pods.map(|(applied, _)| applied),
            total_pods: pods.map(|(_, total)| total),
        }
    }

    async fn write_status<K: Managed>(
        &self,
        namespace: &str,
        old: &K,
        new: &K,
    ) -> Result<(), Error> {
        let api: Api<K> = Api::namespaced(self.client.clone(), namespace);
        status::update(self, &api, old, new).await
    }

    fn tested(&self, reports: &[DestinationReport]) {
        self.metrics.tested(reports);
    }

    async fn update_status<K: Managed>(
        &self,
        namespace: &str,
        name: &str,
        change: impl FnOnce(&mut K) + Send,
    ) -> Result<(), Error> {
        // Deleted meanwhile: nothing to report on.
        let Some(old) = self.stores.find::<K>(namespace, name) else {
            return Ok(());
        };
        let mut new = old.clone();
        change(&mut new);
        self.write_status(namespace, &old, &new).await
    }
}
