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

/// Tokens of `sql`, whitespace skipped. Unterminated literals and comments run to the end.
pub(crate) fn tokens(sql: &str) -> Vec<Tok> {
    Lexer::new(sql).collect()
}

/// The tokens of a text one at a time, without allocating: the plan cache's normalizer runs
/// it on every simple-protocol statement.
pub struct Lexer<'a> {
    sql: &'a str,
    pos: usize,
}

impl<'a> Lexer<'a> {
    pub fn new(sql: &'a str) -> Lexer<'a> {
        Lexer { sql, pos: 0 }
    }
}

impl Iterator for Lexer<'_> {
    type Item = Tok;

    fn next(&mut self) -> Option<Tok> {
        let sql = self.sql;
        let bytes = sql.as_bytes();
        let mut i = self.pos;
        // Whitespace: ASCII fast, anything else through `char`.
        loop {
            match bytes.get(i) {
                None => {
                    self.pos = i;
                    return None;
                }
                Some(b) if b.is_ascii_whitespace() => i += 1,
                Some(b) if b.is_ascii() => break,
                Some(_) => match sql[i..].chars().next() {
                    Some(c) if c.is_whitespace() => i += c.len_utf8(),
                    _ => break,
                },
            }
        }
        let start = i;
        let b = bytes[i];
        let next = bytes.get(i + 1).copied();
        let (kind, end) = if b == b'-' && next == Some(b'-') {
            let end = memchr_newline(bytes, i);
            (TokKind::Comment, end)
        } else if b == b'/' && next == Some(b'*') {
            (TokKind::Comment, block_comment_end(bytes, i))
        } else if b == b'\'' {
            (TokKind::Quoted, quoted_end(bytes, i, b'\'', false))
        } else if b == b'"' {
            (TokKind::Quoted, quoted_end(bytes, i, b'"', false))
        } else if b == b'$' {
            if next.is_some_and(|n| n.is_ascii_digit()) {
                let end = digits_end(bytes, i + 1);
                (TokKind::Param, end)
            } else {
                match dollar_tag(sql, i) {
                    Some(tag) => {
                        let body = i + tag.len();
                        let end = sql[body..]
                            .find(tag)
                            .map_or(sql.len(), |n| body + n + tag.len());
                        (TokKind::Quoted, end)
                    }
                    None => (TokKind::Other, i + 1),
                }
            }
        } else if b.is_ascii_digit() || (b == b'.' && next.is_some_and(|n| n.is_ascii_digit())) {
            (TokKind::Number, number_end(bytes, i))
        } else if b == b';' {
            (TokKind::Semicolon, i + 1)
        } else {
            let c = if b.is_ascii() {
                b as char
            } else {
                sql[i..].chars().next().unwrap_or(' ')
            };
            if is_word_start(c) {
                let end = word_end(sql, i + c.len_utf8());
                // E'…' (escape string) prefixes glue to the literal.
                let word = &sql[i..end];
                if bytes.get(end) == Some(&b'\'') && word.eq_ignore_ascii_case("e") {
                    (TokKind::Quoted, quoted_end(bytes, end, b'\'', true))
                } else {
                    (TokKind::Word, end)
                }
            } else {
                (TokKind::Other, i + c.len_utf8())
            }
        };
        let end = end.max(start + 1).min(sql.len());
        self.pos = end;
        Some(Tok {
            kind,
            range: start..end,
        })
    }
}

/// End of a word whose remaining characters start at `i`: ASCII bytes directly, anything else
/// through `char`.
fn word_end(sql: &str, mut i: usize) -> usize {
    let bytes = sql.as_bytes();
    while let Some(&b) = bytes.get(i) {
        if b.is_ascii() {
            if !(b.is_ascii_alphanumeric() || b == b'_' || b == b'$') {
                break;
            }
            i += 1;
        } else {
            match sql[i..].chars().next() {
                Some(c) if is_word_char(c) => i += c.len_utf8(),
                _ => break,
            }
        }
    }
    i
}

fn memchr_newline(bytes: &[u8], from: usize) -> usize {
    bytes[from..]
        .iter()
        .position(|&b| b == b'\n')
        .map_or(bytes.len(), |n| from + n)
}

fn digits_end(bytes: &[u8], mut i: usize) -> usize {
    while bytes.get(i).is_some_and(u8::is_ascii_digit) {
        i += 1;
    }
    i
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

fn block_comment_end(bytes: &[u8], start: usize) -> usize {
    let mut depth = 0usize;
    let mut i = start;
    while i + 1 < bytes.len() {
        if bytes[i] == b'/' && bytes[i + 1] == b'*' {
            depth += 1;
            i += 2;
        } else if bytes[i] == b'*' && bytes[i + 1] == b'/' {
            depth -= 1;
            i += 2;
            if depth == 0 {
                return i;
            }
        } else {
            i += 1;
        }
    }
    bytes.len()
}

/// End (exclusive) of a literal opened by `quote` at `start`; a doubled quote is an escaped
/// quote, and with `backslash` so is `\'`.
fn quoted_end(bytes: &[u8], start: usize, quote: u8, backslash: bool) -> usize {
    let mut i = start + 1;
    while i < bytes.len() {
        let b = bytes[i];
        if backslash && b == b'\\' {
            i += 2;
        } else if b == quote {
            if bytes.get(i + 1) == Some(&quote) {
                i += 2;
            } else {
                return i + 1;
            }
        } else {
            i += 1;
        }
    }
    bytes.len()
}

/// `$tag$` or `$$` starting at `i` (not `$1`, a parameter).
fn dollar_tag(sql: &str, i: usize) -> Option<&str> {
    let rest = &sql[i + 1..];
    let close = rest.find('$')?;
    let tag = &rest[..close];
    let mut chars = tag.chars();
    let valid = match chars.next() {
        None => true,
        Some(c) => is_word_start(c) && chars.all(|c| c.is_alphanumeric() || c == '_'),
    };
    valid.then(|| &sql[i..i + close + 2])
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
