//! Kubernetes Events (events.k8s.io). Deduplicated by construction: they are only sent when
//! the ConfigMap hash or a condition actually changes, never on a reconcile that writes
//! nothing. Failing to send one is logged, never a reconcile error.

use crate::api::Condition;
use crate::engine::conditions::{ConditionType, Reason, Status, find};
use crate::policy::Inputs;
use k8s_openapi::api::core::v1::{ConfigMap, ObjectReference};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::{Resource, ResourceExt};

/// Event reason when a hand-edited or deleted ConfigMap was restored.
pub const REPAIRED: &str = "RelayConfigRepaired";

/// Event reason when a hand-edited or deleted state ConfigMap was restored.
pub const STATE_REPAIRED: &str = "StateRepaired";
/// Event reasons of their own (the others repeat a condition's reason).
const RENDERED: &str = "Rendered";
const CONFLICT: &str = "Conflict";
const TEST_FAILED: &str = "TLSTestFailed";
const EXPIRING: &str = "CertificateExpiringSoon";

/// Name of the controller in Events.
const CONTROLLER: &str = "mailtls-controller";

pub struct Events {
    recorder: Recorder,
    /// (resource uid, domain) already reported as bouncing for TLS.
    bounced: std::sync::Mutex<std::collections::HashSet<(String, String)>>,
}

/// Event reason when real mail to a destination bounced for TLS.
const TLS_BOUNCED: &str = "TLSBounced";
/// Bounced destinations remembered (then forgotten all at once: a repeat Event at worst).
const BOUNCED_KEPT: usize = 10_000;

impl Events {
    pub fn new(client: kube::Client, instance: Option<String>) -> Self {
        let reporter = Reporter {
            controller: CONTROLLER.into(),
            instance,
        };
        Events {
            recorder: Recorder::new(client, reporter),
            bounced: Default::default(),
        }
    }

    async fn publish<K: Resource<DynamicType = ()>>(
        &self,
        regarding: &K,
        type_: EventType,
        reason: &str,
        note: String,
    ) {
        self.publish_ref(&regarding.object_ref(&()), type_, reason, note)
            .await
    }

    async fn publish_ref(
        &self,
        regarding: &ObjectReference,
        type_: EventType,
        reason: &str,
        note: String,
    ) {
        let event = Event {
            type_,
            reason: reason.into(),
            // The API server caps a note at 1 kB.
            note: Some(note.chars().take(1000).collect()),
            action: "Reconcile".into(),
            secondary: None,
        };
        if let Err(e) = self.recorder.publish(&event, regarding).await {
            tracing::warn!(reason, "could not record an Event: {e}");
        }
    }

    /// The relay configuration of a namespace changed.
    pub async fn config_written(&self, cm: &ConfigMap, hash: &str, inputs: &Inputs) {
        let note = format!(
            "relay configuration {hash} rendered from {} TlsCompliance, {} OutboundGateway and {} AddressList resources",
            inputs.policies.len(),
            inputs.gateways.len(),
            inputs.address_lists.len()
        );
        self.publish(cm, EventType::Normal, RENDERED, note).await;
    }

    /// The relay configuration of a namespace was restored after a hand edit or deletion.
    pub async fn config_repaired(&self, cm: &ConfigMap, hash: &str, why: &str) {
        let note = format!(
            "relay configuration {hash} restored: {why}; the ConfigMap is written by mailtls \
             from the namespace's policies, edit those instead"
        );
        self.publish_ref(&per_version(cm), EventType::Warning, REPAIRED, note)
            .await;
    }

    /// The last valid generations of a namespace were restored after a hand edit or deletion.
    pub async fn state_repaired(&self, cm: &ConfigMap, why: &str) {
        let note = format!(
            "last valid generations restored from the controller's memory: {why}; the \
             ConfigMap is written by mailtls and read back after a restart to decide which \
             earlier generations stay enforced, do not edit it"
        );
        self.publish_ref(&per_version(cm), EventType::Warning, STATE_REPAIRED, note)
            .await;
    }

    /// Real mail bounced for TLS: a Warning the first time a destination does, per resource
    /// (for as long as this controller runs).
    pub async fn tls_bounce<K: Resource<DynamicType = ()>>(
        &self,
        regarding: &K,
        failure: &crate::api::ObservedFailure,
    ) {
        if !failure.bounced {
            return;
        }
        let key = (
            regarding.meta().uid.clone().unwrap_or_default(),
            failure.domain.clone(),
        );
        let first = match self.bounced.lock() {
            Ok(mut seen) => {
                if seen.len() >= BOUNCED_KEPT {
                    seen.clear();
                }
                seen.insert(key)
            }
            Err(_) => false,
        };
        if first {
            let note = format!(
                "mail to {} bounced for TLS at {} via {}: {}",
                failure.domain, failure.time, failure.hop, failure.reason
            );
            self.publish(regarding, EventType::Warning, TLS_BOUNCED, note)
                .await;
        }
    }

    /// A resource's conditions changed: warn about new conflicts and new reasons for not
    /// being Ready (invalid entries or spec, missing references, a lost conflict).
    pub async fn conditions_changed<K: Resource<DynamicType = ()>>(
        &self,
        regarding: &K,
        old: Vec<Condition>,
        new: Vec<Condition>,
    ) {
        let find = |list: &[Condition], t: ConditionType| {
            find(list, t).map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()))
        };
        let conflict = find(&new, ConditionType::Conflict);
        if conflict != find(&old, ConditionType::Conflict)
            && let Some((status, _, message)) = conflict
            && status == Status::True.as_str()
        {
            self.publish(regarding, EventType::Warning, CONFLICT, message)
                .await;
        }
        // A TLS test that fails (or, in Monitor mode, would fail), or certificates close
        // to expiry: once, when that becomes the case.
        let compliant = find(&new, ConditionType::Compliant);
        if compliant != find(&old, ConditionType::Compliant)
            && let Some((status, reason, message)) = compliant
        {
            match (status.as_str(), reason.as_str()) {
                (s, _) if s == Status::False.as_str() => {
                    self.publish(regarding, EventType::Warning, TEST_FAILED, message)
                        .await
                }
                (_, r) if r == Reason::PassedWithWarnings.as_str() => {
                    self.publish(regarding, EventType::Warning, EXPIRING, message)
                        .await
                }
                _ => {}
            }
        }
        let ready = find(&new, ConditionType::Ready);
        if ready != find(&old, ConditionType::Ready)
            && let Some((status, reason, message)) = ready
            && status == Status::False.as_str()
            && reason != Reason::ConflictLost.as_str()
        {
            self.publish(regarding, EventType::Warning, &reason, message)
                .await;
        }
    }
}

/// The ConfigMap at its restored version. The recorder folds a repeat (same reason and
/// object) into the first Event's count and keeps that Event's note; with the version each
/// repair is its own Event, so each names its editor.
fn per_version(cm: &ConfigMap) -> ObjectReference {
    let mut regarding = cm.object_ref(&());
    regarding.resource_version = cm.resource_version();
    regarding
}
