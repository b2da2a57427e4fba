//! The managed kinds: what the engine needs of each, implemented once per kind.

use super::plan::{self, PlanInputs, TestPlan};
use super::statuses;
use crate::api::{AddressList, Condition, OutboundGateway, RelayConfigRef, TlsCompliance};
use crate::api::{Enforcement, ObservedMail, TestSummary};
use crate::policy::{Inputs, Kind, ResourceFindings};
use crate::probe::DestinationReport;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::core::NamespaceResourceScope;
use kube::core::object::HasStatus;
use serde::Serialize;
use serde::de::DeserializeOwned;

/// A kind the engine manages: AddressList, TlsCompliance, OutboundGateway.
pub trait Managed:
    kube::Resource<DynamicType = (), Scope = NamespaceResourceScope>
    + HasStatus<Status: Serialize>
    + Clone
    + Serialize
    + DeserializeOwned
    + std::fmt::Debug
    + Send
    + Sync
    + 'static
{
    const KIND: Kind;

    /// The resources of this kind in a namespace's inputs.
    fn of(inputs: &Inputs) -> &[Self];
    fn of_mut(inputs: &mut Inputs) -> &mut Vec<Self>;

    /// Whether two copies have the same spec (a changed spec is a new generation).
    fn same_spec(&self, other: &Self) -> bool;

    /// The current conditions (empty without a status).
    fn conditions(&self) -> &[Condition];

    /// A copy carrying the status computed from this evaluation's findings.
    fn with_status(&self, f: &ResourceFindings, relay: &RelayConfigRef, now: &Time) -> Self;

    /// What to test now, if a test is due (never for kinds that are not tested).
    fn test_plan(&self, _ns: &PlanInputs, _now: Timestamp) -> Option<TestPlan> {
        None
    }

    /// Record a finished test's results in the status.
    fn record_test(&mut self, _plan: &TestPlan, _reports: &[DestinationReport], _now: &Time) {}

    /// What the relay pods observed of real mail, as in the status.
    fn observed(&self) -> Option<&ObservedMail> {
        None
    }
}

impl Managed for AddressList {
    const KIND: Kind = Kind::AddressList;
    fn of(inputs: &Inputs) -> &[Self] {
        &inputs.address_lists
    }
    fn of_mut(inputs: &mut Inputs) -> &mut Vec<Self> {
        &mut inputs.address_lists
    }
    fn same_spec(&self, other: &Self) -> bool {
        self.spec == other.spec
    }
    fn conditions(&self) -> &[Condition] {
        self.status.as_ref().map_or(&[], |s| &s.conditions)
    }
    fn with_status(&self, f: &ResourceFindings, relay: &RelayConfigRef, now: &Time) -> Self {
        let mut status = statuses::address_list_status(self, f, now);
        statuses::in_force_conditions(
            &mut status.conditions,
            statuses::generation(self),
            relay,
            now,
        );
        let mut r = self.clone();
        r.status = Some(status);
        r
    }
}

impl Managed for TlsCompliance {
    const KIND: Kind = Kind::TlsCompliance;
    fn of(inputs: &Inputs) -> &[Self] {
        &inputs.policies
    }
    fn of_mut(inputs: &mut Inputs) -> &mut Vec<Self> {
        &mut inputs.policies
    }
    fn same_spec(&self, other: &Self) -> bool {
        self.spec == other.spec
    }
    fn conditions(&self) -> &[Condition] {
        self.status.as_ref().map_or(&[], |s| &s.conditions)
    }
    fn with_status(&self, f: &ResourceFindings, relay: &RelayConfigRef, now: &Time) -> Self {
        let mut status = statuses::tls_compliance_status(self, f, relay, now);
        statuses::in_force_conditions(
            &mut status.conditions,
            statuses::generation(self),
            relay,
            now,
        );
        let mut r = self.clone();
        r.status = Some(status);
        r
    }
    fn test_plan(&self, ns: &PlanInputs, now: Timestamp) -> Option<TestPlan> {
        plan::compliance_plan(self, ns, now)
    }
    fn observed(&self) -> Option<&ObservedMail> {
        self.status.as_ref()?.observed.as_ref()
    }
    fn record_test(&mut self, plan: &TestPlan, reports: &[DestinationReport], now: &Time) {
        let monitor = self.spec.enforcement == Enforcement::Monitor;
        let generation = statuses::generation(self);
        let s = self.status.get_or_insert_with(Default::default);
        record(
            (&mut s.conditions, &mut s.last_test, &mut s.results),
            (plan, reports),
            monitor,
            generation,
            now,
        );
    }
}

impl Managed for OutboundGateway {
    const KIND: Kind = Kind::OutboundGateway;
    fn of(inputs: &Inputs) -> &[Self] {
        &inputs.gateways
    }
    fn of_mut(inputs: &mut Inputs) -> &mut Vec<Self> {
        &mut inputs.gateways
    }
    fn same_spec(&self, other: &Self) -> bool {
        self.spec == other.spec
    }
    fn conditions(&self) -> &[Condition] {
        self.status.as_ref().map_or(&[], |s| &s.conditions)
    }
    fn with_status(&self, f: &ResourceFindings, relay: &RelayConfigRef, now: &Time) -> Self {
        let mut status = statuses::gateway_status(self, f, now);
        statuses::in_force_conditions(
            &mut status.conditions,
            statuses::generation(self),
            relay,
            now,
        );
        let mut r = self.clone();
        r.status = Some(status);
        r
    }
    fn test_plan(&self, _ns: &PlanInputs, now: Timestamp) -> Option<TestPlan> {
        plan::gateway_plan(self, now)
    }
    fn observed(&self) -> Option<&ObservedMail> {
        self.status.as_ref()?.observed.as_ref()
    }
    fn record_test(&mut self, plan: &TestPlan, reports: &[DestinationReport], now: &Time) {
        let generation = statuses::generation(self);
        let s = self.status.get_or_insert_with(Default::default);
        record(
            (&mut s.conditions, &mut s.last_test, &mut s.results),
            (plan, reports),
            false,
            generation,
            now,
        );
    }
}

type TestFields<'a> = (
    &'a mut Vec<Condition>,
    &'a mut Option<TestSummary>,
    &'a mut Vec<crate::api::DestinationResult>,
);

/// The test part of a status from a finished plan. `monitor` words failures as what
/// *would* fail.
fn record(
    (conditions, last_test, results): TestFields<'_>,
    (plan, reports): (&TestPlan, &[DestinationReport]),
    monitor: bool,
    generation: i64,
    now: &Time,
) {
    let t = plan::test_status(plan, reports, monitor, conditions, generation, now);
    *last_test = Some(t.summary);
    *results = t.results;
}

/// Every test plan due now in one namespace.
pub fn namespace_plans(inputs: &Inputs, now: Timestamp) -> Vec<TestPlan> {
    fn of<'a, K: Managed>(
        ns: &'a PlanInputs,
        now: Timestamp,
    ) -> impl Iterator<Item = TestPlan> + 'a {
        K::of(ns.inputs)
            .iter()
            .filter_map(move |r| r.test_plan(ns, now))
    }
    let ns = PlanInputs::new(inputs);
    of::<TlsCompliance>(&ns, now)
        .chain(of::<OutboundGateway>(&ns, now))
        .collect()
}
