//! Fail closed: a resource whose current generation cannot be used keeps contributing what
//! its last valid generation contributed, so a typo, a stray edit or a deleted list never
//! switches enforcement off. Deleting the resource itself (or fixing it) is what changes it.
//!
//! The state is a [`LastValid`] snapshot: per resource, its uid, the last valid generation
//! and that generation's spec. It is pure data; the callers persist it (`mailtls
//! standalone` in a file, the controller in a ConfigMap).

use super::{Evaluation, Findings, InForce, Inputs, Kind, ResourceFindings, ResourceId, evaluate};
use crate::api::{
    AddressList, AddressListSpec, LocalRef, OutboundGateway, OutboundGatewaySpec, TlsCompliance,
    TlsComplianceSpec,
};
use kube::ResourceExt;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

/// The snapshot format this version reads and writes.
pub const VERSION: u32 = 1;

/// The last valid generation of every resource of one namespace.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct LastValid {
    pub version: u32,
    /// Lists by name, including lists deleted since but still referenced by a kept spec.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub address_lists: BTreeMap<String, Kept<AddressListSpec>>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub policies: BTreeMap<String, Kept<TlsComplianceSpec>>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub gateways: BTreeMap<String, Kept<OutboundGatewaySpec>>,
}

/// One resource's last valid generation.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Kept<S> {
    /// The resource's uid (files have none): a resource deleted and created again under
    /// the same name is another resource and inherits nothing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<String>,
    pub generation: i64,
    pub spec: S,
}

impl Default for LastValid {
    fn default() -> Self {
        LastValid {
            version: VERSION,
            address_lists: BTreeMap::new(),
            policies: BTreeMap::new(),
            gateways: BTreeMap::new(),
        }
    }
}

impl LastValid {
    /// Read a snapshot, refusing other versions and anything malformed with a reason.
    pub fn from_json(text: &str) -> Result<Self, String> {
        let value: serde_json::Value =
            serde_json::from_str(text).map_err(|e| format!("not valid JSON: {e}"))?;
        match value.get("version").and_then(serde_json::Value::as_u64) {
            Some(v) if v == u64::from(VERSION) => {}
            Some(v) => {
                return Err(format!(
                    "snapshot version {v}; this mailtls reads version {VERSION}"
                ));
            }
            None => return Err("no numeric \"version\" field".to_string()),
        }
        serde_json::from_value(value).map_err(|e| format!("not a last-valid snapshot: {e}"))
    }

    pub fn to_json(&self) -> Result<String, serde_json::Error> {
        serde_json::to_string_pretty(self)
    }

    /// Whether no resource has a generation kept.
    pub fn is_empty(&self) -> bool {
        self.address_lists.is_empty() && self.policies.is_empty() && self.gateways.is_empty()
    }
}

/// The three kinds alike: their spec and where the snapshot keeps it.
trait Snapshotted: kube::Resource<DynamicType = ()> + Clone {
    type Spec: Clone;
    const KIND: Kind;
    fn spec_mut(&mut self) -> &mut Self::Spec;
    fn spec(&self) -> &Self::Spec;
    fn kept(last: &LastValid) -> &BTreeMap<String, Kept<Self::Spec>>;
    fn kept_mut(last: &mut LastValid) -> &mut BTreeMap<String, Kept<Self::Spec>>;
    /// What a resource with no usable generation contributes in the second pass: `None`,
    /// left out; lists stay present but empty, so their referrers see no missing list.
    fn nothing() -> Option<Self::Spec>;
}

macro_rules! snapshotted {
    ($k:ty, $spec:ty, $kind:expr, $field:ident, $nothing:expr) => {
        impl Snapshotted for $k {
            type Spec = $spec;
            const KIND: Kind = $kind;
            fn spec_mut(&mut self) -> &mut $spec {
                &mut self.spec
            }
            fn spec(&self) -> &$spec {
                &self.spec
            }
            fn kept(last: &LastValid) -> &BTreeMap<String, Kept<$spec>> {
                &last.$field
            }
            fn kept_mut(last: &mut LastValid) -> &mut BTreeMap<String, Kept<$spec>> {
                &mut last.$field
            }
            fn nothing() -> Option<$spec> {
                $nothing
            }
        }
    };
}

snapshotted!(
    AddressList,
    AddressListSpec,
    Kind::AddressList,
    address_lists,
    Some(AddressListSpec::default())
);
snapshotted!(
    TlsCompliance,
    TlsComplianceSpec,
    Kind::TlsCompliance,
    policies,
    None
);
snapshotted!(
    OutboundGateway,
    OutboundGatewaySpec,
    Kind::OutboundGateway,
    gateways,
    None
);

fn generation<K: kube::Resource>(r: &K) -> i64 {
    r.meta().generation.unwrap_or(1)
}

/// Whether the current generation of a resource may be used: no errors, no invalid entry
/// (an edit with a typo is not a valid edit), no conflict lost.
fn usable(id: &ResourceId, f: &ResourceFindings) -> bool {
    f.errors.is_empty()
        && f.list.as_ref().is_none_or(|l| l.invalid_total == 0)
        && f.conflicts.iter().all(|c| &c.winner == id)
}

/// The resources as the second pass sees them, what is in force for each, and the new
/// snapshot.
struct Substitution<'a> {
    current: &'a Findings,
    last: &'a LastValid,
    next: LastValid,
    in_force: BTreeMap<ResourceId, InForce>,
    substituted: bool,
}

/// What the second pass sees of one resource: the resource as it is, or a replacement.
/// Only a second pass copies the resources: a hundred thousand entries cost a copy.
enum Used<'a, K> {
    Current(&'a K),
    Replaced(K),
}

fn owned<K: Clone>(used: Vec<Used<'_, K>>) -> Vec<K> {
    used.into_iter()
        .map(|u| match u {
            Used::Current(r) => r.clone(),
            Used::Replaced(r) => r,
        })
        .collect()
}

impl Substitution<'_> {
    fn kind<'r, K: Snapshotted>(&mut self, items: &'r [K]) -> Vec<Used<'r, K>> {
        let mut out = Vec::with_capacity(items.len());
        for r in items {
            let name = r.name_any();
            let id = ResourceId::new(K::KIND, name.clone());
            let uid = r.meta().uid.clone();
            let ok = self.current.get(&id).is_none_or(|f| usable(&id, f));
            if ok {
                let g = generation(r);
                K::kept_mut(&mut self.next).insert(
                    name,
                    Kept {
                        uid,
                        generation: g,
                        spec: r.spec().clone(),
                    },
                );
                self.in_force.insert(id, InForce::Current(g));
                out.push(Used::Current(r));
                continue;
            }
            self.substituted = true;
            match K::kept(self.last).get(&name).filter(|k| k.uid == uid) {
                Some(kept) => {
                    let mut old = r.clone();
                    *old.spec_mut() = kept.spec.clone();
                    self.in_force.insert(id, InForce::Earlier(kept.generation));
                    K::kept_mut(&mut self.next).insert(name, kept.clone());
                    out.push(Used::Replaced(old));
                }
                None => {
                    self.in_force.insert(id, InForce::Nothing);
                    if let Some(nothing) = K::nothing() {
                        let mut empty = r.clone();
                        *empty.spec_mut() = nothing;
                        out.push(Used::Replaced(empty));
                    }
                }
            }
        }
        out
    }
}

/// Evaluate with the last valid generations in force: every resource whose current
/// generation cannot be used contributes what its snapshot contributed (or nothing), and
/// the findings carry the current generation's problems with [`InForce`]. Returns the
/// evaluation and the snapshot to keep.
pub fn evaluate_fail_closed(inputs: &Inputs, last: &LastValid) -> (Evaluation, LastValid) {
    let first = evaluate(inputs);
    let mut sub = Substitution {
        current: &first.findings,
        last,
        next: LastValid::default(),
        in_force: BTreeMap::new(),
        substituted: false,
    };
    let address_lists = sub.kind(&inputs.address_lists);
    let policies = sub.kind(&inputs.policies);
    let gateways = sub.kind(&inputs.gateways);
    let Substitution {
        next: mut next_snapshot,
        in_force,
        substituted,
        ..
    } = sub;
    if !substituted {
        let mut evaluation = first;
        for (id, state) in in_force {
            evaluation.findings.get_mut(&id).in_force = Some(state);
        }
        return (evaluation, next_snapshot);
    }
    let mut used = Inputs {
        namespace: inputs.namespace.clone(),
        address_lists: owned(address_lists),
        policies: owned(policies),
        gateways: owned(gateways),
    };
    let ghosts = add_ghost_lists(&mut used, &in_force, last, &mut next_snapshot);
    let second = evaluate(&used);
    let findings = combine(&first.findings, second.findings, in_force, &ghosts);
    (
        Evaluation {
            policy: second.policy,
            findings,
        },
        next_snapshot,
    )
}

/// Lists that a kept spec references but that no longer exist come back from the snapshot
/// for this evaluation ("ghosts"), and stay in it while a kept spec references them.
fn add_ghost_lists(
    used: &mut Inputs,
    in_force: &BTreeMap<ResourceId, InForce>,
    last: &LastValid,
    next: &mut LastValid,
) -> BTreeSet<ResourceId> {
    let earlier = |kind: Kind, name: String| {
        matches!(
            in_force.get(&ResourceId::new(kind, name)),
            Some(InForce::Earlier(_))
        )
    };
    let mut refs: Vec<&LocalRef> = Vec::new();
    for p in &used.policies {
        if earlier(Kind::TlsCompliance, p.name_any()) {
            refs.extend(&p.spec.address_lists);
        }
    }
    for g in &used.gateways {
        if earlier(Kind::OutboundGateway, g.name_any()) {
            refs.extend(&g.spec.address_lists);
        }
    }
    let present: BTreeSet<String> = used.address_lists.iter().map(|l| l.name_any()).collect();
    let mut ghosts = BTreeSet::new();
    let mut lists = Vec::new();
    for r in refs {
        if present.contains(&r.name)
            || ghosts.contains(&ResourceId::new(Kind::AddressList, r.name.clone()))
        {
            continue;
        }
        if let Some(kept) = last.address_lists.get(&r.name) {
            next.address_lists.insert(r.name.clone(), kept.clone());
            ghosts.insert(ResourceId::new(Kind::AddressList, r.name.clone()));
            lists.push(AddressList::new(&r.name, kept.spec.clone()));
        }
    }
    used.address_lists.extend(lists);
    ghosts
}

/// Findings for status: what is rendered comes from the second pass, the current
/// generation's problems from the first.
fn combine(
    first: &Findings,
    mut second: Findings,
    in_force: BTreeMap<ResourceId, InForce>,
    ghosts: &BTreeSet<ResourceId>,
) -> Findings {
    let mut out = Findings::default();
    for (id, state) in in_force {
        let rendered = second.resources.remove(&id).unwrap_or_default();
        let f = match state {
            InForce::Current(_) => {
                // Conflicts are about the current specs: a winner hears of a loser that
                // the second pass left out.
                let mut conflicts = first
                    .get(&id)
                    .map(|f| f.conflicts.clone())
                    .unwrap_or_default();
                for c in rendered.conflicts {
                    if !conflicts.contains(&c) {
                        conflicts.push(c);
                    }
                }
                ResourceFindings {
                    conflicts,
                    in_force: Some(state),
                    ..rendered
                }
            }
            InForce::Earlier(_) | InForce::Nothing => {
                let current = first.get(&id).cloned().unwrap_or_default();
                // A kept gateway that loses again contributes nothing after all.
                let lost = rendered.conflicts.iter().any(|c| c.winner != id) && !rendered.rendered;
                let list = match (current.list, rendered.list) {
                    (Some(cur), Some(r)) => Some(super::ListStats {
                        addresses: r.addresses,
                        domains: r.domains,
                        duplicates: r.duplicates,
                        ..cur
                    }),
                    (cur, r) => cur.or(r),
                };
                ResourceFindings {
                    errors: current.errors,
                    conflicts: current.conflicts,
                    used_by: rendered.used_by,
                    list,
                    matched: rendered.matched,
                    rendered: rendered.rendered,
                    in_force: Some(if lost { InForce::Nothing } else { state }),
                }
            }
        };
        out.resources.insert(id, f);
    }
    // Ghost lists are not resources; anything else left belongs to nobody.
    debug_assert!(second.resources.keys().all(|id| ghosts.contains(id)));
    out
}

#[cfg(test)]
#[path = "last_valid_tests.rs"]
mod tests;
