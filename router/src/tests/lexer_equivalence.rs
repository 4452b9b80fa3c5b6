//! The byte-table lexer, the one-pass fingerprint (its hash loop that reads words itself
//! included) and the normalizer give exactly what the reference implementations
//! (`lexer_reference`, the code before the rewrite) give: the same tokens (kinds and ranges),
//! the same fingerprint hashes and texts (hashes are persisted and compared across processes),
//! the session words of the whole text, and the same normalized statements, on hand-picked
//! edge cases and on many seeded random SQL-ish texts.

use super::lexer_reference as reference;
use crate::text::{Lexer, Tok};

use super::rng::Rng;

const EDGE_CASES: &[&str] = &[
    "",
    " ",
    "\u{a0}",
    "\u{3000}select\u{3000}1",
    "select\u{a0}café from ß where ß = 'x'",
    "SELECT abalance FROM pgbench_accounts WHERE aid = 48213;",
    "select E'\\'' , e'\\\\', E'a''b', E'\\",
    "E'",
    "e",
    "E",
    "Ex'",
    "select $tag$ body $ $x$ $tag$ , $$ $$, $ta",
    "$tag$ unterminated",
    "$1",
    "$",
    "$$",
    "$1a",
    "$a b$",
    "$é$ x $é$",
    "$_1$x$_1$",
    "$1x$",
    "select 1e-3, 1e+3, 1e, 1e+, 1.e5, .5, 1..2, 1.2.3, 5.",
    "select /* /* */ */ 1",
    "/* /* */",
    "/*/",
    "/**/",
    "/*",
    "--",
    "-- x",
    "a--b\nc",
    "'abc",
    "'",
    "\"",
    "\"a\"\"b\" \"",
    "'it''s' ''''",
    "x = '\\' and y = 2",
    "a$b$c",
    "select ²³ + ٣ , x²",
    "select 'é' || \u{85} || \u{2028} ||\u{200b}",
    "U&'\\0041' u&\"x\" B'101' x'1F' N'x'",
    "select date '2024-01-01', interval '1 day', value '3'",
    "and 'x' or 'y' RETURNING 'z' by 'q' Select'1'",
    "select a from t where a = $2 and b = 7 and c = 'x'",
    // The highest parameter numbers: placeholders after them wrap (as release builds did;
    // a debug build panicked on the overflow).
    "select $18446744073709551615, 1, 2",
    "select $18446744073709551614, 1, 2",
    "select $99999999999999999999999, 1",
    "select $0, 1",
    "123abc 0x1F 1_000 1e3e4",
    "select * from t where a in (1, 2, 3) limit 10; select 'a';",
    "\t\n\x0b\x0c\r select\x0b1",
    "🙂 select 🙂x, x🙂",
];

/// Fragments of SQL-ish text: words, keywords of the value context, literals of every kind,
/// parameters, comments, operators, non-ASCII letters and white space, and broken pieces.
const FRAGMENTS: &[&str] = &[
    "select",
    "SELECT",
    "from",
    "where",
    "and",
    "OR",
    "in",
    "values",
    "set",
    "date",
    "interval",
    "e",
    "E",
    "b",
    "x",
    "u",
    "U&",
    "&",
    "t",
    "user_id",
    "a$b",
    "café",
    "ß",
    "Ärger",
    "名前",
    "x²",
    "_",
    "1",
    "42",
    "007",
    "1.5",
    ".5",
    "5.",
    "1e3",
    "1E-3",
    "1e+",
    "1..2",
    "1.2.3",
    "99999999999999999999",
    "'x'",
    "''",
    "'it''s'",
    "'é'",
    "'abc",
    "'\\'",
    "E'\\''",
    "e'a\\'",
    "E'\\",
    "B'101'",
    "X'1F'",
    "N'n'",
    "U&'\\0041'",
    "\"Q\"",
    "\"a\"\"b\"",
    "\"open",
    "$1",
    "$2",
    "$10",
    "$0",
    "$",
    "$$",
    "$$body$$",
    "$t$ ' ; -- $t$",
    "$t$open",
    "$a b$",
    "$é$",
    "/* c */",
    "/* /* n */ */",
    "/*",
    "*/",
    "--",
    "-- line\n",
    "-",
    "/",
    "*",
    "=",
    "<>",
    "::",
    "(",
    ")",
    ",",
    ";",
    ".",
    "+",
    "||",
    "\\",
    "\u{a0}",
    "\u{3000}",
    "\u{85}",
    "\u{2028}",
    "\u{200b}",
    "٣",
    "🙂",
];

const SEPARATORS: &[&str] = &["", " ", " ", " ", "  ", "\n", "\t", "\x0b", "\x0c", "\r\n"];

/// Single characters, to build texts no fragment list foresees.
const CHARS: &[&str] = &[
    "'", "'", "\"", "$", "$", "-", "/", "*", "\\", "e", "E", "a", "_", "1", "0", ".", ".", ";",
    " ", " ", "\n", "&", "U", "x", "é", "ß", "\u{a0}", "\u{3000}", "²", "🙂", "+", "=",
];

fn fragment_text(rng: &mut Rng) -> String {
    let mut sql = String::new();
    for _ in 0..rng.below(24) {
        sql.push_str(rng.pick(FRAGMENTS));
        sql.push_str(rng.pick(SEPARATORS));
    }
    sql
}

fn char_text(rng: &mut Rng) -> String {
    (0..rng.below(40)).map(|_| rng.pick(CHARS)).collect()
}

fn tokens(sql: &str) -> Vec<Tok> {
    Lexer::new(sql).collect()
}

fn reference_tokens(sql: &str) -> Vec<Tok> {
    reference::Lexer::new(sql).collect()
}

fn assert_same(sql: &str) {
    assert_eq!(tokens(sql), reference_tokens(sql), "tokens of {sql:?}");
    assert_eq!(
        crate::fingerprint_hash(sql),
        reference::fingerprint_hash(sql),
        "fingerprint hash of {sql:?}"
    );
    // The hot path's pass: the same hash, and the session words a search of the whole text
    // finds (its word loop looks for them itself).
    assert_eq!(
        crate::fingerprint_hash_and_words(sql, &crate::SESSION_WORDS),
        (
            reference::fingerprint_hash(sql),
            crate::SESSION_WORDS.found(sql.as_bytes())
        ),
        "fingerprint hash and session words of {sql:?}"
    );
    assert_eq!(
        crate::fingerprint_text(sql),
        reference::fingerprint_text(sql),
        "fingerprint text of {sql:?}"
    );
    assert_eq!(
        crate::normalize(sql),
        reference::normalize(sql),
        "normalized {sql:?}"
    );
}

#[test]
fn edge_cases_match_the_reference() {
    for sql in EDGE_CASES {
        assert_same(sql);
        // Every prefix: unterminated literals, comments and tags, cut at every character.
        for (i, _) in sql.char_indices() {
            assert_same(&sql[..i]);
        }
    }
}

#[test]
fn random_texts_match_the_reference() {
    let mut rng = Rng(0x5EED_1E7E_0000_0015);
    for _ in 0..40_000 {
        assert_same(&fragment_text(&mut rng));
        assert_same(&char_text(&mut rng));
    }
}

#[test]
fn statements_with_literals_match_the_reference() {
    // Texts the fingerprint and normalizer mostly see: valid statements with literals, in
    // value and typed positions, with and without parameters.
    let mut rng = Rng(0x5EED_0000_F1A7);
    let templates = [
        "select * from orders where user_id = {} and status = {} limit {}",
        "SELECT o.amount FROM orders o WHERE o.user_id = {} AND o.note LIKE {} /* app:{} */",
        "insert into t (a, b, c) values ({}, {}, {}) returning {}",
        "update t set a = {} where b between {} and {} and c = $2",
        "select case when a = {} then {} else {} end from t where d > date {}",
    ];
    let values = [
        "1", "42", "1.5e3", "'x'", "'it''s'", "''", "'é'", "E'\\''", "$$v$$", "$1", "-7", "'open",
        "1e-3", "(1)", "$3",
    ];
    for _ in 0..5_000 {
        let template = templates[rng.below(templates.len())];
        let mut sql = String::new();
        for (i, part) in template.split("{}").enumerate() {
            if i > 0 {
                sql.push_str(rng.pick(&values));
            }
            sql.push_str(part);
        }
        assert_same(&sql);
    }
}

#[test]
fn value_context_words_match_the_reference() {
    // Each word of the reference's list, in several cases, and near misses around it, before
    // a string literal (glued and spaced).
    for word in reference::VALUE_CONTEXT_WORDS {
        let upper = word.to_ascii_uppercase();
        let mut title = word.to_string();
        title[..1].make_ascii_uppercase();
        let longer = format!("{word}s");
        let shorter = &word[..word.len() - 1];
        for w in [
            word,
            upper.as_str(),
            title.as_str(),
            longer.as_str(),
            shorter,
        ] {
            assert_same(&format!("select a from t where {w} 'x' = b"));
            assert_same(&format!("select {w}'x'"));
        }
    }
}
