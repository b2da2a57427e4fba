//! Findings → resource status (pure). Conditions follow the metav1 / kstatus conventions:
//! `Ready` is True only when this generation was rendered without errors, and a condition's
//! `lastTransitionTime` only moves when its status does.

use crate::api::{
    AddressList, AddressListStatus, Condition, Enforcement, InvalidEntry, MatchedCounts,
    OutboundGateway, OutboundGatewayStatus, RelayConfigRef, TlsCompliance, TlsComplianceStatus,
};
use crate::policy::{Conflict, Evaluation, InForce, Inputs, Kind, ResourceFindings, ResourceId};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::ResourceExt;

pub const READY: &str = "Ready";
pub const RENDERED: &str = "Rendered";
pub const TESTED: &str = "Tested";
pub const COMPLIANT: &str = "Compliant";
pub const CONFLICT: &str = "Conflict";

/// The generation a status describes; files without one count as the first.
fn generation<K: kube::Resource>(r: &K) -> i64 {
    r.meta().generation.unwrap_or(1)
}

/// Set (or replace) a condition, keeping its transition time when the status is unchanged.
pub fn set_condition(
    conditions: &mut Vec<Condition>,
    type_: &str,
    status: bool,
    reason: &str,
    message: impl Into<String>,
    generation: i64,
    now: &Time,
) {
    let status = if status { "True" } else { "False" }.to_string();
    set_condition_raw(
        conditions,
        type_,
        status,
        reason,
        message.into(),
        generation,
        now,
    );
}

/// As [`set_condition`] with a literal status (`Unknown` included).
pub fn set_condition_raw(
    conditions: &mut Vec<Condition>,
    type_: &str,
    status: String,
    reason: &str,
    message: String,
    generation: i64,
    now: &Time,
) {
    let last_transition_time = conditions
        .iter()
        .find(|c| c.type_ == type_ && c.status == status)
        .map_or_else(|| now.clone(), |c| c.last_transition_time.clone());
    conditions.retain(|c| c.type_ != type_);
    conditions.push(Condition {
        type_: type_.to_string(),
        status,
        reason: reason.to_string(),
        message,
        observed_generation: Some(generation),
        last_transition_time,
    });
    conditions.sort_by(|a, b| {
        condition_order(&a.type_)
            .cmp(&condition_order(&b.type_))
            .then(a.type_.cmp(&b.type_))
    });
}

fn condition_order(t: &str) -> usize {
    [READY, RENDERED, TESTED, COMPLIANT, CONFLICT]
        .iter()
        .position(|c| *c == t)
        .unwrap_or(usize::MAX)
}

fn problems_message(f: &ResourceFindings) -> String {
    let mut parts: Vec<String> = f
        .errors
        .iter()
        .take(5)
        .map(|p| format!("{}: {}", p.field, p.message))
        .collect();
    if f.errors.len() > 5 {
        parts.push(format!("and {} more", f.errors.len() - 5));
    }
    parts.join("; ")
}

/// What is enforced instead of a current generation that cannot be used (fail-closed
/// evaluation only).
fn in_force_note(f: &ResourceFindings) -> Option<String> {
    match f.in_force? {
        InForce::Current(_) => None,
        InForce::Earlier(g) => Some(format!("generation {g} is still enforced")),
        InForce::Nothing => {
            Some("no earlier generation was valid: this resource enforces nothing".to_string())
        }
    }
}

/// `message`, followed by what is enforced instead when the current generation is unused.
fn with_note(message: String, f: &ResourceFindings) -> String {
    match in_force_note(f) {
        Some(note) if message.is_empty() => note,
        Some(note) => format!("{message}; {note}"),
        None => message,
    }
}

fn conflict_message(me: &ResourceId, conflicts: &[Conflict]) -> String {
    conflicts
        .iter()
        .map(|c| {
            let others: Vec<String> = c
                .involved
                .iter()
                .filter(|i| *i != me)
                .map(ToString::to_string)
                .collect();
            let outcome = if &c.winner == me {
                "this resource is older and wins".to_string()
            } else {
                format!("{} is older and wins", c.winner)
            };
            format!(
                "{} is also claimed by {}; {outcome}",
                c.subject,
                others.join(", ")
            )
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// Status of an AddressList.
pub fn address_list_status(
    list: &AddressList,
    f: &ResourceFindings,
    now: &Time,
) -> AddressListStatus {
    let observed = generation(list);
    let mut status = list.status.clone().unwrap_or_default();
    let stats = f.list.clone().unwrap_or_default();
    let invalid_count = stats.invalid_total;
    status.observed_generation = Some(observed);
    status.addresses = stats.addresses;
    status.domains = stats.domains;
    status.duplicates = stats.duplicates;
    status.invalid_count = invalid_count;
    status.invalid = stats
        .invalid
        .iter()
        .map(|(entry, p)| InvalidEntry {
            entry: entry.clone(),
            reason: format!("{}: {}", p.field, p.reason()),
        })
        .collect();
    status.used_by = f.used_by.iter().map(ToString::to_string).collect();
    status.enforced_generation = f.in_force.and_then(InForce::generation);
    let (ok, reason, message) = if !f.errors.is_empty() {
        (false, "InvalidSpec", with_note(problems_message(f), f))
    } else if invalid_count > 0 {
        let rejected = format!("{invalid_count} entries rejected (see status.invalid)");
        let message = match in_force_note(f) {
            Some(note) => format!("{rejected}; {note}"),
            None => format!("{rejected}; the valid ones are in use"),
        };
        (false, "InvalidEntries", message)
    } else {
        (
            true,
            "Valid",
            format!(
                "{} addresses, {} domains, {} duplicates dropped",
                stats.addresses, stats.domains, stats.duplicates
            ),
        )
    };
    set_condition(
        &mut status.conditions,
        READY,
        ok,
        reason,
        message,
        observed,
        now,
    );
    status
}

/// Status of a TlsCompliance. Test results (`Tested`, `Compliant`, `lastTest`, `results`)
/// belong to the test loop and are kept as they are.
pub fn tls_compliance_status(
    p: &TlsCompliance,
    f: &ResourceFindings,
    relay: Option<&RelayConfigRef>,
    now: &Time,
) -> TlsComplianceStatus {
    let observed = generation(p);
    let mut status = p.status.clone().unwrap_or_default();
    status.observed_generation = Some(observed);
    let (addresses, domains) = f.matched.unwrap_or_default();
    status.matched = MatchedCounts { addresses, domains };
    status.relay_config = relay.filter(|_| f.rendered).cloned();
    status.enforced_generation = f.in_force.and_then(InForce::generation);
    let monitor = p.spec.enforcement == Enforcement::Monitor;
    let (rendered, reason, message) = match (f.rendered, monitor) {
        (false, _) => (false, "InvalidSpec", with_note(problems_message(f), f)),
        (true, false) => (
            true,
            "Rendered",
            with_note(
                format!("mandatory TLS for {addresses} addresses and {domains} domains"),
                f,
            ),
        ),
        (true, true) => (
            true,
            "MonitorOnly",
            "Monitor mode: nothing mandatory is rendered; tests report what would fail".to_string(),
        ),
    };
    set_condition(
        &mut status.conditions,
        RENDERED,
        rendered,
        reason,
        message,
        observed,
        now,
    );
    // Only missing lists (`spec.addressLists[i].name`): the rest of the spec is valid.
    let missing_only = f
        .errors
        .iter()
        .all(|p| p.field.starts_with("spec.addressLists["));
    let (ready, reason, message) = if f.errors.is_empty() {
        (true, "Rendered", "this generation is rendered".to_string())
    } else if missing_only {
        (false, "MissingReference", with_note(problems_message(f), f))
    } else {
        (false, "InvalidSpec", with_note(problems_message(f), f))
    };
    set_condition(
        &mut status.conditions,
        READY,
        ready,
        reason,
        message,
        observed,
        now,
    );
    set_condition(
        &mut status.conditions,
        CONFLICT,
        false,
        "NoConflict",
        "",
        observed,
        now,
    );
    if p.spec.direction.outbound() {
        ensure_untested(&mut status.conditions, p.spec.test.enabled, observed, now);
    } else {
        for t in [TESTED, COMPLIANT] {
            set_condition_raw(
                &mut status.conditions,
                t,
                "Unknown".into(),
                "InboundOnly",
                "inbound TLS is enforced on incoming connections; there is nothing to connect to and test".into(),
                observed,
                now,
            );
        }
    }
    status
}

/// Status of an OutboundGateway.
pub fn gateway_status(
    gw: &OutboundGateway,
    id: &ResourceId,
    f: &ResourceFindings,
    now: &Time,
) -> OutboundGatewayStatus {
    let observed = generation(gw);
    let mut status = gw.status.clone().unwrap_or_default();
    status.observed_generation = Some(observed);
    status.used_by = f.used_by.iter().map(ToString::to_string).collect();
    status.enforced_generation = f.in_force.and_then(InForce::generation);
    let lost: Vec<&Conflict> = f.conflicts.iter().filter(|c| &c.winner != id).collect();
    let (rendered, reason, message) = if !f.errors.is_empty() && !f.rendered {
        (false, "InvalidSpec", with_note(problems_message(f), f))
    } else if !lost.is_empty() && !f.rendered {
        (
            false,
            "ConflictLost",
            with_note(conflict_message(id, &f.conflicts), f),
        )
    } else if f.rendered {
        (
            true,
            "Rendered",
            with_note("the route is in the relay configuration".to_string(), f),
        )
    } else {
        (
            false,
            "NotInUse",
            "no mail is routed here (no entries in its address lists, or no TLS-required mail)"
                .to_string(),
        )
    };
    set_condition(
        &mut status.conditions,
        RENDERED,
        rendered,
        reason,
        message.clone(),
        observed,
        now,
    );
    let ready = f.errors.is_empty() && lost.is_empty();
    let (reason, message) = match (f.errors.is_empty(), lost.is_empty()) {
        (false, _) => ("InvalidSpec", with_note(problems_message(f), f)),
        (true, false) => (
            "ConflictLost",
            with_note(conflict_message(id, &f.conflicts), f),
        ),
        (true, true) => ("Rendered", "this generation is rendered".to_string()),
    };
    set_condition(
        &mut status.conditions,
        READY,
        ready,
        reason,
        message,
        observed,
        now,
    );
    if f.conflicts.is_empty() {
        set_condition(
            &mut status.conditions,
            CONFLICT,
            false,
            "NoConflict",
            "",
            observed,
            now,
        );
    } else {
        set_condition(
            &mut status.conditions,
            CONFLICT,
            true,
            "Conflict",
            conflict_message(id, &f.conflicts),
            observed,
            now,
        );
    }
    ensure_untested(&mut status.conditions, gw.spec.test.enabled, observed, now);
    status
}

/// Until the test loop reports, `Tested` and `Compliant` are Unknown (or say tests are off).
fn ensure_untested(conditions: &mut Vec<Condition>, enabled: bool, observed: i64, now: &Time) {
    for t in [TESTED, COMPLIANT] {
        let present = conditions.iter().any(|c| c.type_ == t);
        if !enabled {
            set_condition_raw(
                conditions,
                t,
                "Unknown".into(),
                "TestsDisabled",
                "spec.test.enabled is false".into(),
                observed,
                now,
            );
        } else if !present {
            set_condition_raw(
                conditions,
                t,
                "Unknown".into(),
                "NotTestedYet",
                "no TLS test has run yet".into(),
                observed,
                now,
            );
        }
    }
}

/// Every resource of one namespace, each carrying its new status.
#[derive(Clone, Debug, Default)]
pub struct Updated {
    pub address_lists: Vec<AddressList>,
    pub policies: Vec<TlsCompliance>,
    pub gateways: Vec<OutboundGateway>,
}

/// The new status of every resource in `inputs` (whose `status` is the previous one), from
/// one evaluation. Shared by the controller and `mailtls standalone`.
pub fn namespace_statuses(
    inputs: &Inputs,
    evaluation: &Evaluation,
    relay: &RelayConfigRef,
    now: &Time,
) -> Updated {
    fn each<K: Reconciled>(
        items: &[K],
        evaluation: &Evaluation,
        relay: &RelayConfigRef,
        now: &Time,
    ) -> Vec<K> {
        let empty = ResourceFindings::default();
        items
            .iter()
            .map(|r| {
                let f = evaluation
                    .findings
                    .get(&ResourceId::new(K::KIND, r.name_any()))
                    .unwrap_or(&empty);
                r.with_status(f, Some(relay), now)
            })
            .collect()
    }
    Updated {
        address_lists: each(&inputs.address_lists, evaluation, relay, now),
        policies: each(&inputs.policies, evaluation, relay, now),
        gateways: each(&inputs.gateways, evaluation, relay, now),
    }
}

/// A resource whose status the engine computes; lets the reconcile loops treat the three
/// kinds alike.
pub trait Reconciled: kube::Resource<DynamicType = ()> + Clone {
    const KIND: Kind;
    /// A copy carrying the status this reconcile computed.
    fn with_status(&self, f: &ResourceFindings, relay: Option<&RelayConfigRef>, now: &Time)
    -> Self;
    /// The current conditions (empty without a status).
    fn conditions(&self) -> &[Condition];
}

impl Reconciled for AddressList {
    const KIND: Kind = Kind::AddressList;
    fn with_status(&self, f: &ResourceFindings, _: Option<&RelayConfigRef>, now: &Time) -> Self {
        let mut r = self.clone();
        r.status = Some(address_list_status(self, f, now));
        r
    }
    fn conditions(&self) -> &[Condition] {
        self.status.as_ref().map_or(&[], |s| &s.conditions)
    }
}

impl Reconciled for TlsCompliance {
    const KIND: Kind = Kind::TlsCompliance;
    fn with_status(
        &self,
        f: &ResourceFindings,
        relay: Option<&RelayConfigRef>,
        now: &Time,
    ) -> Self {
        let mut r = self.clone();
        r.status = Some(tls_compliance_status(self, f, relay, now));
        r
    }
    fn conditions(&self) -> &[Condition] {
        self.status.as_ref().map_or(&[], |s| &s.conditions)
    }
}

impl Reconciled for OutboundGateway {
    const KIND: Kind = Kind::OutboundGateway;
    fn with_status(&self, f: &ResourceFindings, _: Option<&RelayConfigRef>, now: &Time) -> Self {
        let id = ResourceId::new(Kind::OutboundGateway, self.name_any());
        let mut r = self.clone();
        r.status = Some(gateway_status(self, &id, f, now));
        r
    }
    fn conditions(&self) -> &[Condition] {
        self.status.as_ref().map_or(&[], |s| &s.conditions)
    }
}
