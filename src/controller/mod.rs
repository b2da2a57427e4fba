//! The cluster edge: `mailtls run`.
//!
//! The unit of work is a *namespace* (one namespace renders into one relay configuration),
//! not an object, so this is not a `kube::runtime::Controller`: that machine is keyed on
//! `ObjectRef<K>`, and a namespace holding only gateways or only lists has no natural object
//! of one kind to key on. Instead reflectors keep stores of the three kinds ([`watch`]),
//! every spec change (generation predicate) or deletion marks its namespace dirty, and a
//! small [`queue`] reconciles dirty namespaces (never the same one twice at once) with
//! jittered backoff on errors. A reconcile reads only the stores (no re-list), so any
//! change re-renders exactly its own namespace. The engine shared with `mailtls standalone`
//! does the work ([`crate::engine::reconcile`]); [`Context`] is its cluster backend. Beside the
//! queue, [`periodic`] runs the TLS tests and `relays` asks the relay agents which
//! configuration they applied; both feed statuses, neither blocks a reconcile.

mod backend;
mod configmap;
mod context;
mod drift;
mod events;
mod leader;
mod metrics;
pub mod periodic;
mod queue;
mod reconcile;
mod relays;
mod state;
mod status_patch;
mod stores;
#[cfg(test)]
mod tests;
mod watch;
mod worker;

pub use configmap::{HASH_ANNOTATION, MANAGED_BY_LABEL, MANAGER};
pub use context::Context;
pub use metrics::Metrics;
pub use reconcile::reconcile;
pub use relays::{DEFAULT_SELECTOR as DEFAULT_RELAY_SELECTOR, RelayPods, RelaySettings};
pub use state::{STATE_KEY, name as state_config_map};
pub use stores::Stores;

use crate::render::RenderOptions;
use kube::Client;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch as signal;

/// Errors of one reconcile; every one is retried with backoff.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("applying ConfigMap {namespace}/{name}: {source}")]
    ConfigMap {
        namespace: String,
        name: String,
        source: Box<kube::Error>,
    },
    #[error(
        "ConfigMap {namespace}/{name} would hold {bytes} bytes even with its large files \
         compressed, over the {} bytes a ConfigMap may hold: shorten the lists, or split \
         them over namespaces (each with its own relay)",
        configmap::CONFIGMAP_LIMIT
    )]
    TooLarge {
        namespace: String,
        name: String,
        bytes: usize,
    },
    #[error("status of {kind} {namespace}/{name}: {source}")]
    Status {
        kind: crate::policy::Kind,
        namespace: String,
        name: String,
        source: Box<kube::Error>,
    },
    #[error("serialising {what}: {source}")]
    Serialise {
        what: String,
        source: serde_json::Error,
    },
    #[error(
        "ConfigMap {namespace}/{name} (the last valid generations) cannot be read: {message}; \
         nothing is written to this namespace until it is repaired (deleting it forgets which \
         earlier generations to keep in force)"
    )]
    State {
        namespace: String,
        name: String,
        message: String,
    },
    #[error("no longer the leader")]
    NotLeader,
    #[error("reconcile task failed: {0}")]
    Panicked(String),
}

impl Error {
    /// A status write lost a race (409): the store had not yet seen a newer version, most
    /// often this controller's own last write. Not a failure: re-reconciling on the
    /// caught-up store fixes it.
    pub fn is_conflict(&self) -> bool {
        matches!(self, Error::Status { source, .. }
            if matches!(source.as_ref(), kube::Error::Api(s) if s.code == 409))
    }
}

/// Everything `mailtls run` is configured with.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Namespaces to watch; empty means all.
    pub namespaces: Vec<String>,
    /// Name of the ConfigMap written in each namespace.
    pub config_map: String,
    pub render: RenderOptions,
    /// Where `/metrics`, `/healthz` and `/readyz` are served; `None`: not at all.
    pub metrics_addr: Option<std::net::SocketAddr>,
    /// Lease for leader election; `None`: this instance always writes.
    pub leader_election: Option<leader::LeaseSettings>,
    /// Reported as the Events' reporting instance (the pod name in a cluster).
    pub instance: Option<String>,
    /// Periodic TLS tests; `None`: no tests.
    pub tests: Option<crate::probe::Prober>,
    /// Relay pods to ask for their applied hash; `None`: not asked (the counts stay unset).
    pub relays: Option<RelaySettings>,
}

pub use leader::LeaseSettings;

/// Runs the controller until `shutdown` turns true (or its sender is dropped).
pub async fn run(
    client: Client,
    settings: Settings,
    mut shutdown: signal::Receiver<bool>,
) -> anyhow::Result<()> {
    let metrics = Arc::new(Metrics::default());
    let (stores, mut watchers) = watch::start(client.clone(), &settings.namespaces);
    let drift = Arc::new(drift::Seen::default());
    watchers.extend(drift::watchers(
        &client,
        &settings.namespaces,
        &settings.config_map,
        drift.clone(),
    ));
    let state_drift = Arc::new(drift::Seen::default());
    watchers.extend(drift::watchers(
        &client,
        &settings.namespaces,
        &state::name(&settings.config_map),
        state_drift.clone(),
    ));
    let (relay_pods, pod_watchers) = match &settings.relays {
        Some(r) => {
            let (pods, watchers) = RelayPods::start(&client, &settings.namespaces, &r.selector);
            (Some(pods), watchers)
        }
        None => (None, Vec::new()),
    };
    // Without leader election this instance always leads; the sender is kept so the
    // channel stays open (a closed one means the lease loop died).
    let (_always, leader_rx, lease_task) = match &settings.leader_election {
        Some(lease) => {
            let (rx, task) = leader::start(client.clone(), lease).await?;
            (None, rx, Some(task))
        }
        None => {
            let (tx, rx) = signal::channel(true);
            (Some(tx), rx, None)
        }
    };
    let ctx = Arc::new(Context {
        client: client.clone(),
        stores: stores.clone(),
        render: settings.render.clone(),
        config_map: settings.config_map.clone(),
        namespaces: settings.namespaces.clone(),
        metrics: metrics.clone(),
        events: events::Events::new(client.clone(), settings.instance.clone()),
        leader: leader_rx.clone(),
        relays: relay_pods.clone(),
        states: Default::default(),
        drift,
        state_drift,
    });
    let server = match settings.metrics_addr {
        Some(addr) => {
            Some(metrics::serve(addr, metrics.clone(), stores.clone(), shutdown.clone()).await?)
        }
        None => None,
    };
    let queue = queue::Queue::new();
    let feeder = tokio::spawn(watch::feed(watchers, queue.sender()));
    let relay_tasks: Vec<_> = match (&relay_pods, &settings.relays) {
        (Some(pods), Some(r)) => pod_watchers
            .into_iter()
            .map(tokio::spawn)
            .chain([tokio::spawn(relays::poll(
                pods.clone(),
                r.clone(),
                queue.sender(),
                leader_rx.clone(),
            ))])
            .collect(),
        _ => Vec::new(),
    };
    let tests = settings
        .tests
        .clone()
        .map(|prober| tokio::spawn(periodic::run(ctx.clone(), prober, shutdown.clone())));
    tracing::info!(namespaces = ?settings.namespaces, config_map = %settings.config_map, "controller started");
    tokio::select! {
        () = worker::work(queue, ctx, leader_rx) => {}
        _ = shutdown.wait_for(|stop| *stop) => {}
    }
    tracing::info!("shutting down");
    feeder.abort();
    for task in relay_tasks {
        task.abort();
    }
    if let Some(tests) = tests {
        tests.abort();
    }
    if let Some(task) = lease_task {
        task.stop().await;
    }
    if let Some(server) = server {
        let _ = tokio::time::timeout(Duration::from_secs(5), server).await;
    }
    Ok(())
}
