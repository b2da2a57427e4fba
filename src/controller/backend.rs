//! The cluster backend of the engine: the snapshot and the relay configuration in
//! ConfigMaps, statuses as patches, resources from the reflector stores.

use super::configmap::{CONFIGMAP_LIMIT, HASH_ANNOTATION, MANAGER, desired};
use super::context::Context;
use super::metrics::Written;
use super::{Error, drift, state, status_patch};
use crate::api::RelayConfigRef;
use crate::engine::{Backend, Managed};
use crate::policy::{Inputs, LastValid, ResourceId};
use crate::probe::DestinationReport;
use crate::render::RelayConfig;
use crate::render::pack::pack;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::Api;
use kube::ResourceExt;
use kube::api::{Patch, PatchParams};
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
        // Relay pods with nothing to apply stay not Ready (they run the base configuration
        // and take no mail): they get the empty policy, which makes nothing mandatory.
        let relay_pods = self
            .relays
            .as_ref()
            .and_then(|r| r.counts(namespace))
            .is_some_and(|c| c.total > 0);
        let nothing_to_write = inputs.address_lists.is_empty()
            && inputs.policies.is_empty()
            && inputs.gateways.is_empty()
            && !relay_pods;
        if let Some(cm) = apply_config(self, namespace, config, nothing_to_write).await? {
            tracing::info!(namespace, hash = %config.hash, "relay configuration written");
            self.events.config_written(&cm, &config.hash, inputs).await;
        }
        Ok(())
    }

    fn relay_ref(&self, namespace: &str, hash: &str) -> RelayConfigRef {
        let counts = self.relays.as_ref().and_then(|r| r.counts(namespace));
        let pods = counts.as_ref().map(|c| c.of(hash));
        let refused = counts.as_ref().and_then(|c| c.refused(hash));
        RelayConfigRef {
            name: self.config_map.clone(),
            hash: hash.to_string(),
            applied_pods: pods.map(|(applied, _)| applied),
            total_pods: pods.map(|(_, total)| total),
            refused_pods: refused.as_ref().map(|(n, _)| *n),
            refusal: refused.map(|(_, reason)| reason),
        }
    }

    fn observed(&self, namespace: &str) -> Option<Arc<crate::observe::PodsObserved>> {
        self.relays.as_ref()?.observed(namespace)
    }

    async fn write_status<K: Managed>(
        &self,
        namespace: &str,
        old: &K,
        new: &K,
    ) -> Result<(), Error> {
        let api: Api<K> = Api::namespaced(self.client.clone(), namespace);
        status_patch::update(self, &api, old, new).await
    }

    fn evaluated(&self, namespace: &str, policy: &crate::policy::EffectivePolicy) {
        self.metrics.evaluated(namespace, policy);
    }

    fn tested(&self, namespace: &str, id: &ResourceId, reports: &[DestinationReport]) {
        self.metrics.tested(namespace, id, reports);
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

/// Apply the configuration unless the ConfigMap already holds exactly it (the files, not
/// only the hash: a hand edit that kept or recomputed the hash is still found). A namespace
/// without mailtls resources (nor relay pods) gets no new ConfigMap; an existing one is
/// rewritten with the
/// empty policy's files (nothing mandatory, no routes), so a relay that mounts it drops the
/// old policy instead of keeping stale files as it would after a delete.
/// Returns the stored ConfigMap when a new configuration was written; restoring one that
/// was edited or deleted by hand is a repair, reported by its own Event, and returns None.
async fn apply_config(
    ctx: &Context,
    namespace: &str,
    config: &RelayConfig,
    nothing_to_write: bool,
) -> Result<Option<ConfigMap>, Error> {
    let name = ctx.config_map.as_str();
    let err = |source| Error::ConfigMap {
        namespace: namespace.to_string(),
        name: name.to_string(),
        source: Box::new(source),
    };
    let api: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), namespace);
    let current = api.get_opt(name).await.map_err(err)?;
    if current.is_none() && nothing_to_write {
        return Ok(None);
    }
    let packed = pack(&config.files);
    let body = desired(name, namespace, &config.hash, &packed);
    if let Some(cm) = current.as_ref().filter(|c| !drift::differs(c, &body)) {
        // In order: a later version of it on the watch is someone else's change.
        ctx.drift.wrote(namespace, cm);
        return Ok(None);
    }
    ctx.ensure_leader()?;
    if packed.size() > CONFIGMAP_LIMIT {
        return Err(Error::TooLarge {
            namespace: namespace.to_string(),
            name: name.to_string(),
            bytes: packed.size(),
        });
    }
    let repair = match &current {
        // The watch may not have delivered the deletion yet; a ConfigMap this process wrote
        // and that is gone now was deleted all the same (`|`: the flag is cleared either way).
        None => (ctx.drift.take_deleted(namespace) | ctx.drift.has_written(namespace))
            .then(|| "it had been deleted".to_string()),
        Some(cm) => {
            let editors = drift::editors(cm);
            // The same hash over other files: edited by hand, with the hash kept or forged.
            let same_hash = cm.annotations().get(HASH_ANNOTATION) == Some(&config.hash);
            let edited = same_hash && drift::files_differ(cm, &body);
            (edited || !editors.is_empty()).then(|| match editors.as_slice() {
                [] => "its content had been changed".to_string(),
                names => format!("it had been edited by {}", names.join(", ")),
            })
        }
    };
    if let Some(extra) = current.as_ref().and_then(|c| drift::extra_keys(c, &body)) {
        let params = PatchParams {
            field_manager: Some(MANAGER.into()),
            ..PatchParams::default()
        };
        api.patch(name, &params, &Patch::Merge(extra))
            .await
            .map_err(err)?;
        ctx.metrics.write(Written::ConfigMap);
    }
    let params = PatchParams::apply(MANAGER).force();
    let stored = api
        .patch(name, &params, &Patch::Apply(body))
        .await
        .map_err(err)?;
    ctx.drift.wrote(namespace, &stored);
    ctx.metrics.write(Written::ConfigMap);
    match repair {
        None => Ok(Some(stored)),
        Some(why) => {
            tracing::warn!(namespace, hash = %config.hash, "relay configuration repaired: {why}");
            ctx.events
                .config_repaired(&stored, &config.hash, &why)
                .await;
            Ok(None)
        }
    }
}
