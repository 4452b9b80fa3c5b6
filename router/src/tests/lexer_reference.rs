//! The reference: the lexer, fingerprint and normalizer as they were before the byte-class
//! rewrite (commit f3a3ed5), kept verbatim (only made crate-private, and the fingerprint's
//! placeholder arithmetic wrapping, as it was in release builds) so `lexer_equivalence` can
//! prove the fast versions give the same tokens, hashes, texts and normalized statements.
//! Test-only: nothing outside the tests may use it.

#![allow(dead_code)]

use std::borrow::Cow;

use crate::fingerprint::MAX_FINGERPRINT_TEXT;
use crate::normalize::{Normalized, MAX_LITERALS, MAX_NORMALIZED_LEN};
use crate::text::{Tok, TokKind};

// ---- lexer (text.rs) ----

fn is_word_start(c: char) -> bool {
    c.is_alphabetic() || c == '_'
}

fn is_word_char(c: char) -> bool {
    c.is_alphanumeric() || c == '_' || c == '$'
}

/// The tokens of a text one at a time, without allocating: the plan cache's normalizer runs
/// it on every simple-protocol statement.
pub(crate) struct Lexer<'a> {
    sql: &'a str,
    pos: usize,
}

impl<'a> Lexer<'a> {
    pub(crate) fn new(sql: &'a str) -> Lexer<'a> {
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

// ---- fingerprint (fingerprint.rs) ----

/// Where the walk's pieces go: the text, or only its hash.
trait Sink {
    /// Between two tokens; `spaced` when the text had whitespace (or a comment) there.
    fn boundary(&mut self, spaced: bool);
    fn piece(&mut self, s: &str, fold_case: bool);
    fn placeholder(&mut self, n: usize);
}

/// FNV-1a, 64 bits: stable across processes and versions, so a fingerprint id means the same
/// statement after a restart and on every proxy of a fleet.
struct Fnv(u64);

impl Fnv {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;

    fn byte(&mut self, b: u8) {
        self.0 ^= u64::from(b);
        self.0 = self.0.wrapping_mul(Fnv::PRIME);
    }
}

impl Sink for Fnv {
    fn boundary(&mut self, _spaced: bool) {
        // Tokens, not spacing: `a=1` and `a = 1` are one statement.
        self.byte(0x1f);
    }

    fn piece(&mut self, s: &str, fold_case: bool) {
        for b in s.bytes() {
            self.byte(if fold_case { b.to_ascii_lowercase() } else { b });
        }
    }

    fn placeholder(&mut self, n: usize) {
        self.byte(b'$');
        // The number's digits, low first: only equality matters for a hash.
        let mut n = n;
        loop {
            self.byte(b'0' + (n % 10) as u8);
            n /= 10;
            if n == 0 {
                break;
            }
        }
    }
}

struct Text(String);

impl Sink for Text {
    fn boundary(&mut self, spaced: bool) {
        if spaced && self.0.len() < MAX_FINGERPRINT_TEXT {
            self.0.push(' ');
        }
    }

    fn piece(&mut self, s: &str, _fold_case: bool) {
        if self.0.len() < MAX_FINGERPRINT_TEXT {
            self.0.push_str(s);
        }
    }

    fn placeholder(&mut self, n: usize) {
        if self.0.len() < MAX_FINGERPRINT_TEXT {
            self.0.push('$');
            self.0.push_str(&n.to_string());
        }
    }
}

/// The text's highest `$n` (0 without parameters); a `$` is rare, so usually no second pass.
fn highest_param(sql: &str) -> usize {
    if !sql.as_bytes().contains(&b'$') {
        return 0;
    }
    Lexer::new(sql)
        .filter(|t| t.kind == TokKind::Param)
        .filter_map(|t| {
            sql.get(t.range.start + 1..t.range.end)?
                .parse::<usize>()
                .ok()
        })
        .max()
        .unwrap_or(0)
}

fn walk(sql: &str, sink: &mut impl Sink) {
    // Wrapping: what release builds (no overflow checks) did for `$18446744073709551615`.
    let mut next_placeholder = highest_param(sql).wrapping_add(1);
    let mut prev: Option<(TokKind, usize, usize)> = None;
    let mut any = false;
    for tok in Lexer::new(sql) {
        let range = tok.range.clone();
        let replace = match tok.kind {
            TokKind::Comment => continue,
            TokKind::Number => true,
            TokKind::Quoted => {
                sql.as_bytes()[range.start] == b'\'' && string_in_value_context(sql, prev)
            }
            _ => false,
        };
        if any {
            sink.boundary(prev.is_some_and(|(_, _, end)| end != range.start));
        }
        any = true;
        if replace {
            sink.placeholder(next_placeholder);
            next_placeholder = next_placeholder.wrapping_add(1);
        } else {
            sink.piece(&sql[range.clone()], tok.kind == TokKind::Word);
        }
        prev = Some((tok.kind, range.start, range.end));
    }
}

/// The fingerprint's hash: equal for texts that differ only in literal values, comments,
/// whitespace and the case of unquoted words (the text shows one of them: the first seen). Allocates nothing.
pub(crate) fn fingerprint_hash(sql: &str) -> u64 {
    let mut h = Fnv(Fnv::OFFSET);
    walk(sql, &mut h);
    h.0
}

/// The fingerprint's text (as first written: the case of its words is the text's own), cut
/// at [`MAX_FINGERPRINT_TEXT`] bytes.
pub(crate) fn fingerprint_text(sql: &str) -> String {
    let mut t = Text(String::with_capacity(
        sql.len().min(MAX_FINGERPRINT_TEXT) + 8,
    ));
    walk(sql, &mut t);
    t.0
}

// ---- normalize (normalize.rs) ----

/// Words after which a string literal is an ordinary value (not the value of a typed literal
/// such as `DATE '2024-01-01'`, which a parameter cannot replace).
pub(crate) const VALUE_CONTEXT_WORDS: &[&str] = &[
    "and",
    "or",
    "not",
    "in",
    "like",
    "ilike",
    "then",
    "else",
    "when",
    "select",
    "between",
    "is",
    "distinct",
    "from",
    "any",
    "all",
    "some",
    "escape",
    "similar",
    "to",
    "values",
    "set",
    "returning",
    "by",
    "case",
];

/// The normalized form of `sql`, or `None` when there is nothing to replace or the text must
/// be planned as written (it already has parameters, is too long, or has a number glued to a
/// word, which PostgreSQL reads differently by version).
pub(crate) fn normalize(sql: &str) -> Option<Normalized<'_>> {
    if sql.len() > MAX_NORMALIZED_LEN {
        return None;
    }
    let mut text = String::new();
    let mut literals: Vec<Cow<'_, str>> = Vec::new();
    let mut copied = 0; // sql[..copied] is in `text` already
    let mut prev: Option<(TokKind, usize, usize)> = None; // kind, start, end of the last code token
    let mut glued_number = false;
    for tok in Lexer::new(sql) {
        let range = tok.range.clone();
        if let Some((kind, _, end)) = prev {
            // `123abc`, `1.2.3`, `0x1F` and `1_000` mean different things in different
            // PostgreSQL versions: leave such texts alone.
            let adjacent = end == range.start;
            if adjacent
                && (glued_number && matches!(tok.kind, TokKind::Word | TokKind::Number)
                    || kind == TokKind::Word && tok.kind == TokKind::Number)
            {
                return None;
            }
        }
        let replace = match tok.kind {
            TokKind::Param => return None,
            TokKind::Comment => continue,
            TokKind::Number => true,
            TokKind::Quoted => {
                sql.as_bytes()[range.start] == b'\'' && string_in_value_context(sql, prev)
            }
            _ => false,
        };
        glued_number = tok.kind == TokKind::Number;
        prev = Some((tok.kind, range.start, range.end));
        if !replace {
            continue;
        }
        if literals.len() == MAX_LITERALS {
            return None;
        }
        let literal = &sql[range.clone()];
        let value = if tok.kind == TokKind::Number {
            Cow::Borrowed(literal)
        } else {
            // Unterminated: planned as written; the server reports it.
            string_value(literal)?
        };
        if text.capacity() == 0 {
            text.reserve(sql.len() + 16);
        }
        text.push_str(&sql[copied..range.start]);
        literals.push(value);
        text.push('$');
        push_number(&mut text, literals.len());
        copied = range.end;
    }
    if literals.is_empty() {
        return None;
    }
    text.push_str(&sql[copied..]);
    Some(Normalized { text, literals })
}

/// Whether a `'…'` string starting after the code token `prev` is a plain value: not glued to a
/// prefix (`B'…'`, `X'…'`, `N'…'`) and not after a type name (`DATE '…'`).
pub(crate) fn string_in_value_context(sql: &str, prev: Option<(TokKind, usize, usize)>) -> bool {
    match prev {
        None => true,
        Some((TokKind::Word, start, end)) => {
            let word = &sql[start..end];
            VALUE_CONTEXT_WORDS
                .iter()
                .any(|w| w.eq_ignore_ascii_case(word))
                && !sql[end..].starts_with('\'')
        }
        // `U&'…'`: the `&` glued to the quote.
        Some((TokKind::Other, start, end)) => {
            !(sql.get(start..end) == Some("&") && sql[end..].starts_with('\''))
        }
        Some(_) => true,
    }
}

/// The value of a standard `'…'` literal (`''` is one quote); `None` if unterminated.
fn string_value(literal: &str) -> Option<Cow<'_, str>> {
    let body = literal.strip_prefix('\'')?;
    // Escaped quotes come in pairs, so a terminated literal has an odd number after the first.
    if body.bytes().filter(|&b| b == b'\'').count() % 2 == 0 {
        return None;
    }
    let inner = body.strip_suffix('\'')?;
    Some(if inner.contains('\'') {
        Cow::Owned(inner.replace("''", "'"))
    } else {
        Cow::Borrowed(inner)
    })
}

fn push_number(out: &mut String, n: usize) {
    let mut buf = [0u8; 20];
    let mut i = buf.len();
    let mut n = n;
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    // Digits are ASCII.
    out.push_str(std::str::from_utf8(&buf[i..]).unwrap_or("0"));
}
