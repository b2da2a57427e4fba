//! The effective policy's rules by key: keys sorted by their text, and each distinct rule
//! stored once. Most keys share their rule with many others (the keys of one list under the
//! same policies), so a key costs where its text is and a number, 12 bytes, instead of a
//! tree node holding its entry and a whole rule.

use super::entry::{Entry, EntryKind};
use hashbrown::HashTable;
use rustc_hash::FxBuildHasher;
use std::borrow::Borrow;
use std::fmt;
use std::hash::{BuildHasher, Hash};
use std::sync::Arc;

/// Rules by key, looked up as a sorted map is (by entry or by text) and iterated in key
/// order. Keys come out as entries of the map's text.
#[derive(Clone)]
pub struct KeyMap<V> {
    /// The text every key is a slice of: the entries of the namespace's lists, which the
    /// keys come from (else a copy of the keys).
    text: Arc<String>,
    /// Each key's bytes in `text`: sorted by key text, no duplicates.
    keys: Vec<(u32, u32)>,
    /// Per key, its rule's index in `rules`.
    rule_of: Vec<u32>,
    rules: Vec<V>,
}

impl<V> Default for KeyMap<V> {
    fn default() -> Self {
        KeyMap {
            text: Arc::default(),
            keys: Vec::new(),
            rule_of: Vec::new(),
            rules: Vec::new(),
        }
    }
}

impl<V> KeyMap<V> {
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    fn key_str(&self, (start, end): (u32, u32)) -> &str {
        &self.text[start as usize..end as usize]
    }

    fn position(&self, key: &str) -> Option<usize> {
        self.keys
            .binary_search_by(|&k| self.key_str(k).cmp(key))
            .ok()
    }

    pub fn get<Q: Borrow<str> + ?Sized>(&self, key: &Q) -> Option<&V> {
        self.position(key.borrow()).map(|i| self.rule(i))
    }

    pub fn get_key_value<Q: Borrow<str> + ?Sized>(&self, key: &Q) -> Option<(Key<'_>, &V)> {
        self.position(key.borrow()).map(|i| self.at(i))
    }

    pub fn contains_key<Q: Borrow<str> + ?Sized>(&self, key: &Q) -> bool {
        self.position(key.borrow()).is_some()
    }

    fn rule(&self, i: usize) -> &V {
        &self.rules[self.rule_of[i] as usize]
    }

    fn at(&self, i: usize) -> (Key<'_>, &V) {
        (Key(self.key_str(self.keys[i])), self.rule(i))
    }

    /// Every key with its rule, in key order.
    pub fn iter(&self) -> impl DoubleEndedIterator<Item = (Key<'_>, &V)> + ExactSizeIterator {
        (0..self.keys.len()).map(|i| self.at(i))
    }

    /// Each key's rule, in key order (a rule shared by several keys comes once per key).
    pub fn values(&self) -> impl DoubleEndedIterator<Item = &V> + ExactSizeIterator {
        self.rule_of.iter().map(|&r| &self.rules[r as usize])
    }
}

impl<V: Eq + Hash> KeyMap<V> {
    /// The map of `rows`; a key given twice keeps its last rule, as a map insert would.
    pub fn from_rows(mut rows: Vec<(Entry, V)>) -> Self {
        // Stable, so the last of equal keys stays last.
        rows.sort_by(|a, b| a.0.cmp(&b.0));
        let mut map = Builder::with_capacity(rows.len());
        let mut rows = rows.into_iter().peekable();
        while let Some((key, rule)) = rows.next() {
            if rows.peek().is_none_or(|next| next.0 != key) {
                map.push(key, rule);
            }
        }
        map.finish()
    }
}

/// A key of a [`KeyMap`], borrowed from it: a canonical entry's text.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Key<'a>(&'a str);

impl<'a> Key<'a> {
    pub fn as_str(self) -> &'a str {
        self.0
    }

    pub fn kind(self) -> EntryKind {
        EntryKind::of(self.as_str())
    }

    /// See [`Entry::domain`].
    pub fn domain(self) -> &'a str {
        EntryKind::domain(self.as_str())
    }

    pub fn is_address(self) -> bool {
        self.kind() == EntryKind::Address
    }

    pub fn is_subdomains(self) -> bool {
        self.kind() == EntryKind::Subdomains
    }
}

impl fmt::Display for Key<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A [`KeyMap`] built from rows that come in key order, one at a time, so no list of whole
/// rows is ever held.
pub(super) struct Builder<V> {
    map: KeyMap<V>,
    /// Rule ids by the rule they stand for (only ids: the rules are in `map.rules`).
    ids: HashTable<u32>,
    /// The keys' texts copied into one, once keys came from more than one text (not from
    /// one namespace's lists): `map.text` then becomes this.
    copied: Option<String>,
}

impl<V: Eq + Hash> Builder<V> {
    pub fn with_capacity(keys: usize) -> Self {
        Builder {
            map: KeyMap {
                keys: Vec::with_capacity(keys),
                rule_of: Vec::with_capacity(keys),
                ..KeyMap::default()
            },
            ids: HashTable::new(),
            copied: None,
        }
    }

    /// Where `key` is in the map's text.
    fn span(&mut self, key: &Entry) -> (u32, u32) {
        let (text, start, end) = key.parts();
        if self.copied.is_none() {
            if self.map.keys.is_empty() {
                self.map.text = text.clone();
            }
            if Arc::ptr_eq(text, &self.map.text) {
                return (start, end);
            }
            // A second text: every key so far is copied into a text of their own.
            let mut copied = String::new();
            for span in &mut self.map.keys {
                *span = append(
                    &mut copied,
                    &self.map.text[span.0 as usize..span.1 as usize],
                );
            }
            self.copied = Some(copied);
        }
        append(self.copied.as_mut().expect("set above"), key.as_str())
    }

    /// Add the key after every key added so far (in text order).
    pub fn push(&mut self, key: Entry, rule: V) {
        debug_assert!(
            self.map
                .keys
                .last()
                .is_none_or(|&last| self.key_str(last) < key.as_str())
        );
        let hash = FxBuildHasher.hash_one(&rule);
        let rules = &mut self.map.rules;
        let id = match self.ids.find(hash, |&id| rules[id as usize] == rule) {
            Some(&id) => id,
            None => {
                rules.push(rule);
                let id = rules.len() as u32 - 1;
                self.ids
                    .insert_unique(hash, id, |&id| FxBuildHasher.hash_one(&rules[id as usize]));
                id
            }
        };
        let span = self.span(&key);
        self.map.keys.push(span);
        self.map.rule_of.push(id);
    }

    /// A key added so far, in the text it is in.
    fn key_str(&self, (start, end): (u32, u32)) -> &str {
        let text = self.copied.as_deref().unwrap_or(&self.map.text);
        &text[start as usize..end as usize]
    }

    pub fn finish(mut self) -> KeyMap<V> {
        if let Some(copied) = self.copied.take() {
            self.map.text = Arc::new(copied);
        }
        self.map.keys.shrink_to_fit();
        self.map.rule_of.shrink_to_fit();
        self.map.rules.shrink_to_fit();
        self.map
    }
}

/// Append `key` to `text`; where it is there.
fn append(text: &mut String, key: &str) -> (u32, u32) {
    let offset = |at: usize| u32::try_from(at).expect("entry texts stay under 4 GiB");
    let start = offset(text.len());
    text.push_str(key);
    (start, offset(text.len()))
}

impl<V: Eq + Hash> FromIterator<(Entry, V)> for KeyMap<V> {
    fn from_iter<I: IntoIterator<Item = (Entry, V)>>(rows: I) -> Self {
        KeyMap::from_rows(rows.into_iter().collect())
    }
}

impl<V: PartialEq> PartialEq for KeyMap<V> {
    fn eq(&self, other: &Self) -> bool {
        self.len() == other.len() && self.iter().eq(other.iter())
    }
}

impl<V: Eq> Eq for KeyMap<V> {}

impl<V: fmt::Debug> fmt::Debug for KeyMap<V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

impl<V> std::ops::Index<&Entry> for KeyMap<V> {
    type Output = V;

    fn index(&self, key: &Entry) -> &V {
        match self.get(key) {
            Some(v) => v,
            None => panic!("no rule for key {key}"),
        }
    }
}

impl<'a, V> IntoIterator for &'a KeyMap<V> {
    type Item = (Key<'a>, &'a V);
    type IntoIter = Box<dyn DoubleEndedIterator<Item = (Key<'a>, &'a V)> + 'a>;

    fn into_iter(self) -> Self::IntoIter {
        Box::new(self.iter())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::parse_entry;

    fn e(s: &str) -> Entry {
        parse_entry(s).expect(s)
    }

    /// Unsorted rows with a key given twice read back as a sorted map with the last rule;
    /// equal rules are stored once, and lookups work by entry and by text.
    #[test]
    fn rows_become_a_sorted_map_with_each_rule_once() {
        let map: KeyMap<&str> = [
            (e("b.example"), "strict"),
            (e("a.example"), "strict"),
            (e("c@a.example"), "loose"),
            (e("b.example"), "loose"),
        ]
        .into_iter()
        .collect();
        let rows: Vec<(&str, &str)> = map.iter().map(|(k, v)| (k.as_str(), *v)).collect();
        assert_eq!(
            rows,
            [
                ("a.example", "strict"),
                ("b.example", "loose"),
                ("c@a.example", "loose")
            ]
        );
        assert_eq!(map.rules.len(), 2);
        assert_eq!(map.get("b.example"), Some(&"loose"));
        assert_eq!(map[&e("a.example")], "strict");
        assert!(map.contains_key(&e("c@a.example")));
        assert_eq!(map.get("nowhere.example"), None);
        assert_eq!(map.values().count(), 3);
        let same: KeyMap<&str> = map.iter().map(|(k, v)| (e(k.as_str()), *v)).collect();
        assert_eq!(same, map);
    }
}
