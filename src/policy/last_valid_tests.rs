use super::*;
use crate::cli::load::load_str;
use crate::render::{RelayConfig, RenderOptions, render};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

const EXAMPLES: [&str; 3] = [
    include_str!("../../examples/address-lists.yaml"),
    include_str!("../../examples/gateways.yaml"),
    include_str!("../../examples/tls-compliance.yaml"),
];

/// The examples as a cluster would hold them: each resource with a uid, generation 1, and
/// the smart host created before the other gateways.
fn examples() -> Inputs {
    let (loaded, errors) = load_str("examples.yaml", &EXAMPLES.join("---\n"), "default");
    assert!(errors.is_empty(), "{}", errors.len());
    let mut inputs = loaded.namespaces["default"].clone();
    fn stamp<K: kube::Resource>(items: &mut [K], kind: &str) {
        for r in items {
            let m = r.meta_mut();
            m.uid = Some(format!("{kind}-{}", m.name.clone().unwrap_or_default()));
            m.generation = Some(1);
        }
    }
    stamp(&mut inputs.address_lists, "al");
    stamp(&mut inputs.policies, "tlsc");
    stamp(&mut inputs.gateways, "ogw");
    for g in &mut inputs.gateways {
        let day = if g.name_any() == "smarthost" { 1 } else { 2 };
        let t = format!("2026-01-0{day}T00:00:00Z");
        g.metadata.creation_timestamp = Some(Time(t.parse().expect("time")));
    }
    inputs
}

fn config(e: &Evaluation) -> RelayConfig {
    render(&e.policy, &RenderOptions::default())
}

fn rows(c: &RelayConfig, file: &str) -> Vec<String> {
    c.files[file]
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(str::to_string)
        .collect()
}

fn transport_for(c: &RelayConfig, key: &str) -> Option<String> {
    rows(c, "transport")
        .into_iter()
        .find_map(|l| l.strip_prefix(&format!("{key} ")).map(str::to_string))
}

fn policy_mut<'a>(inputs: &'a mut Inputs, name: &str) -> &'a mut TlsCompliance {
    let p = inputs.policies.iter_mut().find(|p| p.name_any() == name);
    p.expect("policy")
}

fn gateway_mut<'a>(inputs: &'a mut Inputs, name: &str) -> &'a mut OutboundGateway {
    let g = inputs.gateways.iter_mut().find(|g| g.name_any() == name);
    g.expect("gateway")
}

fn list_mut<'a>(inputs: &'a mut Inputs, name: &str) -> &'a mut AddressList {
    let l = inputs
        .address_lists
        .iter_mut()
        .find(|l| l.name_any() == name);
    l.expect("list")
}

/// A new generation of a resource.
fn bump<K: kube::Resource>(r: &mut K) {
    let m = r.meta_mut();
    m.generation = Some(m.generation.unwrap_or(1) + 1);
}

fn findings<'a>(e: &'a Evaluation, kind: Kind, name: &str) -> &'a ResourceFindings {
    e.findings
        .get(&ResourceId::new(kind, name))
        .expect("findings")
}

/// The examples evaluated once, all valid: the configuration and snapshot a later bad edit
/// is compared with.
fn baseline() -> (Inputs, RelayConfig, LastValid) {
    let inputs = examples();
    let (e, last) = evaluate_fail_closed(&inputs, &LastValid::default());
    assert!(e.findings.problems().next().is_none());
    assert_eq!(e.policy, evaluate(&inputs).policy);
    (inputs, config(&e), last)
}

#[test]
fn a_too_short_interval_on_a_policy_keeps_its_routes() {
    let (mut inputs, before, last) = baseline();
    let verify = |c: &RelayConfig| {
        rows(c, "transport")
            .iter()
            .filter(|l| l.contains("mailtls-verify-tls12-bounce"))
            .count()
    };
    assert_eq!(verify(&before), 8);
    let p = policy_mut(&mut inputs, "partners");
    p.spec.test.interval = "30s".into();
    bump(p);
    // What the one-shot engine does with it: the policy's routes are gone.
    assert_eq!(verify(&config(&evaluate(&inputs))), 0);

    let (e, next) = evaluate_fail_closed(&inputs, &last);
    let after = config(&e);
    assert_eq!(after.files, before.files);
    assert_eq!(rows(&after, "transport").len(), 13);
    let f = findings(&e, Kind::TlsCompliance, "partners");
    assert_eq!(f.errors[0].field, "spec.test.interval");
    assert_eq!(f.in_force, Some(InForce::Earlier(1)));
    assert!(f.rendered);
    assert_eq!(f.matched, Some((4, 4)));
    assert_eq!(next.policies["partners"].generation, 1);
    assert_eq!(next.policies["partners"].spec.test.interval, "6h");
    assert_eq!(next, last);
}

#[test]
fn a_too_short_interval_on_the_all_mail_gateway_keeps_relayhost() {
    let (mut inputs, before, last) = baseline();
    let g = gateway_mut(&mut inputs, "smarthost");
    g.spec.test.interval = "30s".into();
    bump(g);
    assert_eq!(evaluate(&inputs).policy.relayhost, None);
    let (e, next) = evaluate_fail_closed(&inputs, &last);
    assert_eq!(e.policy.relayhost.as_deref(), Some("smarthost"));
    assert_eq!(config(&e).files, before.files);
    let f = findings(&e, Kind::OutboundGateway, "smarthost");
    assert_eq!(f.in_force, Some(InForce::Earlier(1)));
    assert!(f.rendered);
    assert!(!f.used_by.is_empty());
    assert_eq!(next.gateways["smarthost"].generation, 1);
}

#[test]
fn a_missing_or_renamed_list_keeps_its_entries() {
    let (inputs, before, last) = baseline();
    // Renamed: the old name is gone, the same entries live under a new name and uid.
    let mut renamed = inputs.clone();
    let list = list_mut(&mut renamed, "partners");
    list.metadata.name = Some("partners-2024".into());
    list.metadata.uid = Some("al-new".into());
    let mut missing = inputs.clone();
    missing.address_lists.retain(|l| l.name_any() != "partners");
    for inputs in [renamed, missing] {
        assert!(transport_for(&config(&evaluate(&inputs)), "partner.example").is_none());
        let (e, next) = evaluate_fail_closed(&inputs, &last);
        assert_eq!(config(&e).files, before.files);
        let f = findings(&e, Kind::TlsCompliance, "partners");
        assert_eq!(f.errors[0].field, "spec.addressLists[0].name");
        assert_eq!(f.in_force, Some(InForce::Earlier(1)));
        // The deleted list is no resource any more, only kept for the policy.
        assert!(
            e.findings
                .get(&ResourceId::new(Kind::AddressList, "partners"))
                .is_none()
        );
        assert_eq!(
            next.address_lists["partners"],
            last.address_lists["partners"]
        );
        // Deleting the policy too lets both go.
        let mut gone = inputs.clone();
        gone.policies.retain(|p| p.name_any() != "partners");
        let (e, next) = evaluate_fail_closed(&gone, &next);
        assert!(transport_for(&config(&e), "partner.example").is_none());
        assert!(!next.address_lists.contains_key("partners"));
        assert!(!next.policies.contains_key("partners"));
    }
}

#[test]
fn an_edit_with_one_invalid_entry_keeps_the_previous_list() {
    let (mut inputs, before, last) = baseline();
    let kept_duplicates = findings(&evaluate(&inputs), Kind::AddressList, "partners")
        .list
        .clone()
        .expect("stats")
        .duplicates;
    let list = list_mut(&mut inputs, "partners");
    list.spec.entries = [
        "a@@b.example",
        "logistics.example",
        "logistics.example",
        "logistics.example",
    ]
    .into_iter()
    .collect();
    list.spec.bulk = None;
    bump(list);
    assert!(transport_for(&config(&evaluate(&inputs)), "partner.example").is_none());
    let (e, next) = evaluate_fail_closed(&inputs, &last);
    assert_eq!(config(&e).files, before.files);
    let f = findings(&e, Kind::AddressList, "partners");
    assert_eq!(f.in_force, Some(InForce::Earlier(1)));
    // The counts describe what is rendered (the kept generation); the invalid entries are
    // the current generation's.
    let stats = f.list.clone().expect("stats");
    assert_eq!(
        (
            stats.invalid_total,
            stats.addresses,
            stats.domains,
            stats.duplicates
        ),
        (1, 4, 4, kept_duplicates)
    );
    assert_ne!(
        kept_duplicates, 2,
        "the current generation's duplicates must differ"
    );
    assert_eq!(next.address_lists["partners"].generation, 1);
}

#[test]
fn a_new_list_with_one_typo_contributes_nothing_until_fixed() {
    let (mut inputs, _, last) = baseline();
    let mut list = AddressList::new(
        "new",
        crate::api::AddressListSpec {
            entries: ["good.example", "a@@b.example"].into_iter().collect(),
            bulk: None,
        },
    );
    list.metadata.uid = Some("al-new".into());
    list.metadata.generation = Some(1);
    inputs.address_lists.push(list);
    let mut p = policy_mut(&mut inputs, "banks").clone();
    p.metadata.name = Some("new".into());
    p.metadata.uid = Some("tlsc-new".into());
    p.spec.address_lists = vec![LocalRef { name: "new".into() }];
    inputs.policies.push(p);
    assert!(transport_for(&config(&evaluate(&inputs)), "good.example").is_some());

    let (e, next) = evaluate_fail_closed(&inputs, &last);
    assert!(transport_for(&config(&e), "good.example").is_none());
    let f = findings(&e, Kind::AddressList, "new");
    assert_eq!(f.in_force, Some(InForce::Nothing));
    assert!(!next.address_lists.contains_key("new"));
    // The policy itself is valid and in force, with nothing to enforce yet.
    let f = findings(&e, Kind::TlsCompliance, "new");
    assert_eq!(f.in_force, Some(InForce::Current(1)));
    assert_eq!(f.matched, Some((0, 0)));

    let list = list_mut(&mut inputs, "new");
    let kept = list.spec.entries.len() - 1;
    list.spec.entries.truncate(kept);
    bump(list);
    let (e, next) = evaluate_fail_closed(&inputs, &next);
    assert!(transport_for(&config(&e), "good.example").is_some());
    assert_eq!(next.address_lists["new"].generation, 2);
}

#[test]
fn fixing_the_edit_takes_effect_and_deleting_the_resource_removes_it() {
    let (mut inputs, _, last) = baseline();
    let p = policy_mut(&mut inputs, "partners");
    p.spec.test.interval = "30s".into();
    bump(p);
    let (_, last) = evaluate_fail_closed(&inputs, &last);
    let p = policy_mut(&mut inputs, "partners");
    p.spec.test.interval = "1h".into();
    p.spec.min_tls_version = crate::api::TlsVersion::V1_3;
    bump(p);
    let (e, last) = evaluate_fail_closed(&inputs, &last);
    let route = transport_for(&config(&e), "partner.example").expect("route");
    assert!(route.starts_with("mailtls-verify-tls13-bounce:"), "{route}");
    assert_eq!(
        findings(&e, Kind::TlsCompliance, "partners").in_force,
        Some(InForce::Current(3))
    );
    assert_eq!(last.policies["partners"].generation, 3);

    // A bad edit, then the policy is deleted: deleting may weaken.
    let p = policy_mut(&mut inputs, "partners");
    p.spec.test.interval = "30s".into();
    bump(p);
    let (_, last) = evaluate_fail_closed(&inputs, &last);
    inputs.policies.retain(|p| p.name_any() != "partners");
    let (e, last) = evaluate_fail_closed(&inputs, &last);
    assert!(transport_for(&config(&e), "partner.example").is_none());
    assert!(!last.policies.contains_key("partners"));
}

#[test]
fn a_recreated_resource_does_not_inherit() {
    let (mut inputs, _, last) = baseline();
    let p = policy_mut(&mut inputs, "partners");
    p.metadata.uid = Some("tlsc-partners-again".into());
    p.spec.test.interval = "30s".into();
    let (e, next) = evaluate_fail_closed(&inputs, &last);
    assert!(transport_for(&config(&e), "partner.example").is_none());
    let f = findings(&e, Kind::TlsCompliance, "partners");
    assert_eq!(f.in_force, Some(InForce::Nothing));
    assert!(!f.rendered);
    assert!(!next.policies.contains_key("partners"));
}

#[test]
fn a_gateway_edit_that_loses_a_conflict_keeps_its_earlier_routes() {
    let (mut inputs, before, last) = baseline();
    let g = gateway_mut(&mut inputs, "board-archive");
    g.spec.applies_to = crate::api::AppliesTo::AllMail;
    g.spec.address_lists.clear();
    bump(g);
    let one_shot = config(&evaluate(&inputs));
    assert!(transport_for(&one_shot, "board.example").is_none());
    let (e, next) = evaluate_fail_closed(&inputs, &last);
    assert_eq!(config(&e).files, before.files);
    let f = findings(&e, Kind::OutboundGateway, "board-archive");
    assert_eq!(f.in_force, Some(InForce::Earlier(1)));
    assert_eq!(f.conflicts[0].winner.name, "smarthost");
    assert_eq!(next.gateways["board-archive"].generation, 1);
    // The winner hears of the contest its current spec is in.
    let f = findings(&e, Kind::OutboundGateway, "smarthost");
    let one_shot = evaluate(&inputs);
    assert_eq!(
        f.conflicts,
        findings(&one_shot, Kind::OutboundGateway, "smarthost").conflicts
    );
    assert_eq!(f.conflicts.len(), 1);
}

#[test]
fn the_snapshot_round_trips_and_refuses_what_it_cannot_read() {
    let (_, _, last) = baseline();
    let json = last.to_json().expect("json");
    assert!(json.contains("\"version\": 1"), "{json}");
    assert_eq!(LastValid::from_json(&json), Ok(last.clone()));
    let err = LastValid::from_json(&json.replace("\"version\": 1", "\"version\": 2"))
        .expect_err("version 2");
    assert!(err.contains("version 2"), "{err}");
    let err = LastValid::from_json("{\"policies\": {}}").expect_err("no version");
    assert!(err.contains("version"), "{err}");
    let err = LastValid::from_json("{\"version\": 1, \"policies\": 3}").expect_err("shape");
    assert!(err.contains("not a last-valid snapshot"), "{err}");
    assert!(LastValid::from_json("{tru").is_err());
}

#[test]
fn empty_means_no_kind_has_anything_kept() {
    assert!(LastValid::default().is_empty());
    let (_, _, last) = baseline();
    // Each kind alone makes it non-empty.
    let lists = LastValid {
        address_lists: last.address_lists.clone(),
        ..LastValid::default()
    };
    let policies = LastValid {
        policies: last.policies.clone(),
        ..LastValid::default()
    };
    let gateways = LastValid {
        gateways: last.gateways.clone(),
        ..LastValid::default()
    };
    for (kind, kept) in [
        ("lists", lists),
        ("policies", policies),
        ("gateways", gateways),
    ] {
        assert!(!kept.is_empty(), "{kind}");
    }
}

#[test]
fn a_valid_edit_of_a_list_is_kept_as_the_new_generation() {
    let (mut inputs, _, last) = baseline();
    let list = list_mut(&mut inputs, "partners");
    list.spec.entries = ["new-partner.example"].into_iter().collect();
    list.spec.bulk = None;
    bump(list);
    // A second referrer of the same list: it is one list, kept once.
    let mut second = policy_mut(&mut inputs, "partners").clone();
    second.metadata.name = Some("partners-too".into());
    second.metadata.uid = Some("tlsc-partners-too".into());
    inputs.policies.push(second);
    let (e, next) = evaluate_fail_closed(&inputs, &last);
    assert!(e.findings.problems().next().is_none());
    assert_eq!(next.address_lists["partners"].generation, 2);
    assert_eq!(e.policy, evaluate(&inputs).policy);
    assert!(transport_for(&config(&e), "new-partner.example").is_some());
    assert!(transport_for(&config(&e), "partner.example").is_none());
}

#[test]
fn a_kept_policy_uses_the_current_generation_of_its_lists() {
    let (mut inputs, _, last) = baseline();
    let list = list_mut(&mut inputs, "partners");
    list.spec.entries = ["new-partner.example"].into_iter().collect();
    list.spec.bulk = None;
    bump(list);
    let p = policy_mut(&mut inputs, "partners");
    p.spec.test.interval = "30s".into();
    bump(p);
    let (e, next) = evaluate_fail_closed(&inputs, &last);
    let f = findings(&e, Kind::TlsCompliance, "partners");
    assert_eq!(f.in_force, Some(InForce::Earlier(1)));
    // The policy's generation 1 with the list as it is now, not as it was then.
    assert_eq!(next.address_lists["partners"].generation, 2);
    let c = config(&e);
    assert!(transport_for(&c, "new-partner.example").is_some());
    assert!(transport_for(&c, "partner.example").is_none());
    assert_eq!(f.matched, Some((0, 1)));
}

#[test]
fn a_kept_gateway_that_loses_again_contributes_nothing() {
    let (mut inputs, _, last) = baseline();
    // A valid AllMail gateway older than the smart host appears...
    let mut older = gateway_mut(&mut inputs, "smarthost").clone();
    older.metadata.name = Some("older-all-mail".into());
    older.metadata.uid = Some("ogw-older".into());
    older.metadata.creation_timestamp = Some(Time("2025-12-31T00:00:00Z".parse().expect("time")));
    older.spec.host = "older.example.net".into();
    inputs.gateways.push(older);
    // ...while the smart host's current generation is invalid: its kept generation competes
    // for AllMail again, and loses again.
    let g = gateway_mut(&mut inputs, "smarthost");
    g.spec.test.interval = "30s".into();
    bump(g);
    let (e, next) = evaluate_fail_closed(&inputs, &last);
    let f = findings(&e, Kind::OutboundGateway, "smarthost");
    assert_eq!(f.in_force, Some(InForce::Nothing));
    assert!(!f.rendered);
    // Still its last valid generation: should the older gateway go, it counts again.
    assert_eq!(next.gateways["smarthost"].generation, 1);
    let main_cf = &config(&e).files["main.cf"];
    assert!(
        main_cf.contains("relayhost = older.example.net"),
        "{main_cf}"
    );
}

#[test]
fn a_winner_hears_of_a_loser_only_its_kept_generation_brings() {
    let gateway = |name: &str, day: u32, applies_to: crate::api::AppliesTo| {
        let mut g = OutboundGateway::all_mail(name, &format!("{name}.example.net"));
        g.spec.applies_to = applies_to;
        g.metadata.uid = Some(format!("ogw-{name}"));
        g.metadata.generation = Some(1);
        let t = format!("2026-01-0{day}T00:00:00Z");
        g.metadata.creation_timestamp = Some(Time(t.parse().expect("time")));
        g
    };
    use crate::api::AppliesTo::{AllMail, SecureTransportRequired};
    let mut inputs = Inputs {
        namespace: "default".into(),
        gateways: vec![
            gateway("a", 1, SecureTransportRequired),
            gateway("b", 2, AllMail),
        ],
        ..Default::default()
    };
    let (e, last) = evaluate_fail_closed(&inputs, &LastValid::default());
    assert!(e.findings.problems().next().is_none());
    // Now the older one wants all mail too, and the newer one's edit is invalid: only its
    // kept generation (AllMail) competes, and loses to the older one, which must say so.
    inputs.gateways[0].spec.applies_to = AllMail;
    bump(&mut inputs.gateways[0]);
    inputs.gateways[1].spec.test.interval = "30s".into();
    bump(&mut inputs.gateways[1]);
    let (e, _) = evaluate_fail_closed(&inputs, &last);
    let a = findings(&e, Kind::OutboundGateway, "a");
    assert_eq!(a.conflicts.len(), 1, "{:?}", a.conflicts);
    assert_eq!(a.conflicts[0].winner.name, "a");
    let b = findings(&e, Kind::OutboundGateway, "b");
    assert_eq!(b.in_force, Some(InForce::Nothing));
}
