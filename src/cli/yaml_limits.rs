//! Size and nesting depth of a YAML/JSON text, checked before the parser sees it: the
//! parser takes quadratic time on deep nesting (100 KB of `[` took 8 s, 200 KB 34 s).
//!
//! The scan is one pass and errs on the deep side: brackets in plain scalars count, quoted
//! scalars, comments and block scalars (`|`, `>`) do not.

/// Largest file read: a namespace's 100 000 entries of at most 320 characters fit.
pub const MAX_FILE_BYTES: u64 = 64 * 1024 * 1024;
/// Deepest nesting accepted; mailtls resources need fewer than ten levels.
pub const MAX_DEPTH: usize = 64;

/// Why a text was refused, and the 1-based line where that became clear.
#[derive(Debug, PartialEq, Eq)]
pub struct TooBig {
    pub line: usize,
    pub message: String,
}

/// A text of `len` bytes is refused before it is read when larger than [`MAX_FILE_BYTES`].
pub fn check_size(len: u64) -> Result<(), TooBig> {
    if len > MAX_FILE_BYTES {
        return Err(TooBig {
            line: 1,
            message: format!(
                "the file has {len} bytes, more than the {MAX_FILE_BYTES} a file may have; \
                 refused before parsing"
            ),
        });
    }
    Ok(())
}

/// Refuse a text nested deeper than [`MAX_DEPTH`] (flow brackets plus block levels).
pub fn check_depth(text: &str) -> Result<(), TooBig> {
    let mut scan = Scan::default();
    for (i, line) in text.lines().enumerate() {
        let depth = scan.line(line);
        if depth > MAX_DEPTH {
            return Err(TooBig {
                line: i + 1,
                message: format!(
                    "nested deeper than {MAX_DEPTH} levels; mailtls resources need far less \
                     (refused before parsing)"
                ),
            });
        }
    }
    Ok(())
}

#[derive(Default)]
struct Scan {
    /// Open `[` and `{`.
    flow: usize,
    /// Indentation of the enclosing block collections.
    indents: Vec<usize>,
    quote: Option<char>,
    /// Lines indented deeper than this belong to a block scalar.
    block_scalar: Option<usize>,
}

impl Scan {
    /// Scan one line; the deepest nesting reached on it.
    fn line(&mut self, line: &str) -> usize {
        let indent = line.len() - line.trim_start_matches(' ').len();
        let content = &line[indent..];
        if let Some(parent) = self.block_scalar {
            if content.is_empty() || indent > parent {
                return 0;
            }
            self.block_scalar = None;
        }
        let mut dashes = 0;
        if self.quote.is_none()
            && self.flow == 0
            && !content.is_empty()
            && !content.starts_with('#')
        {
            while self.indents.last().is_some_and(|&top| top > indent) {
                self.indents.pop();
            }
            if self.indents.last() != Some(&indent) {
                self.indents.push(indent);
            }
            // `- - - x` opens one sequence per dash on a single line.
            let mut rest = content;
            while let Some(r) = rest.strip_prefix("- ").or_else(|| rest.strip_prefix("? ")) {
                dashes += 1;
                rest = r.trim_start_matches(' ');
            }
        }
        let block = self.indents.len() + dashes;
        let mut deepest = block + self.flow;
        let mut prev = ' ';
        let mut chars = content.chars().peekable();
        while let Some(c) = chars.next() {
            match self.quote {
                Some('\'') => {
                    if c == '\'' {
                        if chars.peek() == Some(&'\'') {
                            chars.next();
                        } else {
                            self.quote = None;
                        }
                    }
                }
                Some(_) => {
                    if c == '\\' {
                        chars.next();
                    } else if c == '"' {
                        self.quote = None;
                    }
                }
                None => {
                    let token_start = matches!(prev, ' ' | '\t' | '[' | '{' | ',' | ':');
                    match c {
                        '#' if prev == ' ' || prev == '\t' => break,
                        '\'' | '"' if token_start => self.quote = Some(c),
                        '[' | '{' => {
                            self.flow += 1;
                            deepest = deepest.max(block + self.flow);
                        }
                        ']' | '}' => self.flow = self.flow.saturating_sub(1),
                        _ => {}
                    }
                }
            }
            prev = c;
        }
        if self.quote.is_none() && self.flow == 0 {
            let last = content
                .split(" #")
                .next()
                .unwrap_or_default()
                .split_whitespace()
                .last()
                .unwrap_or_default();
            if last.starts_with(['|', '>'])
                && last[1..]
                    .chars()
                    .all(|c| matches!(c, '-' | '+' | '0'..='9'))
            {
                self.block_scalar = Some(indent);
            }
        }
        deepest
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordinary_resources_pass() {
        let yaml = "apiVersion: mailtls.io/v1alpha1\nkind: AddressList\nmetadata:\n  name: l\nspec:\n  entries:\n    - a@x.example # [[[[\n    - 'it''s [not] nested'\n  bulk: |\n    [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[\n  other: \"[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[\"\n";
        assert_eq!(check_depth(yaml), Ok(()));
        let json = r#"{"a": [{"b": {"c": [1, 2, {"d": "[[[["}]}}]}"#;
        assert_eq!(check_depth(json), Ok(()));
    }

    #[test]
    fn deep_flow_and_block_nesting_are_refused_with_the_line() {
        let flow = format!("a: 1\nb:\n  {}", "[".repeat(100_000));
        let err = check_depth(&flow).expect_err("deep flow");
        assert_eq!(err.line, 3);
        assert!(
            err.message.contains("nested deeper than 64 levels"),
            "{err:?}"
        );
        let dashes = format!("x:\n{}1\n", "- ".repeat(70));
        assert_eq!(check_depth(&dashes).map_err(|e| e.line), Err(2));
        let ladder: String = (0..70)
            .map(|i| format!("{}k{i}:\n", " ".repeat(i)))
            .collect();
        assert_eq!(check_depth(&ladder).map_err(|e| e.line), Err(65));
        // Closing brackets inside a quoted scalar earn no credit.
        let banked = format!("a: {}", "[ \"]\", ".repeat(70));
        assert!(check_depth(&banked).is_err());
    }

    #[test]
    fn size_is_checked_before_reading() {
        assert!(check_size(MAX_FILE_BYTES).is_ok());
        let err = check_size(MAX_FILE_BYTES + 1).expect_err("too big");
        assert!(err.message.contains("more than the 67108864"), "{err:?}");
    }
}
