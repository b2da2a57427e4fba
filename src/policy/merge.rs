//! Merging: per-entry TLS from every policy, per-recipient routes from every gateway, and
//! the resolution of each key against every entry that covers it.

use super::key_map;
use super::lists::Lists;
use super::{
    Conflict, EffectivePolicy, Enforced, Entry, Findings, InboundRule, Kind, Mechanisms, Names,
    OutboundRule, Requirement, ResourceId, Route, fold,
};
use crate::api::{AppliesTo, Enforcement, OutboundGateway, TlsCompliance};
use kube::ResourceExt;
use rustc_hash::FxHashMap;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

/// Per-entry TLS, before the merge with covering entries.
#[derive(Clone, Copy, Default)]
pub(super) struct EntryTls {
    enforced: Option<Enforced>,
    monitored: Option<Requirement>,
    policies: SetId,
}

/// Per-entry inbound rule, before it becomes an [`InboundRule`].
#[derive(Clone, Copy, Default)]
struct EntryInbound {
    enforced: bool,
    monitored: bool,
    policies: SetId,
}

/// A set of policy names in [`NameSets`].
type SetId = u32;

/// Every distinct set of policy names, each made once: a hundred thousand entries share a
/// handful of sets, so an entry holds a number instead of its own list of names.
struct NameSets {
    /// Set id → names (id 0: no names).
    sets: Vec<Names>,
    ids: FxHashMap<Names, SetId>,
    /// Memo of unions: (set, set) → set.
    unions: FxHashMap<(SetId, SetId), SetId>,
}

impl NameSets {
    fn new() -> Self {
        let empty: Names = Arc::from([]);
        NameSets {
            sets: vec![empty.clone()],
            ids: [(empty, 0)].into_iter().collect(),
            unions: FxHashMap::default(),
        }
    }

    fn id(&mut self, names: Names) -> SetId {
        if let Some(id) = self.ids.get(&names) {
            return *id;
        }
        let id = self.sets.len() as SetId;
        self.sets.push(names.clone());
        self.ids.insert(names, id);
        id
    }

    /// The set of one name.
    fn single(&mut self, name: &Arc<str>) -> SetId {
        self.id(Arc::from([name.clone()]))
    }

    fn union(&mut self, a: SetId, b: SetId) -> SetId {
        if a == b || b == 0 {
            return a;
        }
        if a == 0 {
            return b;
        }
        if let Some(id) = self.unions.get(&(a, b)) {
            return *id;
        }
        let mut names: Vec<Arc<str>> = self.sets[a as usize].to_vec();
        for n in self.sets[b as usize].iter() {
            add_name(&mut names, n);
        }
        let id = self.id(names.into());
        self.unions.insert((a, b), id);
        id
    }

    fn get(&self, id: SetId) -> Names {
        self.sets[id as usize].clone()
    }
}

/// Everything the policies and gateways said about each entry id.
pub(super) struct Accumulated {
    tls: Vec<Option<EntryTls>>,
    inbound: Vec<Option<EntryInbound>>,
    /// The gateway routing each entry (`Recipients`): 0 for none, else its place in
    /// `gateways` plus one (4 bytes an entry, where a name would take 16).
    routes: Vec<u32>,
    gateways: Vec<Arc<str>>,
    names: NameSets,
}

impl Accumulated {
    pub fn new(entries: usize) -> Self {
        Accumulated {
            tls: vec![None; entries],
            inbound: vec![None; entries],
            routes: vec![0; entries],
            gateways: Vec::new(),
            names: NameSets::new(),
        }
    }

    /// The gateway routing entry `id`, if any.
    fn route(&self, id: usize) -> Option<&Arc<str>> {
        let route = self.routes[id].checked_sub(1)?;
        self.gateways.get(route as usize)
    }

    /// An `Unlisted` policy: the namespace's default, which listed keys inherit in
    /// [`Accumulated::resolve`].
    pub fn add_unlisted(p: &TlsCompliance, policy: &mut EffectivePolicy) {
        if p.spec.enforcement == Enforcement::Enforce {
            let mut names = policy.unlisted_policies.to_vec();
            add_name(&mut names, &Arc::from(p.name_any()));
            policy.unlisted_policies = names.into();
            policy.unlisted = policy
                .unlisted
                .union(Mechanisms::from_api(&p.spec.mechanisms));
        }
    }

    /// Add one valid policy's entries.
    pub fn add_policy(&mut self, p: &TlsCompliance, ids: &[u32]) {
        let name = self.names.single(&Arc::from(p.name_any()));
        let enforce = p.spec.enforcement == Enforcement::Enforce;
        let requirement = Requirement::new(
            p.spec.require_ca_signed,
            p.spec.validate_hostname,
            p.spec.min_tls_version,
        );
        for &id in ids {
            let id = id as usize;
            if p.spec.direction.outbound() {
                let tls = self.tls[id].get_or_insert_with(EntryTls::default);
                tls.policies = self.names.union(tls.policies, name);
                if enforce {
                    let e = Enforced {
                        requirement,
                        on_failure: p.spec.on_failure,
                        mechanisms: Mechanisms::from_api(&p.spec.mechanisms),
                    };
                    tls.enforced = fold(tls.enforced, e, Enforced::strictest);
                } else {
                    tls.monitored = fold(tls.monitored, requirement, Requirement::strictest);
                }
            }
            if p.spec.direction.inbound() {
                let rule = self.inbound[id].get_or_insert_with(EntryInbound::default);
                rule.policies = self.names.union(rule.policies, name);
                rule.enforced |= enforce;
                rule.monitored |= !enforce;
            }
        }
    }

    /// Per-recipient routes, oldest gateway first. The same entry in two gateways is a
    /// conflict the older one wins, reported once per pair with a few examples.
    pub fn add_routes(
        &mut self,
        gateways: &[&OutboundGateway],
        lists: &Lists,
        findings: &mut Findings,
    ) {
        let mut clashes: BTreeMap<(Arc<str>, String), Vec<Entry>> = BTreeMap::new();
        for gw in gateways
            .iter()
            .filter(|g| g.spec.applies_to == AppliesTo::Recipients)
        {
            let id = ResourceId::new(Kind::OutboundGateway, gw.name_any());
            let ids = lists.referenced(&id, &gw.spec.address_lists, findings);
            findings.get_mut(&id).matched = Some(lists.count_kinds(&ids));
            self.gateways.push(Arc::from(gw.name_any()));
            let route = self.gateways.len() as u32;
            for e in ids {
                match self.route(e as usize) {
                    Some(owner) => clashes
                        .entry((owner.clone(), gw.name_any()))
                        .or_default()
                        .push(lists.entry(e)),
                    None => self.routes[e as usize] = route,
                }
            }
        }
        for ((winner, loser), mut entries) in clashes {
            entries.sort_unstable();
            let examples: Vec<String> = entries.iter().take(3).map(ToString::to_string).collect();
            let conflict = Conflict {
                subject: format!(
                    "the route for {} entries (e.g. {})",
                    entries.len(),
                    examples.join(", ")
                ),
                winner: ResourceId::new(Kind::OutboundGateway, winner.to_string()),
                involved: [winner.to_string(), loser]
                    .into_iter()
                    .map(|n| ResourceId::new(Kind::OutboundGateway, n))
                    .collect(),
            };
            for id in &conflict.involved {
                findings.get_mut(id).conflicts.push(conflict.clone());
            }
        }
    }

    /// Inbound rules by entry, and for every key any policy or route names, its outbound
    /// rule merged with all entries covering it (strictest wins) and its route (most
    /// specific wins): the key Postfix finds first carries the complete answer.
    pub fn resolve(mut self, lists: &Lists, policy: &mut EffectivePolicy) {
        // One sort of every id; inbound rules and outbound keys are taken from it in order,
        // so both maps are bulk-built rather than filled one insert at a time.
        let order = sorted_ids(lists);
        let senders = order
            .iter()
            .filter(|&&id| self.inbound[id as usize].is_some())
            .count();
        let mut inbound = key_map::Builder::with_capacity(senders);
        for id in order.iter().map(|&id| id as usize) {
            if let Some(rule) = self.inbound[id] {
                let rule = InboundRule {
                    enforced: rule.enforced,
                    monitored: rule.monitored,
                    policies: self.names.get(rule.policies),
                };
                inbound.push(lists.entry(id as u32), rule);
            }
        }
        policy.inbound = inbound.finish();
        // Not needed for outbound keys: freed before their map is built.
        self.inbound = Vec::new();
        let is_key = |id: usize| self.tls[id].is_some() || self.routes[id] != 0;
        let keys = order.iter().filter(|&&id| is_key(id as usize)).count();
        let mut rules = key_map::Builder::with_capacity(keys);
        for id in order.iter().map(|&id| id as usize).filter(|&id| is_key(id)) {
            let key = lists.entry(id as u32);
            let mut rule = OutboundRule {
                enforced: None,
                monitored: None,
                route: Route::Direct,
                policies: Names::default(),
            };
            let mut names = 0;
            let mut recipients = None;
            // The key itself first, then every entry that could cover it, most specific first.
            let chain = std::iter::once(Some(id as u32))
                .chain(key.lookup_keys().skip(1).map(|k| lists.id(k)));
            for covering in chain.flatten().map(|c| c as usize) {
                if let Some(t) = &self.tls[covering] {
                    if let Some(e) = t.enforced {
                        rule.enforced = fold(rule.enforced, e, Enforced::strictest);
                    }
                    if let Some(m) = t.monitored {
                        rule.monitored = fold(rule.monitored, m, Requirement::strictest);
                    }
                    names = self.names.union(names, t.policies);
                }
                if recipients.is_none()
                    && let Some(g) = self.route(covering)
                {
                    recipients = Some(Route::Recipients {
                        gateway: g.to_string(),
                        entry: (covering != id).then(|| lists.entry(covering as u32)),
                    });
                }
            }
            rule.policies = self.names.get(names);
            // Listing a destination never weakens what the namespace honours for all.
            if let Some(e) = &mut rule.enforced {
                e.mechanisms = e.mechanisms.union(policy.unlisted);
            }
            rule.route = match (recipients, &policy.secure_route, rule.enforced) {
                (Some(r), _, _) => r,
                (None, Some(secure), Some(_)) => Route::SecureRoute(secure.clone()),
                (None, _, _) => policy.default_route(),
            };
            rules.push(key, rule);
        }
        policy.outbound = rules.finish();
    }
}

/// Entry ids in entry order. Sorting on the first eight bytes kept inline, and comparing the
/// strings only on a tie, avoids chasing a pointer per comparison. Entries never contain
/// NUL, so zero padding orders a prefix before its extensions, as `str` does.
fn sorted_ids(lists: &Lists) -> Vec<u32> {
    let prefix = |text: &str| {
        let mut bytes = [0u8; 8];
        let text = text.as_bytes();
        let n = text.len().min(8);
        bytes[..n].copy_from_slice(&text[..n]);
        u64::from_be_bytes(bytes)
    };
    let mut keyed: Vec<(u64, u32)> = (0..lists.len() as u32)
        .map(|id| (prefix(lists.text(id)), id))
        .collect();
    keyed.sort_unstable_by(|a, b| {
        a.0.cmp(&b.0)
            .then_with(|| lists.text(a.1).cmp(lists.text(b.1)))
    });
    // A new vector of half the size: collected in place, it would keep the sort's.
    keyed.iter().map(|&(_, id)| id).collect()
}

/// Add a name to a sorted, duplicate-free list.
fn add_name(names: &mut Vec<Arc<str>>, name: &Arc<str>) {
    if let Err(at) = names.binary_search(name) {
        names.insert(at, name.clone());
    }
}

/// The oldest usable gateway of a kind that may exist only once; the others are in conflict.
pub(super) fn single_winner(
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

/// Gateways are used by the policies whose mail they carry, and count as rendered when
/// some mail is routed through them.
pub(super) fn record_gateway_use(policy: &EffectivePolicy, findings: &mut Findings) {
    let mut used: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    let mut rendered: BTreeSet<&str> = policy
        .relayhost
        .iter()
        .chain(&policy.secure_route)
        .map(String::as_str)
        .collect();
    for rule in policy.outbound.values() {
        if let Route::Recipients { gateway, .. } = &rule.route {
            rendered.insert(gateway);
        }
        if let Some(g) = rule.route.gateway().or(policy.relayhost.as_deref()) {
            used.entry(g)
                .or_default()
                .extend(rule.policies.iter().map(|n| &**n));
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
    for gateway in rendered {
        findings
            .get_mut(&ResourceId::new(Kind::OutboundGateway, gateway))
            .rendered = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn name_sets_are_sorted_unions_each_made_once() {
        let mut sets = NameSets::new();
        let b = sets.single(&Arc::from("b"));
        let a = sets.single(&Arc::from("a"));
        let ab = sets.union(b, a);
        let set = sets.get(ab);
        let names: Vec<&str> = set.iter().map(|n| &**n).collect();
        assert_eq!(names, ["a", "b"]);
        // The same set is the same id, and one shared allocation.
        assert_eq!(sets.union(a, b), ab);
        assert_eq!(sets.union(ab, a), ab);
        let again = sets.union(a, b);
        assert!(Arc::ptr_eq(&set, &sets.get(again)));
        assert_eq!(sets.union(0, a), a);
        assert_eq!(sets.union(a, 0), a);
        assert!(sets.get(0).is_empty());
    }
}
