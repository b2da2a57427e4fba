//! The policy engine (pure): normalise address lists, resolve references, merge overlapping
//! policies strictest-wins, pick routes most-specific-wins, and detect conflicts.
//!
//! Input is the resources of one namespace; output is an [`EffectivePolicy`] for the renderer
//! and [`Findings`] per resource for status. Nothing here fails: every problem is a finding,
//! and a bad resource never stops the others from rendering.

mod checks;
pub mod entry;
pub mod host;
mod key_map;
pub mod last_valid;
mod lists;
mod merge;
mod model;

pub use checks::parse_interval;
pub use entry::{Entry, parse_entry};
pub use host::Host;
pub use key_map::{Key, KeyMap};
pub use last_valid::{LastValid, evaluate_fail_closed};
pub use lists::list_entries;
pub use model::*;

use crate::api::{AddressList, AppliesTo, OutboundGateway, Scope, TlsCompliance};
use kube::ResourceExt;

/// Most entries one AddressList may hold (entries and bulk items together, as written).
pub const MAX_ENTRIES: usize = crate::api::MAX_LIST_ENTRIES;
/// Most entries the AddressLists of one namespace may hold together, as written. Checked
/// before normalising: 234 000 entries took 250 MB in `mailtls render` and the controller's
/// memory limit is 256 MiB; 86 000 addresses in both directions peak at 112 MB.
pub const MAX_NAMESPACE_ENTRIES: usize = 100_000;
/// Longest `spec.bulk` text.
pub const MAX_BULK_CHARS: usize = crate::api::MAX_BULK_CHARS;
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

/// Evaluate the resources of one namespace.
pub fn evaluate(inputs: &Inputs) -> Evaluation {
    let mut findings = Findings::default();
    let lists = lists::normalize(&inputs.address_lists, &mut findings);
    merge_lists(inputs, lists, findings)
}

/// [`evaluate`] for a caller with no further use for the lists' entries (`mailtls render`):
/// each list's are freed as soon as they are numbered, so the entries as written and as
/// numbered are never all held at once. The lists keep their names and metadata.
pub fn evaluate_dropping_entries(inputs: &mut Inputs) -> Evaluation {
    let mut findings = Findings::default();
    let lists = lists::normalize_taking(&mut inputs.address_lists, &mut findings);
    merge_lists(inputs, lists, findings)
}

/// Everything after the lists are numbered: gateways, policies, and their merge.
fn merge_lists(inputs: &Inputs, mut lists: lists::Lists, mut findings: Findings) -> Evaluation {
    let mut policy = EffectivePolicy {
        namespace: inputs.namespace.clone(),
        ..Default::default()
    };

    // Gateways, oldest first: the order that decides every conflict between them.
    let mut gateways: Vec<&OutboundGateway> = inputs.gateways.iter().collect();
    gateways.sort_by_key(|g| checks::age_key(*g));
    let mut usable = Vec::new();
    for gw in gateways {
        let id = ResourceId::new(Kind::OutboundGateway, gw.name_any());
        match checks::gateway_hop(gw) {
            Ok(hop) => {
                findings.get_mut(&id);
                policy.gateways.insert(hop.gateway.clone(), hop);
                usable.push(gw);
            }
            Err(problems) => findings.get_mut(&id).errors.extend(problems),
        }
    }
    policy.relayhost = merge::single_winner(
        &usable,
        AppliesTo::AllMail,
        "the AllMail gateway (relayhost)",
        &mut findings,
    );
    policy.secure_route = merge::single_winner(
        &usable,
        AppliesTo::SecureTransportRequired,
        "the SecureTransportRequired gateway (alternate secure route)",
        &mut findings,
    );

    let mut acc = merge::Accumulated::new(lists.len());
    acc.add_routes(&usable, &lists, &mut findings);
    let mut policies: Vec<&TlsCompliance> = inputs.policies.iter().collect();
    policies.sort_by_key(|p| p.name_any());
    for p in policies {
        let id = ResourceId::new(Kind::TlsCompliance, p.name_any());
        let problems = checks::check_policy(p);
        if !problems.is_empty() {
            findings.get_mut(&id).errors.extend(problems);
            continue;
        }
        if p.spec.scope == Scope::Unlisted {
            let f = findings.get_mut(&id);
            f.matched = Some(lists.count_kinds(&[]));
            f.rendered = true;
            merge::Accumulated::add_unlisted(p, &mut policy);
            continue;
        }
        let ids = lists.referenced(&id, &p.spec.address_lists, &mut findings);
        let f = findings.get_mut(&id);
        f.matched = Some(lists.count_kinds(&ids));
        f.rendered = true;
        acc.add_policy(p, &ids);
    }
    lists.forget_members();
    acc.resolve(&lists, &mut policy);
    merge::record_gateway_use(&policy, &mut findings);
    Evaluation { policy, findings }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The namespace goes into the rendered files' header and the manifest.
    #[test]
    fn the_policy_knows_its_namespace() {
        let inputs = Inputs {
            namespace: "mail-eu".into(),
            ..Default::default()
        };
        assert_eq!(evaluate(&inputs).policy.namespace, "mail-eu");
    }

    /// Dropping the entries once they are numbered changes nothing in the answer.
    #[test]
    fn dropping_the_entries_early_gives_the_same_evaluation() {
        let (loaded, errors) = crate::cli::load::load_str(
            "p.yaml",
            "apiVersion: mailtls.io/v1alpha1\nkind: AddressList\nmetadata: {name: l}\n\
             spec: {entries: [.partner.example, a@b.example, 'not valid'], bulk: \"c.example\\nd.example\"}\n---\n\
             apiVersion: mailtls.io/v1alpha1\nkind: TlsCompliance\nmetadata: {name: p}\n\
             spec: {direction: Both, addressLists: [{name: l}, {name: missing}]}\n",
            "default",
        );
        assert!(errors.is_empty(), "{errors:?}");
        let mut inputs = loaded.namespaces["default"].clone();
        let kept = evaluate(&inputs);
        let dropped = evaluate_dropping_entries(&mut inputs);
        assert_eq!(dropped.policy, kept.policy);
        assert_eq!(
            format!("{:?}", dropped.findings),
            format!("{:?}", kept.findings)
        );
        assert_eq!(kept.policy.outbound.len(), 4);
        assert!(inputs.address_lists[0].spec.entries.is_empty());
        assert_eq!(inputs.address_lists[0].spec.bulk, None);
    }
}
