//! Findings → resource status (pure): `Ready` is True only when this generation was rendered
//! without errors. Test results (`Tested`, `Compliant`, `lastTest`, `results`) belong to the
//! test loop ([`super::plan`]) and are kept as they are.

use super::conditions::{ConditionType, Conditions, Reason, Status};
use crate::api::{
    AddressList, AddressListStatus, Enforcement, InvalidEntry, MatchedCounts, OutboundGateway,
    OutboundGatewayStatus, RelayConfigRef, TlsCompliance, TlsComplianceStatus,
};
use crate::policy::{Conflict, InForce, Kind, ResourceFindings, ResourceId};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::ResourceExt;

/// The generation a status describes; files without one count as the first.
pub fn generation<K: kube::Resource>(r: &K) -> i64 {
    r.meta().generation.unwrap_or(1)
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
        (
            false,
            Reason::InvalidSpec,
            with_note(problems_message(f), f),
        )
    } else if invalid_count > 0 {
        let rejected = format!("{invalid_count} entries rejected (see status.invalid)");
        let message = match in_force_note(f) {
            Some(note) => format!("{rejected}; {note}"),
            None => format!("{rejected}; the valid ones are in use"),
        };
        (false, Reason::InvalidEntries, message)
    } else {
        (
            true,
            Reason::Valid,
            format!(
                "{} addresses, {} domains, {} duplicates dropped",
                stats.addresses, stats.domains, stats.duplicates
            ),
        )
    };
    Conditions::new(&mut status.conditions, observed, now).set(
        ConditionType::Ready,
        ok,
        reason,
        message,
    );
    status
}

/// Status of a TlsCompliance.
pub fn tls_compliance_status(
    p: &TlsCompliance,
    f: &ResourceFindings,
    relay: &RelayConfigRef,
    now: &Time,
) -> TlsComplianceStatus {
    let observed = generation(p);
    let mut status = p.status.clone().unwrap_or_default();
    status.observed_generation = Some(observed);
    let (addresses, domains) = f.matched.unwrap_or_default();
    status.matched = MatchedCounts { addresses, domains };
    status.relay_config = f.rendered.then(|| relay.clone());
    status.enforced_generation = f.in_force.and_then(InForce::generation);
    let monitor = p.spec.enforcement == Enforcement::Monitor;
    let (rendered, reason, message) = match (f.rendered, monitor) {
        (false, _) => (
            false,
            Reason::InvalidSpec,
            with_note(problems_message(f), f),
        ),
        (true, false) => (
            true,
            Reason::Rendered,
            with_note(
                format!("mandatory TLS for {addresses} addresses and {domains} domains"),
                f,
            ),
        ),
        (true, true) => (
            true,
            Reason::MonitorOnly,
            "Monitor mode: nothing mandatory is rendered; tests report what would fail".to_string(),
        ),
    };
    let mut c = Conditions::new(&mut status.conditions, observed, now);
    c.set(ConditionType::Rendered, rendered, reason, message);
    // Only missing lists (`spec.addressLists[i].name`): the rest of the spec is valid.
    let missing_only = f
        .errors
        .iter()
        .all(|p| p.field.starts_with("spec.addressLists["));
    let (ready, reason, message) = if f.errors.is_empty() {
        (
            true,
            Reason::Rendered,
            "this generation is rendered".to_string(),
        )
    } else if missing_only {
        (
            false,
            Reason::MissingReference,
            with_note(problems_message(f), f),
        )
    } else {
        (
            false,
            Reason::InvalidSpec,
            with_note(problems_message(f), f),
        )
    };
    c.set(ConditionType::Ready, ready, reason, message);
    c.set(ConditionType::Conflict, false, Reason::NoConflict, "");
    if p.spec.direction.outbound() {
        ensure_untested(&mut c, p.spec.test.enabled);
    } else {
        for t in [ConditionType::Tested, ConditionType::Compliant] {
            c.set(
                t,
                Status::Unknown,
                Reason::InboundOnly,
                "inbound TLS is enforced on incoming connections; there is nothing to connect to and test",
            );
        }
    }
    status
}

/// Status of an OutboundGateway.
pub fn gateway_status(
    gw: &OutboundGateway,
    f: &ResourceFindings,
    now: &Time,
) -> OutboundGatewayStatus {
    let id = ResourceId::new(Kind::OutboundGateway, gw.name_any());
    let observed = generation(gw);
    let mut status = gw.status.clone().unwrap_or_default();
    status.observed_generation = Some(observed);
    status.used_by = f.used_by.iter().map(ToString::to_string).collect();
    status.enforced_generation = f.in_force.and_then(InForce::generation);
    let lost: Vec<&Conflict> = f.conflicts.iter().filter(|c| c.winner != id).collect();
    let (rendered, reason, message) = if !f.errors.is_empty() && !f.rendered {
        (
            false,
            Reason::InvalidSpec,
            with_note(problems_message(f), f),
        )
    } else if !lost.is_empty() && !f.rendered {
        (
            false,
            Reason::ConflictLost,
            with_note(conflict_message(&id, &f.conflicts), f),
        )
    } else if f.rendered {
        (
            true,
            Reason::Rendered,
            with_note("the route is in the relay configuration".to_string(), f),
        )
    } else {
        (
            false,
            Reason::NotInUse,
            "no mail is routed here (no entries in its address lists, or no TLS-required mail)"
                .to_string(),
        )
    };
    let mut c = Conditions::new(&mut status.conditions, observed, now);
    c.set(ConditionType::Rendered, rendered, reason, message);
    let ready = f.errors.is_empty() && lost.is_empty();
    let (reason, message) = match (f.errors.is_empty(), lost.is_empty()) {
        (false, _) => (Reason::InvalidSpec, with_note(problems_message(f), f)),
        (true, false) => (
            Reason::ConflictLost,
            with_note(conflict_message(&id, &f.conflicts), f),
        ),
        (true, true) => (Reason::Rendered, "this generation is rendered".to_string()),
    };
    c.set(ConditionType::Ready, ready, reason, message);
    if f.conflicts.is_empty() {
        c.set(ConditionType::Conflict, false, Reason::NoConflict, "");
    } else {
        c.set(
            ConditionType::Conflict,
            true,
            Reason::Conflict,
            conflict_message(&id, &f.conflicts),
        );
    }
    ensure_untested(&mut c, gw.spec.test.enabled);
    status
}

/// Until the test loop reports, `Tested` and `Compliant` are Unknown (or say tests are off).
fn ensure_untested(c: &mut Conditions<'_>, enabled: bool) {
    for t in [ConditionType::Tested, ConditionType::Compliant] {
        if !enabled {
            c.set(
                t,
                Status::Unknown,
                Reason::TestsDisabled,
                "spec.test.enabled is false",
            );
        } else if !c.has(t) {
            c.set(
                t,
                Status::Unknown,
                Reason::NotTestedYet,
                "no TLS test has run yet",
            );
        }
    }
}

/// `Ready` and `Rendered` False: the configuration this status describes is not stored.
pub fn mark_not_written(
    conditions: &mut Vec<crate::api::Condition>,
    generation: i64,
    message: &str,
    now: &Time,
) {
    let mut c = Conditions::new(conditions, generation, now);
    for t in [ConditionType::Ready, ConditionType::Rendered] {
        c.set(t, false, Reason::RelayConfigNotWritten, message);
    }
}
