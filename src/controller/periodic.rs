//! Periodic TLS tests in the cluster: every TlsCompliance and OutboundGateway on its
//! `spec.test.interval` (plus a fixed per-resource jitter) and whenever its
//! `mailtls.io/test-now` annotation gets a new value. Tests run beside reconciliation, never
//! inside it, on one shared [`Tester`] (the prober, whose concurrency bound covers all of
//! them); each resource's results are patched into its status as soon as its own
//! destinations are done, so a slow host never holds back another resource.

use super::reconcile::Context;
use super::status;
use crate::api::{OutboundGateway, TlsCompliance};
use crate::policy::{Kind, ResourceId};
use crate::probe::plan::{self, TestPlan, Tested};
use crate::probe::{DestinationReport, Prober, Requirement, Target};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::core::object::HasStatus;
use kube::runtime::reflector::Store;
use kube::{Api, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;

/// How often due tests are looked for.
pub const TICK: Duration = Duration::from_secs(15);
/// Resources tested at the same time. Each holds its destinations' reports until its last
/// destination is done, so this bounds memory; the rest stay due for the next tick.
pub const RESOURCES_AT_ONCE: usize = 8;

/// Runs the destinations of a plan: the prober in production, a recorder in the scheduler
/// tests.
pub trait Tester: Clone + Send + Sync + 'static {
    fn test(
        &self,
        items: Vec<(Target, Requirement)>,
    ) -> impl Future<Output = Vec<DestinationReport>> + Send;
}

impl Tester for Prober {
    fn test(
        &self,
        items: Vec<(Target, Requirement)>,
    ) -> impl Future<Output = Vec<DestinationReport>> + Send {
        let prober = self.clone();
        async move { prober.probe_many(items).await }
    }
}

/// Wall-clock time that moves with tokio's clock, so paused-time tests can drive schedules.
#[derive(Clone, Copy)]
struct Clock {
    wall: Timestamp,
    start: tokio::time::Instant,
}

impl Clock {
    fn new() -> Clock {
        Clock {
            wall: Timestamp::now(),
            start: tokio::time::Instant::now(),
        }
    }

    fn now(&self) -> Timestamp {
        let elapsed =
            SignedDuration::try_from(self.start.elapsed()).unwrap_or(SignedDuration::ZERO);
        self.wall.checked_add(elapsed).unwrap_or(self.wall)
    }
}

/// Resources under test, and when each was last started.
#[derive(Default)]
struct Under {
    active: BTreeSet<(String, ResourceId)>,
    started: BTreeMap<(String, ResourceId), Timestamp>,
}

type Running = Arc<Mutex<Under>>;

/// The test loop; returns when `shutdown` says stop. Only the leader tests.
pub async fn run<T: Tester>(ctx: Arc<Context>, tester: T, mut shutdown: watch::Receiver<bool>) {
    let running = Running::default();
    let clock = Clock::new();
    let mut tick = tokio::time::interval(TICK);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.wait_for(|stop| *stop) => return,
        }
        if !ctx.stores.is_ready() || !*ctx.leader.borrow() {
            continue;
        }
        for (namespace, test) in due(&ctx, clock.now(), &running, RESOURCES_AT_ONCE) {
            let (ctx, tester, running) = (ctx.clone(), tester.clone(), running.clone());
            tokio::spawn(async move {
                let reports = tester.test(test.items.clone()).await;
                record(&ctx, &namespace, &test, &reports, &Time(clock.now())).await;
                if let Ok(mut r) = running.lock() {
                    r.active.remove(&(namespace, test.id));
                }
            });
        }
    }
}

/// Plans due now that are not already under way, while fewer than `at_once` are (and marks
/// them under way). Those started longest ago (or never) go first, so resources that stay
/// due (their result could not be written) cannot starve the others.
fn due(
    ctx: &Context,
    now: Timestamp,
    running: &Running,
    at_once: usize,
) -> Vec<(String, TestPlan)> {
    let Ok(mut running) = running.lock() else {
        return Vec::new();
    };
    let mut candidates: Vec<(Option<Timestamp>, String, TestPlan)> = Vec::new();
    for namespace in ctx.stores.namespaces() {
        let inputs = ctx.stores.inputs(&namespace);
        for test in plan::namespace_plans(&inputs, now) {
            let key = (namespace.clone(), test.id.clone());
            if !running.active.contains(&key) {
                candidates.push((running.started.get(&key).copied(), namespace.clone(), test));
            }
        }
    }
    candidates.sort_by_key(|(started, _, _)| *started);
    // Forget starts over a day old (deleted resources among them); forgotten sorts first,
    // which is where a start that old would sort anyway.
    let day_ago = now
        .checked_sub(SignedDuration::from_hours(24))
        .unwrap_or(now);
    running.started.retain(|_, t| *t > day_ago);
    let free = at_once.saturating_sub(running.active.len());
    let mut out = Vec::new();
    for (_, namespace, test) in candidates.into_iter().take(free) {
        let key = (namespace.clone(), test.id.clone());
        running.started.insert(key.clone(), now);
        running.active.insert(key);
        out.push((namespace, test));
    }
    out
}

/// Patch one resource's results into its status (from the latest copy in the store).
async fn record(
    ctx: &Context,
    namespace: &str,
    test: &TestPlan,
    reports: &[DestinationReport],
    now: &Time,
) {
    let failed = reports.iter().filter(|r| !r.passed()).count();
    tracing::info!(namespace, resource = %test.id, destinations = reports.len(), failed, "TLS test finished");
    ctx.metrics.tested(reports);
    let result = match test.id.kind {
        Kind::TlsCompliance => {
            write::<TlsCompliance>(ctx, &ctx.stores.policies, namespace, test, reports, now).await
        }
        Kind::OutboundGateway => {
            write::<OutboundGateway>(ctx, &ctx.stores.gateways, namespace, test, reports, now).await
        }
        Kind::AddressList => Ok(()),
    };
    if let Err(e) = result {
        tracing::warn!(namespace, resource = %test.id, "cannot record the TLS test: {e}");
    }
}

async fn write<K>(
    ctx: &Context,
    stores: &[Store<K>],
    namespace: &str,
    test: &TestPlan,
    reports: &[DestinationReport],
    now: &Time,
) -> Result<(), super::Error>
where
    K: Tested
        + HasStatus
        + Resource<DynamicType = (), Scope = kube::core::NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug,
    K::Status: Serialize,
{
    let current = stores
        .iter()
        .flat_map(|s| s.state())
        .find(|o| o.namespace().as_deref() == Some(namespace) && o.name_any() == test.id.name);
    // Deleted meanwhile: nothing to report on.
    let Some(old) = current.map(|o| (*o).clone()) else {
        return Ok(());
    };
    let mut new = old.clone();
    new.apply(test, reports, now);
    let api: Api<K> = Api::namespaced(ctx.client.clone(), namespace);
    status::update(ctx, &api, &old, &new).await
}
