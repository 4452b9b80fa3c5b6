//! What the relay learned about the client's last unnamed Parse text. Drivers send the same
//! unnamed Parse at every execution of a statement (libpq's `PQexecParams`, psycopg, node-postgres,
//! pgbench `-M extended`), and reading it costs two walks of the text: its fingerprint for the
//! statistics and the scan for words that may change session state. Both depend on the text
//! alone, so for the same text (compared byte for byte) they are taken from here.

use crate::session_state::SessionWords;

/// Texts longer than this are not remembered (a bulk statement is rarely repeated).
const MAX_TEXT: usize = 4096;

#[derive(Default)]
pub(crate) struct LastParse {
    text: String,
    /// Its fingerprint hash, when the statistics were on when it was read.
    fingerprint: Option<u64>,
    /// The words in it that may change session state or pin the session.
    words: SessionWords,
}

/// What a text says, as far as the relay reads it.
#[derive(Clone, Copy)]
pub(crate) struct TextFacts {
    pub(crate) fingerprint: Option<u64>,
    pub(crate) words: SessionWords,
}

impl LastParse {
    /// The facts of `sql` if it is the last text remembered.
    pub(crate) fn get(&self, sql: &str) -> Option<TextFacts> {
        (!self.text.is_empty() && self.text == sql).then_some(TextFacts {
            fingerprint: self.fingerprint,
            words: self.words,
        })
    }

    /// Remembers `sql` and its facts (its buffer is reused).
    pub(crate) fn set(&mut self, sql: &str, facts: TextFacts) {
        self.text.clear();
        if sql.len() > MAX_TEXT {
            self.text.shrink_to(MAX_TEXT);
            return;
        }
        self.text.push_str(sql);
        self.fingerprint = facts.fingerprint;
        self.words = facts.words;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_same_text_is_known() {
        let mut last = LastParse::default();
        assert!(last.get("").is_none());
        let facts = TextFacts {
            fingerprint: Some(7),
            words: SessionWords::scan("select set_config($1, 'x', false)"),
        };
        last.set("select $1", facts);
        let got = last.get("select $1").expect("known");
        assert_eq!((got.fingerprint, got.words), (Some(7), facts.words));
        assert!(last.get("select $2").is_none());
        assert!(last.get("select $1 ").is_none());
        let long = "x".repeat(MAX_TEXT + 1);
        last.set(&long, facts);
        assert!(last.get(&long).is_none());
        assert!(last.get("select $1").is_none());
    }
}
