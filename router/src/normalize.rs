//! Statement normalization for the plan cache: one lexer pass turns the literals of a
//! simple-protocol statement into parameters (`WHERE user_id = 42` → `WHERE user_id = $1`), so
//! statements that differ only in their values share one cache entry and sqlparser runs once
//! per statement shape instead of once per value. The literal values are kept, in order, and
//! route the cached plan exactly as Bind values route a prepared statement.
//!
//! Only literals whose replacement by a parameter keeps the statement's meaning for routing are
//! replaced: unsigned numbers and plain `'…'` strings in an expression position. Typed literals
//! (`DATE '…'`, `interval '…'`), prefixed strings (`E'…'`, `B'…'`, `X'…'`, `U&'…'`),
//! dollar-quoted strings and anything in comments stay part of the key. The router still proves
//! each shape once (see `Router::plan_query`): the normalized plan must agree with the plan of
//! the original text, or the shape is planned by its full text every time.

use std::borrow::Cow;

use crate::text::{Lexer, TokKind};

/// Texts longer than this are planned by their full text (bulk statements rarely repeat).
pub(crate) const MAX_NORMALIZED_LEN: usize = 16 * 1024;
/// More literals than this: planned by full text (a bulk INSERT's shape rarely repeats).
pub(crate) const MAX_LITERALS: usize = 256;

/// A statement with its literals replaced by `$1…$n`, and their values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Normalized<'a> {
    /// The statement's shape: the cache key, and the text the shape is planned from.
    pub text: String,
    /// The replaced literals' values, in order (`$1` first), as their text-format value.
    pub literals: Vec<Cow<'a, str>>,
}

/// Whether `word` (any case) is one after which a string literal is an ordinary value (not
/// the value of a typed literal such as `DATE '2024-01-01'`, which a parameter cannot replace).
fn is_value_context_word(word: &str) -> bool {
    const LONGEST: usize = 9; // "returning"
    let word = word.as_bytes();
    if word.len() < 2 || word.len() > LONGEST {
        return false;
    }
    let mut folded = [0u8; LONGEST];
    for (f, b) in folded.iter_mut().zip(word) {
        *f = b.to_ascii_lowercase();
    }
    matches!(
        &folded[..word.len()],
        b"and"
            | b"or"
            | b"not"
            | b"in"
            | b"like"
            | b"ilike"
            | b"then"
            | b"else"
            | b"when"
            | b"select"
            | b"between"
            | b"is"
            | b"distinct"
            | b"from"
            | b"any"
            | b"all"
            | b"some"
            | b"escape"
            | b"similar"
            | b"to"
            | b"values"
            | b"set"
            | b"returning"
            | b"by"
            | b"case"
    )
}

/// The normalized form of `sql`, or `None` when there is nothing to replace or the text must
/// be planned as written (it already has parameters, is too long, or has a number glued to a
/// word, which PostgreSQL reads differently by version).
pub fn normalize(sql: &str) -> Option<Normalized<'_>> {
    if sql.len() > MAX_NORMALIZED_LEN {
        return None;
    }
    let bytes = sql.as_bytes();
    let mut text = String::new();
    let mut literals: Vec<Cow<'_, str>> = Vec::new();
    let mut copied = 0; // sql[..copied] is in `text` already
    let mut prev: Option<(TokKind, usize, usize)> = None; // kind, start, end of the last code token
    for tok in Lexer::new(sql) {
        let (kind, start, end) = (tok.kind, tok.range.start, tok.range.end);
        let replace = match kind {
            TokKind::Param => return None,
            TokKind::Comment => continue,
            TokKind::Number => true,
            TokKind::Quoted => bytes[start] == b'\'' && string_in_value_context(sql, prev),
            _ => false,
        };
        if let Some((prev_kind, _, prev_end)) = prev {
            // `123abc`, `1.2.3`, `0x1F` and `1_000` mean different things in different
            // PostgreSQL versions: leave such texts alone.
            if prev_end == start
                && (prev_kind == TokKind::Number && matches!(kind, TokKind::Word | TokKind::Number)
                    || prev_kind == TokKind::Word && kind == TokKind::Number)
            {
                return None;
            }
        }
        prev = Some((kind, start, end));
        if !replace {
            continue;
        }
        if literals.len() == MAX_LITERALS {
            return None;
        }
        let literal = &sql[start..end];
        let value = if kind == TokKind::Number {
            Cow::Borrowed(literal)
        } else {
            // Unterminated: planned as written; the server reports it.
            string_value(literal)?
        };
        if text.capacity() == 0 {
            text.reserve(sql.len() + 16);
            literals.reserve(8);
        }
        text.push_str(&sql[copied..start]);
        literals.push(value);
        text.push('$');
        push_number(&mut text, literals.len());
        copied = end;
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
            sql.as_bytes().get(end) != Some(&b'\'') && is_value_context_word(&sql[start..end])
        }
        // `U&'…'`: the `&` glued to the quote.
        Some((TokKind::Other, start, end)) => {
            !(sql.get(start..end) == Some("&") && sql.as_bytes().get(end) == Some(&b'\''))
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
    for &d in &buf[i..] {
        out.push(char::from(d));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(sql: &str) -> Option<(String, Vec<String>)> {
        normalize(sql).map(|n| {
            (
                n.text,
                n.literals.into_iter().map(Cow::into_owned).collect(),
            )
        })
    }

    #[test]
    fn numbers_and_strings_become_parameters() {
        assert_eq!(
            norm("select * from orders where user_id = 42 and status = 'it''s' limit 10"),
            Some((
                "select * from orders where user_id = $1 and status = $2 limit $3".into(),
                vec!["42".into(), "it's".into(), "10".into()]
            ))
        );
        assert_eq!(
            norm("INSERT INTO t (a, b) VALUES (1.5e3, '') /* keep 7 */"),
            Some((
                "INSERT INTO t (a, b) VALUES ($1, $2) /* keep 7 */".into(),
                vec!["1.5e3".into(), "".into()]
            ))
        );
    }

    #[test]
    fn typed_and_prefixed_literals_stay() {
        assert_eq!(
            norm(
                "select 1 where d > date '2024-01-01' and b = B'101' and x = E'\\n' and y = $$q$$"
            ),
            Some((
                "select $1 where d > date '2024-01-01' and b = B'101' and x = E'\\n' and y = $$q$$"
                    .into(),
                vec!["1".into()]
            ))
        );
        assert_eq!(norm("select u&'x' = U&'\\0041'"), None);
        assert_eq!(norm("select interval '1 day'"), None);
    }

    #[test]
    fn texts_that_must_stay_as_written() {
        assert_eq!(norm("select * from t where a = $1 and b = 2"), None);
        assert_eq!(norm("select 123abc"), None);
        assert_eq!(norm("select 0x1F"), None);
        assert_eq!(norm("select 1_000"), None);
        assert_eq!(norm("BEGIN"), None);
        assert_eq!(norm("select 'unterminated"), None);
        assert_eq!(norm(&format!("select {}", "1,".repeat(300) + "1")), None);
    }

    #[test]
    fn casts_and_signs_keep_their_text() {
        assert_eq!(
            norm("select '5'::int, -3, t.c1 from t"),
            Some((
                "select $1::int, -$2, t.c1 from t".into(),
                vec!["5".into(), "3".into()]
            ))
        );
    }
}
