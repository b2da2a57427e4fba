//! Address-list entries: parsing, normalisation and the checks that keep data from ever
//! becoming Postfix configuration.

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;

/// Longest local part (RFC 5321 §4.5.3.1.1).
const MAX_LOCAL: usize = 64;
/// Longest domain name in its ASCII form (RFC 1035, without the trailing dot).
const MAX_DOMAIN: usize = 253;
/// Longest label.
const MAX_LABEL: usize = 63;

/// One normalised entry: an address, a domain, or every subdomain of a domain.
///
/// An entry is its canonical text exactly as it is written in a Postfix table
/// (`alice@example.com`, `example.com`, `.example.com`), so the text alone identifies the
/// entry and its kind: equality, hashing and ordering use it, and maps keyed by entries can
/// be searched with a plain `&str`. Sorted entries are therefore sorted table rows, whatever
/// order the input came in.
///
/// The text is a slice of a shared buffer: a namespace's lists keep every entry in one
/// text, so an entry costs 16 bytes and no allocation of its own (a hundred thousand small
/// allocations were most of `mailtls render`'s memory).
#[derive(Clone)]
pub struct Entry {
    /// The text holding this entry: its own, or every entry of a namespace's lists.
    text: Arc<String>,
    start: u32,
    end: u32,
}

/// What an entry stands for, as its text says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EntryKind {
    /// `alice@example.com`.
    Address,
    /// `example.com`: the domain itself.
    Domain,
    /// `.example.com`: every subdomain of `example.com`.
    Subdomains,
}

impl EntryKind {
    /// The kind of a canonical entry text.
    pub fn of(text: &str) -> Self {
        if text.starts_with('.') {
            EntryKind::Subdomains
        } else if text.contains('@') {
            EntryKind::Address
        } else {
            EntryKind::Domain
        }
    }

    /// The domain part of a canonical entry text (see [`Entry::domain`]).
    pub fn domain(text: &str) -> &str {
        match EntryKind::of(text) {
            EntryKind::Address => text.rsplit_once('@').map_or(text, |(_, d)| d),
            EntryKind::Domain => text,
            EntryKind::Subdomains => &text[1..],
        }
    }
}

impl PartialEq for Entry {
    fn eq(&self, other: &Self) -> bool {
        self.as_str() == other.as_str()
    }
}

impl Eq for Entry {}

impl PartialOrd for Entry {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Entry {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.as_str().cmp(other.as_str())
    }
}

impl std::hash::Hash for Entry {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.as_str().hash(state);
    }
}

impl std::borrow::Borrow<str> for Entry {
    fn borrow(&self) -> &str {
        self.as_str()
    }
}

impl fmt::Debug for Entry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Only this entry's slice: the shared text may hold a hundred thousand.
        f.debug_tuple("Entry").field(&self.as_str()).finish()
    }
}

impl Entry {
    /// The entry of a text that is canonical already (as [`parse_entry`] or a Postfix table
    /// writes it); anything else must go through [`parse_entry`].
    pub fn from_canonical(text: impl Into<String>) -> Self {
        let text = text.into();
        let end = text.len();
        Entry::in_text(Arc::new(text), 0, end)
    }

    /// The entry `text[start..end]` of a shared text.
    pub(super) fn in_text(text: Arc<String>, start: usize, end: usize) -> Self {
        debug_assert!(text.get(start..end).is_some());
        // Entries are at most 64 + 1 + 253 bytes and a namespace holds at most 100 000.
        let offset = |at: usize| u32::try_from(at).expect("entry texts stay under 4 GiB");
        Entry {
            start: offset(start),
            end: offset(end),
            text,
        }
    }

    /// The shared text and where in it this entry is.
    pub(super) fn parts(&self) -> (&Arc<String>, u32, u32) {
        (&self.text, self.start, self.end)
    }

    /// The canonical text, as written in a Postfix table.
    pub fn as_str(&self) -> &str {
        &self.text[self.start as usize..self.end as usize]
    }

    pub fn kind(&self) -> EntryKind {
        EntryKind::of(self.as_str())
    }

    /// The domain part: the address's domain, the domain, or the parent of the subdomains.
    pub fn domain(&self) -> &str {
        EntryKind::domain(self.as_str())
    }

    pub fn is_address(&self) -> bool {
        self.kind() == EntryKind::Address
    }

    /// `.example.com`: every subdomain.
    pub fn is_subdomains(&self) -> bool {
        self.kind() == EntryKind::Subdomains
    }

    /// Whether the entry `self` covers `key` (a key is itself an entry: an address, a domain
    /// or a subdomain wildcard). `.example.com` covers `a.example.com`, `x@a.example.com` and
    /// `.a.example.com`, but not `example.com` itself.
    pub fn covers(&self, key: &Entry) -> bool {
        self.as_str() == key.as_str() || key.lookup_keys().any(|k| k == self.as_str())
    }

    /// The texts of every entry that could cover `self`, most specific first: itself, its
    /// domain (for an address) and every parent wildcard. This is the lookup order Postfix
    /// uses, and it allocates nothing: each is a slice of `self`.
    pub fn lookup_keys(&self) -> impl Iterator<Item = &str> {
        let text = self.as_str();
        let domain = self.is_address().then(|| self.domain());
        let base = self.domain();
        let parents = base
            .char_indices()
            .filter(|(_, c)| *c == '.')
            .map(move |(i, _)| &base[i..]);
        std::iter::once(text).chain(domain).chain(parents)
    }

    /// The entries that cover `self` as a sender in Postfix's access table
    /// (`check_sender_access` with the default `parent_domain_matches_subdomains`), most
    /// specific first: the address, then its domain and each parent domain in turn, where a
    /// listed domain covers its subdomains and a listed `.domain`, rendered as `domain`,
    /// covers the domain too.
    pub fn access_chain(&self) -> Vec<Entry> {
        let mut keys = Vec::new();
        if self.is_address() {
            keys.push(self.clone());
        }
        let mut domain = Some(self.domain());
        while let Some(d) = domain {
            keys.push(Entry::from_canonical(d));
            keys.push(Entry::from_canonical(format!(".{d}")));
            domain = d.split_once('.').map(|(_, parent)| parent);
        }
        keys
    }

    /// [`lookup_keys`](Self::lookup_keys) as owned entries.
    pub fn lookup_chain(&self) -> Vec<Entry> {
        self.lookup_keys().map(Entry::from_canonical).collect()
    }
}

impl fmt::Display for Entry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // `pad` so that width and alignment flags work in tables.
        f.pad(self.as_str())
    }
}

/// Parse and normalise one entry as written by a user.
pub fn parse_entry(raw: &str) -> Result<Entry, String> {
    canonical_text(raw).map(Entry::from_canonical)
}

/// [`parse_entry`]'s canonical text, borrowing `raw` when it is written that way already
/// (nearly every entry is): the lists copy it straight into their shared text.
pub fn canonical_text(raw: &str) -> Result<Cow<'_, str>, String> {
    if raw.is_empty() {
        return Err("empty entry".into());
    }
    // Nearly every entry is plain ASCII letters, digits and `@.-_+`: one pass says so, and
    // only the others are searched for the first problem to report.
    let plain = raw
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'@' | b'.' | b'-' | b'_' | b'+'));
    if !plain {
        check_characters(raw)?;
    }
    if raw.starts_with('-') {
        return Err("starts with '-'".into());
    }
    match raw.matches('@').count() {
        0 => {
            if let Some(rest) = raw.strip_prefix('.') {
                if rest.is_empty() || rest.starts_with('.') {
                    return Err("a subdomain entry needs a domain after the leading dot".into());
                }
                let domain = domain_text(rest, 1)?;
                Ok(canonical(raw, &[".", &domain]))
            } else {
                let domain = domain_text(raw, 2)?;
                Ok(canonical(raw, &[&domain]))
            }
        }
        1 => {
            let (local, domain) = raw.split_once('@').unwrap_or_default();
            check_local(local)?;
            let domain = domain_text(domain, 2)?;
            Ok(canonical(raw, &[local, "@", &domain]))
        }
        _ => Err("contains more than one '@'".into()),
    }
}

/// The first character an entry may not hold, as an error.
fn check_characters(raw: &str) -> Result<(), String> {
    if let Some(c) = raw.chars().find(|c| c.is_control()) {
        return Err(format!(
            "contains the control character {}",
            c.escape_unicode()
        ));
    }
    if raw.chars().any(char::is_whitespace) {
        return Err("contains white space".into());
    }
    if let Some(c) = raw.chars().find(|c| {
        matches!(
            c,
            ',' | ';' | '=' | '{' | '}' | '"' | '<' | '>' | '(' | ')' | '[' | ']' | '\\'
        )
    }) {
        return Err(format!(
            "contains the character '{c}', which is not allowed in an address or domain"
        ));
    }
    Ok(())
}

/// The canonical text `parts` joined and in lowercase. Most entries are written that way
/// already: then it is `raw` as is, without an allocation.
fn canonical<'a>(raw: &'a str, parts: &[&str]) -> Cow<'a, str> {
    let mut rest = raw;
    let as_written = parts.iter().all(|p| match rest.strip_prefix(p) {
        Some(after) => {
            rest = after;
            true
        }
        None => false,
    }) && rest.is_empty();
    if as_written && !raw.bytes().any(|b| b.is_ascii_uppercase()) {
        return Cow::Borrowed(raw);
    }
    let mut text = parts.concat();
    text.make_ascii_lowercase();
    Cow::Owned(text)
}

/// Check the part before '@' (ASCII; lowercased by the caller).
fn check_local(local: &str) -> Result<(), String> {
    if local.is_empty() {
        return Err("missing the part before '@'".into());
    }
    if !local.is_ascii() {
        return Err("non-ASCII characters before '@' are not supported".into());
    }
    if local.len() > MAX_LOCAL {
        return Err(format!(
            "the part before '@' is longer than {MAX_LOCAL} characters"
        ));
    }
    if let Some(c) = local.chars().find(|c| !is_local_char(*c)) {
        return Err(format!(
            "the character '{}' is not allowed before '@'",
            c.escape_debug()
        ));
    }
    if local.starts_with('.') || local.ends_with('.') || local.contains("..") {
        return Err("dots before '@' must separate words ('a.b', not '.a', 'a.' or 'a..b')".into());
    }
    if local.starts_with('-') {
        return Err("starts with '-'".into());
    }
    Ok(())
}

/// RFC 5322 atext and dots, without `#` (a map comment), `=`, `{`, `}` (Postfix syntax) and
/// `|` `$` (never seen in real addresses, and `$` is Postfix's expansion character).
fn is_local_char(c: char) -> bool {
    c.is_ascii_alphanumeric()
        || matches!(
            c,
            '.' | '!' | '%' | '&' | '\'' | '*' | '+' | '-' | '/' | '?' | '^' | '_' | '`' | '~'
        )
}

/// Normalise a domain: lowercase, drop one trailing dot, internationalised names to punycode,
/// then check every label. `min_labels` is 2 for mail domains and 1 for `.tld` wildcards.
pub fn normalize_domain(raw: &str, min_labels: usize) -> Result<String, String> {
    domain_text(raw, min_labels).map(Cow::into_owned)
}

/// [`normalize_domain`], borrowing `raw` when it is already normal.
fn domain_text(raw: &str, min_labels: usize) -> Result<Cow<'_, str>, String> {
    let trimmed = raw.strip_suffix('.').unwrap_or(raw);
    if trimmed.is_empty() {
        return Err("missing domain".into());
    }
    let ascii = if !trimmed.is_ascii() {
        Cow::Owned(
            idna::domain_to_ascii_strict(trimmed)
                .map_err(|_| "not a valid internationalised domain name".to_string())?,
        )
    } else if trimmed.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(trimmed.to_ascii_lowercase())
    } else {
        Cow::Borrowed(trimmed)
    };
    check_ascii_domain(&ascii, min_labels)?;
    Ok(ascii)
}

/// Check an ASCII, lowercase domain: LDH labels of 1..=63 characters, at most 253 in all.
pub fn check_ascii_domain(domain: &str, min_labels: usize) -> Result<(), String> {
    if domain.len() > MAX_DOMAIN {
        return Err(format!("domain is longer than {MAX_DOMAIN} characters"));
    }
    let mut labels = 0;
    let mut last = "";
    for label in domain.split('.') {
        labels += 1;
        last = label;
        if label.is_empty() {
            return Err("domain has an empty label ('..' or a leading/trailing dot)".into());
        }
        if label.len() > MAX_LABEL {
            return Err(format!(
                "domain label is longer than {MAX_LABEL} characters"
            ));
        }
        if let Some(c) = label
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || *c == '-'))
        {
            return Err(format!(
                "the character '{}' is not allowed in a domain",
                c.escape_debug()
            ));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err("a domain label may not start or end with '-'".into());
        }
    }
    if labels < min_labels {
        return Err("a domain needs at least two labels (example.com); use '.com' for every subdomain of a top-level domain".into());
    }
    if last.bytes().all(|b| b.is_ascii_digit()) {
        return Err("looks like an IP address, not a domain".into());
    }
    Ok(())
}

/// Split pasted "bulk add" text into raw entries: spaces, commas, semicolons and newlines
/// separate them.
pub fn split_bulk(bulk: &str) -> impl Iterator<Item = &str> {
    bulk.split(|c: char| c.is_whitespace() || c == ',' || c == ';')
        .filter(|s| !s.is_empty())
}

/// An entry shown back to a user: control characters escaped and cut to 100 characters, so
/// a status never carries raw hostile bytes or megabytes.
pub fn display_raw(raw: &str) -> String {
    let mut out = String::new();
    for (i, c) in raw.chars().enumerate() {
        if i == 100 {
            out.push('…');
            break;
        }
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

// Mutation testing: `Hash for Entry` replaced by a hash of nothing times out instead of
// failing. Every map keyed by entries still gives the right answers, only in quadratic time;
// speed is measured by the render bench (BENCHMARKS.md), not asserted by tests.
#[cfg(test)]
mod tests {
    use super::*;

    fn e(s: &str) -> Entry {
        parse_entry(s).expect(s)
    }

    #[test]
    fn lookup_keys_follow_postfix_order() {
        let bob = e("bob@a.b.example");
        let keys: Vec<&str> = bob.lookup_keys().collect();
        assert_eq!(
            keys,
            ["bob@a.b.example", "a.b.example", ".b.example", ".example"]
        );
        let wildcard = e(".a.example");
        assert_eq!(
            wildcard.lookup_keys().collect::<Vec<_>>(),
            [".a.example", ".example"]
        );
        let x = e("x.example");
        assert_eq!(
            x.lookup_keys().collect::<Vec<_>>(),
            ["x.example", ".example"]
        );
    }

    #[test]
    fn covers_means_postfix_would_match() {
        assert!(e(".example.com").covers(&e("a.example.com")));
        assert!(e(".example.com").covers(&e("x@a.b.example.com")));
        assert!(e(".example.com").covers(&e(".a.example.com")));
        assert!(
            !e(".example.com").covers(&e("example.com")),
            "a wildcard is only the subdomains"
        );
        assert!(e("example.com").covers(&e("bob@example.com")));
        assert!(!e("example.com").covers(&e("bob@a.example.com")));
        assert!(!e("bob@example.com").covers(&e("example.com")));
    }

    #[test]
    fn order_is_by_text_and_equality_ignores_nothing() {
        let mut v = [e("b.example"), e(".a.example"), e("a@b.example")];
        v.sort();
        assert_eq!(
            v.iter().map(Entry::as_str).collect::<Vec<_>>(),
            [".a.example", "a@b.example", "b.example"]
        );
        assert_eq!(e("A@B.Example."), e("a@b.example"));
    }

    #[test]
    fn bulk_splits_on_space_comma_semicolon_newline() {
        let items: Vec<&str> = split_bulk(" a@x.example,b@x.example;\n\tc.example  ,, ").collect();
        assert_eq!(items, ["a@x.example", "b@x.example", "c.example"]);
    }

    #[test]
    fn lookup_chain_is_the_keys_as_entries() {
        assert_eq!(
            e("bob@a.example").lookup_chain(),
            ["bob@a.example", "a.example", ".example"].map(Entry::from_canonical)
        );
        let kinds: Vec<EntryKind> = e("bob@a.example")
            .lookup_chain()
            .iter()
            .map(Entry::kind)
            .collect();
        assert_eq!(
            kinds,
            [EntryKind::Address, EntryKind::Domain, EntryKind::Subdomains]
        );
    }

    #[test]
    fn display_pads_for_tables() {
        assert_eq!(format!("[{:<12}]", e("a.example")), "[a.example   ]");
    }

    #[test]
    fn limits_hold_at_the_boundary() {
        let local = "l".repeat(MAX_LOCAL);
        assert!(parse_entry(&format!("{local}@example.com")).is_ok());
        let error = parse_entry(&format!("{local}x@example.com")).expect_err("65 characters");
        assert!(error.contains("longer than 64"), "{error}");
        // 253 characters: three labels of 63 and one of 61, dots between.
        let label = "a".repeat(MAX_LABEL);
        let longest = format!("{label}.{label}.{label}.{}", "b".repeat(61));
        assert_eq!(longest.len(), MAX_DOMAIN);
        assert!(check_ascii_domain(&longest, 2).is_ok());
        let error = check_ascii_domain(&format!("a{longest}"), 2).expect_err("254");
        assert!(error.contains("longer than 253"), "{error}");
        let error = check_ascii_domain(&format!("{label}a.example"), 2).expect_err("64");
        assert!(error.contains("label is longer than 63"), "{error}");
    }

    #[test]
    fn a_leading_dot_needs_a_domain_after_it() {
        for raw in [".", "..example.com"] {
            let error = parse_entry(raw).expect_err(raw);
            assert!(
                error.contains("needs a domain after the leading dot"),
                "{raw}: {error}"
            );
        }
    }

    #[test]
    fn display_raw_escapes_and_cuts() {
        assert_eq!(display_raw("a\nb"), "a\\nb");
        assert_eq!(display_raw(&"x".repeat(500)).chars().count(), 101);
    }

    /// The text as the engine wrote it before entries kept their input's allocation: every
    /// part normalised on its own, then joined.
    fn joined(raw: &str) -> Result<String, String> {
        parse_entry(raw)?; // the same checks
        Ok(match raw.split_once('@') {
            Some((local, domain)) => format!(
                "{}@{}",
                local.to_ascii_lowercase(),
                normalize_domain(domain, 2)?
            ),
            None => match raw.strip_prefix('.') {
                Some(rest) => format!(".{}", normalize_domain(rest, 1)?),
                None => normalize_domain(raw, 2)?,
            },
        })
    }

    #[test]
    fn entries_written_otherwise_get_their_canonical_text() {
        for (raw, text) in [
            ("x.example", "x.example"),
            ("User@Example.COM", "user@example.com"),
            ("a@x.example.", "a@x.example"),
            (".Sub.Example.COM.", ".sub.example.com"),
            ("bücher.example", "xn--bcher-kva.example"),
            ("A@bücher.example", "a@xn--bcher-kva.example"),
        ] {
            assert_eq!(e(raw).as_str(), text, "{raw}");
            assert_eq!(joined(raw).as_deref(), Ok(text), "{raw}");
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { cases: 512, failure_persistence: None, ..Default::default() })]

        /// Taking the input as it is when it is canonical already gives the text normalising
        /// each part gives.
        #[test]
        fn the_canonical_text_is_the_normalised_parts(
            raw in "(([a-zA-Z0-9._+-]{1,8}@)|\\.)?[a-zA-Z0-9-]{1,8}(\\.[a-zA-Z0-9-]{1,6}){0,2}\\.[a-zA-Z]{2,4}\\.?"
        ) {
            let got = parse_entry(&raw).map(|e| e.as_str().to_string());
            proptest::prop_assert_eq!(got, joined(&raw));
        }
    }
}
