//! One reconcile of one namespace: stores → evaluate → render → ConfigMap → statuses.

use super::events::Events;
use super::metrics::Metrics;
use super::{Error, configmap, state, status};
use crate::api::{AddressList, Condition, OutboundGateway, RelayConfigRef, TlsCompliance};
use crate::policy::{Inputs, evaluate_fail_closed};
use crate::render::{RenderOptions, render};
use crate::status::{READY, RENDERED, Updated, set_condition};
use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::runtime::reflector::Store;
use kube::{Api, Client, ResourceExt};
use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use tokio::sync::watch;

/// Status writes of one namespace in flight at once.
const STATUS_WRITES_IN_FLIGHT: usize = 8;

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

/// Reconcile one namespace. Every resource's status is attempted even when another fails;
/// the first error is returned so the namespace is retried.
pub async fn reconcile(ctx: &Context, namespace: &str) -> Result<(), Error> {
    let started = std::time::Instant::now();
    let result = reconcile_inner(ctx, namespace).await;
    ctx.metrics
        .observe(namespace, started.elapsed(), result.is_ok());
    result
}

async fn reconcile_inner(ctx: &Context, namespace: &str) -> Result<(), Error> {
    let started = std::time::Instant::now();
    tracing::debug!(namespace, "reconciling");
    let inputs = ctx.stores.inputs(namespace);
    let empty =
        inputs.address_lists.is_empty() && inputs.policies.is_empty() && inputs.gateways.is_empty();
    let last = state::load(ctx, namespace).await?;
    let (evaluation, next) = evaluate_fail_closed(&inputs, &last);
    let config = render(&evaluation.policy, &ctx.render);

    let bytes: usize = config.files.values().map(String::len).sum();
    ctx.metrics.render_size(namespace, bytes);

    let rendered = started.elapsed();

    // A ConfigMap the server refuses (e.g. over its 1 MiB limit) is reported in the
    // statuses below and retried; the statuses are still written.
    // The snapshot first: a relay configuration is never ahead of the generations kept.
    let stored = match state::store(ctx, namespace, &next).await {
        Ok(()) => configmap::apply(ctx, namespace, &config, empty).await,
        Err(e) => Err(e),
    };
    let config_error = match stored {
        Ok(Some(cm)) => {
            tracing::info!(namespace, hash = %config.hash, bytes, "relay configuration written");
            ctx.events.config_written(&cm, &config.hash, &inputs).await;
            None
        }
        Ok(None) => None,
        Err(Error::NotLeader) => return Err(Error::NotLeader),
        Err(e) => Some(e),
    };

    let applied = started.elapsed();
    let pods = ctx
        .relays
        .as_ref()
        .and_then(|r| r.counts(namespace))
        .map(|c| c.of(&config.hash));
    let relay = RelayConfigRef {
        name: ctx.config_map.clone(),
        hash: config.hash.clone(),
        applied_pods: pods.map(|(applied, _)| applied),
        total_pods: pods.map(|(_, total)| total),
    };
    let now = Time(k8s_openapi::jiff::Timestamp::now());
    let mut updated = crate::status::namespace_statuses(&inputs, &evaluation, &relay, &now);
    if let Some(e) = &config_error {
        not_written(&mut updated, &inputs, &e.to_string(), &now);
    }
    let lists: Api<AddressList> = Api::namespaced(ctx.client.clone(), namespace);
    let policies: Api<TlsCompliance> = Api::namespaced(ctx.client.clone(), namespace);
    let gateways: Api<OutboundGateway> = Api::namespaced(ctx.client.clone(), namespace);
    let mut writes: Vec<BoxFuture<'_, Result<(), Error>>> = Vec::new();
    for (old, new) in inputs.address_lists.iter().zip(&updated.address_lists) {
        writes.push(status::update(ctx, &lists, old, new).boxed());
    }
    for (old, new) in inputs.policies.iter().zip(&updated.policies) {
        writes.push(status::update(ctx, &policies, old, new).boxed());
    }
    for (old, new) in inputs.gateways.iter().zip(&updated.gateways) {
        writes.push(status::update(ctx, &gateways, old, new).boxed());
    }
    // Independent objects, so a few at a time: after a hash change every policy's status
    // moves, and one write after another would hold up the namespace's next reconcile.
    let results: Vec<Result<(), Error>> = futures::stream::iter(writes)
        .buffered(STATUS_WRITES_IN_FLIGHT)
        .collect()
        .await;
    tracing::debug!(
        namespace,
        render_ms = rendered.as_millis() as u64,
        configmap_ms = (applied - rendered).as_millis() as u64,
        status_ms = (started.elapsed() - applied).as_millis() as u64,
        "reconciled"
    );
    let mut first_error = None;
    for e in results.into_iter().filter_map(Result::err) {
        if e.is_conflict() {
            tracing::debug!(namespace, "{e}");
        } else {
            tracing::warn!(namespace, "{e}");
        }
        first_error.get_or_insert(e);
    }
    match config_error.or(first_error) {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// The configuration could not be stored: nothing that renders into it is Ready, and each
/// policy keeps pointing at the configuration actually in place.
fn not_written(updated: &mut Updated, inputs: &Inputs, error: &str, now: &Time) {
    let message = format!("the relay configuration could not be written: {error}");
    let mark = |conditions: &mut Vec<Condition>, generation: Option<i64>| {
        for t in [READY, RENDERED] {
            let g = generation.unwrap_or(1);
            set_condition(conditions, t, false, NOT_WRITTEN, message.clone(), g, now);
        }
    };
    for (new, old) in updated.policies.iter_mut().zip(&inputs.policies) {
        if let Some(s) = new.status.as_mut() {
            s.relay_config = old.status.as_ref().and_then(|o| o.relay_config.clone());
            mark(&mut s.conditions, new.metadata.generation);
        }
    }
    for new in &mut updated.gateways {
        if let Some(s) = new.status.as_mut() {
            mark(&mut s.conditions, new.metadata.generation);
        }
    }
}

/// Condition reason when the ConfigMap write failed.
pub const NOT_WRITTEN: &str = "RelayConfigNotWritten";
