//! Regular expressions the API server checks entries with (OpenAPI `pattern`, no CEL cost).
//! They mirror `policy::entry::parse_entry` for ASCII entries exactly; a domain with
//! non-ASCII characters is only checked loosely here, since only IDNA can judge it.

/// One character of an RFC 5322 atom as the engine accepts it (no `#`, `=`, `{`, `}`, `|`, `$`).
const ATEXT: &str = r"[A-Za-z0-9!%&'*+/?^_`~-]";
/// The same without `-`, which may not start an entry.
const ATEXT_FIRST: &str = r"[A-Za-z0-9!%&'*+/?^_`~]";
/// A DNS label: letters, digits and inner hyphens, 1 to 63 characters.
const LABEL: &str = r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?";
/// A non-ASCII character that is neither a control character nor white space.
const NON_ASCII: &str = r"[^\x00-\x{9f}\p{Z}]";
/// What separates bulk items: Unicode white space, `,` and `;`.
const SEPARATOR: &str = r"[\t\n\x0B\f\r\x{85}\p{Z},;]";

/// An ASCII entry, structure and characters: `local@domain`, `domain` (two labels or more)
/// or `.domain`.
pub(crate) fn ascii_entry() -> String {
    let local = format!(r"{ATEXT_FIRST}{ATEXT}*(\.{ATEXT}+)*");
    let domain = |min_more: &str| format!(r"{LABEL}(\.{LABEL}){min_more}\.?");
    format!(
        r"{local}@{d2}|{d2}|\.{d1}",
        d2 = domain("+"),
        d1 = domain("*")
    )
}

/// One entry: [`ascii_entry`], or one whose domain holds a non-ASCII character, which is
/// only checked for its characters.
pub(crate) fn entry() -> String {
    let local = format!(r"{ATEXT_FIRST}{ATEXT}*(\.{ATEXT}+)*");
    let idn_char = format!(r"([A-Za-z0-9.-]|{NON_ASCII})");
    let idn =
        format!(r"({local}@|\.)?(([A-Za-z0-9]|{NON_ASCII}){idn_char}*)?{NON_ASCII}{idn_char}*");
    format!("{}|{idn}", ascii_entry())
}

/// The whole entry matches [`entry`].
pub(crate) fn entry_pattern() -> String {
    format!("^({})$", entry())
}

/// The last label is not all digits (that would be an IP address, not a domain).
pub(crate) fn top_label_pattern() -> String {
    format!(r"([A-Za-z-]|{NON_ASCII})([A-Za-z0-9-]|{NON_ASCII})*\.?$")
}

/// At most 64 characters before `@` and 253 in the domain (a trailing dot and the leading
/// dot of `.domain` not counted).
pub(crate) const LENGTHS_PATTERN: &str = r"^([^@]{1,64}@)?\.?[^@]{1,253}\.?$";

/// Bulk text: entries as in [`entry`] between separators.
pub(crate) fn bulk_pattern() -> String {
    let e = entry();
    format!("^{SEPARATOR}*(({e})({SEPARATOR}+({e}))*)?{SEPARATOR}*$")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::entry::{parse_entry, split_bulk};
    use proptest::prelude::*;
    use regex::Regex;

    fn item_patterns() -> Vec<Regex> {
        [
            entry_pattern(),
            top_label_pattern(),
            LENGTHS_PATTERN.to_string(),
        ]
        .iter()
        .map(|p| Regex::new(p).expect("pattern compiles"))
        .collect()
    }

    /// A pattern without its `^`/`$` anchors, for proptest's generator.
    fn unanchored(pattern: String) -> String {
        pattern
            .trim_start_matches('^')
            .trim_end_matches('$')
            .to_string()
    }

    /// Whether the schema accepts `raw` as an entry.
    fn schema_accepts(patterns: &[Regex], raw: &str) -> bool {
        raw.chars().count() <= 320 && patterns.iter().all(|p| p.is_match(raw))
    }

    #[test]
    fn separators_are_exactly_what_the_engine_splits_on() {
        let sep = Regex::new(&format!("^{SEPARATOR}$")).expect("compiles");
        // Every White_Space character is below U+3001; above, a sample.
        let chars = (0..0x3100).chain((0x3100..=0x10_ffff).step_by(97));
        for c in chars.filter_map(char::from_u32) {
            let engine = c.is_whitespace() || c == ',' || c == ';';
            assert_eq!(sep.is_match(c.encode_utf8(&mut [0; 4])), engine, "{c:?}");
        }
    }

    #[test]
    fn near_misses_are_refused_by_both() {
        let patterns = item_patterns();
        for bad in [
            "a..b@x.example",
            ".a@x.example",
            "a.@x.example",
            "-a@x.example",
            "a@-x.example",
            "a@x-.example",
            "a@x.123",
            ".123",
            "x.example..",
            "example",
            "a@b@x.example",
            "a#b@x.example",
            "a$b@x.example",
            "a\u{85}b.example",
            "a\u{a0}b.example",
            "a\u{9f}.example",
            "üser@x.example",
        ] {
            assert!(!schema_accepts(&patterns, bad), "schema accepts {bad:?}");
            assert!(parse_entry(bad).is_err(), "engine accepts {bad:?}");
        }
        let long_local = format!("{}@x.example", "a".repeat(65));
        let long_domain = format!("{}.example", "a.".repeat(123));
        let long_label = format!("{}.example", "a".repeat(64));
        for bad in [long_local, long_domain, long_label] {
            assert!(!schema_accepts(&patterns, &bad), "schema accepts {bad}");
            assert!(parse_entry(&bad).is_err(), "engine accepts {bad}");
        }
        for good in [
            "a.b+c@x.example",
            "x.example.",
            ".com",
            ".x.example.",
            "1.2.3.example",
            "a@x.1-2",
            "bücher.example",
        ] {
            assert!(schema_accepts(&patterns, good), "schema refuses {good:?}");
            assert!(parse_entry(good).is_ok(), "engine refuses {good:?}");
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, max_global_rejects: 100_000, failure_persistence: None, ..ProptestConfig::default() })]

        /// An ASCII entry the schema accepts, the engine accepts (non-ASCII: only IDNA knows).
        #[test]
        fn ascii_entries_the_schema_accepts_the_engine_accepts(raw in ascii_entry().as_str()) {
            let patterns = item_patterns();
            prop_assume!(schema_accepts(&patterns, &raw));
            prop_assert!(parse_entry(&raw).is_ok(), "{raw:?}: {:?}", parse_entry(&raw));
        }

        /// Every item of a bulk text the schema accepts has an entry's syntax.
        #[test]
        fn bulk_items_have_entry_syntax(bulk in unanchored(bulk_pattern()).as_str()) {
            let entry = Regex::new(&entry_pattern()).expect("compiles");
            prop_assert!(Regex::new(&bulk_pattern()).expect("compiles").is_match(&bulk));
            for item in split_bulk(&bulk) {
                prop_assert!(entry.is_match(item), "{item:?}");
            }
        }
    }
}
