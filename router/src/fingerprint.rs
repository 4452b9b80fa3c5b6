//! A statement's fingerprint: its normalized text (the plan cache's literal rules, see
//! `normalize`) as the per-query statistics and the slow-query log name it, and a 64-bit hash
//! of that text computed without building it, so the hot path hashes and only a statement seen
//! for the first time pays for the string.
//!
//! It differs from the plan cache's key on purpose: the cache must keep every text whose
//! meaning a parameter could change (it then plans it as written), while a fingerprint only
//! names a shape. So here
//! - the literals `normalize` replaces (unsigned numbers, plain `'…'` strings in value
//!   positions) become `$n`, numbered after the text's own highest parameter, also in texts
//!   that already have parameters (a Parse's `$1` stays `$1`);
//! - comments are dropped (trace ids in comments would make every statement new), whitespace
//!   between tokens becomes one space in the text and does not count in the hash, and
//!   unquoted words hash case-insensitively (`SELECT` and `select` are one statement, as
//!   PostgreSQL reads them);
//! - nothing makes it give up: a number glued to a word is replaced all the same.

use crate::normalize::string_in_value_context;
use crate::text::{Lexer, TokKind};

/// The fingerprint text is cut after this many bytes (a bulk statement's shape is its start).
pub const MAX_FINGERPRINT_TEXT: usize = 4096;

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
    let mut next_placeholder = highest_param(sql) + 1;
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
            next_placeholder += 1;
        } else {
            sink.piece(&sql[range.clone()], tok.kind == TokKind::Word);
        }
        prev = Some((tok.kind, range.start, range.end));
    }
}

/// The fingerprint's hash: equal for texts that differ only in literal values, comments,
/// whitespace and the case of unquoted words (the text shows one of them: the first seen). Allocates nothing.
pub fn fingerprint_hash(sql: &str) -> u64 {
    let mut h = Fnv(Fnv::OFFSET);
    walk(sql, &mut h);
    h.0
}

/// The fingerprint's text (as first written: the case of its words is the text's own), cut
/// at [`MAX_FINGERPRINT_TEXT`] bytes.
pub fn fingerprint_text(sql: &str) -> String {
    let mut t = Text(String::with_capacity(
        sql.len().min(MAX_FINGERPRINT_TEXT) + 8,
    ));
    walk(sql, &mut t);
    t.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literals_become_placeholders_after_the_texts_own() {
        assert_eq!(
            fingerprint_text("select * from orders where user_id = 42 and status = 'new'"),
            "select * from orders where user_id = $1 and status = $2"
        );
        assert_eq!(
            fingerprint_text("select * from t where a = $2 and b = 7 -- note 9\n limit 10"),
            "select * from t where a = $2 and b = $3 limit $4"
        );
        assert_eq!(
            fingerprint_text("select d from t where d > date '2024-01-01'"),
            "select d from t where d > date '2024-01-01'"
        );
    }

    #[test]
    fn same_shape_same_hash() {
        let a = fingerprint_hash("SELECT * FROM orders WHERE user_id = 1");
        let b = fingerprint_hash("select *   from orders /* trace=abc */ where user_id=   99");
        let c = fingerprint_hash("select * from orders where user_id =99");
        assert_eq!(a, b);
        assert_eq!(a, c);
        assert_eq!(
            fingerprint_hash("select * from t where a = 'x'"),
            fingerprint_hash("SELECT * FROM t WHERE a = 'yy'")
        );
        assert_ne!(
            fingerprint_hash("select * from \"T\""),
            fingerprint_hash("select * from \"t\"")
        );
        assert_ne!(
            fingerprint_hash("select * from t where a = 1"),
            fingerprint_hash("select * from u where a = 1")
        );
    }

    #[test]
    fn long_texts_are_cut() {
        let sql = format!("select {}", "a, ".repeat(5000) + "b");
        assert!(fingerprint_text(&sql).len() <= MAX_FINGERPRINT_TEXT + 8);
    }
}
