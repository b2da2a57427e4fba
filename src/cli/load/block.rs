//! `spec.entries` of a block-YAML AddressList read line by line, when each entry stands
//! alone on its line and is plainly a string. The YAML parser holds every event of a
//! document before anything reads it, about 100 bytes an entry: for one list of 100k that
//! is 10 MB and most of the time. Here only the entries' text is held. The rest of the
//! document still goes to the YAML parser, with `entries` replaced by a marker, so the
//! caller can check that the parser found `spec.entries` where this did.

use crate::api::Entries;

/// The one entry the rest of the document lists instead of the entries read here.
pub(super) const MARKER: &str = "mailtls: entries read line by line";

/// A document with its entries read apart.
pub(super) struct Block {
    /// The document with `entries: ["MARKER"]` in place of the entries, whose lines are
    /// left empty: every other line keeps its number.
    pub rest: String,
    pub entries: Entries,
}

/// The entries of `text` read line by line, or None when this cannot be sure to read them
/// as the YAML parser would: then the parser reads the whole document.
pub(super) fn entries(text: &str) -> Option<Block> {
    // Line breaks other than `\n` and `\r\n` (YAML 1.1 also breaks lines at NEL, LS, PS).
    if !text.is_ascii() && text.contains(['\u{85}', '\u{2028}', '\u{2029}']) {
        return None;
    }
    let mut lines = Lines {
        text,
        at: 0,
        failed: false,
    };
    let read = region(&mut lines).filter(|_| !lines.failed)?;
    let indent = " ".repeat(read.indent);
    let marked = format!("{indent}entries: [\"{MARKER}\"]");
    let mut rest =
        String::with_capacity(text.len() - (read.end - read.start) + marked.len() + read.breaks);
    rest.push_str(&text[..read.start]);
    rest.push_str(&marked);
    rest.extend(std::iter::repeat_n('\n', read.breaks));
    rest.push_str(&text[read.end..]);
    Some(Block {
        rest,
        entries: read.entries,
    })
}

/// One line: where it is (without its line break), its indentation, and what it is.
struct Line<'a> {
    start: usize,
    end: usize,
    indent: usize,
    /// The line after its indentation; empty for a blank or comment line.
    content: &'a str,
}

/// The lines of a text, one at a time. They stop early, `failed`, at a line holding a
/// carriage return other than before its line feed, or a tab (which this does not weigh
/// as YAML does).
struct Lines<'a> {
    text: &'a str,
    at: usize,
    failed: bool,
}

impl<'a> Lines<'a> {
    fn next(&mut self) -> Option<Line<'a>> {
        if self.failed {
            return None;
        }
        let rest = self.text.get(self.at..).filter(|r| !r.is_empty())?;
        let raw = rest.split_inclusive('\n').next()?;
        let start = self.at;
        self.at += raw.len();
        let line = raw.strip_suffix('\n').unwrap_or(raw);
        let line = line.strip_suffix('\r').unwrap_or(line);
        if line.contains(['\r', '\t']) {
            self.failed = true;
            return None;
        }
        let body = line.trim_start_matches(' ');
        Some(Line {
            start,
            end: start + line.len(),
            indent: line.len() - body.len(),
            content: if blank_or_comment(body) { "" } else { body },
        })
    }
}

/// The entries read, and the lines they were on.
struct Region {
    /// Where the `entries:` line starts and the last entry's line ends.
    start: usize,
    end: usize,
    /// Line breaks between the two.
    breaks: usize,
    /// The indentation of `entries:`.
    indent: usize,
    entries: Entries,
}

/// The entries under the one `entries:` key of a top-level `spec:`, in block style, with at
/// least one item; None if there is not exactly one such key, or an item this cannot read
/// for sure.
fn region(lines: &mut Lines) -> Option<Region> {
    loop {
        let line = lines.next()?;
        if line.indent == 0 && bare_key(line.content, "spec") {
            break;
        }
    }
    let mut found = None;
    let mut child = None;
    // The line that ended the entries, read before its turn.
    let mut next = None;
    while let Some(line) = next.take().or_else(|| lines.next()) {
        if line.content.is_empty() {
            continue;
        }
        if line.indent == 0 {
            break;
        }
        let child = *child.get_or_insert(line.indent);
        if line.indent != child {
            continue;
        }
        // Keys this cannot tell from `entries`: quoted, complex, or `entries` followed by
        // anything but a comment.
        if line.content.starts_with(['"', '\'', '?']) {
            return None;
        }
        if line.content.starts_with("entries") {
            if found.is_some() || !bare_key(line.content, "entries") {
                return None;
            }
            let (region, after) = items(lines, &line)?;
            found = Some(region);
            next = after;
        }
    }
    found
}

/// The items after the `entries:` line `key`, and the line that ended them (None at the end
/// of the lines). None at the first line this cannot read for sure.
fn items<'a>(lines: &mut Lines<'a>, key: &Line) -> Option<(Region, Option<Line<'a>>)> {
    let mut region = Region {
        start: key.start,
        end: key.end,
        breaks: 0,
        indent: key.indent,
        entries: Entries::default(),
    };
    let mut indent = None;
    let mut breaks = 0;
    let after = loop {
        let Some(line) = lines.next() else {
            break None;
        };
        breaks += 1;
        if line.content.is_empty() {
            continue;
        }
        let is_item = line.content == "-" || line.content.starts_with("- ");
        let at = *indent.get_or_insert(line.indent);
        if is_item && line.indent == at && at >= key.indent {
            region.entries.push(item(&line.content[1..])?).ok()?;
            region.end = line.end;
            region.breaks = breaks;
            continue;
        }
        // The sequence has ended; anything but the next key of `spec` or less is read by
        // the YAML parser (a continued entry, an item elsewhere, a value in flow style).
        if is_item || line.indent > key.indent {
            return None;
        }
        break Some(line);
    };
    if region.entries.is_empty() {
        return None;
    }
    region.entries.shrink_to_fit();
    Some((region, after))
}

/// Whether `content` is `key:` with nothing after it but a comment.
fn bare_key(content: &str, key: &str) -> bool {
    content
        .strip_prefix(key)
        .and_then(|rest| rest.strip_prefix(':'))
        .is_some_and(blank_or_comment)
}

fn blank_or_comment(text: &str) -> bool {
    let text = text.trim_start_matches(' ');
    text.is_empty() || text.starts_with('#')
}

/// The entry of an item line after its `-`, if it is plainly a string and alone (a comment
/// may follow).
fn item(after_dash: &str) -> Option<&str> {
    let text = after_dash.trim_start_matches(' ');
    if text.len() == after_dash.len() {
        return None;
    }
    let (entry, rest) = match text.as_bytes().first()? {
        quote @ (b'\'' | b'"') => {
            let close = text[1..].find(*quote as char)? + 1;
            let entry = &text[1..close];
            (
                entry.bytes().all(safe).then_some(entry)?,
                &text[close + 1..],
            )
        }
        _ => {
            let end = text.find(' ').unwrap_or(text.len());
            let entry = &text[..end];
            (plain_string(entry).then_some(entry)?, &text[end..])
        }
    };
    // A comment needs a space before it.
    (rest.is_empty() || (rest.starts_with(' ') && blank_or_comment(rest))).then_some(entry)
}

/// Bytes that mean nothing special to YAML inside a scalar, quoted or not.
fn safe(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'@' | b'+' | b'-')
}

/// Whether an unquoted `token` is read as a string, not a number, boolean or null. Sure
/// only for an address (`@`), or a name with a dot and a letter no number has: numbers
/// have dots and `e`, `.inf` and `.nan` the rest.
fn plain_string(token: &str) -> bool {
    let starts_well = token.starts_with(|c: char| c.is_ascii_alphanumeric() || c == '.');
    let named = token.contains('.')
        && token
            .bytes()
            .any(|b| b.is_ascii_alphabetic() && !matches!(b, b'e' | b'E'))
        && !matches!(token, ".inf" | ".Inf" | ".INF" | ".nan" | ".NaN" | ".NAN");
    starts_well && token.bytes().all(safe) && (token.contains('@') || named)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(text: &str) -> Option<(String, Vec<String>)> {
        entries(text).map(|b| (b.rest, b.entries.iter().map(String::from).collect()))
    }

    #[test]
    fn entries_alone_on_their_lines_are_read_and_every_other_line_keeps_its_place() {
        let text = "kind: AddressList\nspec:\n  # who\n  entries:   # the list\n  - a.example\n\n  \
                    - 'B@A.example'   # quoted\n  # between\n  - \"c.example\"\n  bulk: x\nstatus: {}\n";
        let (rest, entries) = read(text).expect("read");
        assert_eq!(entries, ["a.example", "B@A.example", "c.example"]);
        assert_eq!(
            rest,
            format!(
                "kind: AddressList\nspec:\n  # who\n  entries: [\"{MARKER}\"]\n\n\n\n\n\n  bulk: x\nstatus: {{}}\n"
            )
        );
        // Indented under the key, with Windows line ends, at the end of the text.
        let text = "spec:\r\n    entries:\r\n      - x@y.example\r\n      - .sub.example";
        let (rest, entries) = read(text).expect("read");
        assert_eq!(entries, ["x@y.example", ".sub.example"]);
        assert_eq!(rest, format!("spec:\r\n    entries: [\"{MARKER}\"]\n\n"));
    }

    #[test]
    fn what_the_yaml_parser_could_read_otherwise_is_left_to_it() {
        let head = "spec:\n  entries:\n";
        for items in [
            "  - 5.0\n",
            "  - true\n",
            "  - .inf\n",
            "  - 1.5e3\n",
            "  - localhost\n",
            "  - -a.example\n",
            "  - a.example#x\n",
            "  - a.example\n    b.example\n",
            "  - a.example\n    - b.example\n",
            "  - a.example\n - b.example\n",
            "  -\n    a.example\n",
            "  - &x a.example\n",
            "  - *x\n",
            "  - 'it''s.example'\n",
            "  - \"a\\x.example\"\n",
            "  - a.example: 1\n",
            "  - a.example\t\n",
            "  - a.example\r  - b.example\n",
            "  [a.example]\n",
            "",
        ] {
            assert!(read(&format!("{head}{items}")).is_none(), "{items}");
        }
        for text in [
            "spec:\n  entries: [a.example]\n",
            "spec:\n  entries: &x\n  - a.example\n",
            "spec:\n  entries:\n  - a.example\n  entries:\n  - b.example\n",
            "spec:\n  \"entries\":\n  - a.example\n",
            "spec: {entries: [a.example]}\n",
            "metadata:\n  entries:\n  - a.example\n",
            "spec:\n  other:\n    entries:\n    - a.example\n",
            "spec:\n  entries:\n  - a.example\u{2028}  - b.example\n",
        ] {
            assert!(read(text).is_none(), "{text}");
        }
    }
}
