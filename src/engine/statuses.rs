//! Findings → resource status (pure): `Ready` is True only when this generation was rendered
//! without errors. Test results (`Tested`, `Compliant`, `lastTest`, `results`) belong to the
//! test loop ([`super::plan`]) and are kept as they are.

use super::conditions::{ConditionType, Conditions, Reason, Status, is};
use crate::api::{
    AddressList, AddressListStatus, Direction, Enforcement, InvalidEntry, MatchedCounts,
    OutboundGateway, OutboundGatewayStatus, RelayConfigRef, TlsCompliance, TlsComplianceStatus,
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
    match outbound_only_options(p) {
        Some(message) => c.set(
            ConditionType::Warning,
            true,
            Reason::OutboundOnlyOptions,
            message,
        ),
        None => c.remove(ConditionType::Warning),
    };
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

/// A `Both` policy's options that concern only its outbound half: said once, so nobody
/// reads them as demands on the senders (an `Inbound` policy may not set them at all).
fn outbound_only_options(p: &TlsCompliance) -> Option<String> {
    if p.spec.direction != Direction::Both {
        return None;
    }
    let set = p.spec.outbound_only_fields();
    (!set.is_empty()).then(|| {
        format!(
            "{} apply to mail to these addresses only: mail from them must use TLS, and \
             nothing about the senders' certificates or versions is checked",
            set.join(", ")
        )
    })
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

/// `Applied`: whether every relay pod runs the namespace's current configuration (False
/// with the agent's reason when one refused it; Unknown when no relay reports). Then
/// `Stalled`: True for errors that waiting will not fix (an invalid spec, a lost conflict,
/// a refusal), so GitOps tools fail fast instead of waiting for their timeout.
pub fn in_force_conditions(
    conditions: &mut Vec<crate::api::Condition>,
    generation: i64,
    relay: &RelayConfigRef,
    now: &Time,
) {
    let short = relay
        .hash
        .trim_start_matches("sha256:")
        .get(..12)
        .unwrap_or("");
    let (status, reason, message) = match (relay.applied_pods, relay.total_pods) {
        _ if relay.refused_pods.unwrap_or(0) > 0 => (
            Status::False,
            Reason::Refused,
            format!(
                "{} relay pod(s) refused configuration {short} and keep their last good one: {}",
                relay.refused_pods.unwrap_or(0),
                relay.refusal.as_deref().unwrap_or("no reason given")
            ),
        ),
        (Some(applied), Some(total)) if total > 0 && applied >= total => (
            Status::True,
            Reason::Applied,
            format!("all {total} relay pods run configuration {short}"),
        ),
        (Some(applied), Some(total)) if total > 0 => (
            Status::False,
            Reason::Propagating,
            format!("{applied} of {total} relay pods run configuration {short}"),
        ),
        _ => (
            Status::Unknown,
            Reason::NoRelays,
            "no relay pod reports which configuration it runs".to_string(),
        ),
    };
    let mut c = Conditions::new(conditions, generation, now);
    c.set(ConditionType::Applied, status, reason, message);
    let stalled = [
        (ConditionType::Ready, Reason::InvalidSpec),
        (ConditionType::Ready, Reason::InvalidEntries),
        (ConditionType::Ready, Reason::ConflictLost),
        (ConditionType::Applied, Reason::Refused),
    ]
    .into_iter()
    .find_map(|(t, r)| {
        c.get(t)
            .filter(|cond| is(cond, Status::False, r))
            .map(|cond| (r, cond.message.clone()))
    });
    match stalled {
        Some((reason, message)) => c.set(ConditionType::Stalled, true, reason, message),
        None => c.set(ConditionType::Stalled, false, Reason::NotStalled, ""),
    };
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::conditions::find;

    fn relay(applied: Option<u32>, total: Option<u32>, refused: Option<u32>) -> RelayConfigRef {
        RelayConfigRef {
            name: "mailtls-relay".into(),
            hash: "sha256:0123456789abcdef".into(),
            applied_pods: applied,
            total_pods: total,
            refused_pods: refused,
            refusal: refused.map(|_| "master.cf does not match the manifest".into()),
        }
    }

    /// (status, reason, message) of Applied and Stalled after `in_force_conditions`.
    fn after(ready: Option<Reason>, relay: &RelayConfigRef) -> [(String, String, String); 2] {
        let now = Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH);
        let mut list = Vec::new();
        if let Some(reason) = ready {
            Conditions::new(&mut list, 1, &now).set(ConditionType::Ready, false, reason, "why");
        }
        in_force_conditions(&mut list, 1, relay, &now);
        [ConditionType::Applied, ConditionType::Stalled].map(|t| {
            let c = find(&list, t).expect("set");
            (c.status.clone(), c.reason.clone(), c.message.clone())
        })
    }

    #[test]
    fn applied_says_how_far_the_configuration_got() {
        let [applied, stalled] = after(None, &relay(Some(3), Some(3), None));
        assert_eq!(
            applied,
            (
                "True".into(),
                "Applied".into(),
                "all 3 relay pods run configuration 0123456789ab".into()
            )
        );
        assert_eq!(
            (stalled.0.as_str(), stalled.1.as_str()),
            ("False", "NotStalled")
        );

        let [applied, _] = after(None, &relay(Some(1), Some(3), None));
        assert_eq!(
            applied,
            (
                "False".into(),
                "Propagating".into(),
                "1 of 3 relay pods run configuration 0123456789ab".into()
            )
        );
        for unknown in [relay(None, None, None), relay(Some(0), Some(0), None)] {
            let [applied, _] = after(None, &unknown);
            assert_eq!(
                (applied.0.as_str(), applied.1.as_str()),
                ("Unknown", "NoRelays")
            );
        }
    }

    #[test]
    fn a_refusal_is_not_applied_and_stalls() {
        let [applied, stalled] = after(None, &relay(Some(2), Some(3), Some(1)));
        assert_eq!(
            (applied.0.as_str(), applied.1.as_str()),
            ("False", "Refused")
        );
        assert!(
            applied
                .2
                .contains("1 relay pod(s) refused configuration 0123456789ab")
                && applied.2.contains("master.cf does not match the manifest"),
            "{}",
            applied.2
        );
        assert_eq!(stalled, ("True".into(), "Refused".into(), applied.2));
    }

    #[test]
    fn only_errors_that_waiting_will_not_fix_stall() {
        for reason in [
            Reason::InvalidSpec,
            Reason::InvalidEntries,
            Reason::ConflictLost,
        ] {
            let [_, stalled] = after(Some(reason), &relay(Some(1), Some(1), None));
            assert_eq!(
                stalled,
                ("True".into(), reason.as_str().into(), "why".into()),
                "{reason:?}"
            );
        }
        // A list may still be created (GitOps applies in any order); a write may succeed.
        for reason in [Reason::MissingReference, Reason::RelayConfigNotWritten] {
            let [_, stalled] = after(Some(reason), &relay(Some(1), Some(1), None));
            assert_eq!(stalled.0, "False", "{reason:?}");
        }
    }
}

#[cfg(test)]
mod warning_tests {
    use super::*;
    use crate::api::{Direction, TlsVersion};
    use crate::engine::conditions::find;

    /// A `Both` policy's outbound-only options get a Warning; it goes when they do, and
    /// other directions never get one.
    #[test]
    fn both_with_outbound_only_options_warns_until_they_go() {
        let now = Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH);
        let findings = ResourceFindings {
            rendered: true,
            ..Default::default()
        };
        let relay = RelayConfigRef::default();
        let mut p = TlsCompliance::outbound_verified("p", &["l"]);
        p.spec.direction = Direction::Both;
        p.spec.min_tls_version = TlsVersion::V1_3;
        let status = tls_compliance_status(&p, &findings, &relay, &now);
        let w = find(&status.conditions, ConditionType::Warning).expect("warning");
        assert_eq!(
            (w.status.as_str(), w.reason.as_str()),
            ("True", "OutboundOnlyOptions")
        );
        assert!(
            w.message
                .starts_with("requireCASigned, validateHostname, minTlsVersion apply to mail to"),
            "{}",
            w.message
        );
        // Fixed: the warning is dropped from the status.
        p.status = Some(status);
        p.spec.require_ca_signed = false;
        p.spec.validate_hostname = false;
        p.spec.min_tls_version = TlsVersion::V1_2;
        let status = tls_compliance_status(&p, &findings, &relay, &now);
        assert!(find(&status.conditions, ConditionType::Warning).is_none());
        // Outbound: the options are what the policy is for.
        let o = TlsCompliance::outbound_verified("o", &["l"]);
        let status = tls_compliance_status(&o, &findings, &relay, &now);
        assert!(find(&status.conditions, ConditionType::Warning).is_none());
    }
}
