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

use std::ops::Range;

use crate::normalize::string_in_value_context;
use crate::text::{Lexer, Start, TokKind, START, WORD_BYTE};
use crate::words::WordSet;

/// The fingerprint text is cut after this many bytes (a bulk statement's shape is its start).
pub const MAX_FINGERPRINT_TEXT: usize = 4096;

/// Where the walk's pieces go: the text, or only its hash.
trait Sink {
    /// Between two tokens; `spaced` when the text had whitespace (or a comment) there.
    fn boundary(&mut self, spaced: bool);
    /// The unquoted word `sql[range]` (the hash folds its case).
    fn word(&mut self, sql: &str, range: Range<usize>);
    /// Any other token, `sql[range]`.
    fn piece(&mut self, sql: &str, range: Range<usize>);
    fn placeholder(&mut self, n: usize);
    /// A token the fingerprint leaves out (a comment) or replaces (a literal), `sql[range]`.
    fn left_out(&mut self, sql: &str, range: Range<usize>);
}

/// FNV-1a, 64 bits: stable across processes and versions, so a fingerprint id means the same
/// statement after a restart and on every proxy of a fleet. It also looks for the words of
/// `words` in every token it reads (the words are letters and `_`, so none spans two tokens),
/// so callers that need both pay for one pass over the text.
struct Fnv<'w> {
    hash: u64,
    words: &'w WordSet,
    found: u64,
}

/// ASCII lower case of every byte (other bytes as they are), one load per byte.
static LOWER: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut b = 0;
    while b < 256 {
        t[b] = (b as u8).to_ascii_lowercase();
        b += 1;
    }
    t
};

const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
/// Hashed between two tokens.
const BOUNDARY: u8 = 0x1f;
const PRIME: u64 = 0x0000_0100_0000_01b3;

impl<'w> Fnv<'w> {
    fn new(words: &'w WordSet) -> Fnv<'w> {
        Fnv {
            hash: OFFSET,
            words,
            found: 0,
        }
    }

    fn byte(&mut self, b: u8) {
        self.hash = (self.hash ^ u64::from(b)).wrapping_mul(PRIME);
    }

    /// The words in a token the hash does not read byte by byte.
    fn look_in(&mut self, token: &[u8]) {
        if token.len() > 1 {
            self.found |= self.words.found(token);
        }
    }
}

impl Sink for Fnv<'_> {
    fn boundary(&mut self, _spaced: bool) {
        // Tokens, not spacing: `a=1` and `a = 1` are one statement.
        self.byte(BOUNDARY);
    }

    fn word(&mut self, sql: &str, range: Range<usize>) {
        let token = &sql.as_bytes()[range];
        let mut h = self.hash;
        for (i, &b) in token.iter().enumerate() {
            h = (h ^ u64::from(LOWER[usize::from(b)])).wrapping_mul(PRIME);
            // (A word's last byte starts no word: every word has two letters or more.)
            if let Some(&next) = token.get(i + 1) {
                let candidates = self.words.candidates(b, next);
                if candidates != 0 {
                    self.found |= self.words.found_at(token, i, candidates);
                }
            }
        }
        self.hash = h;
    }

    fn piece(&mut self, sql: &str, range: Range<usize>) {
        let token = &sql.as_bytes()[range];
        let mut h = self.hash;
        for &b in token {
            h = (h ^ u64::from(b)).wrapping_mul(PRIME);
        }
        self.hash = h;
        self.look_in(token);
    }

    fn left_out(&mut self, sql: &str, range: Range<usize>) {
        self.look_in(&sql.as_bytes()[range]);
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

    fn word(&mut self, sql: &str, range: Range<usize>) {
        self.piece(sql, range);
    }

    fn piece(&mut self, sql: &str, range: Range<usize>) {
        if self.0.len() < MAX_FINGERPRINT_TEXT {
            self.0.push_str(&sql[range]);
        }
    }

    fn placeholder(&mut self, n: usize) {
        if self.0.len() < MAX_FINGERPRINT_TEXT {
            self.0.push('$');
            self.0.push_str(&n.to_string());
        }
    }

    fn left_out(&mut self, _sql: &str, _range: Range<usize>) {}
}

/// What a walk saw besides its pieces.
struct Walked {
    /// The text's highest `$n` (0 without parameters).
    highest_param: usize,
    /// Literals replaced by placeholders.
    placeholders: usize,
}

/// The number of a parameter token's digits (`None` if it does not fit: not counted).
fn param_number(digits: &[u8]) -> Option<usize> {
    digits.iter().try_fold(0usize, |n, &d| {
        n.checked_mul(10)?
            .checked_add(usize::from(d.wrapping_sub(b'0')))
    })
}

/// The walk's state between tokens, and its rules for one token: shared by the walk over
/// the lexer's tokens (any sink) and the hash's own loop ([`hash_walk`]).
struct Walker<'s, S> {
    sql: &'s str,
    sink: S,
    next_placeholder: usize,
    walked: Walked,
    /// The last token that was not a comment: (kind, start, end).
    prev: Option<(TokKind, usize, usize)>,
}

impl<'s, S: Sink> Walker<'s, S> {
    fn new(sql: &'s str, sink: S, first_placeholder: usize) -> Walker<'s, S> {
        Walker {
            sql,
            sink,
            next_placeholder: first_placeholder,
            walked: Walked {
                highest_param: 0,
                placeholders: 0,
            },
            prev: None,
        }
    }

    /// The token `sql[start..end]` of `kind`.
    fn token(&mut self, kind: TokKind, start: usize, end: usize) {
        let sql = self.sql;
        let bytes = sql.as_bytes();
        let replace = match kind {
            TokKind::Comment => {
                self.sink.left_out(sql, start..end);
                return;
            }
            // (No word of a set is in a number: `left_out` need not look.)
            TokKind::Number => true,
            TokKind::Quoted => bytes[start] == b'\'' && string_in_value_context(sql, self.prev),
            TokKind::Param => {
                if let Some(n) = bytes.get(start + 1..end).and_then(param_number) {
                    self.walked.highest_param = self.walked.highest_param.max(n);
                }
                false
            }
            _ => false,
        };
        if let Some((_, _, prev_end)) = self.prev {
            self.sink.boundary(prev_end != start);
        }
        if replace {
            if kind == TokKind::Quoted {
                self.sink.left_out(sql, start..end);
            }
            self.sink.placeholder(self.next_placeholder);
            // Wrapping: `$18446744073709551615` in a text must not panic (the number is then
            // meaningless, but the same for every text of that shape).
            self.next_placeholder = self.next_placeholder.wrapping_add(1);
            self.walked.placeholders += 1;
        } else if kind == TokKind::Word {
            self.sink.word(sql, start..end);
        } else {
            self.sink.piece(sql, start..end);
        }
        self.prev = Some((kind, start, end));
    }
}

/// One pass over the tokens, numbering placeholders from `first_placeholder`. The numbers must
/// follow the text's own highest parameter, which only the walk finds: callers walk once from
/// 1 and again only if the text had both parameters and replaced literals (a Parse's `$1`
/// with no literals, the usual case with parameters, takes one pass).
fn walk<S: Sink>(sql: &str, sink: S, first_placeholder: usize) -> (S, Walked) {
    let mut w = Walker::new(sql, sink, first_placeholder);
    for tok in Lexer::new(sql) {
        w.token(tok.kind, tok.range.start, tok.range.end);
    }
    (w.sink, w.walked)
}

/// [`walk`] with the hash as its sink, as the hot path runs it on every statement. A word
/// (most of a statement's bytes) is found and hashed in one loop over its bytes, where the
/// lexer would find its end and the sink then read it again; any other token, and a word
/// that is not plain ASCII or is the `E` of an `E'…'` string, goes through the lexer and the
/// walk's own rules. `lexer_equivalence` proves both walks give the same hash and words.
fn hash_walk<'w>(sql: &str, words: &'w WordSet, first_placeholder: usize) -> (Fnv<'w>, Walked) {
    let bytes = sql.as_bytes();
    let mut w = Walker::new(sql, Fnv::new(words), first_placeholder);
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        match START[usize::from(b)] {
            Start::Space => {
                i += 1;
                continue;
            }
            Start::Letter => {
                if let Some(end) = w.ascii_word(i) {
                    i = end;
                    continue;
                }
            }
            _ => {}
        }
        let Some(tok) = Lexer::at(sql, i).next() else {
            break;
        };
        w.token(tok.kind, tok.range.start, tok.range.end);
        i = tok.range.end;
    }
    (w.sink, w.walked)
}

impl Walker<'_, Fnv<'_>> {
    /// The word starting with the ASCII letter at `start`, hashed as [`Sink::word`] hashes it,
    /// and its end; `None` (nothing noted) when the lexer must read it: a non-ASCII character
    /// continues it, or it is the `E` of an `E'…'` string.
    #[inline(always)]
    fn ascii_word(&mut self, start: usize) -> Option<usize> {
        let bytes = self.sql.as_bytes();
        let mut h = self.sink.hash;
        if self.prev.is_some() {
            h = (h ^ u64::from(BOUNDARY)).wrapping_mul(PRIME);
        }
        // Words of the set that may start in the word; the pair of its last byte and the
        // byte after it may add some, which the exact search below rules out.
        let mut candidates = 0u64;
        let mut end = start;
        let mut b = bytes[start];
        loop {
            h = (h ^ u64::from(LOWER[usize::from(b)])).wrapping_mul(PRIME);
            end += 1;
            let Some(&next) = bytes.get(end) else {
                break;
            };
            candidates |= self.sink.words.candidates(b, next);
            if !WORD_BYTE[usize::from(next)] {
                if !next.is_ascii() {
                    return None;
                }
                break;
            }
            b = next;
        }
        if end == start + 1 && bytes[start] | 0x20 == b'e' && bytes.get(end) == Some(&b'\'') {
            return None;
        }
        if candidates != 0 {
            self.sink.found |= self.sink.words.found(&bytes[start..end]);
        }
        self.sink.hash = h;
        self.prev = Some((TokKind::Word, start, end));
        Some(end)
    }
}

/// The fingerprint's hash: equal for texts that differ only in literal values, comments,
/// whitespace and the case of unquoted words (the text shows one of them: the first seen). Allocates nothing.
pub fn fingerprint_hash(sql: &str) -> u64 {
    fingerprint_hash_and_words(sql, &WordSet::EMPTY).0
}

/// [`fingerprint_hash`] and, from the same pass, the words of `words` the text contains (as
/// [`WordSet::found`] finds them in the whole text: in words, strings, quoted identifiers and
/// comments alike).
pub fn fingerprint_hash_and_words(sql: &str, words: &WordSet) -> (u64, u64) {
    let (mut h, walked) = hash_walk(sql, words, 1);
    if walked.highest_param > 0 && walked.placeholders > 0 {
        h = hash_walk(sql, words, walked.highest_param.wrapping_add(1)).0;
    }
    (h.hash, h.found)
}

/// The fingerprint's text (as first written: the case of its words is the text's own), cut
/// at [`MAX_FINGERPRINT_TEXT`] bytes.
pub fn fingerprint_text(sql: &str) -> String {
    let capacity = sql.len().min(MAX_FINGERPRINT_TEXT) + 8;
    let (mut t, walked) = walk(sql, Text(String::with_capacity(capacity)), 1);
    if walked.highest_param > 0 && walked.placeholders > 0 {
        t.0.clear();
        t = walk(sql, t, walked.highest_param.wrapping_add(1)).0;
    }
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

    /// The hash is FNV-1a over the tokens joined by 0x1f (words lower-cased, literals `$n`), as
    /// computed by hand: ids must not change between versions.
    #[test]
    fn the_hash_is_stable() {
        assert_eq!(
            fingerprint_hash("SELECT abalance FROM pgbench_accounts WHERE aid = 48213;"),
            0x2d9a_943d_3c7d_8bb2
        );
    }

    /// The words found in the walk's tokens are the words a search of the whole text finds:
    /// in words, strings, dollar bodies, quoted identifiers and comments, literals the
    /// fingerprint replaces included (seeded texts built from SQL pieces).
    #[test]
    fn words_found_in_the_walk_are_those_of_the_whole_text() {
        use crate::words::SESSION_WORDS as WORDS;
        let pieces: [&str; 24] = [
            "set",
            "SeT",
            "se",
            "t",
            "temp",
            "pg_temp",
            "hold",
            "prepare",
            "set_config",
            "x",
            " ",
            "'",
            "''",
            "$$",
            "$a$",
            "--",
            "\n",
            "/*",
            "*/",
            "\"",
            "e'",
            "1",
            "1e",
            ";",
        ];
        let mut rng = fastrand::Rng::with_seed(0x9e37_79b9_7f4a_7c15);
        let (mut with, mut without) = (0, 0);
        for _ in 0..50_000 {
            let mut sql = String::new();
            for _ in 0..rng.usize(..8) {
                sql.push_str(pieces[rng.usize(..pieces.len())]);
            }
            let whole = WORDS.found(sql.as_bytes());
            let (hash, walked) = fingerprint_hash_and_words(&sql, &WORDS);
            assert_eq!(walked, whole, "{sql:?}");
            assert_eq!(hash, fingerprint_hash(&sql), "{sql:?}");
            if whole != 0 {
                with += 1;
            } else {
                without += 1;
            }
        }
        assert!(with > 1000 && without > 1000, "{with} / {without}");
    }

    #[test]
    fn long_texts_are_cut() {
        let sql = format!("select {}", "a, ".repeat(5000) + "b");
        assert!(fingerprint_text(&sql).len() <= MAX_FINGERPRINT_TEXT + 8);
    }
}
