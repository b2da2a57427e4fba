//! `spec.entries` of an AddressList as written: one text and where each entry ends. On the
//! wire it is a plain array of strings; in memory a hundred thousand entries are two
//! allocations instead of one each (a `Vec<String>` costs 24 bytes an entry plus an
//! allocation of its own, more than twice the text).

use serde::de::{self, DeserializeSeed, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;

/// The entries of a list, in the order written.
#[derive(Clone, Default, PartialEq, Eq, Hash)]
pub struct Entries {
    /// Every entry, one after another.
    text: String,
    /// Where each entry ends in `text` (it starts where the one before ends).
    ends: Vec<u32>,
}

impl Entries {
    pub fn len(&self) -> usize {
        self.ends.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// The entry at `index`.
    pub fn get(&self, index: usize) -> Option<&str> {
        let end = *self.ends.get(index)? as usize;
        let start = match index {
            0 => 0,
            _ => self.ends[index - 1] as usize,
        };
        Some(&self.text[start..end])
    }

    /// Every entry, in order.
    pub fn iter(&self) -> impl DoubleEndedIterator<Item = &str> + ExactSizeIterator + Clone {
        (0..self.len()).map(|i| self.get(i).unwrap_or_default())
    }

    /// Add an entry at the end; an error once the entries hold 4 GiB of text (far beyond
    /// what any file or API object may hold).
    pub fn push(&mut self, entry: &str) -> Result<(), String> {
        let end = u32::try_from(self.text.len() + entry.len())
            .map_err(|_| "the entries of one list hold more than 4 GiB of text".to_string())?;
        self.text.push_str(entry);
        self.ends.push(end);
        Ok(())
    }

    /// Give back the room left by growing, once every entry is in.
    pub fn shrink_to_fit(&mut self) {
        self.text.shrink_to_fit();
        self.ends.shrink_to_fit();
    }

    /// Keep the first `len` entries.
    pub fn truncate(&mut self, len: usize) {
        self.ends.truncate(len);
        self.text
            .truncate(self.ends.last().map_or(0, |&end| end as usize));
    }
}

/// Entries from strings, as a literal list is written in code.
impl<S: AsRef<str>> FromIterator<S> for Entries {
    fn from_iter<I: IntoIterator<Item = S>>(items: I) -> Self {
        let mut entries = Entries::default();
        for item in items {
            // Code that builds 4 GiB of entries has a bug no error could report better.
            entries.push(item.as_ref()).expect("entries under 4 GiB");
        }
        entries
    }
}

impl<S: AsRef<str>> From<Vec<S>> for Entries {
    fn from(items: Vec<S>) -> Self {
        items.into_iter().collect()
    }
}

impl fmt::Debug for Entries {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

impl Serialize for Entries {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(self.iter())
    }
}

impl<'de> Deserialize<'de> for Entries {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_seq(EntriesVisitor)
    }
}

/// Reads a sequence of strings straight into one [`Entries`], with the words and paths a
/// `Vec<String>` would give for an item of the wrong type.
struct EntriesVisitor;

impl<'de> Visitor<'de> for EntriesVisitor {
    type Value = Entries;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a sequence")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Entries, A::Error> {
        let mut entries = Entries::default();
        // A hint from the input is not trusted beyond what a list may hold.
        let hint = seq.size_hint().unwrap_or(0);
        entries.ends.reserve(hint.min(super::MAX_LIST_ENTRIES));
        while seq.next_element_seed(Append(&mut entries))?.is_some() {}
        entries.shrink_to_fit();
        Ok(entries)
    }
}

/// One item of the sequence, appended to the entries' text without a string of its own.
struct Append<'e>(&'e mut Entries);

impl<'de> DeserializeSeed<'de> for Append<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_string(self)
    }
}

impl<'de> Visitor<'de> for Append<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a string")
    }

    fn visit_str<E: de::Error>(self, item: &str) -> Result<(), E> {
        self.0.push(item).map_err(E::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_read_and_write_as_an_array_of_strings() {
        let json = r#"["a@x.example","x.example",".x.example",""]"#;
        let entries: Entries = serde_json::from_str(json).expect("entries");
        assert_eq!(entries.len(), 4);
        assert_eq!(
            entries.iter().collect::<Vec<_>>(),
            ["a@x.example", "x.example", ".x.example", ""]
        );
        assert_eq!(entries.get(1), Some("x.example"));
        assert_eq!(entries.get(4), None);
        assert_eq!(serde_json::to_string(&entries).expect("json"), json);
        assert_eq!(
            entries,
            Entries::from(vec!["a@x.example", "x.example", ".x.example", ""])
        );
        assert_eq!(
            format!("{:?}", Entries::from(vec!["a", "b"])),
            r#"["a", "b"]"#
        );
        let mut first = entries.clone();
        first.truncate(1);
        assert_eq!(first, Entries::from(vec!["a@x.example"]));
        first.push("y.example").expect("push");
        assert_eq!(first.iter().last(), Some("y.example"));
    }

    /// An item of the wrong type is reported as a `Vec<String>` reports it, with its index.
    #[test]
    fn a_wrong_item_is_named_as_before() {
        let yaml = "entries: [a.example, 5]\n";
        #[derive(Deserialize, Debug)]
        struct Spec {
            #[allow(dead_code)]
            entries: Entries,
        }
        #[derive(Deserialize, Debug)]
        struct Before {
            #[allow(dead_code)]
            entries: Vec<String>,
        }
        let value: serde_norway::Value = serde_norway::from_str(yaml).expect("yaml");
        let error = |result: Result<(), serde_path_to_error::Error<serde_norway::Error>>| {
            let e = result.expect_err("5 is not a string");
            (e.path().to_string(), e.inner().to_string())
        };
        let now = error(serde_path_to_error::deserialize::<_, Spec>(&value).map(drop));
        let before = error(serde_path_to_error::deserialize::<_, Before>(&value).map(drop));
        assert_eq!(now, before);
        assert_eq!(now.0, "entries[1]");
    }
}
