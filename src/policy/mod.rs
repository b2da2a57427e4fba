//! The policy engine (pure): normalise address lists, resolve references, merge overlapping
//! policies strictest-wins, pick routes most-specific-wins, and detect conflicts.
//!
//! Input is the resources of one namespace; output is an [`EffectivePolicy`] for the renderer
//! and [`Findings`] per resource for status. Nothing here fails: every problem is a finding,
//! and a bad resource never stops the others from rendering.

pub mod entry;
pub mod host;
mod model;

pub use entry::{Entry, parse_entry};
pub use host::Host;
pub use model::*;

use crate::api::{
    AddressList, AppliesTo, Direction, Enforcement, OutboundGateway, TestSpec, TlsCompliance,
};
use kube::ResourceExt;
use rustc_hash::{FxHashMap as HashMap, FxHashSet as HashSet};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

/// Most entries one AddressList may hold (entries and bulk together).
pub const MAX_ENTRIES: usize = 100_000;
/// Longest `spec.bulk` text.
pub const MAX_BULK_CHARS: usize = 1_000_000;
/// Invalid entries listed one by one in findings; the rest are only counted.
pub const MAX_LISTED_INVALID: usize = 50;

/// The resources of one namespace.
#[derive(Clone, Debug, Default)]
pub struct Inputs {
    pub namespace: String,
    pub address_lists: Vec<AddressList>,
    pub policies: Vec<TlsCompliance>,
    pub gateways: Vec<OutboundGateway>,
}

/// The engine's answer for one namespace.
#[derive(Clone, Debug, Default)]
pub struct Evaluation {
    pub policy: EffectivePolicy,
    pub findings: Findings,
}

/// A normalised address list.
struct List {
    entries: Vec<Entry>,
}

/// Evaluate the resources of one namespace.
pub fn evaluate(inputs: &Inputs) -> Evaluation {
    let mut findings = Findings::default();
    let lists = normalize_lists(&inputs.address_lists, &mut findings);

    let mut policy = EffectivePolicy {
        namespace: inputs.namespace.clone(),
        ..Default::default()
    };

    // Gateways, oldest first: the order that decides every conflict between them.
    let mut gateways: Vec<&OutboundGateway> = inputs.gateways.iter().collect();
    gateways.sort_by_key(|g| age_key(*g));
    let mut usable = Vec::new();
    for gw in gateways {
        let id = ResourceId::new(Kind::OutboundGateway, gw.name_any());
        match gateway_hop(gw) {
            Ok(hop) => {
                findings.get_mut(&id);
                policy.gateways.insert(hop.gateway.clone(), hop);
                usable.push(gw);
            }
            Err(problems) => findings.get_mut(&id).errors.extend(problems),
        }
    }
    policy.relayhost = single_winner(
        &usable,
        AppliesTo::AllMail,
        "the AllMail gateway (relayhost)",
        &mut findings,
    );
    policy.secure_route = single_winner(
        &usable,
        AppliesTo::SecureTransportRequired,
        "the SecureTransportRequired gateway (alternate secure route)",
        &mut findings,
    );
    let routes = recipient_routes(&usable, &lists, &mut findings);

    // TLS entries of every usable policy, merged per entry.
    let mut policies: Vec<&TlsCompliance> = inputs.policies.iter().collect();
    policies.sort_by_key(|p| p.name_any());
    let mut outbound: HashMap<Entry, EntryTls> = HashMap::default();
    let mut inbound: HashMap<Entry, InboundRule> = HashMap::default();
    for p in policies {
        let id = ResourceId::new(Kind::TlsCompliance, p.name_any());
        let problems = check_policy(p);
        if !problems.is_empty() {
            findings.get_mut(&id).errors.extend(problems);
            continue;
        }
        let entries = referenced_entries(&id, &p.spec.address_lists, &lists, &mut findings);
        let f = findings.get_mut(&id);
        f.matched = Some(count_kinds(&entries));
        f.rendered = true;
        let name: Arc<str> = Arc::from(p.name_any());
        let enforce = p.spec.enforcement == Enforcement::Enforce;
        let requirement = Requirement::new(
            p.spec.require_ca_signed,
            p.spec.validate_hostname,
            p.spec.min_tls_version,
        );
        for entry in entries {
            if p.spec.direction.outbound() {
                let tls = match outbound.get_mut(entry.as_str()) {
                    Some(t) => t,
                    None => outbound.entry(entry.clone()).or_default(),
                };
                add_name(&mut tls.policies, &name);
                if enforce {
                    let e = Enforced {
                        requirement,
                        on_failure: p.spec.on_failure,
                    };
                    tls.enforced = fold(tls.enforced, e, Enforced::strictest);
                } else {
                    tls.monitored = fold(tls.monitored, requirement, Requirement::strictest);
                }
            }
            if p.spec.direction.inbound() {
                let rule = match inbound.get_mut(entry.as_str()) {
                    Some(r) => r,
                    None => inbound.entry(entry.clone()).or_default(),
                };
                add_name(&mut rule.policies, &name);
                rule.enforced |= enforce;
                rule.monitored |= !enforce;
            }
        }
    }

    let mut inbound: Vec<(Entry, InboundRule)> = inbound.into_iter().collect();
    inbound.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    policy.inbound = inbound.into_iter().collect();
    resolve_outbound(&mut policy, &outbound, &routes);
    record_gateway_use(&policy, &routes, &mut findings);
    Evaluation { policy, findings }
}

/// Per-entry TLS, before the merge with covering entries.
#[derive(Default)]
struct EntryTls {
    enforced: Option<Enforced>,
    monitored: Option<Requirement>,
    policies: Names,
}

/// Add a name to a sorted, duplicate-free list.
fn add_name(names: &mut Names, name: &Arc<str>) {
    if let Err(at) = names.binary_search(name) {
        names.insert(at, name.clone());
    }
}

/// For every key any policy or route names, merge all entries covering it (strictest wins)
/// and pick its route (most specific wins), so the key Postfix finds first carries the
/// complete answer.
fn resolve_outbound(
    policy: &mut EffectivePolicy,
    tls: &HashMap<Entry, EntryTls>,
    routes: &HashMap<Entry, String>,
) {
    let mut keys: Vec<&Entry> = tls.keys().chain(routes.keys().filter(|k| !tls.contains_key(k.as_str()))).collect();
    keys.sort_unstable();
    let mut rules = Vec::with_capacity(keys.len());
    for key in keys {
        let mut rule = OutboundRule {
            enforced: None,
            monitored: None,
            route: Route::Direct,
            policies: Vec::new(),
        };
        for k in key.lookup_keys() {
            if let Some(t) = tls.get(k) {
                if let Some(e) = t.enforced {
                    rule.enforced = fold(rule.enforced, e, Enforced::strictest);
                }
                if let Some(m) = t.monitored {
                    rule.monitored = fold(rule.monitored, m, Requirement::strictest);
                }
                if rule.policies.is_empty() {
                    rule.policies = t.policies.clone();
                } else {
                    t.policies.iter().for_each(|n| add_name(&mut rule.policies, n));
                }
            }
        }
        let recipients = key.lookup_keys().find_map(|k| {
            routes.get_key_value(k).map(|(entry, g)| Route::Recipients {
                gateway: g.clone(),
                entry: entry.clone(),
            })
        });
        rule.route = match (recipients, &policy.secure_route, rule.enforced) {
            (Some(r), _, _) => r,
            (None, Some(secure), Some(_)) => Route::SecureRoute(secure.clone()),
            (None, _, _) => policy.default_route(),
        };
        rules.push((key.clone(), rule));
    }
    // Keys are sorted, so this is a bulk build rather than one insert per key.
    policy.outbound = rules.into_iter().collect();
}

/// Gateways are used by the policies whose mail they carry, and Recipients gateways by
/// their lists.
fn record_gateway_use(
    policy: &EffectivePolicy,
    routes: &HashMap<Entry, String>,
    findings: &mut Findings,
) {
    let mut used: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for rule in policy.outbound.values() {
        let gateway = rule.route.gateway().or(policy.relayhost.as_deref());
        if let Some(g) = gateway {
            used.entry(g).or_default().extend(rule.policies.iter().map(|n| &**n));
        }
    }
    for (gateway, names) in used {
        let f = findings.get_mut(&ResourceId::new(Kind::OutboundGateway, gateway));
        f.used_by.extend(
            names
                .into_iter()
                .map(|n| ResourceId::new(Kind::TlsCompliance, n)),
        );
    }
    for gateway in routes.values().collect::<BTreeSet<_>>() {
        findings
            .get_mut(&ResourceId::new(Kind::OutboundGateway, gateway.clone()))
            .rendered = true;
    }
    for name in [&policy.relayhost, &policy.secure_route]
        .into_iter()
        .flatten()
    {
        findings
            .get_mut(&ResourceId::new(Kind::OutboundGateway, name.clone()))
            .rendered = true;
    }
}

fn normalize_lists(lists: &[AddressList], findings: &mut Findings) -> BTreeMap<String, List> {
    let mut out = BTreeMap::new();
    for list in lists {
        let id = ResourceId::new(Kind::AddressList, list.name_any());
        let (normalized, stats, errors) = normalize_list(list);
        let f = findings.get_mut(&id);
        f.list = Some(stats);
        f.errors.extend(errors);
        out.insert(list.name_any(), normalized);
    }
    out
}

/// Normalise one list: parse every entry, drop and count duplicates, collect invalid ones.
fn normalize_list(list: &AddressList) -> (List, ListStats, Vec<Problem>) {
    let mut stats = ListStats::default();
    let mut errors = Vec::new();
    let mut seen: HashSet<Entry> = HashSet::default();
    let mut add = |raw: &str, field: &dyn Fn() -> String, stats: &mut ListStats| match parse_entry(raw) {
        Ok(entry) => {
            if !seen.insert(entry) {
                stats.duplicates += 1;
            }
        }
        Err(reason) => {
            stats.invalid_total += 1;
            if stats.invalid.len() < MAX_LISTED_INVALID {
                let shown = entry::display_raw(raw);
                stats.invalid.push((
                    shown.clone(),
                    Problem {
                        field: field(),
                        message: format!("'{shown}': {reason}"),
                    },
                ));
            }
        }
    };
    let spec = &list.spec;
    for (i, raw) in spec.entries.iter().enumerate() {
        add(raw, &|| format!("spec.entries[{i}]"), &mut stats);
    }
    if let Some(bulk) = &spec.bulk {
        if bulk.chars().count() > MAX_BULK_CHARS {
            errors.push(Problem {
                field: "spec.bulk".into(),
                message: format!(
                    "is longer than {MAX_BULK_CHARS} characters; split it into several AddressLists"
                ),
            });
        } else {
            for (i, raw) in entry::split_bulk(bulk).enumerate() {
                add(raw, &|| format!("spec.bulk (item {})", i + 1), &mut stats);
            }
        }
    }
    if seen.len() > MAX_ENTRIES {
        errors.push(Problem {
            field: "spec.entries".into(),
            message: format!(
                "{} entries; at most {MAX_ENTRIES} per AddressList",
                seen.len()
            ),
        });
        seen.clear();
    }
    let mut entries: Vec<Entry> = seen.into_iter().collect();
    entries.sort_unstable();
    let (addresses, domains) = count_kinds(&entries);
    stats.addresses = addresses;
    stats.domains = domains;
    (List { entries }, stats, errors)
}

/// The normalised, deduplicated entries of one list (invalid ones left out).
pub fn list_entries(list: &AddressList) -> Vec<Entry> {
    normalize_list(list).0.entries
}

fn count_kinds<E: std::borrow::Borrow<Entry>>(entries: &[E]) -> (u64, u64) {
    let addresses = entries.iter().filter(|e| e.borrow().is_address()).count() as u64;
    (addresses, entries.len() as u64 - addresses)
}

/// The entries of the referenced lists, deduplicated; a missing list is an error on the
/// referrer, and every list found records who uses it.
fn referenced_entries<'a>(
    id: &ResourceId,
    refs: &[crate::api::LocalRef],
    lists: &'a BTreeMap<String, List>,
    findings: &mut Findings,
) -> Vec<&'a Entry> {
    let mut entries: Vec<&Entry> = Vec::new();
    for (i, r) in refs.iter().enumerate() {
        match lists.get(&r.name) {
            Some(list) => {
                entries.extend(list.entries.iter());
                findings
                    .get_mut(&ResourceId::new(Kind::AddressList, r.name.clone()))
                    .used_by
                    .insert(id.clone());
            }
            None => findings.get_mut(id).errors.push(Problem {
                field: format!("spec.addressLists[{i}].name"),
                message: format!(
                    "AddressList '{}' does not exist in this namespace",
                    entry::display_raw(&r.name)
                ),
            }),
        }
    }
    if refs.len() > 1 {
        entries.sort_unstable();
        entries.dedup();
    }
    entries
}

fn check_policy(p: &TlsCompliance) -> Vec<Problem> {
    let mut problems = Vec::new();
    let spec = &p.spec;
    if spec.address_lists.is_empty() {
        problems.push(problem(
            "spec.addressLists",
            "needs at least one AddressList",
        ));
    }
    if spec.validate_hostname && !spec.require_ca_signed {
        problems.push(problem(
            "spec.validateHostname",
            "validateHostname requires requireCASigned: a host name is only checked on a CA-signed certificate",
        ));
    }
    if spec.direction == Direction::Inbound && (spec.require_ca_signed || spec.validate_hostname) {
        // Not an error: outbound options simply do not apply to inbound mail.
    }
    problems.extend(check_test(&spec.test));
    problems
}

fn check_test(test: &TestSpec) -> Option<Problem> {
    parse_interval(&test.interval)
        .err()
        .map(|m| problem("spec.test.interval", &m))
}

fn problem(field: &str, message: &str) -> Problem {
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

fn gateway_hop(gw: &OutboundGateway) -> Result<Hop, Vec<Problem>> {
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
    if spec.validate_hostname_on_ip(host.as_ref()) {
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

impl crate::api::OutboundGatewaySpec {
    fn validate_hostname_on_ip(&self, host: Option<&Host>) -> bool {
        self.tls.validate_hostname && host.is_some_and(Host::is_ip)
    }
}

/// Oldest first by creation time, then name; resources without a creation time (files)
/// come after those with one, ordered by name.
fn age_key<K: kube::Resource>(
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

/// The oldest usable gateway of a kind that may exist only once; the others are in conflict.
fn single_winner(
    gateways: &[&OutboundGateway],
    applies_to: AppliesTo,
    subject: &str,
    findings: &mut Findings,
) -> Option<String> {
    let names: Vec<String> = gateways
        .iter()
        .filter(|g| g.spec.applies_to == applies_to)
        .map(|g| g.name_any())
        .collect();
    let winner = names.first()?.clone();
    if names.len() > 1 {
        let involved: BTreeSet<ResourceId> = names
            .iter()
            .map(|n| ResourceId::new(Kind::OutboundGateway, n.clone()))
            .collect();
        let conflict = Conflict {
            subject: subject.to_string(),
            winner: ResourceId::new(Kind::OutboundGateway, winner.clone()),
            involved: involved.clone(),
        };
        for id in &involved {
            findings.get_mut(id).conflicts.push(conflict.clone());
        }
    }
    Some(winner)
}

/// Per-recipient routes: entry → gateway. The same entry in two gateways is a conflict that
/// the older gateway wins; it is reported once per pair with a few examples.
fn recipient_routes(
    gateways: &[&OutboundGateway],
    lists: &BTreeMap<String, List>,
    findings: &mut Findings,
) -> HashMap<Entry, String> {
    let mut routes: HashMap<Entry, String> = HashMap::default();
    let mut clashes: BTreeMap<(String, String), Vec<&Entry>> = BTreeMap::new();
    for gw in gateways
        .iter()
        .filter(|g| g.spec.applies_to == AppliesTo::Recipients)
    {
        let id = ResourceId::new(Kind::OutboundGateway, gw.name_any());
        let entries = referenced_entries(&id, &gw.spec.address_lists, lists, findings);
        findings.get_mut(&id).matched = Some(count_kinds(&entries));
        for entry in entries {
            match routes.get(entry.as_str()) {
                Some(owner) => clashes
                    .entry((owner.clone(), gw.name_any()))
                    .or_default()
                    .push(entry),
                None => {
                    routes.insert(entry.clone(), gw.name_any());
                }
            }
        }
    }
    for ((winner, loser), entries) in clashes {
        let examples: Vec<String> = entries.iter().take(3).map(ToString::to_string).collect();
        let conflict = Conflict {
            subject: format!(
                "the route for {} entries (e.g. {})",
                entries.len(),
                examples.join(", ")
            ),
            winner: ResourceId::new(Kind::OutboundGateway, winner.clone()),
            involved: [winner, loser]
                .into_iter()
                .map(|n| ResourceId::new(Kind::OutboundGateway, n))
                .collect(),
        };
        for id in &conflict.involved {
            findings.get_mut(id).conflicts.push(conflict.clone());
        }
    }
    routes
}
