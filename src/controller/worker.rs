//! The worker: reconciles dirty namespaces from the [`Queue`], at most one reconcile per
//! namespace at a time, a few namespaces in parallel, failures retried with jittered
//! exponential backoff. Reconciles only run while this instance is the leader; on becoming
//! leader every known namespace is reconciled once, on losing the lease every running
//! reconcile is dropped.

use super::context::Context;
use super::queue::{Queue, backoff};
use super::reconcile::reconcile;
use super::{Error, MANAGED_BY_LABEL, MANAGER};
use futures::FutureExt;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, ListParams};
use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinSet;

/// Namespaces reconciled at the same time.
const PARALLEL: usize = 4;
/// Retry delay after a status write conflict: just long enough for the watch to deliver
/// the newer version.
const CONFLICT_RETRY: Duration = Duration::from_millis(100);
/// Conflicts in a row retried that quickly; after that the usual backoff (someone else
/// keeps writing).
const CONFLICT_RETRIES: u32 = 5;

/// Runs until the queue's senders are all gone (never, in practice: the caller stops it by
/// dropping this future).
pub async fn work(mut queue: Queue, ctx: Arc<Context>, mut leader: watch::Receiver<bool>) {
    wait_synced(&ctx).await;
    let retry = queue.sender();
    let mut dirty: BTreeSet<String> = BTreeSet::new();
    let mut running: JoinSet<(String, Result<(), Error>)> = JoinSet::new();
    let mut busy: HashMap<tokio::task::Id, String> = HashMap::new();
    let mut failures: HashMap<String, u32> = HashMap::new();
    let mut leading = false;
    let mut lease_gone = false;
    loop {
        let now_leading = !lease_gone && *leader.borrow_and_update();
        if now_leading && !leading {
            tracing::info!("leading: reconciling every namespace");
            // Another instance may have kept other generations meanwhile.
            ctx.states.clear();
            dirty.extend(ctx.stores.namespaces());
            dirty.extend(managed_namespaces(&ctx).await);
        } else if !now_leading && leading {
            tracing::warn!("lost the lease: stopping all writes");
            running = JoinSet::new();
            busy.clear();
        }
        leading = now_leading;
        if leading {
            let ready: Vec<String> = dirty
                .iter()
                .filter(|ns| !busy.values().any(|b| b == *ns))
                .take(PARALLEL.saturating_sub(running.len()))
                .cloned()
                .collect();
            for ns in ready {
                dirty.remove(&ns);
                let ctx = ctx.clone();
                let name = ns.clone();
                let handle = running.spawn(async move {
                    let result = reconcile(&ctx, &name).await;
                    (name, result)
                });
                busy.insert(handle.id(), ns);
            }
        }
        tokio::select! {
            got = queue.rx.recv() => match got {
                Some(ns) => {
                    dirty.insert(ns);
                    while let Ok(ns) = queue.rx.try_recv() {
                        dirty.insert(ns);
                    }
                }
                None => return,
            },
            Some(done) = running.join_next_with_id(), if !running.is_empty() => {
                let (ns, result) = match done {
                    Ok((id, (ns, result))) => {
                        busy.remove(&id);
                        (ns, result)
                    }
                    Err(e) => {
                        let ns = busy.remove(&e.id()).unwrap_or_default();
                        (ns, Err(Error::Panicked(e.to_string())))
                    }
                };
                match result {
                    Ok(()) => {
                        failures.remove(&ns);
                    }
                    Err(Error::NotLeader) if !*leader.borrow() => {}
                    Err(e) => {
                        let n = failures.entry(ns.clone()).or_insert(0);
                        *n += 1;
                        let delay = if e.is_conflict() && *n <= CONFLICT_RETRIES {
                            let delay = CONFLICT_RETRY.mul_f64(rand::random_range(0.5..=1.5));
                            tracing::debug!(namespace = %ns, retry_in = ?delay, "{e}");
                            delay
                        } else {
                            let delay = backoff(*n);
                            tracing::warn!(namespace = %ns, retry_in = ?delay, "reconcile failed: {e}");
                            delay
                        };
                        let retry = retry.clone();
                        tokio::spawn(async move {
                            tokio::time::sleep(delay).await;
                            retry.send(ns);
                        });
                    }
                }
            }
            changed = leader.changed(), if !lease_gone => {
                if changed.is_err() {
                    // The lease loop ended: nobody renews the lease, so stop writing.
                    tracing::error!("leader election stopped; no longer writing");
                    lease_gone = true;
                }
            }
        }
    }
}

/// Wait until every watcher listed once: reconciling before would render empty namespaces.
async fn wait_synced(ctx: &Context) {
    let s = &ctx.stores;
    for r in s
        .lists
        .iter()
        .map(|s| s.wait_until_ready().boxed())
        .chain(s.policies.iter().map(|s| s.wait_until_ready().boxed()))
        .chain(s.gateways.iter().map(|s| s.wait_until_ready().boxed()))
    {
        // Err only when the watcher is gone, i.e. during shutdown.
        let _ = r.await;
    }
}

/// Namespaces with a ConfigMap of ours: after a restart, those whose resources were all
/// deleted meanwhile appear in no store but still need emptying.
async fn managed_namespaces(ctx: &Context) -> BTreeSet<String> {
    // By name too: the RBAC grant (resourceNames) lets list see only that name.
    let params = ListParams::default()
        .labels(&format!("{MANAGED_BY_LABEL}={MANAGER}"))
        .fields(&format!("metadata.name={}", ctx.config_map));
    let apis: Vec<Api<ConfigMap>> = super::stores::scoped_apis(&ctx.client, &ctx.namespaces);
    let mut out = BTreeSet::new();
    for api in apis {
        match api.list_metadata(&params).await {
            Ok(list) => out.extend(
                list.items
                    .into_iter()
                    .filter(|m| m.metadata.name.as_deref() == Some(ctx.config_map.as_str()))
                    .filter_map(|m| m.metadata.namespace),
            ),
            Err(e) => tracing::warn!("listing mailtls ConfigMaps: {e}"),
        }
    }
    out
}
