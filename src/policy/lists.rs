//! Address lists, normalised once per namespace. Every distinct entry gets a small number
//! (its id), so the merge works on arrays instead of hashing and comparing strings: that
//! keeps evaluation close to linear at a hundred thousand entries.

use super::entry::{self, Entry, EntryKind};
use super::{
    Findings, Kind, ListStats, MAX_BULK_CHARS, MAX_ENTRIES, MAX_LISTED_INVALID,
    MAX_NAMESPACE_ENTRIES, Problem, ResourceId, checks,
};
use crate::api::{AddressList, Entries, LIST_SIZE_MESSAGE, LocalRef};
use hashbrown::HashTable;
use kube::ResourceExt;
use rustc_hash::FxBuildHasher;
use std::borrow::Cow;
use std::collections::BTreeMap;
use std::hash::BuildHasher;
use std::sync::Arc;

/// Every entry of every list of a namespace, numbered, and each list as ids.
#[derive(Default)]
pub(super) struct Lists {
    /// Every entry's canonical text, one after another. The entries handed out are slices
    /// of it, so a hundred thousand entries are one allocation rather than one each.
    text: Arc<String>,
    /// id → where its text ends in `text` (it starts where the one before ends).
    ends: Vec<u32>,
    /// Ids by the text of their entry. The table holds only ids (4 bytes a slot, where a
    /// map of entries would take 32) and finds the text through `ends`.
    ids: HashTable<u32>,
    by_name: BTreeMap<String, Vec<u32>>,
}

fn hash(text: &str) -> u64 {
    FxBuildHasher.hash_one(text)
}

/// Where the text of `id` lies in the lists' text.
fn span(ends: &[u32], id: u32) -> std::ops::Range<usize> {
    let id = id as usize;
    let start = if id == 0 { 0 } else { ends[id - 1] as usize };
    start..ends[id] as usize
}

impl Lists {
    /// The id of an entry given its canonical text.
    pub fn id(&self, text: &str) -> Option<u32> {
        self.id_hashed(hash(text), text)
    }

    /// The entry of an id: a slice of the lists' text, no copy.
    pub fn entry(&self, id: u32) -> Entry {
        let at = span(&self.ends, id);
        Entry::in_text(self.text.clone(), at.start, at.end)
    }

    /// The canonical text of an id.
    pub fn text(&self, id: u32) -> &str {
        &self.text[span(&self.ends, id)]
    }

    pub fn len(&self) -> usize {
        self.ends.len()
    }

    /// Free which ids each list holds, once every policy and gateway has taken its own
    /// (the merge needs only the entries).
    pub fn forget_members(&mut self) {
        self.by_name = BTreeMap::new();
    }

    fn intern(&mut self, entry: &str) -> u32 {
        let h = hash(entry);
        if let Some(id) = self.id_hashed(h, entry) {
            return id;
        }
        let Lists {
            text, ends, ids, ..
        } = self;
        let id = ends.len() as u32;
        // Interning happens only while the lists are built, before any entry is handed out.
        let text = Arc::get_mut(text).expect("no entry shares the text while interning");
        text.push_str(entry);
        // At most 100 000 entries of at most 318 bytes: far below 4 GiB.
        ends.push(text.len() as u32);
        ids.insert_unique(h, id, |&id| hash(&text[span(ends, id)]));
        id
    }

    fn id_hashed(&self, h: u64, text: &str) -> Option<u32> {
        self.ids.find(h, |&id| self.text(id) == text).copied()
    }

    /// (addresses, domains) among `ids`.
    pub fn count_kinds(&self, ids: &[u32]) -> (u64, u64) {
        let addresses = ids
            .iter()
            .filter(|&&id| EntryKind::of(self.text(id)) == EntryKind::Address)
            .count() as u64;
        (addresses, ids.len() as u64 - addresses)
    }

    /// The ids of the referenced lists, without duplicates. A missing list is an error on
    /// the referrer; every list found records who uses it.
    pub fn referenced(
        &self,
        referrer: &ResourceId,
        refs: &[LocalRef],
        findings: &mut Findings,
    ) -> Vec<u32> {
        let mut out: Vec<u32> = Vec::new();
        let mut seen = if refs.len() > 1 {
            vec![false; self.len()]
        } else {
            Vec::new()
        };
        for (i, r) in refs.iter().enumerate() {
            let Some(ids) = self.by_name.get(&r.name) else {
                findings.get_mut(referrer).errors.push(Problem {
                    field: format!("spec.addressLists[{i}].name"),
                    message: format!(
                        "AddressList '{}' does not exist in this namespace",
                        entry::display_raw(&r.name)
                    ),
                });
                continue;
            };
            findings
                .get_mut(&ResourceId::new(Kind::AddressList, r.name.clone()))
                .used_by
                .insert(referrer.clone());
            if seen.is_empty() {
                out.extend_from_slice(ids);
            } else {
                for &id in ids {
                    if !std::mem::replace(&mut seen[id as usize], true) {
                        out.push(id);
                    }
                }
            }
        }
        out
    }
}

/// Entries parsed by one worker at a time.
const PARSE_CHUNK: usize = 2048;
/// Chunks parsed before they are numbered.
const PARSE_WINDOW: usize = 4;

/// A list's items as written: borrowed from the list, or taken out of it so that each
/// list's text is freed as soon as it is numbered.
struct Items<'a> {
    entries: Cow<'a, Entries>,
    bulk: Cow<'a, str>,
}

impl<'a> Items<'a> {
    fn of(list: &'a AddressList) -> Self {
        Items {
            entries: Cow::Borrowed(&list.spec.entries),
            bulk: Cow::Borrowed(list.spec.bulk.as_deref().unwrap_or_default()),
        }
    }

    fn take(list: &mut AddressList) -> Items<'static> {
        Items {
            entries: Cow::Owned(std::mem::take(&mut list.spec.entries)),
            bulk: Cow::Owned(list.spec.bulk.take().unwrap_or_default()),
        }
    }

    fn bulk(&self) -> impl Iterator<Item = &str> {
        entry::split_bulk(&self.bulk)
    }

    fn count(&self) -> usize {
        self.entries.len() + self.bulk().count()
    }

    /// Its entries, then its bulk text's items.
    fn iter(&self) -> impl Iterator<Item = &str> {
        self.entries.iter().chain(self.bulk())
    }
}

/// The canonical text of each raw entry, in order. Parsing is most of the work, and each
/// entry is parsed alone: on every core, in chunks (one list may hold all the entries), a
/// few chunks per core at a time, as the caller takes them. Every entry parsed at once
/// would hold a second copy of each (duplicates too) until numbered.
fn canonical_texts<'r>(
    mut raws: impl Iterator<Item = &'r str>,
) -> impl Iterator<Item = Result<Cow<'r, str>, String>> {
    std::iter::from_fn(move || {
        let window: Vec<&str> = raws.by_ref().take(PARSE_CHUNK * PARSE_WINDOW).collect();
        let chunks: Vec<&[&str]> = window.chunks(PARSE_CHUNK).collect();
        let parsed = crate::parallel::map(&chunks, |chunk| {
            chunk
                .iter()
                .map(|&raw| entry::canonical_text(raw))
                .collect::<Vec<_>>()
        });
        (!parsed.is_empty()).then_some(parsed)
    })
    .flatten()
    .flatten()
}

/// Normalise every list: parse each entry, drop and count duplicates, collect invalid ones.
/// Lists refused by [`admit`] are not read at all.
pub(super) fn normalize(lists: &[AddressList], findings: &mut Findings) -> Lists {
    normalize_items(lists, lists.iter().map(Items::of).collect(), findings)
}

/// [`normalize`], taking the entries out of the lists: each list's are freed once numbered,
/// so they and the numbered entries are never all held at once.
pub(super) fn normalize_taking(lists: &mut [AddressList], findings: &mut Findings) -> Lists {
    let items = lists.iter_mut().map(Items::take).collect();
    normalize_items(lists, items, findings)
}

fn normalize_items(lists: &[AddressList], items: Vec<Items>, findings: &mut Findings) -> Lists {
    let (admitted, total) = admit(lists, &items, findings);
    // Sized once for every entry as written: growing the table rehashes them all each time,
    // and growing the text copies it. Canonical texts are rarely longer than written.
    let mut out = Lists {
        text: Arc::new(String::with_capacity(
            (items.iter().zip(&admitted))
                .filter(|(_, admitted)| **admitted)
                .flat_map(|(items, _)| items.iter())
                .map(str::len)
                .sum(),
        )),
        ends: Vec::with_capacity(total),
        ids: HashTable::with_capacity(total),
        by_name: BTreeMap::new(),
    };
    // The list that last took each id, to count duplicates within one list.
    let mut last_list: Vec<u32> = vec![0; total];
    for (n, (list, items)) in lists.iter().zip(items).enumerate() {
        if !admitted[n] {
            findings
                .get_mut(&ResourceId::new(Kind::AddressList, list.name_any()))
                .list = Some(ListStats::default());
            out.by_name.insert(list.name_any(), Vec::new());
            continue;
        }
        let mut parsed = canonical_texts(items.iter());
        let stamp = n as u32 + 1;
        let mut stats = ListStats::default();
        let mut ids = Vec::with_capacity(items.count());
        let mut add = |raw: &str,
                       parsed: Result<Cow<str>, String>,
                       field: &dyn Fn() -> String,
                       stats: &mut ListStats| match parsed {
            Ok(entry) => {
                // No more ids than admitted entries.
                let id = out.intern(&entry) as usize;
                if std::mem::replace(&mut last_list[id], stamp) == stamp {
                    stats.duplicates += 1;
                } else {
                    ids.push(id as u32);
                }
            }
            Err(reason) => {
                stats.invalid_total += 1;
                if stats.invalid.len() < MAX_LISTED_INVALID {
                    let shown = entry::display_raw(raw);
                    let message = format!("'{shown}': {reason}");
                    stats.invalid.push((
                        shown,
                        Problem {
                            field: field(),
                            message,
                        },
                    ));
                }
            }
        };
        // Parsed above, in this very order.
        for ((i, raw), entry) in items.entries.iter().enumerate().zip(&mut parsed) {
            add(raw, entry, &|| format!("spec.entries[{i}]"), &mut stats);
        }
        for ((i, raw), entry) in items.bulk().enumerate().zip(&mut parsed) {
            add(
                raw,
                entry,
                &|| format!("spec.bulk (item {})", i + 1),
                &mut stats,
            );
        }
        (stats.addresses, stats.domains) = out.count_kinds(&ids);
        findings
            .get_mut(&ResourceId::new(Kind::AddressList, list.name_any()))
            .list = Some(stats);
        // Duplicates and invalid entries leave room unused.
        ids.shrink_to_fit();
        out.by_name.insert(list.name_any(), ids);
    }
    // Hand back what duplicates and invalid entries left unused.
    if let Some(text) = Arc::get_mut(&mut out.text) {
        text.shrink_to_fit();
    }
    out
}

/// Which lists may be normalised: the bulk text within [`MAX_BULK_CHARS`], each list within
/// [`MAX_ENTRIES`] and, oldest list first, the namespace within [`MAX_NAMESPACE_ENTRIES`].
/// Entries are counted as written, before any is parsed or stored, so an oversized
/// namespace costs one scan of its text instead of the memory of its entries. A refused
/// list gets an error and contributes nothing. Also returns the entries admitted, as written.
fn admit(lists: &[AddressList], items: &[Items], findings: &mut Findings) -> (Vec<bool>, usize) {
    let mut order: Vec<usize> = (0..lists.len()).collect();
    order.sort_by_key(|&i| checks::age_key(&lists[i]));
    let mut admitted = vec![false; lists.len()];
    let mut total = 0;
    for i in order {
        let list = &lists[i];
        let id = ResourceId::new(Kind::AddressList, list.name_any());
        let problem = if items[i].bulk.chars().count() > MAX_BULK_CHARS {
            Problem {
                field: "spec.bulk".into(),
                message: format!(
                    "is longer than {MAX_BULK_CHARS} characters; split it into several AddressLists"
                ),
            }
        } else {
            let count = items[i].count();
            if count > MAX_ENTRIES {
                Problem {
                    field: "spec.entries".into(),
                    message: format!("{LIST_SIZE_MESSAGE}; this one has {count}"),
                }
            } else if total + count > MAX_NAMESPACE_ENTRIES {
                Problem {
                    field: "spec".into(),
                    message: format!(
                        "the AddressLists of one namespace may hold at most \
                         {MAX_NAMESPACE_ENTRIES} entries together; older lists hold {total} \
                         and this one {count}, so this list is not used"
                    ),
                }
            } else {
                total += count;
                admitted[i] = true;
                continue;
            }
        };
        findings.get_mut(&id).errors.push(problem);
    }
    (admitted, total)
}

/// The normalised, deduplicated entries of one list (invalid ones left out), sorted.
pub fn list_entries(list: &AddressList) -> Vec<Entry> {
    let lists = normalize(std::slice::from_ref(list), &mut Findings::default());
    let mut entries: Vec<Entry> = lists
        .by_name
        .values()
        .flatten()
        .map(|id| lists.entry(*id))
        .collect();
    entries.sort_unstable();
    entries
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{AddressList, LocalRef};

    fn lists() -> (Lists, Findings) {
        let mut findings = Findings::default();
        let input = [
            AddressList::with_entries("a", &["x.example", "y.example"]),
            AddressList::with_entries("b", &["y.example", "z.example"]),
        ];
        (normalize(&input, &mut findings), findings)
    }

    fn refs(names: &[&str]) -> Vec<LocalRef> {
        names
            .iter()
            .map(|n| LocalRef {
                name: n.to_string(),
            })
            .collect()
    }

    /// The ids of the referenced lists come once each, however often a list or an entry is
    /// referenced (`refs.len() > 1` picks the de-duplicating path; with one reference there
    /// is nothing to repeat, so `>= 1` would only cost a vector: not a test's business).
    #[test]
    fn referenced_ids_come_once() {
        let (lists, mut findings) = lists();
        let me = ResourceId::new(Kind::TlsCompliance, "p");
        let texts = |ids: Vec<u32>| -> Vec<String> {
            ids.into_iter()
                .map(|id| lists.text(id).to_string())
                .collect()
        };
        assert_eq!(
            texts(lists.referenced(&me, &refs(&["a", "a", "b"]), &mut findings)),
            ["x.example", "y.example", "z.example"]
        );
        assert_eq!(
            texts(lists.referenced(&me, &refs(&["b"]), &mut findings)),
            ["y.example", "z.example"]
        );
        assert_eq!(
            lists.id("z.example").map(|id| lists.text(id)),
            Some("z.example")
        );
        assert_eq!(lists.id("nowhere.example"), None);
        // An entry is a slice of the lists' one text, and shows only itself.
        let z = lists.entry(lists.id("z.example").expect("z"));
        assert_eq!(format!("{z:?}"), r#"Entry("z.example")"#);
        let used_by = &findings
            .get(&ResourceId::new(Kind::AddressList, "a"))
            .expect("a")
            .used_by;
        assert!(used_by.contains(&me));
    }

    /// Duplicates are counted one by one, and rejected entries are all counted but only
    /// the first [`MAX_LISTED_INVALID`] listed with their reason.
    #[test]
    fn duplicates_and_invalid_entries_are_counted() {
        let mut entries: Vec<String> = ["a.example", "a.example", "a.example", "b.example"]
            .map(String::from)
            .to_vec();
        entries.extend((0..MAX_LISTED_INVALID + 2).map(|i| format!("bad entry {i}")));
        let refs: Vec<&str> = entries.iter().map(String::as_str).collect();
        let mut findings = Findings::default();
        normalize(&[AddressList::with_entries("l", &refs)], &mut findings);
        let stats = findings
            .get(&ResourceId::new(Kind::AddressList, "l"))
            .and_then(|f| f.list.clone())
            .expect("stats");
        assert_eq!((stats.duplicates, stats.domains), (2, 2));
        assert_eq!(stats.invalid_total, MAX_LISTED_INVALID as u64 + 2);
        assert_eq!(stats.invalid.len(), MAX_LISTED_INVALID);
        assert_eq!(stats.invalid[0].1.field, "spec.entries[4]");
    }
}
