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

/// One entry, structure and characters: `local@domain`, `domain` (two labels or more) or
/// `.domain`. A domain holding a non-ASCII character is only checked for its characters.
pub(crate) fn entry() -> String {
    let local = format!(r"{ATEXT_FIRST}{ATEXT}*(\.{ATEXT}+)*");
    let domain = |min_more: &str| format!(r"{LABEL}(\.{LABEL}){min_more}\.?");
    let ascii = format!(
        r"{local}@{d2}|{d2}|\.{d1}",
        d2 = domain("+"),
        d1 = domain("*")
    );
    let idn_char = format!(r"([A-Za-z0-9.-]|{NON_ASCII})");
    let idn =
        format!(r"({local}@|\.)?(([A-Za-z0-9]|{NON_ASCII}){idn_char}*)?{NON_ASCII}{idn_char}*");
    format!("{ascii}|{idn}")
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
