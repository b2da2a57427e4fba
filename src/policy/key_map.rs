//! The effective policy's rules by key: keys sorted by their text, and each distinct rule
//! stored once. Most keys share their rule with many others (the keys of one list under the
//! same policies), so a key costs its entry and a number instead of a tree node holding a
//! whole rule.

use super::entry::Entry;
use hashbrown::HashTable;
use rustc_hash::FxBuildHasher;
use std::borrow::Borrow;
use std::hash::{BuildHasher, Hash};

/// Rules by key, looked up as a sorted map is (by entry or by text) and iterated in key
/// order.
#[derive(Clone, Debug)]
pub struct KeyMap<V> {
    /// Sorted by text, no duplicates.
    keys: Vec<Entry>,
    /// Per key, its rule's index in `rules`.
    rule_of: Vec<u32>,
    rules: Vec<V>,
}

impl<V> Default for KeyMap<V> {
    fn default() -> Self {
        KeyMap {
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

    fn position(&self, key: &str) -> Option<usize> {
        self.keys.binary_search_by(|k| k.as_str().cmp(key)).ok()
    }

    pub fn get<Q: Borrow<str> + ?Sized>(&self, key: &Q) -> Option<&V> {
        self.get_key_value(key).map(|(_, v)| v)
    }

    pub fn get_key_value<Q: Borrow<str> + ?Sized>(&self, key: &Q) -> Option<(&Entry, &V)> {
        self.position(key.borrow()).map(|i| self.at(i))
    }

    pub fn contains_key<Q: Borrow<str> + ?Sized>(&self, key: &Q) -> bool {
        self.position(key.borrow()).is_some()
    }

    fn at(&self, i: usize) -> (&Entry, &V) {
        (&self.keys[i], &self.rules[self.rule_of[i] as usize])
    }

    /// Every key with its rule, in key order.
    pub fn iter(&self) -> impl DoubleEndedIterator<Item = (&Entry, &V)> + ExactSizeIterator {
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

/// A [`KeyMap`] built from rows that come in key order, one at a time, so no list of whole
/// rows is ever held.
pub(super) struct Builder<V> {
    map: KeyMap<V>,
    /// Rule ids by the rule they stand for (only ids: the rules are in `map.rules`).
    ids: HashTable<u32>,
}

impl<V: Eq + Hash> Builder<V> {
    pub fn with_capacity(keys: usize) -> Self {
        Builder {
            map: KeyMap {
                keys: Vec::with_capacity(keys),
                rule_of: Vec::with_capacity(keys),
                rules: Vec::new(),
            },
            ids: HashTable::new(),
        }
    }

    /// Add the key after every key added so far (in text order).
    pub fn push(&mut self, key: Entry, rule: V) {
        debug_assert!(self.map.keys.last().is_none_or(|last| *last < key));
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
        self.map.keys.push(key);
        self.map.rule_of.push(id);
    }

    pub fn finish(mut self) -> KeyMap<V> {
        self.map.keys.shrink_to_fit();
        self.map.rule_of.shrink_to_fit();
        self.map.rules.shrink_to_fit();
        self.map
    }
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
    type Item = (&'a Entry, &'a V);
    type IntoIter = Box<dyn DoubleEndedIterator<Item = (&'a Entry, &'a V)> + 'a>;

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
        let same: KeyMap<&str> = map.iter().map(|(k, v)| (k.clone(), *v)).collect();
        assert_eq!(same, map);
    }
}
