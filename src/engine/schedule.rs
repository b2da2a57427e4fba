//! TLS-test scheduling, for both backends: which resources are due (each on its
//! `spec.test.interval` plus a fixed jitter, and on a new `mailtls.io/test-now` value), at
//! most a bounded number under test at once, the longest-waiting first, and each resource's
//! results written into its status as soon as its own destinations are done, so a slow host
//! never holds back another resource.

use super::backend::Backend;
use super::kind::{Managed, namespace_plans};
use super::plan::TestPlan;
use crate::api::{OutboundGateway, TlsCompliance};
use crate::policy::{Inputs, Kind, ResourceId};
use crate::probe::{DestinationReport, Expected, Prober, Target};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::{Arc, Mutex};

/// Resources tested at the same time by default. Each holds its destinations' reports until
/// its last destination is done, so this bounds memory; the rest stay due for the next round.
pub const RESOURCES_AT_ONCE: usize = 8;

/// Runs the destinations of a plan: the prober in production, a recorder in the scheduler
/// tests.
pub trait Tester: Clone + Send + Sync + 'static {
    fn test(
        &self,
        items: Vec<(Target, Expected)>,
    ) -> impl Future<Output = Vec<DestinationReport>> + Send;
}

impl Tester for Prober {
    fn test(
        &self,
        items: Vec<(Target, Expected)>,
    ) -> impl Future<Output = Vec<DestinationReport>> + Send {
        let prober = self.clone();
        async move { prober.probe_many(items).await }
    }
}

/// Wall-clock time that moves with tokio's clock, so paused-time tests can drive schedules.
#[derive(Clone, Copy)]
pub struct Clock {
    wall: Timestamp,
    start: tokio::time::Instant,
}

impl Clock {
    pub fn new() -> Clock {
        Clock {
            wall: Timestamp::now(),
            start: tokio::time::Instant::now(),
        }
    }

    pub fn now(&self) -> Timestamp {
        let elapsed =
            SignedDuration::try_from(self.start.elapsed()).unwrap_or(SignedDuration::ZERO);
        self.wall.checked_add(elapsed).unwrap_or(self.wall)
    }
}

impl Default for Clock {
    fn default() -> Self {
        Clock::new()
    }
}

/// A resource of a namespace.
type Key = (String, ResourceId);

/// Resources under test, and when each was last started.
#[derive(Default)]
struct Under {
    active: BTreeSet<Key>,
    started: BTreeMap<Key, Timestamp>,
}

/// The test schedule of one process.
pub struct Scheduler {
    under: Mutex<Under>,
    at_once: usize,
    clock: Clock,
}

impl Scheduler {
    pub fn new(at_once: usize) -> Scheduler {
        Scheduler {
            under: Mutex::default(),
            at_once,
            clock: Clock::new(),
        }
    }

    pub fn now(&self) -> Timestamp {
        self.clock.now()
    }

    /// Plans due now that are not already under way (nor in `skip`), while fewer than
    /// `at_once` are, marked under way. Those started longest ago (or never) go first, so
    /// resources that stay due (their result could not be written) cannot starve others.
    pub fn due(
        &self,
        namespaces: impl IntoIterator<Item = Inputs>,
        skip: &BTreeSet<Key>,
    ) -> Vec<(String, TestPlan)> {
        let now = self.now();
        let Ok(mut under) = self.under.lock() else {
            return Vec::new();
        };
        let mut candidates: Vec<(Option<Timestamp>, String, TestPlan)> = Vec::new();
        for inputs in namespaces {
            for test in namespace_plans(&inputs, now) {
                let key = (inputs.namespace.clone(), test.id.clone());
                if !under.active.contains(&key) && !skip.contains(&key) {
                    let started = under.started.get(&key).copied();
                    candidates.push((started, inputs.namespace.clone(), test));
                }
            }
        }
        candidates.sort_by_key(|(started, _, _)| *started);
        // Forget starts over a day old (deleted resources among them); forgotten sorts
        // first, which is where a start that old would sort anyway.
        let day_ago = now
            .checked_sub(SignedDuration::from_hours(24))
            .unwrap_or(now);
        under.started.retain(|_, t| *t > day_ago);
        let free = self.at_once.saturating_sub(under.active.len());
        let mut out = Vec::new();
        for (_, namespace, test) in candidates.into_iter().take(free) {
            let key = (namespace.clone(), test.id.clone());
            under.started.insert(key.clone(), now);
            under.active.insert(key);
            out.push((namespace, test));
        }
        out
    }

    fn done(&self, namespace: &str, id: &ResourceId) {
        if let Ok(mut under) = self.under.lock() {
            under.active.remove(&(namespace.to_string(), id.clone()));
        }
    }
}

/// Start the tests due now in `namespaces`, each in its own task that records its results
/// through `backend`; returns the tasks.
pub fn start_due<B: Backend, T: Tester>(
    backend: &Arc<B>,
    tester: &T,
    scheduler: &Arc<Scheduler>,
    namespaces: impl IntoIterator<Item = Inputs>,
    skip: &BTreeSet<Key>,
) -> Vec<(Key, tokio::task::JoinHandle<()>)> {
    scheduler
        .due(namespaces, skip)
        .into_iter()
        .map(|(namespace, test)| {
            let key = (namespace.clone(), test.id.clone());
            let (backend, tester, scheduler) = (backend.clone(), tester.clone(), scheduler.clone());
            let task = tokio::spawn(async move {
                let reports = test.expand(&tester.test(test.items.clone()).await);
                let now = Time(scheduler.now());
                record(&*backend, &namespace, &test, &reports, &now).await;
                scheduler.done(&namespace, &test.id);
            });
            (key, task)
        })
        .collect()
}

/// Test every resource due in `namespaces` once, at most the scheduler's bound at a time,
/// and wait for all of them.
pub async fn run_due_once<B: Backend, T: Tester>(
    backend: &Arc<B>,
    tester: &T,
    scheduler: &Arc<Scheduler>,
    namespaces: &[Inputs],
) {
    let mut started = BTreeSet::new();
    let mut tasks = tokio::task::JoinSet::new();
    loop {
        for (key, task) in start_due(backend, tester, scheduler, namespaces.to_vec(), &started) {
            started.insert(key);
            tasks.spawn(task);
        }
        if tasks.join_next().await.is_none() {
            return;
        }
    }
}

/// Write one resource's results into its status (the copy as currently stored).
#[tracing::instrument(skip_all, fields(namespace = %namespace, resource = %test.id))]
pub async fn record<B: Backend>(
    backend: &B,
    namespace: &str,
    test: &TestPlan,
    reports: &[DestinationReport],
    now: &Time,
) {
    let failed = reports.iter().filter(|r| !r.passed()).count();
    tracing::info!(destinations = reports.len(), failed, "TLS test finished");
    backend.tested(namespace, &test.id, reports);
    let result = match test.id.kind {
        Kind::TlsCompliance => {
            record_kind::<TlsCompliance, B>(backend, namespace, test, reports, now).await
        }
        Kind::OutboundGateway => {
            record_kind::<OutboundGateway, B>(backend, namespace, test, reports, now).await
        }
        Kind::AddressList => Ok(()),
    };
    if let Err(e) = result {
        tracing::warn!("cannot record the TLS test: {e}");
    }
}

async fn record_kind<K: Managed, B: Backend>(
    backend: &B,
    namespace: &str,
    test: &TestPlan,
    reports: &[DestinationReport],
    now: &Time,
) -> Result<(), B::Error> {
    backend
        .update_status::<K>(namespace, &test.id.name, |r| {
            r.record_test(test, reports, now)
        })
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn namespace(policies: usize) -> Inputs {
        let mut inputs = Inputs {
            namespace: "ns".into(),
            ..Default::default()
        };
        inputs
            .address_lists
            .push(crate::api::AddressList::with_entries(
                "partners",
                &["example.com"],
            ));
        for i in 0..policies {
            let p = TlsCompliance::outbound_verified(&format!("p{i:02}"), &["partners"]);
            inputs.policies.push(p);
        }
        inputs
    }

    impl TestPlan {
        fn id_of(name: &str) -> ResourceId {
            ResourceId::new(Kind::TlsCompliance, name.to_string())
        }
    }

    fn names(due: &[(String, TestPlan)]) -> Vec<String> {
        due.iter().map(|(_, p)| p.id.name.clone()).collect()
    }

    /// Both backends schedule through this: never more than the bound under test, nothing
    /// started twice, and those that waited longest go first.
    #[tokio::test(start_paused = true)]
    async fn a_bounded_number_under_test_and_the_longest_waiting_first() {
        let s = Scheduler::new(3);
        let none = BTreeSet::new();
        let first = s.due([namespace(5)], &none);
        assert_eq!(names(&first), ["p00", "p01", "p02"]);
        assert!(
            s.due([namespace(5)], &none).is_empty(),
            "the bound is reached"
        );
        s.done("ns", &first[0].1.id);
        // The results could not be written, so p00 is still due; p03 and p04 never ran.
        tokio::time::advance(std::time::Duration::from_secs(1)).await;
        assert_eq!(names(&s.due([namespace(5)], &none)), ["p03"]);
        for (_, p) in &first[1..] {
            s.done("ns", &p.id);
        }
        tokio::time::advance(std::time::Duration::from_secs(1)).await;
        // p03 is still under test: two free places.
        let next = s.due([namespace(5)], &none);
        assert_eq!(names(&next), ["p04", "p00"]);
        for (_, p) in &next {
            s.done("ns", &p.id);
        }
        s.done("ns", &TestPlan::id_of("p03"));
        // Started at t0: p01, p02; t1: p03; t2: p00, p04. p01 is skipped (tested this run).
        let skip = BTreeSet::from([("ns".to_string(), TestPlan::id_of("p01"))]);
        assert_eq!(names(&s.due([namespace(5)], &skip)), ["p02", "p03", "p00"]);
    }
}
