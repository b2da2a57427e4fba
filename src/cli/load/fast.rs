//! AddressLists read without a value per entry. A document's value tree is how every wrong
//! field gets reported (it is read again without each one), but for a list of 10k entries it
//! takes about 13 times the document's text. Here the entries of `spec` go straight into
//! their text as they are parsed, every other field into a value as usual, and the document
//! is then typed as [`classify`](super::classify) types it. In block YAML the entries are
//! read line by line where they can be ([`block`]), before the YAML parser sees the rest.
//! Whenever that could read differently, the caller reads the whole document the usual way
//! instead.

use super::{Doc, block, classify};
use crate::api::Entries;
use serde::Deserialize;
use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_norway::{Mapping, Value};
use std::fmt;

/// The document `text` read with its entries apart; None when it must be read the usual
/// way: not an AddressList, not valid, not typed without errors (their messages come from
/// the usual way), a key given twice, or an entry that is not plainly a string.
pub(super) fn address_list(text: &str) -> Option<Doc> {
    if !text.contains("AddressList") {
        return None;
    }
    // As `parse` does: JSON by the JSON parser, then anything else by the YAML parser.
    let split = if text.trim_start().starts_with('{') {
        serde_json::from_str::<Split>(text).ok()
    } else {
        None
    };
    let split = split
        .or_else(|| block_split(text))
        .or_else(|| serde_norway::from_str::<Split>(text).ok());
    let Split { value, entries } = split?;
    match (classify(value), entries) {
        (Doc::AddressList(mut typed), entries) => {
            let (list, _) = typed.read.as_mut().ok()?;
            if let Some(entries) = entries {
                list.spec.entries = entries;
            }
            Some(Doc::AddressList(typed))
        }
        // Entries taken out of another kind's spec would be missing from its unknown fields.
        (_, Some(_)) => None,
        // Nothing was taken out: the very value the usual way reads.
        (read, None) => Some(read),
    }
}

/// The document read with its entries read line by line; None if they cannot be, or if the
/// YAML parser does not find the marker in `spec.entries`, where they were taken out.
fn block_split(text: &str) -> Option<Split> {
    let block = block::entries(text)?;
    let split = serde_norway::from_str::<Split>(&block.rest).ok()?;
    let marked = split.entries.as_ref()?;
    (marked.len() == 1 && marked.get(0) == Some(block::MARKER)).then_some(Split {
        entries: Some(block.entries),
        ..split
    })
}

/// A document with `spec.entries` taken out of its value.
struct Split {
    value: Value,
    entries: Option<Entries>,
}

impl<'de> Deserialize<'de> for Split {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        // `any` here and below: a tagged node (`!x {…}`) then comes as an enum and is refused,
        // where asking for a mapping or a sequence would pass over its tag.
        deserializer.deserialize_any(SplitVisitor { top: true })
    }
}

/// Reads a mapping into a value, except the entries: `spec` at the top, `entries` in it.
struct SplitVisitor {
    top: bool,
}

impl<'de> Visitor<'de> for SplitVisitor {
    type Value = Split;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a mapping")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Split, A::Error> {
        let mut out = Mapping::new();
        let mut entries = None;
        while let Some(key) = map.next_key::<Value>()? {
            let value = match key.as_str() {
                Some("spec") if self.top => {
                    let spec = map.next_value_seed(SpecSeed)?;
                    entries = spec.entries;
                    spec.value
                }
                Some("entries") if !self.top => {
                    let read = map.next_value_seed(StrictEntries)?;
                    if entries.replace(read).is_some() {
                        return Err(de::Error::custom("a key given twice"));
                    }
                    continue;
                }
                _ => map.next_value::<Value>()?,
            };
            if out.insert(key, value).is_some() {
                return Err(de::Error::custom("a key given twice"));
            }
        }
        Ok(Split {
            value: Value::Mapping(out),
            entries,
        })
    }
}

/// `spec`, its entries apart.
struct SpecSeed;

impl<'de> DeserializeSeed<'de> for SpecSeed {
    type Value = Split;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Split, D::Error> {
        deserializer.deserialize_any(SplitVisitor { top: false })
    }
}

/// The entries, each of them a string as written: a number, a boolean, a null or a tagged
/// value is an error here (the usual way says which and where). Not `Entries`' own reading,
/// which reads as a `Vec<String>` does and, from a value, takes a tagged string as its text.
struct StrictEntries;

impl<'de> DeserializeSeed<'de> for StrictEntries {
    type Value = Entries;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Entries, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for StrictEntries {
    type Value = Entries;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a sequence of strings")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Entries, A::Error> {
        let mut entries = Entries::default();
        while seq.next_element_seed(StrictEntry(&mut entries))?.is_some() {}
        entries.shrink_to_fit();
        Ok(entries)
    }
}

/// One entry, appended to the entries' text.
struct StrictEntry<'e>(&'e mut Entries);

impl<'de> DeserializeSeed<'de> for StrictEntry<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        // `any`, not `string`: the YAML parser hands an unquoted 5 to a string as "5", where
        // the value (and so the usual way) holds the number 5; and a tag comes as an enum.
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for StrictEntry<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a string")
    }

    fn visit_str<E: de::Error>(self, entry: &str) -> Result<(), E> {
        self.0.push(entry).map_err(E::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::super::{Doc, classify, parse};
    use super::address_list;

    /// What the usual way reads: the value, typed.
    fn usual(text: &str) -> String {
        format!("{:?}", parse(text).map(classify).map(debug))
    }

    fn debug(doc: Doc) -> String {
        match doc {
            Doc::AddressList(t) => format!(
                "AddressList {} {:?}",
                t.name_hint,
                t.read.map_err(|e| format!("{e:?}"))
            ),
            Doc::TlsCompliance(t) => {
                format!("TlsCompliance {} {:?}", t.name_hint, t.read.map(|r| r.1))
            }
            Doc::OutboundGateway(t) => format!("OutboundGateway {}", t.name_hint),
            Doc::List(items) => format!(
                "List {:?}",
                items.into_iter().map(debug).collect::<Vec<_>>()
            ),
            Doc::Empty => "Empty".into(),
            Doc::Refused(m) => format!("Refused {m}"),
            Doc::Skipped(k) => format!("Skipped {k}"),
        }
    }

    const HEAD: &str = "apiVersion: mailtls.io/v1alpha1\nkind: AddressList\nmetadata:\n  name: l\n";

    /// Read the fast way, a document reads as the usual way reads it; and what the fast way
    /// cannot read exactly is left to the usual way.
    #[test]
    fn the_fast_way_reads_as_the_usual_way_or_not_at_all() {
        let fast = [
            format!("{HEAD}spec:\n  entries:\n  - a.example\n  - 'B@A.example'\n  - yes\n  bulk: c.example\n  extra: 1\n"),
            format!("{HEAD}spec:\n  bulk: c.example\n"),
            format!("{HEAD}spec:\n  entries: [!!str 5, \"6\", a.example]\n"),
            format!("{HEAD}spec: {{entries: [&x a.example, *x, \"\"]}}\n"),
            r#"{"apiVersion": "mailtls.io/v1alpha1", "kind": "AddressList", "metadata": {"name": "j"}, "spec": {"entries": ["a.example", "x@b.example"]}}"#.to_string(),
            // Other kinds that mention AddressList, without entries to take out.
            "apiVersion: mailtls.io/v1alpha1\nkind: TlsCompliance\nmetadata:\n  name: p\nspec:\n  addressLists: [{name: AddressList}]\n  bogus: 1\n".to_string(),
            "apiVersion: v1\nkind: List\nitems:\n- apiVersion: mailtls.io/v1alpha1\n  kind: AddressList\n  metadata: {name: i}\n  spec: {entries: [a.example]}\n".to_string(),
        ];
        for text in &fast {
            let read = address_list(text).unwrap_or_else(|| panic!("fast: {text}"));
            assert_eq!(
                format!("{:?}", Ok::<_, ()>(debug(read))),
                usual(text),
                "{text}"
            );
        }
        let usual_way = [
            format!("{HEAD}spec:\n  entries: [a.example, 5]\n"),
            format!("{HEAD}spec:\n  entries: [a.example, ~, true, 1.5]\n"),
            format!("{HEAD}spec:\n  entries: [!custom a.example]\n"),
            format!("{HEAD}spec:\n  entries: !custom [a.example]\n"),
            format!("{HEAD}spec: !custom {{entries: [a.example]}}\n"),
            format!("--- !custom\n{HEAD}spec: {{entries: [a.example]}}\n"),
            format!("{HEAD}spec:\n  entries: [a.example]\n  entries: [b.example]\n"),
            format!("{HEAD}spec:\n  entries: a.example\n"),
            format!("{HEAD}spec: 5\n"),
            format!("{HEAD}metadata:\n  name: twice\nspec: {{}}\n"),
            format!("{HEAD}spec:\n  bulk: 5\n"),
            format!("{HEAD}spec: [unclosed\n"),
            "apiVersion: mailtls.io/v1alpha1\nkind: TlsCompliance\nmetadata: {name: AddressList}\nspec:\n  entries: [a.example]\n".to_string(),
        ];
        for text in &usual_way {
            assert!(address_list(text).is_none(), "{text}");
        }
    }

    /// Lines an entries block may hold, read line by line or left to the YAML parser.
    const LINES: &[&str] = &[
        "  entries:",
        "  entries: # the list",
        "  entries: &x",
        "  \"entries\":",
        "    entries:",
        "  entries: [k.example]",
        "  - a.example",
        "  - x@y.example",
        "  - 'q@y.example'",
        "  - \"d.example\"",
        "  - a.example # who",
        "  - a.example#who",
        "  - .sub.example",
        "  - A.EXAMPLE",
        "  - 1e5.example",
        "  - ''",
        "  - 5",
        "  - 1.5",
        "  - 1.5e3",
        "  - true",
        "  - .inf",
        "  - .NaN",
        "  - -.inf",
        "  - localhost",
        "  -",
        "  - a.example:",
        "  - &a e.example",
        "  - *a",
        "  - 'it''s.example'",
        "  - \"tab\\t.example\"",
        "  - a.example\t",
        "\t- a.example",
        "    - b.example",
        " - c.example",
        "    continued.example",
        "  # a comment",
        "",
        "   ",
        "  bulk: z.example",
        "  other: 1",
        "    nested: 2",
        "status: {}",
        "spec:",
    ];

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { cases: 2048, failure_persistence: None, ..Default::default() })]
        /// Whatever lines follow `spec:`, a document read the fast way (line by line where it
        /// can) reads as the usual way reads it.
        #[test]
        fn entries_read_line_by_line_read_as_the_yaml_parser_reads_them(
            lines in proptest::collection::vec(proptest::sample::select(LINES), 0..12),
            windows in proptest::bool::ANY,
        ) {
            let text = format!("{HEAD}spec:\n{}\n", lines.join("\n"));
            let text = if windows { text.replace('\n', "\r\n") } else { text };
            if let Some(read) = address_list(&text) {
                proptest::prop_assert_eq!(
                    format!("{:?}", Ok::<_, ()>(debug(read))),
                    usual(&text),
                    "{}", text
                );
            }
        }
    }
}
