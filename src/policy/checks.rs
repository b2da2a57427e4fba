//! Checks that the API server does with schema and CEL, repeated on values because files
//! reach the engine without a server.

use super::entry;
use super::{Hop, Host, Problem, Requirement};
use crate::api::{
    AppliesTo, Direction, INBOUND_MESSAGE, LISTS_MESSAGE, OutboundGateway, Scope, TestSpec,
    TlsCompliance, UNLISTED_MESSAGE,
};
use kube::ResourceExt;
use std::time::Duration;

pub(super) fn check_policy(p: &TlsCompliance) -> Vec<Problem> {
    let mut problems = Vec::new();
    let spec = &p.spec;
    if spec.address_lists.is_empty() == (spec.scope == Scope::Listed) {
        problems.push(problem("spec.addressLists", LISTS_MESSAGE));
    }
    let outbound_only = spec.outbound_only_fields();
    // An Unlisted policy sets which mechanisms are honoured, and nothing else.
    let requirements = outbound_only.iter().any(|f| *f != "mechanisms");
    if spec.scope == Scope::Unlisted && (spec.direction != Direction::Outbound || requirements) {
        problems.push(problem("spec.scope", UNLISTED_MESSAGE));
    }
    if spec.validate_hostname && !spec.require_ca_signed {
        problems.push(problem(
            "spec.validateHostname",
            "validateHostname requires requireCASigned: a host name is only checked on a CA-signed certificate",
        ));
    }
    if spec.direction == Direction::Inbound {
        for field in outbound_only {
            problems.push(problem(&format!("spec.{field}"), INBOUND_MESSAGE));
        }
    }
    problems.extend(check_test(&spec.test));
    problems
}

pub(super) fn check_test(test: &TestSpec) -> Option<Problem> {
    parse_interval(&test.interval)
        .err()
        .map(|m| problem("spec.test.interval", &m))
}

pub(super) fn problem(field: &str, message: &str) -> Problem {
    Problem {
        field: field.into(),
        message: message.into(),
    }
}

/// A test interval: one or more `<number><h|m|s>` parts, at least one minute, at most 30 days.
pub fn parse_interval(text: &str) -> Result<Duration, String> {
    let bad = || {
        format!(
            "'{}' is not a duration like 6h, 30m or 1h30m",
            entry::display_raw(text)
        )
    };
    if text.is_empty() {
        return Err(bad());
    }
    let mut total: u64 = 0;
    let mut number = String::new();
    for c in text.chars() {
        if c.is_ascii_digit() {
            number.push(c);
            continue;
        }
        let unit = match c {
            'h' => 3600,
            'm' => 60,
            's' => 1,
            _ => return Err(bad()),
        };
        let n: u64 = number.parse().map_err(|_| bad())?;
        total = n
            .checked_mul(unit)
            .and_then(|v| total.checked_add(v))
            .ok_or_else(bad)?;
        number.clear();
    }
    if !number.is_empty() {
        return Err(bad());
    }
    if total < 60 {
        return Err(format!("interval {text} is shorter than 1m"));
    }
    if total > 30 * 24 * 3600 {
        return Err(format!("interval {text} is longer than 30 days (720h)"));
    }
    Ok(Duration::from_secs(total))
}

pub(super) fn gateway_hop(gw: &OutboundGateway) -> Result<Hop, Vec<Problem>> {
    let spec = &gw.spec;
    let mut problems = Vec::new();
    let host = Host::parse(&spec.host)
        .map_err(|m| problems.push(problem("spec.host", &m)))
        .ok();
    if spec.port == 0 {
        problems.push(problem("spec.port", "must be between 1 and 65535"));
    }
    let tls = &spec.tls;
    if tls.require_ca_signed && !tls.require {
        problems.push(problem(
            "spec.tls.requireCASigned",
            "requireCASigned requires require: true",
        ));
    }
    if tls.validate_hostname && !tls.require_ca_signed {
        problems.push(problem(
            "spec.tls.validateHostname",
            "validateHostname requires requireCASigned: true",
        ));
    }
    if tls.validate_hostname && host.as_ref().is_some_and(Host::is_ip) {
        problems.push(problem(
            "spec.tls.validateHostname",
            "an IP address has no host name to validate; use a DNS name or turn validateHostname off",
        ));
    }
    match (spec.applies_to, spec.address_lists.is_empty()) {
        (AppliesTo::Recipients, true) => problems.push(problem(
            "spec.addressLists",
            "appliesTo: Recipients needs at least one entry in addressLists",
        )),
        (AppliesTo::AllMail | AppliesTo::SecureTransportRequired, false) => problems.push(problem(
            "spec.addressLists",
            "addressLists is only used with appliesTo: Recipients",
        )),
        _ => {}
    }
    problems.extend(check_test(&spec.test));
    match host {
        Some(host) if problems.is_empty() => Ok(Hop {
            gateway: gw.name_any(),
            host,
            port: spec.port,
            mx_lookup: spec.mx_lookup,
            tls: tls.require.then(|| {
                Requirement::new(
                    tls.require_ca_signed,
                    tls.validate_hostname,
                    tls.min_tls_version,
                )
            }),
        }),
        _ => Err(problems),
    }
}

/// Oldest first by creation time, then name; resources without a creation time (files)
/// come after those with one, ordered by name.
pub(super) fn age_key<K: kube::Resource>(
    r: &K,
) -> (
    bool,
    Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>,
    String,
) {
    let created = r.meta().creation_timestamp.clone();
    (
        created.is_none(),
        created,
        r.meta().name.clone().unwrap_or_default(),
    )
}

#[cfg(test)]
mod tests {
    use super::parse_interval;
    use std::time::Duration;

    #[test]
    fn intervals() {
        assert_eq!(parse_interval("6h"), Ok(Duration::from_secs(6 * 3600)));
        assert_eq!(parse_interval("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_interval("90s"), Ok(Duration::from_secs(90)));
        for bad in [
            "",
            "6",
            "h",
            "1d",
            "30s",
            "721h",
            "99999999999999999999h",
            "1h 2m",
        ] {
            assert!(parse_interval(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn inbound_policies_set_no_outbound_options() {
        use crate::api::{Direction, TlsCompliance};
        let policy = |direction: &str, extra: &str| -> TlsCompliance {
            serde_norway::from_str(&format!(
                "apiVersion: mailtls.io/v1alpha1\nkind: TlsCompliance\nmetadata: {{name: p}}\n\
                 spec: {{direction: {direction}, addressLists: [{{name: l}}]{extra}}}\n"
            ))
            .expect("policy")
        };
        let fields = |p: &TlsCompliance| -> Vec<String> {
            super::check_policy(p)
                .into_iter()
                .map(|p| p.field)
                .collect()
        };
        let all = ", requireCASigned: true, validateHostname: true, minTlsVersion: '1.3'";
        assert_eq!(
            fields(&policy("Inbound", all)),
            [
                "spec.requireCASigned",
                "spec.validateHostname",
                "spec.minTlsVersion"
            ]
        );
        assert!(fields(&policy("Inbound", ", minTlsVersion: '1.2'")).is_empty());
        assert!(fields(&policy("Both", all)).is_empty());
        assert!(fields(&policy("Outbound", all)).is_empty());
        assert_eq!(policy("Inbound", "").spec.direction, Direction::Inbound);
    }

    #[test]
    fn interval_bounds_are_inclusive() {
        assert_eq!(parse_interval("60s"), Ok(Duration::from_secs(60)));
        assert_eq!(parse_interval("1m"), Ok(Duration::from_secs(60)));
        assert_eq!(parse_interval("720h"), Ok(Duration::from_secs(720 * 3600)));
        assert_eq!(parse_interval("1h30m"), Ok(Duration::from_secs(5400)));
        let short = parse_interval("59s").expect_err("under 1m");
        assert!(short.contains("shorter than 1m"), "{short}");
        let long = parse_interval("720h1s").expect_err("over 720h");
        assert!(long.contains("longer than 30 days"), "{long}");
    }

    #[test]
    fn address_lists_go_with_recipients_only() {
        use crate::api::{AppliesTo, OutboundGateway};
        let gateway = |applies_to: AppliesTo, lists: &[&str]| {
            let yaml = format!(
                "host: gw.example.net\nappliesTo: {applies_to:?}\naddressLists: [{}]",
                lists
                    .iter()
                    .map(|l| format!("{{name: {l}}}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            let spec = serde_norway::from_str(&yaml).expect("spec");
            OutboundGateway::new("gw", spec)
        };
        let fields = |gw: &OutboundGateway| match super::gateway_hop(gw) {
            Ok(_) => Vec::new(),
            Err(problems) => problems.into_iter().map(|p| p.field).collect::<Vec<_>>(),
        };
        assert_eq!(
            fields(&gateway(AppliesTo::Recipients, &["partners"])),
            Vec::<String>::new()
        );
        assert_eq!(
            fields(&gateway(AppliesTo::AllMail, &[])),
            Vec::<String>::new()
        );
        assert_eq!(
            fields(&gateway(AppliesTo::Recipients, &[])),
            ["spec.addressLists"]
        );
        assert_eq!(
            fields(&gateway(AppliesTo::AllMail, &["partners"])),
            ["spec.addressLists"]
        );
        assert_eq!(
            fields(&gateway(AppliesTo::SecureTransportRequired, &["partners"])),
            ["spec.addressLists"]
        );
    }
}
