//! What the engine needs of where resources, statuses and the relay configuration live: the
//! cluster (`controller`) or a directory (`mailtls standalone`).

use super::kind::Managed;
use crate::api::RelayConfigRef;
use crate::policy::{Inputs, LastValid, ResourceId};
use crate::probe::DestinationReport;
use crate::render::RelayConfig;
use std::future::Future;
use std::sync::Arc;

/// One backend. Every method works on one namespace.
pub trait Backend: Send + Sync + 'static {
    type Error: std::error::Error + Send + Sync + 'static;

    /// Whether an error ends the reconcile at once (this instance may no longer write)
    /// instead of being reported in the statuses.
    fn aborts(error: &Self::Error) -> bool;

    /// Whether an error is a lost race that a retry on fresher data fixes (logged quietly).
    fn is_conflict(_error: &Self::Error) -> bool {
        false
    }

    /// The last valid generations kept for the namespace (none yet: empty). One that cannot
    /// be read is an error: taking it as empty would drop what it keeps in force.
    fn last_valid(
        &self,
        namespace: &str,
    ) -> impl Future<Output = Result<Arc<LastValid>, Self::Error>> + Send;

    /// Keep `next` (the engine passes `last` as read, so an unchanged one need not be
    /// written).
    fn store_last_valid(
        &self,
        namespace: &str,
        last: &LastValid,
        next: &LastValid,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send;

    /// Write the relay configuration unless it is already in place. `inputs` are the
    /// resources it was rendered from.
    fn write_config(
        &self,
        namespace: &str,
        config: &RelayConfig,
        inputs: &Inputs,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send;

    /// What a rendered policy's status points at: the configuration and how far it has
    /// propagated.
    fn relay_ref(&self, namespace: &str, hash: &str) -> RelayConfigRef;

    /// What the namespace's relay pods observed of real mail (from their mail logs), when
    /// this backend knows of relay pods that report it.
    fn observed(&self, _namespace: &str) -> Option<Arc<crate::observe::PodsObserved>> {
        None
    }

    /// Write `new`'s status when it differs from `old`'s.
    fn write_status<K: Managed>(
        &self,
        namespace: &str,
        old: &K,
        new: &K,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send;

    /// The namespace's policy as just evaluated (metrics: destinations no longer covered).
    fn evaluated(&self, _namespace: &str, _policy: &crate::policy::EffectivePolicy) {}

    /// A resource's TLS test finished (metrics).
    fn tested(&self, _namespace: &str, _id: &ResourceId, _reports: &[DestinationReport]) {}

    /// Change the status of the resource as currently stored (the TLS tests' results); a
    /// resource deleted meanwhile is left alone.
    fn update_status<K: Managed>(
        &self,
        namespace: &str,
        name: &str,
        change: impl FnOnce(&mut K) + Send,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send;
}
