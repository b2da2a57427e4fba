//! Periodic tests (pure): which resources are due, what to test for each, and how the
//! results become status. [`super::schedule`] runs the probes.

use super::conditions::{ConditionType, Conditions, Reason};
use crate::api::OutboundGateway;
use crate::api::{
    AddressList, Condition, TEST_NOW_ANNOTATION, TestSpec, TestSummary, TlsCompliance,
};
use crate::policy::{Entry, Kind, ResourceId, list_entries, parse_interval};
use crate::probe::{DestinationReport, Expected, Target, results_for_status, summarize};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::ResourceExt;
use std::collections::BTreeSet;

/// Per-destination results kept in a status.
pub const RESULTS_CAP: usize = 50;

/// What one resource's test consists of.
#[derive(Clone, Debug)]
pub struct TestPlan {
    pub id: ResourceId,
    pub items: Vec<(Target, Expected)>,
    /// Entries that name no host (subdomain wildcards).
    pub untestable: u32,
    /// The test-now annotation value being answered, if any.
    pub trigger: Option<String>,
}

/// Why a test is due now, if it is: `Some(Some(value))` for a new test-now annotation value,
/// `Some(None)` when the interval (plus this resource's jitter) has passed or it was never
/// tested, `None` when not due (or tests are off).
pub fn due(
    test_now: Option<&str>,
    test: &TestSpec,
    last: Option<&TestSummary>,
    now: Timestamp,
    key: &str,
) -> Option<Option<String>> {
    if !test.enabled {
        return None;
    }
    if let Some(value) = test_now
        && last.and_then(|l| l.trigger.as_deref()) != Some(value)
    {
        return Some(Some(value.to_string()));
    }
    match next_due(test, last, key) {
        None if last.is_none() => Some(None),
        None => None,
        Some(next) => (next <= now).then_some(None),
    }
}

/// When the next interval test of a resource falls due: the last test plus the interval plus
/// a fixed per-resource jitter of up to a tenth of the interval, so resources created together
/// do not all test at the same moment forever. `None` when never tested or unparsable.
pub fn next_due(test: &TestSpec, last: Option<&TestSummary>, key: &str) -> Option<Timestamp> {
    let interval = parse_interval(&test.interval).ok()?;
    let last: Timestamp = last?.time.parse().ok()?;
    let span = SignedDuration::try_from(interval + jitter(interval, key)).ok()?;
    last.checked_add(span).ok()
}

/// The fixed jitter of one resource: a stable hash of `key` spread over a tenth of `interval`.
pub fn jitter(interval: std::time::Duration, key: &str) -> std::time::Duration {
    use std::hash::{BuildHasher, BuildHasherDefault};
    let hash = BuildHasherDefault::<rustc_hash::FxHasher>::default().hash_one(key);
    let tenth = interval.as_millis() as u64 / 10;
    std::time::Duration::from_millis(if tenth == 0 { 0 } else { hash % tenth })
}

/// What the jitter is keyed on: the uid in a cluster, else namespace/name.
fn schedule_key<K: kube::Resource>(r: &K) -> String {
    let m = r.meta();
    m.uid.clone().unwrap_or_else(|| {
        format!(
            "{}/{}",
            m.namespace.as_deref().unwrap_or_default(),
            m.name.as_deref().unwrap_or_default()
        )
    })
}

fn annotation<K: kube::Resource>(r: &K) -> Option<&str> {
    r.meta()
        .annotations
        .as_ref()?
        .get(TEST_NOW_ANNOTATION)
        .map(String::as_str)
}

/// The plan for a TlsCompliance, if a test is due: every outbound destination domain
/// (an address's domain, a listed domain) tested against the policy's requirement.
pub fn compliance_plan(
    p: &TlsCompliance,
    lists: &[AddressList],
    now: Timestamp,
) -> Option<TestPlan> {
    if !p.spec.direction.outbound() {
        return None;
    }
    let last = p.status.as_ref().and_then(|s| s.last_test.as_ref());
    let trigger = due(annotation(p), &p.spec.test, last, now, &schedule_key(p))?;
    let mut domains = BTreeSet::new();
    let mut untestable = 0;
    for r in &p.spec.address_lists {
        for list in lists.iter().filter(|l| l.name_any() == r.name) {
            for entry in list_entries(list) {
                match entry {
                    Entry::Subdomains(_) => untestable += 1,
                    other => {
                        domains.insert(other.domain().to_string());
                    }
                }
            }
        }
    }
    let requirement = Expected::for_compliance(&p.spec);
    Some(TestPlan {
        id: ResourceId::new(Kind::TlsCompliance, p.name_any()),
        items: domains
            .into_iter()
            .map(|d| (Target::Domain(d), requirement))
            .collect(),
        untestable,
        trigger,
    })
}

/// The plan for an OutboundGateway, if a test is due: the gateway host as the relay uses it.
pub fn gateway_plan(g: &OutboundGateway, now: Timestamp) -> Option<TestPlan> {
    let last = g.status.as_ref().and_then(|s| s.last_test.as_ref());
    let trigger = due(annotation(g), &g.spec.test, last, now, &schedule_key(g))?;
    let host = crate::policy::Host::parse(&g.spec.host).ok()?;
    let target = Target::Host {
        host: host.to_string(),
        port: g.spec.port,
        mx_lookup: g.spec.mx_lookup && !host.is_ip(),
    };
    Some(TestPlan {
        id: ResourceId::new(Kind::OutboundGateway, g.name_any()),
        items: vec![(target, Expected::for_gateway(&g.spec.tls))],
        untestable: 0,
        trigger,
    })
}

/// The test part of a status: summary, capped results (failures first), and the `Tested`
/// and `Compliant` conditions. `monitor` words failures as what *would* fail.
pub struct TestStatus {
    pub summary: TestSummary,
    pub results: Vec<crate::api::DestinationResult>,
}

/// Turn a finished plan's reports into status, updating `conditions` in place.
pub fn test_status(
    plan: &TestPlan,
    reports: &[DestinationReport],
    monitor: bool,
    conditions: &mut Vec<Condition>,
    generation: i64,
    now: &Time,
) -> TestStatus {
    let mut summary = summarize(reports, &now.0.to_string());
    summary.trigger = plan.trigger.clone();
    summary.untestable = plan.untestable;
    let results = results_for_status(reports, RESULTS_CAP);
    let tested = format!(
        "{} destinations tested{}",
        summary.destinations,
        if plan.untestable > 0 {
            format!(
                "; {} subdomain wildcards name no host and were not tested",
                plan.untestable
            )
        } else {
            String::new()
        }
    );
    let mut c = Conditions::new(conditions, generation, now);
    c.set(ConditionType::Tested, true, Reason::Tested, tested);
    let (ok, reason, message) = match (summary.failed, monitor) {
        (0, _) if summary.destinations == 0 => (
            true,
            Reason::NothingToTest,
            "no destination to test".to_string(),
        ),
        (0, _) if summary.warnings > 0 => {
            let expiring: Vec<String> = results
                .iter()
                .filter(|r| r.message.contains("warning:"))
                .take(3)
                .map(|r| {
                    r.cert_days_left.map_or(r.destination.clone(), |d| {
                        format!("{} ({d} days)", r.destination)
                    })
                })
                .collect();
            (
                true,
                Reason::PassedWithWarnings,
                format!(
                    "all {} destinations meet the policy; {} with warnings such as a certificate expiring soon: {}",
                    summary.destinations,
                    summary.warnings,
                    expiring.join(", ")
                ),
            )
        }
        (0, _) => (
            true,
            Reason::AllPassed,
            format!("all {} destinations meet the policy", summary.destinations),
        ),
        (n, m) => {
            let first = results
                .first()
                .map(|r| format!(" (e.g. {}: {})", r.destination, r.outcome))
                .unwrap_or_default();
            let verb = if m {
                "would fail once enforced"
            } else {
                "fail"
            };
            (
                false,
                if m {
                    Reason::WouldFail
                } else {
                    Reason::NotCompliant
                },
                format!("{n} of {} destinations {verb}{first}", summary.destinations),
            )
        }
    };
    c.set(ConditionType::Compliant, ok, reason, message);
    TestStatus { summary, results }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(interval: &str) -> TestSpec {
        TestSpec {
            enabled: true,
            interval: interval.into(),
        }
    }

    fn last(time: &str, trigger: Option<&str>) -> TestSummary {
        TestSummary {
            time: time.into(),
            trigger: trigger.map(String::from),
            ..Default::default()
        }
    }

    fn at(s: &str) -> Timestamp {
        s.parse().expect("timestamp")
    }

    #[test]
    fn never_tested_is_due_at_once_and_disabled_never() {
        assert_eq!(
            due(None, &spec("6h"), None, at("2026-01-01T00:00:00Z"), "k"),
            Some(None)
        );
        let off = TestSpec {
            enabled: false,
            interval: "6h".into(),
        };
        assert_eq!(
            due(Some("now"), &off, None, at("2026-01-01T00:00:00Z"), "k"),
            None
        );
    }

    #[test]
    fn interval_plus_jitter_within_a_tenth() {
        let l = last("2026-01-01T00:00:00Z", None);
        for key in ["a", "b", "uid-1", "uid-2", "default/partners"] {
            let j = jitter(std::time::Duration::from_secs(3600), key);
            assert!(j < std::time::Duration::from_secs(360), "{key}: {j:?}");
            let next = next_due(&spec("1h"), Some(&l), key).expect("next");
            assert_eq!(
                next,
                at("2026-01-01T01:00:00Z")
                    .checked_add(SignedDuration::try_from(j).expect("span"))
                    .expect("add")
            );
            assert_eq!(
                due(None, &spec("1h"), Some(&l), at("2026-01-01T00:59:59Z"), key),
                None
            );
            assert_eq!(
                due(None, &spec("1h"), Some(&l), at("2026-01-01T01:06:00Z"), key),
                Some(None)
            );
        }
        assert_ne!(
            jitter(std::time::Duration::from_secs(3600), "a"),
            jitter(std::time::Duration::from_secs(3600), "b")
        );
    }

    #[test]
    fn a_new_test_now_value_triggers_once() {
        let l = last("2026-01-01T00:00:00Z", Some("first"));
        let now = at("2026-01-01T00:01:00Z");
        assert_eq!(
            due(Some("second"), &spec("6h"), Some(&l), now, "k"),
            Some(Some("second".into()))
        );
        assert_eq!(
            due(Some("first"), &spec("6h"), Some(&l), now, "k"),
            None,
            "already answered"
        );
    }
}
