//! One reconcile of one namespace: evaluate (fail closed) → render → keep the last valid
//! generations → write the relay configuration → write every status. The outcome of writing
//! the configuration feeds the statuses here, for both backends.

use super::backend::Backend;
use super::kind::Managed;
use super::statuses::{generation, mark_not_written};
use crate::api::{AddressList, OutboundGateway, RelayConfigRef, TlsCompliance};
use crate::policy::{Evaluation, Inputs, evaluate_fail_closed};
use crate::policy::{ResourceFindings, ResourceId};
use crate::render::{RelayConfig, RenderOptions, render};
use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::ResourceExt;
use std::time::Instant;

/// Status writes of one namespace in flight at once.
const STATUS_WRITES_IN_FLIGHT: usize = 8;

/// What one reconcile did.
pub struct Outcome<E> {
    pub evaluation: Evaluation,
    pub config: RelayConfig,
    /// Every resource with the status it was given.
    pub updated: Updated,
    /// Writing the configuration failed (reported in the statuses, to be retried), else the
    /// first status write that failed. The other statuses were still written.
    pub error: Option<E>,
}

/// Reconcile one namespace. An unreadable snapshot of last valid generations returns before
/// anything is written; an error the backend says aborts (no longer the leader) returns at
/// once, without writing the statuses.
#[tracing::instrument(skip_all, fields(namespace = %inputs.namespace))]
pub async fn reconcile<B: Backend>(
    backend: &B,
    inputs: &Inputs,
    opts: &RenderOptions,
) -> Result<Outcome<B::Error>, B::Error> {
    let ns = inputs.namespace.as_str();
    let started = Instant::now();
    let last = backend.last_valid(ns).await?;
    let (evaluation, next) = evaluate_fail_closed(inputs, &last);
    backend.evaluated(ns, &evaluation.policy);
    let config = render(&evaluation.policy, opts);
    let render_time = started.elapsed();

    // The snapshot first: a relay configuration is never ahead of the generations kept.
    let written = match backend.store_last_valid(ns, &last, &next).await {
        Ok(()) => backend.write_config(ns, &config, inputs).await,
        Err(e) => Err(e),
    };
    let config_error = match written {
        Ok(()) => None,
        Err(e) if B::aborts(&e) => return Err(e),
        Err(e) => Some(e),
    };
    let applied = started.elapsed();

    let now = Time(k8s_openapi::jiff::Timestamp::now());
    let relay = backend.relay_ref(ns, &config.hash);
    let mut updated = namespace_statuses(inputs, &evaluation, &relay, &now);
    let observed = backend
        .observed(ns)
        .map(|seen| super::observed::attribute(inputs, &evaluation.policy, &seen))
        .unwrap_or_default();
    set_observed(&mut updated, &observed);
    if let Some(e) = &config_error {
        not_written(&mut updated, inputs, &e.to_string(), &now);
    }
    let status_error = write_statuses(backend, inputs, &updated).await?;
    tracing::debug!(
        namespace = ns,
        render_ms = render_time.as_millis() as u64,
        config_ms = (applied - render_time).as_millis() as u64,
        status_ms = (started.elapsed() - applied).as_millis() as u64,
        "reconciled"
    );
    Ok(Outcome {
        evaluation,
        config,
        updated,
        error: config_error.or(status_error),
    })
}

/// Write every changed status, a few at a time (independent objects: after a hash change
/// every policy's status moves, and one write after another would hold up the namespace's
/// next reconcile). Every status is attempted; returns the first failure.
async fn write_statuses<B: Backend>(
    backend: &B,
    inputs: &Inputs,
    updated: &Updated,
) -> Result<Option<B::Error>, B::Error> {
    fn each<'a, K: Managed, B: Backend>(
        backend: &'a B,
        namespace: &'a str,
        old: &'a [K],
        new: &'a [K],
        writes: &mut Vec<BoxFuture<'a, Result<(), B::Error>>>,
    ) {
        for (old, new) in old.iter().zip(new) {
            writes.push(backend.write_status(namespace, old, new).boxed());
        }
    }
    let ns = inputs.namespace.as_str();
    let mut writes = Vec::new();
    each(
        backend,
        ns,
        &inputs.address_lists,
        &updated.address_lists,
        &mut writes,
    );
    each(
        backend,
        ns,
        &inputs.policies,
        &updated.policies,
        &mut writes,
    );
    each(
        backend,
        ns,
        &inputs.gateways,
        &updated.gateways,
        &mut writes,
    );
    let results: Vec<Result<(), B::Error>> = futures::stream::iter(writes)
        .buffered(STATUS_WRITES_IN_FLIGHT)
        .collect()
        .await;
    let mut first = None;
    for e in results.into_iter().filter_map(Result::err) {
        if B::aborts(&e) {
            return Err(e);
        }
        if B::is_conflict(&e) {
            tracing::debug!(namespace = ns, "{e}");
        } else {
            tracing::warn!(namespace = ns, "{e}");
        }
        first.get_or_insert(e);
    }
    Ok(first)
}

/// Every resource of one namespace, each carrying its new status.
#[derive(Clone, Debug, Default)]
pub struct Updated {
    pub address_lists: Vec<AddressList>,
    pub policies: Vec<TlsCompliance>,
    pub gateways: Vec<OutboundGateway>,
}

/// The new status of every resource in `inputs` (whose `status` is the previous one), from
/// one evaluation.
pub fn namespace_statuses(
    inputs: &Inputs,
    evaluation: &Evaluation,
    relay: &RelayConfigRef,
    now: &Time,
) -> Updated {
    fn each<K: Managed>(
        inputs: &Inputs,
        evaluation: &Evaluation,
        relay: &RelayConfigRef,
        now: &Time,
    ) -> Vec<K> {
        let empty = ResourceFindings::default();
        K::of(inputs)
            .iter()
            .map(|r| {
                let f = evaluation
                    .findings
                    .get(&ResourceId::new(K::KIND, r.name_any()))
                    .unwrap_or(&empty);
                r.with_status(f, relay, now)
            })
            .collect()
    }
    Updated {
        address_lists: each(inputs, evaluation, relay, now),
        policies: each(inputs, evaluation, relay, now),
        gateways: each(inputs, evaluation, relay, now),
    }
}

/// `status.observed` of each policy and gateway: what the relay pods report, or nothing
/// when no relay pod reports.
fn set_observed(
    updated: &mut Updated,
    observed: &std::collections::BTreeMap<ResourceId, crate::api::ObservedMail>,
) {
    let of = |kind, name: &str| observed.get(&ResourceId::new(kind, name)).cloned();
    for p in &mut updated.policies {
        let seen = of(crate::policy::Kind::TlsCompliance, &p.name_any());
        if let Some(s) = p.status.as_mut() {
            s.observed = seen;
        }
    }
    for g in &mut updated.gateways {
        let seen = of(crate::policy::Kind::OutboundGateway, &g.name_any());
        if let Some(s) = g.status.as_mut() {
            s.observed = seen;
        }
    }
}

/// The configuration could not be stored: nothing that renders into it is Ready, and each
/// policy keeps pointing at the configuration actually in place.
pub fn not_written(updated: &mut Updated, inputs: &Inputs, error: &str, now: &Time) {
    let message = format!("the relay configuration could not be written: {error}");
    for (new, old) in updated.policies.iter_mut().zip(&inputs.policies) {
        let generation = generation(new);
        if let Some(s) = new.status.as_mut() {
            s.relay_config = old.status.as_ref().and_then(|o| o.relay_config.clone());
            mark_not_written(&mut s.conditions, generation, &message, now);
        }
    }
    for new in &mut updated.gateways {
        let generation = generation(new);
        if let Some(s) = new.status.as_mut() {
            mark_not_written(&mut s.conditions, generation, &message, now);
        }
    }
}
