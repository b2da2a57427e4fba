//! Property: rendering is deterministic and independent of input order — documents, list
//! entries and resources shuffled any way give byte-identical files.

mod common;
use common::*;
use mailtls::policy::evaluate;
use mailtls::render::render;
use proptest::prelude::*;

fn entry_strategy() -> impl Strategy<Value = String> {
    let label = "[a-c]{1,2}";
    prop_oneof![
        (label, label).prop_map(|(l, d)| format!("{l}@{d}.example")),
        label.prop_map(|d| format!("{d}.example")),
        label.prop_map(|d| format!(".{d}.example")),
        (label, label).prop_map(|(s, d)| format!("{s}.{d}.example")),
        label.prop_map(|d| format!("{}.EXAMPLE", d.to_uppercase())),
    ]
}

fn policy_options() -> impl Strategy<Value = String> {
    (any::<bool>(), any::<bool>(), 0..4u8, any::<bool>(), any::<bool>(), 0..3u8).prop_map(|(ca, host, v, bounce, monitor, dir)| {
        // Inbound policies carry no outbound options (the schema refuses them).
        let (ca, host, v) = if dir == 1 { (false, false, 2) } else { (ca, host, v) };
        format!(
            "  requireCASigned: {}\n  validateHostname: {}\n  minTlsVersion: \"1.{v}\"\n  onFailure: {}\n  enforcement: {}\n",
            ca || host,
            host,
            if bounce { "Bounce" } else { "Defer" },
            if monitor { "Monitor" } else { "Enforce" },
        )
        .replace("  requireCASigned", &format!("  direction: {}\n  requireCASigned", ["Outbound", "Inbound", "Both"][dir as usize]))
    })
}

/// A namespace: lists, policies over them, gateways of every kind, as separate documents.
fn documents() -> impl Strategy<Value = Vec<String>> {
    (
        prop::collection::vec(prop::collection::vec(entry_strategy(), 1..12), 1..5),
        prop::collection::vec((policy_options(), 0..5usize), 0..5),
        prop::collection::vec((0..3u8, 0..5usize, any::<bool>()), 0..4),
    )
        .prop_map(|(lists, policies, gateways)| {
            let mut docs = Vec::new();
            let n = lists.len();
            for (i, entries) in lists.iter().enumerate() {
                let refs: Vec<&str> = entries.iter().map(String::as_str).collect();
                docs.push(list(&format!("l{i}"), &refs));
            }
            for (i, (opts, l)) in policies.iter().enumerate() {
                let doc = policy(&format!("p{i}"), &[&format!("l{}", l % n)], "").replace("  direction: Outbound\n", "");
                docs.push(doc.replace("\n---\n", &format!("{opts}---\n")).replace("\n\n", "\n"));
            }
            for (i, (kind, l, mx)) in gateways.iter().enumerate() {
                let spec = match kind {
                    0 => format!("  host: gw{i}.example.net\n  mxLookup: {mx}\n  appliesTo: AllMail"),
                    1 => format!("  host: gw{i}.example.net\n  port: 465\n  appliesTo: SecureTransportRequired\n  tls:\n    require: {mx}"),
                    _ => format!("  host: gw{i}.example.net\n  appliesTo: Recipients\n  addressLists:\n    - name: l{}", l % n),
                };
                docs.push(gateway(&format!("g{i}"), &spec));
            }
            docs
        })
}

fn render_docs(docs: &[String]) -> mailtls::render::RelayConfig {
    render(&evaluate(&inputs(&docs.concat())).policy, &options_37())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn render_is_deterministic_and_order_independent(docs in documents(), seed in any::<u64>()) {
        let first = render_docs(&docs);
        prop_assert_eq!(&first, &render_docs(&docs));
        // Shuffle the documents and the entries inside each list.
        let mut shuffled = docs.clone();
        let mut state = seed | 1;
        let mut next = move |n: usize| { state ^= state << 13; state ^= state >> 7; state ^= state << 17; (state % n as u64) as usize };
        for i in (1..shuffled.len()).rev() {
            let j = next(i + 1);
            shuffled.swap(i, j);
        }
        let shuffled: Vec<String> = shuffled.into_iter().map(|d| {
            if !d.contains("kind: AddressList") { return d; }
            let (head, rest) = d.split_once("  entries:\n").expect("list doc");
            let mut lines: Vec<&str> = rest.lines().filter(|l| l.starts_with("    - ")).collect();
            for i in (1..lines.len()).rev() { let j = next(i + 1); lines.swap(i, j); }
            format!("{head}  entries:\n{}\n---\n", lines.join("\n"))
        }).collect();
        let second = render_docs(&shuffled);
        prop_assert_eq!(&first.hash, &second.hash);
        prop_assert_eq!(first.files, second.files);
    }
}
