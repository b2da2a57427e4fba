//! Periodic tests (pure): which resources are due, what to test for each, and how the
//! results become status. [`super::schedule`] runs the probes.

use super::conditions::{ConditionType, Conditions, Reason};
use crate::api::OutboundGateway;
use crate::api::{Condition, TEST_NOW_ANNOTATION, TestSpec, TestSummary, TlsCompliance};
use crate::policy::{
    EffectivePolicy, Entry, Inputs, Kind, Requirement, ResourceId, list_entries, parse_interval,
};
use crate::probe::{DestinationReport, Expected, Target, results_for_status, summarize};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::ResourceExt;
use std::collections::{BTreeMap, HashMap};

/// Per-destination results kept in a status.
pub const RESULTS_CAP: usize = 50;

/// What one resource's test consists of.
#[derive(Clone, Debug)]
pub struct TestPlan {
    pub id: ResourceId,
    /// What is probed, each once (many destinations routed through one gateway share it).
    pub items: Vec<(Target, Expected)>,
    /// The destinations reported, each with the item that tests it.
    pub destinations: Vec<Destination>,
    /// Entries that name no host (subdomain wildcards delivered directly).
    pub untestable: u32,
    /// The test-now annotation value being answered, if any.
    pub trigger: Option<String>,
}

/// One destination of a plan.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Destination {
    /// As reported (`partner.example`, `.partner.example`, `[gw.example.net]:587`).
    pub name: String,
    /// Index into [`TestPlan::items`].
    pub item: usize,
    /// The gateway hop tested instead of the destination's own MX hosts.
    pub via: Option<String>,
}

impl TestPlan {
    /// A plan whose destinations are its items, as tested.
    fn direct(id: ResourceId, items: Vec<(Target, Expected)>, untestable: u32) -> TestPlan {
        let destinations = items
            .iter()
            .enumerate()
            .map(|(item, (target, _))| Destination {
                name: target.display(),
                item,
                via: None,
            })
            .collect();
        TestPlan {
            id,
            items,
            destinations,
            untestable,
            trigger: None,
        }
    }

    /// One report per destination from the reports of the items (in item order).
    pub fn expand(&self, reports: &[DestinationReport]) -> Vec<DestinationReport> {
        self.destinations
            .iter()
            .filter_map(|d| {
                let mut r = reports.get(d.item)?.clone();
                r.destination.clone_from(&d.name);
                r.via.clone_from(&d.via);
                Some(r)
            })
            .collect()
    }
}

/// How a destination's mail is tested: on the hop it takes, against what is required there.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RoutedTest {
    pub target: Target,
    pub expected: Expected,
    /// `[gw.example.net]:587 (OutboundGateway/gw)` when the hop is a gateway.
    pub via: Option<String>,
}

/// The test of mail to `recipient` under `policy`: the gateway its route goes through (as
/// the relay connects to it), or the recipient domain's MX hosts; the requirement is what
/// the relay enforces on that hop, made stricter by `own` (the tested policy's, which a
/// Monitor policy does not enforce yet). `None`: a subdomain wildcard delivered directly
/// names no host to test.
pub fn routed_test(
    policy: &EffectivePolicy,
    recipient: &Entry,
    own: Option<Requirement>,
) -> Option<RoutedTest> {
    let delivery = policy.delivery(recipient);
    let required = match (own, delivery.required) {
        (Some(a), Some(b)) => Some(a.strictest(b)),
        (a, b) => a.or(b),
    };
    let expected = required.map_or_else(Expected::default, Expected::from);
    match delivery.hop {
        Some(hop) => Some(RoutedTest {
            target: Target::Host {
                host: hop.host.to_string(),
                port: hop.port,
                mx_lookup: hop.mx_lookup && !hop.host.is_ip(),
            },
            expected,
            via: Some(format!(
                "{} (OutboundGateway/{})",
                hop.nexthop(),
                hop.gateway
            )),
        }),
        None if recipient.is_subdomains() => None,
        None => Some(RoutedTest {
            target: Target::Domain(recipient.domain().to_string()),
            expected,
            via: None,
        }),
    }
}

/// A namespace's resources for planning, with its effective policy evaluated on first use
/// (only when a TlsCompliance test is due, so idle ticks cost no evaluation).
pub struct PlanInputs<'a> {
    pub inputs: &'a Inputs,
    policy: std::cell::OnceCell<EffectivePolicy>,
}

impl<'a> PlanInputs<'a> {
    pub fn new(inputs: &'a Inputs) -> PlanInputs<'a> {
        PlanInputs {
            inputs,
            policy: std::cell::OnceCell::new(),
        }
    }

    pub fn policy(&self) -> &EffectivePolicy {
        self.policy
            .get_or_init(|| crate::policy::evaluate(self.inputs).policy)
    }
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

/// The plan for a TlsCompliance, if a test is due: every outbound destination domain (an
/// address's domain, a listed domain, a subdomain wildcard routed through a gateway) tested
/// on the hop its mail takes under `policy` (see [`routed_test`]).
pub fn compliance_plan(p: &TlsCompliance, ns: &PlanInputs, now: Timestamp) -> Option<TestPlan> {
    if !p.spec.direction.outbound() {
        return None;
    }
    let last = p.status.as_ref().and_then(|s| s.last_test.as_ref());
    let trigger = due(annotation(p), &p.spec.test, last, now, &schedule_key(p))?;
    let own = Requirement::new(
        p.spec.require_ca_signed,
        p.spec.validate_hostname,
        p.spec.min_tls_version,
    );
    // One test per destination name: an address stands for its domain (the first entry of
    // a domain decides its route), a wildcard for itself.
    let mut tests: BTreeMap<String, RoutedTest> = BTreeMap::new();
    let mut untestable = 0;
    let policy = ns.policy();
    for r in &p.spec.address_lists {
        for list in ns
            .inputs
            .address_lists
            .iter()
            .filter(|l| l.name_any() == r.name)
        {
            for entry in list_entries(list) {
                let name = if entry.is_subdomains() {
                    entry.as_str().to_string()
                } else {
                    entry.domain().to_string()
                };
                if tests.contains_key(&name) {
                    continue;
                }
                match routed_test(policy, &entry, Some(own)) {
                    Some(test) => {
                        tests.insert(name, test);
                    }
                    None => untestable += 1,
                }
            }
        }
    }
    let mut items: Vec<(Target, Expected)> = Vec::new();
    let mut index: HashMap<(Target, Expected), usize> = HashMap::new();
    let mut destinations = Vec::new();
    for (name, test) in tests {
        let item = *index
            .entry((test.target, test.expected))
            .or_insert_with_key(|key| {
                items.push(key.clone());
                items.len() - 1
            });
        destinations.push(Destination {
            name,
            item,
            via: test.via,
        });
    }
    Some(TestPlan {
        id: ResourceId::new(Kind::TlsCompliance, p.name_any()),
        items,
        destinations,
        untestable,
        trigger,
    })
}

/// What a gateway's test connects to: its host as the relay uses it (an IP never by MX).
pub fn gateway_target(host: &crate::policy::Host, port: u16, mx_lookup: bool) -> Target {
    Target::Host {
        host: host.to_string(),
        port,
        mx_lookup: mx_lookup && !host.is_ip(),
    }
}

/// The plan for an OutboundGateway, if a test is due: the gateway host as the relay uses it.
pub fn gateway_plan(g: &OutboundGateway, now: Timestamp) -> Option<TestPlan> {
    let last = g.status.as_ref().and_then(|s| s.last_test.as_ref());
    let trigger = due(annotation(g), &g.spec.test, last, now, &schedule_key(g))?;
    let host = crate::policy::Host::parse(&g.spec.host).ok()?;
    let target = gateway_target(&host, g.spec.port, g.spec.mx_lookup);
    let mut plan = TestPlan::direct(
        ResourceId::new(Kind::OutboundGateway, g.name_any()),
        vec![(target, Expected::for_gateway(&g.spec.tls))],
        0,
    );
    plan.trigger = trigger;
    Some(plan)
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

    fn namespace(gateways: Vec<OutboundGateway>, policies: Vec<TlsCompliance>) -> Inputs {
        Inputs {
            namespace: "ns".into(),
            address_lists: vec![
                crate::api::AddressList::with_entries(
                    "partners",
                    &[
                        "a.example",
                        "bob@b.example",
                        "carol@b.example",
                        ".c.example",
                    ],
                ),
                crate::api::AddressList::with_entries("routed", &["b.example", ".c.example"]),
            ],
            policies,
            gateways,
        }
    }

    fn gateway(applies_to: crate::api::AppliesTo, ca_signed: bool) -> OutboundGateway {
        let mut g = OutboundGateway::all_mail("gw", "gw.example.net");
        g.spec.port = 587;
        g.spec.applies_to = applies_to;
        g.spec.tls.require = true;
        g.spec.tls.require_ca_signed = ca_signed;
        if applies_to == crate::api::AppliesTo::Recipients {
            g.spec.address_lists = vec![crate::api::LocalRef {
                name: "routed".into(),
            }];
        }
        g
    }

    fn plan(inputs: &Inputs, name: &str) -> TestPlan {
        let p = inputs
            .policies
            .iter()
            .find(|p| p.name_any() == name)
            .expect("policy");
        compliance_plan(p, &PlanInputs::new(inputs), at("2026-01-01T00:00:00Z")).expect("due")
    }

    fn gw_target() -> Target {
        Target::Host {
            host: "gw.example.net".into(),
            port: 587,
            mx_lookup: false,
        }
    }

    #[test]
    fn destinations_are_tested_on_the_hop_their_mail_takes() {
        let mut encrypt = TlsCompliance::outbound_verified("encrypt", &["partners"]);
        encrypt.spec.require_ca_signed = false;
        encrypt.spec.validate_hostname = false;
        let inputs = namespace(
            vec![gateway(crate::api::AppliesTo::Recipients, true)],
            vec![encrypt],
        );
        let plan = plan(&inputs, "encrypt");
        let via = Some("[gw.example.net]:587 (OutboundGateway/gw)".to_string());
        // The gateway demands a CA-signed certificate, stricter than the policy's own.
        let routed = Expected {
            require_tls: true,
            require_ca_signed: true,
            validate_hostname: false,
            min_tls: Default::default(),
        };
        let direct = Expected {
            require_ca_signed: false,
            ..routed
        };
        assert_eq!(
            plan.items,
            [
                (gw_target(), routed),
                (Target::Domain("a.example".into()), direct),
            ]
        );
        // b.example (two addresses, one destination) and the routed wildcard share the
        // gateway's one probe.
        assert_eq!(
            plan.destinations,
            [
                Destination {
                    name: ".c.example".into(),
                    item: 0,
                    via: via.clone()
                },
                Destination {
                    name: "a.example".into(),
                    item: 1,
                    via: None
                },
                Destination {
                    name: "b.example".into(),
                    item: 0,
                    via
                },
            ]
        );
        assert_eq!(plan.untestable, 0);

        let reports = [
            DestinationReport::new(&plan.items[0].0, &plan.items[0].1),
            DestinationReport::new(&plan.items[1].0, &plan.items[1].1),
        ];
        let expanded: Vec<(String, Option<String>)> = plan
            .expand(&reports)
            .into_iter()
            .map(|r| (r.destination, r.via))
            .collect();
        assert_eq!(expanded[0].0, ".c.example");
        assert_eq!(expanded[1], ("a.example".into(), None));
        assert_eq!(expanded.len(), 3);
    }

    #[test]
    fn a_monitor_policy_is_tested_against_its_own_requirement_on_the_hop() {
        let mut monitor = TlsCompliance::outbound_verified("monitor", &["routed"]);
        monitor.spec.enforcement = crate::api::Enforcement::Monitor;
        let inputs = namespace(
            vec![gateway(crate::api::AppliesTo::AllMail, false)],
            vec![monitor],
        );
        let plan = plan(&inputs, "monitor");
        // Nothing enforced, the gateway only needs TLS: the policy's own verified level is
        // what it would require once enforced.
        assert_eq!(
            plan.items,
            [(
                gw_target(),
                Expected::from(Requirement::new(true, true, Default::default()))
            )]
        );
        assert_eq!(plan.destinations.len(), 2);
        assert_eq!(plan.untestable, 0);
    }

    #[test]
    fn a_wildcard_delivered_directly_is_untestable() {
        let inputs = namespace(
            vec![],
            vec![TlsCompliance::outbound_verified("p", &["partners"])],
        );
        let plan = plan(&inputs, "p");
        assert_eq!(plan.untestable, 1);
        let names: Vec<&str> = plan.destinations.iter().map(|d| d.name.as_str()).collect();
        assert_eq!(names, ["a.example", "b.example"]);
        assert!(plan.destinations.iter().all(|d| d.via.is_none()));
        assert_eq!(
            plan.items[1],
            (
                Target::Domain("b.example".into()),
                Expected::from(Requirement::new(true, true, Default::default()))
            )
        );
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
