//! A small lexer over raw SQL text, for what the parser cannot give: comments (sqlparser drops
//! them, but routing hints live there), splitting a text into statements when the parser fails
//! on one of them, and the leading keywords that the text fallbacks look at.
//!
//! It knows exactly enough of PostgreSQL's lexical rules not to be fooled by a `;`, `--` or
//! `/*` inside a literal: single-quoted strings (with `''`), `E'…'` strings (with backslash
//! escapes), dollar-quoted strings, quoted identifiers and nested block comments.

use std::ops::Range;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokKind {
    /// A keyword or unquoted identifier.
    Word,
    /// `-- …` or `/* … */`; the range covers the whole comment.
    Comment,
    /// A string literal, dollar-quoted string or quoted identifier.
    Quoted,
    /// A numeric literal: `42`, `1.5`, `.5`, `1e-3` (digits, one dot, an exponent).
    Number,
    /// A parameter: `$1`.
    Param,
    Semicolon,
    /// Anything else: operators and punctuation, one character each.
    Other,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tok {
    pub kind: TokKind,
    pub range: Range<usize>,
}

fn is_word_start(c: char) -> bool {
    c.is_alphabetic() || c == '_'
}

fn is_word_char(c: char) -> bool {
    c.is_alphanumeric() || c == '_' || c == '$'
}

/// What a byte can begin, for the lexer's one-lookup dispatch (whitespace skip included).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Start {
    /// ASCII whitespace (`u8::is_ascii_whitespace`).
    Space,
    /// An ASCII letter or `_`.
    Letter,
    Digit,
    Dot,
    Quote,
    DoubleQuote,
    Dollar,
    Dash,
    Slash,
    Semicolon,
    /// The first byte of a multi-byte character: decoded and judged as a `char`.
    NonAscii,
    /// Any other ASCII byte: an operator or punctuation character on its own.
    Other,
}

const fn start_table() -> [Start; 256] {
    let mut t = [Start::NonAscii; 256];
    let mut b = 0;
    while b < 128 {
        let c = b as u8;
        t[b] = match c {
            b' ' | b'\t' | b'\n' | b'\x0C' | b'\r' => Start::Space,
            b'a'..=b'z' | b'A'..=b'Z' | b'_' => Start::Letter,
            b'0'..=b'9' => Start::Digit,
            b'.' => Start::Dot,
            b'\'' => Start::Quote,
            b'"' => Start::DoubleQuote,
            b'$' => Start::Dollar,
            b'-' => Start::Dash,
            b'/' => Start::Slash,
            b';' => Start::Semicolon,
            _ => Start::Other,
        };
        b += 1;
    }
    t
}

pub(crate) static START: [Start; 256] = start_table();

/// Bytes that continue an unquoted word: ASCII letters, digits, `_` and `$` (non-ASCII bytes
/// are not in it: the word loop leaves them to `char`).
const fn word_table() -> [bool; 256] {
    let mut t = [false; 256];
    let mut b = 0;
    while b < 128 {
        let c = b as u8;
        t[b] = c.is_ascii_alphanumeric() || c == b'_' || c == b'$';
        b += 1;
    }
    t
}

pub(crate) static WORD_BYTE: [bool; 256] = word_table();

/// The character at byte `i` (`None` at the end, or if `i` is not a character boundary).
fn char_at(sql: &str, i: usize) -> Option<char> {
    sql.get(i..)?.chars().next()
}

/// Tokens of `sql`, whitespace skipped. Unterminated literals and comments run to the end.
pub(crate) fn tokens(sql: &str) -> Vec<Tok> {
    Lexer::new(sql).collect()
}

/// The tokens of a text one at a time, without allocating: the plan cache's normalizer and the
/// fingerprint run it on every simple-protocol statement, so ASCII goes through byte tables
/// and only non-ASCII characters are decoded (to judge them as PostgreSQL does: any Unicode
/// letter starts a word, any Unicode white space separates).
pub struct Lexer<'a> {
    sql: &'a str,
    pos: usize,
}

impl<'a> Lexer<'a> {
    pub fn new(sql: &'a str) -> Lexer<'a> {
        Lexer { sql, pos: 0 }
    }

    /// The tokens from byte `pos` on, which must start a token or white space (the
    /// fingerprint's hash loop hands it the tokens it does not read itself).
    pub(crate) fn at(sql: &'a str, pos: usize) -> Lexer<'a> {
        Lexer { sql, pos }
    }
}

impl Iterator for Lexer<'_> {
    type Item = Tok;

    // Inlined into each loop over the tokens: a call per token, with its token returned
    // through memory, cost as much as lexing a short word.
    #[inline(always)]
    fn next(&mut self) -> Option<Tok> {
        let sql = self.sql;
        let bytes = sql.as_bytes();
        let mut i = self.pos;
        // Whitespace, then what the first byte of the token begins, from one table lookup.
        let start = loop {
            let Some(&b) = bytes.get(i) else {
                self.pos = i;
                return None;
            };
            match START[usize::from(b)] {
                Start::Space => i += 1,
                Start::NonAscii => match char_at(sql, i) {
                    Some(c) if c.is_whitespace() => i += c.len_utf8(),
                    _ => break Start::NonAscii,
                },
                other => break other,
            }
        };
        let next = bytes.get(i + 1).copied();
        let (kind, end) = match start {
            Start::Letter => {
                let end = word_end(sql, i + 1);
                // E'…' (escape string) prefixes glue to the literal.
                if end == i + 1 && bytes[i] | 0x20 == b'e' && bytes.get(end) == Some(&b'\'') {
                    (TokKind::Quoted, quoted_end(bytes, end, b'\'', true))
                } else {
                    (TokKind::Word, end)
                }
            }
            Start::Digit => (TokKind::Number, number_end(bytes, i)),
            Start::Dot if next.is_some_and(|n| n.is_ascii_digit()) => {
                (TokKind::Number, number_end(bytes, i))
            }
            Start::Quote => (TokKind::Quoted, quoted_end(bytes, i, b'\'', false)),
            Start::DoubleQuote => (TokKind::Quoted, quoted_end(bytes, i, b'"', false)),
            Start::Dollar if next.is_some_and(|n| n.is_ascii_digit()) => {
                (TokKind::Param, digits_end(bytes, i + 1))
            }
            Start::Dollar => match dollar_tag_end(sql, i) {
                Some(tag_end) => {
                    let tag = &sql[i..tag_end];
                    let end = sql[tag_end..]
                        .find(tag)
                        .map_or(sql.len(), |n| tag_end + n + tag.len());
                    (TokKind::Quoted, end)
                }
                None => (TokKind::Other, i + 1),
            },
            Start::Dash if next == Some(b'-') => (TokKind::Comment, line_end(bytes, i)),
            Start::Slash if next == Some(b'*') => (TokKind::Comment, block_comment_end(bytes, i)),
            Start::Semicolon => (TokKind::Semicolon, i + 1),
            Start::NonAscii => match char_at(sql, i) {
                Some(c) if is_word_start(c) => (TokKind::Word, word_end(sql, i + c.len_utf8())),
                Some(c) => (TokKind::Other, i + c.len_utf8()),
                None => (TokKind::Other, i + 1),
            },
            _ => (TokKind::Other, i + 1),
        };
        let end = end.max(i + 1).min(sql.len());
        self.pos = end;
        Some(Tok {
            kind,
            range: i..end,
        })
    }
}

/// End of a word whose remaining characters start at `i`: ASCII bytes by table, anything else
/// through `char`.
#[inline(always)]
fn word_end(sql: &str, i: usize) -> usize {
    let bytes = sql.as_bytes();
    let mut j = i;
    while let Some(&b) = bytes.get(j) {
        if !WORD_BYTE[usize::from(b)] {
            if b.is_ascii() {
                return j;
            }
            return word_end_non_ascii(sql, j);
        }
        j += 1;
    }
    j
}

/// [`word_end`] from a non-ASCII character at `i` on.
#[cold]
#[inline(never)]
fn word_end_non_ascii(sql: &str, mut i: usize) -> usize {
    let bytes = sql.as_bytes();
    while let Some(&b) = bytes.get(i) {
        if b.is_ascii() {
            if !WORD_BYTE[usize::from(b)] {
                break;
            }
            i += 1;
        } else {
            match char_at(sql, i) {
                Some(c) if is_word_char(c) => i += c.len_utf8(),
                _ => break,
            }
        }
    }
    i
}

/// End of a `--` comment starting at `from`: its newline (not included), or the text's end.
fn line_end(bytes: &[u8], from: usize) -> usize {
    bytes[from..]
        .iter()
        .position(|&b| b == b'\n')
        .map_or(bytes.len(), |n| from + n)
}

fn digits_end(bytes: &[u8], i: usize) -> usize {
    match bytes.get(i..) {
        Some(rest) => rest
            .iter()
            .position(|b| !b.is_ascii_digit())
            .map_or(bytes.len(), |n| i + n),
        None => i,
    }
}

/// End of a numeric literal at `start`: digits, an optional fraction, an optional exponent
/// (`1e5`, `1.5E-3`); an `e` not followed by digits is not part of it.
fn number_end(bytes: &[u8], start: usize) -> usize {
    let mut i = digits_end(bytes, start);
    if bytes.get(i) == Some(&b'.') && bytes.get(i + 1) != Some(&b'.') {
        i = digits_end(bytes, i + 1);
    }
    if matches!(bytes.get(i), Some(b'e' | b'E')) {
        let mut j = i + 1;
        if matches!(bytes.get(j), Some(b'+' | b'-')) {
            j += 1;
        }
        if bytes.get(j).is_some_and(u8::is_ascii_digit) {
            i = digits_end(bytes, j);
        }
    }
    i
}

/// End of a block comment opened at `start` (`/*`), counting nested `/* */` pairs; the text's
/// end if unterminated.
fn block_comment_end(bytes: &[u8], start: usize) -> usize {
    let mut depth = 0usize;
    let mut i = start;
    while i + 1 < bytes.len() {
        // Only `/` and `*` can open or close: jump to the next one.
        match bytes[i..bytes.len() - 1]
            .iter()
            .position(|&b| b == b'/' || b == b'*')
        {
            Some(n) => i += n,
            None => break,
        }
        match (bytes[i], bytes[i + 1]) {
            (b'/', b'*') => {
                depth += 1;
                i += 2;
            }
            (b'*', b'/') => {
                depth -= 1;
                i += 2;
                if depth == 0 {
                    return i;
                }
            }
            _ => i += 1,
        }
    }
    bytes.len()
}

/// End (exclusive) of a literal opened by `quote` at `start`; a doubled quote is an escaped
/// quote, and with `backslash` so is `\'`.
fn quoted_end(bytes: &[u8], start: usize, quote: u8, backslash: bool) -> usize {
    let mut i = start + 1;
    while let Some(rest) = bytes.get(i..) {
        let Some(n) = rest
            .iter()
            .position(|&b| b == quote || (backslash && b == b'\\'))
        else {
            break;
        };
        i += n;
        if bytes[i] != quote {
            // A backslash: it escapes the next byte.
            i += 2;
        } else if bytes.get(i + 1) == Some(&quote) {
            i += 2;
        } else {
            return i + 1;
        }
    }
    bytes.len()
}

/// End (exclusive) of the opening `$tag$` or `$$` of a dollar-quoted string starting at `i`
/// (not `$1`, a parameter): the tag is empty, or a letter or `_` followed by letters, digits
/// and `_`, up to the next `$`.
fn dollar_tag_end(sql: &str, i: usize) -> Option<usize> {
    let bytes = sql.as_bytes();
    let mut j = i + 1;
    let mut first = true;
    loop {
        let b = *bytes.get(j)?;
        if b == b'$' {
            return Some(j + 1);
        }
        let (valid, len) = if b.is_ascii() {
            let valid = if first {
                b.is_ascii_alphabetic() || b == b'_'
            } else {
                b.is_ascii_alphanumeric() || b == b'_'
            };
            (valid, 1)
        } else {
            let c = char_at(sql, j)?;
            let valid = if first {
                is_word_start(c)
            } else {
                c.is_alphanumeric() || c == '_'
            };
            (valid, c.len_utf8())
        };
        if !valid {
            return None;
        }
        first = false;
        j += len;
    }
}

/// `sql` with literals replaced by `?`, comments dropped and whitespace collapsed, for logs
/// (the slow-query log): the statement's shape without the values it carried.
pub fn normalize_sql(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len().min(4096));
    let mut prev_end = usize::MAX;
    for tok in Lexer::new(sql) {
        let text = &sql[tok.range.clone()];
        let adjacent = tok.range.start == prev_end;
        prev_end = tok.range.end;
        let piece = match tok.kind {
            TokKind::Comment => continue,
            TokKind::Quoted if !text.starts_with('"') => "?",
            TokKind::Number => "?",
            _ => text,
        };
        // Keep the text's own spacing between tokens (collapsed to one space).
        if !out.is_empty() && !adjacent {
            out.push(' ');
        }
        out.push_str(piece);
    }
    out
}

/// The statements of a text, split at top-level semicolons, without the ones that hold only
/// comments and whitespace.
pub fn split_statements(sql: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut has_code = false;
    for tok in tokens(sql) {
        match tok.kind {
            TokKind::Semicolon => {
                if has_code {
                    out.push(sql[start..tok.range.start].trim());
                }
                start = tok.range.end;
                has_code = false;
            }
            TokKind::Comment => {}
            _ => has_code = true,
        }
    }
    if has_code {
        out.push(sql[start..].trim());
    }
    out
}

/// The text of every comment, without its `--` or `/* */` markers.
pub(crate) fn comments(sql: &str) -> impl Iterator<Item = &str> {
    tokens(sql)
        .into_iter()
        .filter(|t| t.kind == TokKind::Comment)
        .map(move |t| {
            let c = &sql[t.range];
            if let Some(line) = c.strip_prefix("--") {
                line
            } else {
                let inner = c.strip_prefix("/*").unwrap_or(c);
                inner.strip_suffix("*/").unwrap_or(inner)
            }
        })
}

/// The code tokens (no comments) of a text.
pub fn code_tokens(sql: &str) -> Vec<Tok> {
    tokens(sql)
        .into_iter()
        .filter(|t| t.kind != TokKind::Comment)
        .collect()
}

/// The first `n` words of a text (upper case), stopping at the first token that is not a word.
pub(crate) fn leading_words(sql: &str, n: usize) -> Vec<String> {
    code_tokens(sql)
        .into_iter()
        .take_while(|t| t.kind == TokKind::Word)
        .take(n)
        .map(|t| sql[t.range].to_ascii_uppercase())
        .collect()
}

/// The first `n` words of one statement as session tracking reads them: keywords and plain
/// identifiers lower-cased, quoted identifiers as written (without their quotes), a dotted name
/// (`myapp.tenant`) as one word; stops at the first token that is none of these.
pub fn leading_names(sql: &str, n: usize) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut joining = false;
    let mut prev_end = usize::MAX;
    for tok in code_tokens(sql) {
        let text = &sql[tok.range.clone()];
        let adjacent = tok.range.start == prev_end;
        prev_end = tok.range.end;
        let name = match tok.kind {
            TokKind::Word => text.to_ascii_lowercase(),
            TokKind::Quoted if text.len() >= 2 && text.starts_with('"') => {
                text[1..text.len() - 1].replace("\"\"", "\"")
            }
            TokKind::Other if text == "." && adjacent && !out.is_empty() => {
                joining = true;
                if let Some(last) = out.last_mut() {
                    last.push('.');
                }
                continue;
            }
            _ => break,
        };
        if joining && adjacent {
            if let Some(last) = out.last_mut() {
                last.push_str(&name);
            }
            joining = false;
            continue;
        }
        if out.len() == n {
            break;
        }
        out.push(name);
    }
    out
}

/// The first word of a text, past comments, whitespace and empty statements (`;`): `None`
/// when the first code token is not a word (`(`, a literal, nothing). Without allocating, for
/// checks that run on every statement.
pub fn first_word(sql: &str) -> Option<&str> {
    Lexer::new(sql)
        .find(|t| !matches!(t.kind, TokKind::Comment | TokKind::Semicolon))
        .filter(|t| t.kind == TokKind::Word)
        .map(|t| &sql[t.range])
}

/// The words of a text outside literals and comments (keywords and unquoted identifiers, as
/// written), e.g. to find the functions a statement calls.
pub fn code_words(sql: &str) -> impl Iterator<Item = &str> {
    tokens(sql)
        .into_iter()
        .filter(|t| t.kind == TokKind::Word)
        .map(move |t| &sql[t.range])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalized_statements_carry_no_values() {
        assert_eq!(
            normalize_sql(
                "SELECT * FROM \"T\" /* hi */ WHERE a = 'secret' AND b = 42\n  AND c = $1::int"
            ),
            "SELECT * FROM \"T\" WHERE a = ? AND b = ? AND c = $1::int"
        );
        assert_eq!(
            normalize_sql("select f($$x$$, E'y', 1.5e3)"),
            "select f(?, ?, ?)"
        );
    }

    #[test]
    fn splits_outside_literals_and_comments() {
        let sql = "SELECT ';' ; /* ; */ SELECT $$;$$; -- ;\n SELECT E'\\';' ;; SELECT \"a;b\"";
        assert_eq!(
            split_statements(sql),
            vec![
                "SELECT ';'",
                "/* ; */ SELECT $$;$$",
                "-- ;\n SELECT E'\\';'",
                "SELECT \"a;b\""
            ]
        );
        assert_eq!(split_statements("  ; -- nothing\n"), Vec::<&str>::new());
    }

    #[test]
    fn finds_comments_but_not_lookalikes_in_strings() {
        let sql = "SELECT '/* no */' /* a /* nested */ b */ -- line\n, $1, $t$ -- no $t$";
        let found: Vec<&str> = comments(sql).collect();
        assert_eq!(found, vec![" a /* nested */ b ", " line"]);
    }

    #[test]
    fn leading_words_skip_comments() {
        assert_eq!(
            leading_words("/* x */ -- y\n begin read only;", 3),
            vec!["BEGIN", "READ", "ONLY"]
        );
        assert_eq!(leading_words("'unterminated", 2), Vec::<String>::new());
    }

    #[test]
    fn first_word_skips_comments_and_empty_statements() {
        assert_eq!(
            first_word("/* a */ -- b\n ; ;Begin; select 1"),
            Some("Begin")
        );
        assert_eq!(first_word("  select 1"), Some("select"));
        assert_eq!(first_word("(select 1)"), None);
        assert_eq!(first_word("'x'"), None);
        assert_eq!(first_word(" -- only a comment"), None);
        assert_eq!(first_word("émoji_table"), Some("émoji_table"));
    }

    #[test]
    fn leading_names_join_dotted_and_quoted_names() {
        assert_eq!(
            leading_names("/* c */ SET myapp.Tenant = 'x'", 4),
            vec!["set", "myapp.tenant"]
        );
        assert_eq!(
            leading_names("set \"Search_Path\" to a", 4),
            vec!["set", "Search_Path", "to", "a"]
        );
        assert_eq!(leading_names("RESET ALL", 1), vec!["reset"]);
        assert_eq!(leading_names("reset x.y.z", 4), vec!["reset", "x.y.z"]);
    }

    #[test]
    fn backslash_ends_no_standard_string() {
        // With standard_conforming_strings (the default since 9.1) `\` is an ordinary
        // character in '…': the string ends at the next quote.
        assert_eq!(
            split_statements("SELECT 'C:\\'; SET search_path = b"),
            vec!["SELECT 'C:\\'", "SET search_path = b"]
        );
        assert_eq!(split_statements("SELECT E'\\'; x'").len(), 1);
    }
}
