//! Observed mail into status (pure): the relay pods' per-domain counts summed into each
//! policy whose entries cover the domain and each gateway its mail goes through, the way
//! Postfix routes it (the same lookup as `mailtls explain` and the TLS tests).

use crate::api::{Enforcement, ObservedFailure, ObservedMail};
use crate::observe::{Counts, Failure, PodsObserved};
use crate::policy::{EffectivePolicy, Inputs, Kind, Level, Requirement, ResourceId};
use kube::ResourceExt;
use std::collections::BTreeMap;

/// `status.observed` of every outbound TlsCompliance and every gateway of the namespace.
pub fn attribute(
    inputs: &Inputs,
    policy: &EffectivePolicy,
    seen: &PodsObserved,
) -> BTreeMap<ResourceId, ObservedMail> {
    let empty = ObservedMail {
        window: format!("{}h", seen.hours),
        relay_pods: seen.pods,
        ..Default::default()
    };
    // What each Monitor policy would require once enforced.
    let mut monitors: BTreeMap<&str, Requirement> = BTreeMap::new();
    let mut out = BTreeMap::new();
    for p in &inputs.policies {
        if !p.spec.direction.outbound() {
            continue;
        }
        let mut start = empty.clone();
        if p.spec.enforcement == Enforcement::Monitor {
            start.would_fail = Some(0);
            monitors.insert(
                p.metadata.name.as_deref().unwrap_or_default(),
                Requirement::new(
                    p.spec.require_ca_signed,
                    p.spec.validate_hostname,
                    p.spec.min_tls_version,
                ),
            );
        }
        out.insert(ResourceId::new(Kind::TlsCompliance, p.name_any()), start);
    }
    for g in &inputs.gateways {
        out.insert(
            ResourceId::new(Kind::OutboundGateway, g.name_any()),
            empty.clone(),
        );
    }
    for (domain, (counts, failure)) in &seen.domains {
        let Ok(entry) = crate::policy::parse_entry(domain) else {
            continue; // `(other domains)`, or anything not a domain
        };
        let delivery = policy.delivery(&entry);
        let mut add = |id: ResourceId, would_fail: Option<Requirement>| {
            if let Some(o) = out.get_mut(&id) {
                add_counts(o, counts, failure.as_ref());
                if let (Some(n), Some(r)) = (o.would_fail.as_mut(), would_fail) {
                    *n = n.saturating_add(would_fail_count(counts, r));
                }
            }
        };
        for name in delivery.rule.iter().flat_map(|r| r.policies.iter()) {
            let monitored = monitors.get(&**name).copied();
            add(ResourceId::new(Kind::TlsCompliance, &**name), monitored);
        }
        if let Some(hop) = delivery.hop {
            add(ResourceId::new(Kind::OutboundGateway, &hop.gateway), None);
        }
    }
    out
}

fn u32_of(n: u64) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

fn add_counts(o: &mut ObservedMail, c: &Counts, failure: Option<&Failure>) {
    let [anonymous, untrusted, trusted, verified] = c.by_trust.map(u32_of);
    o.verified = o.verified.saturating_add(verified);
    o.trusted = o.trusted.saturating_add(trusted);
    o.untrusted = o
        .untrusted
        .saturating_add(untrusted)
        .saturating_add(anonymous);
    o.plaintext = o.plaintext.saturating_add(u32_of(c.plaintext));
    o.tls_bounced = o.tls_bounced.saturating_add(u32_of(c.tls_bounced));
    o.tls_deferred = o.tls_deferred.saturating_add(u32_of(c.tls_deferred));
    if let Some(f) = failure {
        let time = crate::probe::rfc3339(f.at);
        // RFC 3339 in UTC sorts as time.
        if o.last_tls_failure.as_ref().is_none_or(|l| l.time < time) {
            o.last_tls_failure = Some(ObservedFailure {
                time,
                domain: f.domain.clone(),
                hop: f.hop.clone(),
                reason: f.reason.clone(),
                bounced: f.bounced,
            });
        }
    }
}

/// Delivered messages a requirement would have refused: every plaintext one, and with a
/// CA-signed requirement those whose chain was not trusted. The host name is not in the log
/// where it was not enforced, so this is a lower bound.
fn would_fail_count(c: &Counts, r: Requirement) -> u32 {
    let [anonymous, untrusted, _, _] = c.by_trust;
    let untrusted = if r.level >= Level::CaSigned {
        anonymous + untrusted
    } else {
        0
    };
    u32_of(c.plaintext + untrusted)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{AddressList, AppliesTo, LocalRef, OutboundGateway, TlsCompliance};

    fn counts(verified: u64, untrusted: u64, plaintext: u64, bounced: u64) -> Counts {
        Counts {
            by_trust: [0, untrusted, 0, verified],
            plaintext,
            tls_bounced: bounced,
            ..Default::default()
        }
    }

    fn failure(at: i64, domain: &str) -> Failure {
        Failure {
            at,
            queue_id: "Q".into(),
            domain: domain.into(),
            hop: "mx[192.0.2.1]:25".into(),
            reason: "Server certificate not verified".into(),
            bounced: true,
        }
    }

    #[test]
    fn counts_go_to_the_policies_covering_a_domain_and_the_gateway_it_goes_through() {
        let mut monitor = TlsCompliance::outbound_verified("monitor", &["watched"]);
        monitor.spec.enforcement = Enforcement::Monitor;
        let mut gw = OutboundGateway::all_mail("gw", "gw.example.net");
        gw.spec.applies_to = AppliesTo::Recipients;
        gw.spec.address_lists = vec![LocalRef {
            name: "routed".into(),
        }];
        let inputs = Inputs {
            namespace: "ns".into(),
            address_lists: vec![
                AddressList::with_entries("partners", &[".partner.test", "bank.test"]),
                AddressList::with_entries("watched", &["watched.test"]),
                AddressList::with_entries("routed", &["bank.test"]),
            ],
            policies: vec![
                TlsCompliance::outbound_verified("partners", &["partners"]),
                monitor,
            ],
            gateways: vec![gw],
        };
        let policy = crate::policy::evaluate(&inputs).policy;
        let seen = PodsObserved {
            hours: 24,
            pods: 2,
            domains: BTreeMap::from([
                (
                    "mx.partner.test".into(),
                    (counts(3, 0, 0, 1), Some(failure(100, "mx.partner.test"))),
                ),
                (
                    "bank.test".into(),
                    (counts(2, 0, 0, 1), Some(failure(200, "bank.test"))),
                ),
                ("watched.test".into(), (counts(1, 4, 5, 0), None)),
                ("elsewhere.test".into(), (counts(0, 0, 9, 0), None)),
                ("(other domains)".into(), (counts(0, 0, 7, 0), None)),
            ]),
        };
        let by = attribute(&inputs, &policy, &seen);
        let partners = &by[&ResourceId::new(Kind::TlsCompliance, "partners")];
        assert_eq!(
            (partners.verified, partners.tls_bounced, partners.plaintext),
            (5, 2, 0)
        );
        assert_eq!((partners.window.as_str(), partners.relay_pods), ("24h", 2));
        assert_eq!(partners.would_fail, None, "an enforced policy");
        let last = partners.last_tls_failure.as_ref().expect("failure");
        assert_eq!(last.domain, "bank.test", "the most recent");
        let watched = &by[&ResourceId::new(Kind::TlsCompliance, "monitor")];
        assert_eq!(
            (watched.verified, watched.untrusted, watched.plaintext),
            (1, 4, 5)
        );
        assert_eq!(watched.would_fail, Some(9), "plaintext and untrusted");
        let gw = &by[&ResourceId::new(Kind::OutboundGateway, "gw")];
        assert_eq!((gw.verified, gw.tls_bounced), (2, 1), "bank.test only");
        assert_eq!(by.len(), 3);
    }

    #[test]
    fn an_encrypt_only_monitor_fails_plaintext_only() {
        let c = counts(1, 4, 5, 0);
        assert_eq!(
            would_fail_count(&c, Requirement::new(false, false, Default::default())),
            5
        );
        assert_eq!(
            would_fail_count(&c, Requirement::new(true, true, Default::default())),
            9
        );
    }
}
