//! Session state that must follow a client from one pooled server connection to the next.
//!
//! In transaction mode consecutive transactions of a client may run on different server
//! connections. Session-level `SET`s (and the GUCs a client passes in its startup packet) are
//! tracked here and replayed: a server connection remembers a fingerprint of the state applied
//! to it, and only when it differs from the client's does the proxy run `RESET ALL` plus the
//! client's settings before forwarding. Recognising SET/RESET/DISCARD needs only the first
//! words of each statement, so a small lexer does it without a full SQL parse.

use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};

/// What a statement does to session state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionEffect {
    /// `SET [SESSION] name ...`: replay `statement` verbatim.
    Set { name: String, statement: String },
    /// `RESET name`.
    Reset { name: String },
    /// `RESET ALL`, or `DISCARD ALL` (which also drops prepared statements).
    ResetAll { drops_prepared: bool },
    /// `DEALLOCATE ALL`: drops the server's prepared statements.
    DeallocateAll,
    /// A change the proxy cannot follow (`set_config(...)`): the server connection's settings
    /// are unknown afterwards.
    Untracked,
}

/// One tracked setting.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Setting {
    /// From the startup packet: applied with `set_config`, which parses values exactly as a
    /// startup packet does (lists like search_path included).
    Value(String),
    /// A client's SET statement, replayed as written.
    Statement(String),
}

/// The client's session settings, by lower-cased parameter name.
#[derive(Debug, Default, Clone)]
pub struct SessionState {
    settings: BTreeMap<String, Setting>,
    /// Values from the startup packet: what RESET goes back to, as on a direct connection.
    startup: BTreeMap<String, String>,
    fingerprint: u64,
}

impl SessionState {
    /// Settings from the startup packet (everything but user, database, replication and
    /// options, plus `-c name=value` / `--name=value` entries inside options).
    pub fn from_startup(params: &[(String, String)]) -> Self {
        let mut state = SessionState::default();
        for (name, value) in params {
            match name.as_str() {
                "user" | "database" | "replication" => {}
                "options" => {
                    for (k, v) in parse_options(value) {
                        state
                            .settings
                            .insert(k.to_ascii_lowercase(), Setting::Value(v));
                    }
                }
                _ => {
                    state
                        .settings
                        .insert(name.to_ascii_lowercase(), Setting::Value(value.clone()));
                }
            }
        }
        for (name, setting) in &state.settings {
            if let Setting::Value(v) = setting {
                state.startup.insert(name.clone(), v.clone());
            }
        }
        state.refresh();
        state
    }

    /// 0 when there is nothing to apply, which is also a fresh server connection's value.
    pub fn fingerprint(&self) -> u64 {
        self.fingerprint
    }

    /// Applies effects of statements that completed at session level.
    pub fn apply(&mut self, effects: &[SessionEffect]) {
        for e in effects {
            match e {
                SessionEffect::Set { name, statement } => {
                    self.settings
                        .insert(name.clone(), Setting::Statement(statement.clone()));
                }
                // RESET goes back to the startup packet's value, not the server default.
                SessionEffect::Reset { name } => match self.startup.get(name) {
                    Some(v) => {
                        self.settings
                            .insert(name.clone(), Setting::Value(v.clone()));
                    }
                    None => {
                        self.settings.remove(name);
                    }
                },
                SessionEffect::ResetAll { .. } => {
                    self.settings = self
                        .startup
                        .iter()
                        .map(|(k, v)| (k.clone(), Setting::Value(v.clone())))
                        .collect();
                }
                SessionEffect::DeallocateAll | SessionEffect::Untracked => {}
            }
        }
        self.refresh();
    }

    /// Whether, after `effects`, the server connection no longer holds exactly this state, so
    /// it must be brought back with [`Self::replay_sql`] before it is used again: a RESET of a
    /// startup setting leaves the server's default there (the proxy applied the value with
    /// `set_config`, so the server's RESET does not know it), and `set_config()` calls are not
    /// tracked at all.
    pub fn server_diverges(&self, effects: &[SessionEffect]) -> bool {
        effects.iter().any(|e| match e {
            SessionEffect::Reset { name } => self.startup.contains_key(name),
            SessionEffect::ResetAll { .. } => !self.startup.is_empty(),
            SessionEffect::Untracked => true,
            _ => false,
        })
    }

    /// SQL that brings a server connection from its pristine state to this client's state.
    pub fn replay_sql(&self) -> String {
        let mut sql = String::from("RESET ALL;");
        for (name, setting) in &self.settings {
            match setting {
                Setting::Value(v) => {
                    sql.push_str(&format!(
                        "SELECT pg_catalog.set_config({}, {}, false);",
                        quote_literal(name),
                        quote_literal(v)
                    ));
                }
                Setting::Statement(s) => {
                    sql.push_str(s);
                    sql.push(';');
                }
            }
        }
        sql
    }

    fn refresh(&mut self) {
        self.fingerprint = if self.settings.is_empty() {
            0
        } else {
            let mut h = std::collections::hash_map::DefaultHasher::new();
            self.settings.hash(&mut h);
            h.finish() | 1
        };
    }
}

fn quote_literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// `-c a=b --c=d` → [(a, b), (c, d)], with backslash escapes as libpq writes them.
pub(crate) fn parse_options(options: &str) -> Vec<(String, String)> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut chars = options.chars();
    while let Some(ch) = chars.next() {
        match ch {
            '\\' => {
                if let Some(n) = chars.next() {
                    cur.push(n);
                }
            }
            c if c.is_whitespace() => {
                if !cur.is_empty() {
                    words.push(std::mem::take(&mut cur));
                }
            }
            c => cur.push(c),
        }
    }
    if !cur.is_empty() {
        words.push(cur);
    }
    let mut out = Vec::new();
    let mut i = 0;
    while i < words.len() {
        let assignment = if words[i] == "-c" {
            i += 1;
            words.get(i).cloned()
        } else {
            words[i]
                .strip_prefix("--")
                .or_else(|| words[i].strip_prefix("-c"))
                .map(str::to_owned)
        };
        if let Some((k, v)) = assignment.as_deref().and_then(|a| a.split_once('=')) {
            out.push((k.replace('-', "_"), v.to_owned()));
        }
        i += 1;
    }
    out
}

/// Session effects of every statement in a query string.
pub fn session_effects(sql: &str) -> Vec<SessionEffect> {
    // Fast path: no statement can have an effect without one of these words. One pass that
    // only looks closer at an `s` or `d` (this runs for every simple query: the profile had
    // three full scans at ~9% of the proxy's instructions).
    if !mentions_any(sql.as_bytes(), &[b"set", b"discard", b"deallocate"]) {
        return Vec::new();
    }
    let lower_has = |w: &str| mentions_any(sql.as_bytes(), &[w.as_bytes()]);
    let mut effects: Vec<SessionEffect> = split_statements(sql)
        .into_iter()
        .filter_map(statement_effect)
        .collect();
    if lower_has("set_config") {
        effects.push(SessionEffect::Untracked);
    }
    effects
}

/// Whether `text` contains one of `words` (lower-case ASCII), ignoring ASCII case.
fn mentions_any(text: &[u8], words: &[&[u8]]) -> bool {
    text.iter().enumerate().any(|(i, b)| {
        let first = b.to_ascii_lowercase();
        words.iter().any(|w| {
            w.first() == Some(&first)
                && text
                    .get(i..i + w.len())
                    .is_some_and(|win| win.eq_ignore_ascii_case(w))
        })
    })
}

fn statement_effect(stmt: &str) -> Option<SessionEffect> {
    let words = leading_words(stmt, 4);
    let w: Vec<&str> = words.iter().map(|s| s.as_str()).collect();
    match w.as_slice() {
        ["set", "local", ..] | ["set", "transaction", ..] | ["set", "constraints", ..] => None,
        ["set", "session", "characteristics", ..] => Some(SessionEffect::Set {
            name: "session characteristics".into(),
            statement: stmt.trim().into(),
        }),
        ["set", "session", "authorization", ..] => Some(SessionEffect::Set {
            name: "session_authorization".into(),
            statement: stmt.trim().into(),
        }),
        ["set", "session", "time", "zone"] | ["set", "time", "zone", ..] => {
            Some(SessionEffect::Set {
                name: "timezone".into(),
                statement: stmt.trim().into(),
            })
        }
        ["set", "session", name, ..] | ["set", name, ..] => Some(SessionEffect::Set {
            name: (*name).to_owned(),
            statement: stmt.trim().into(),
        }),
        ["reset", "all", ..] => Some(SessionEffect::ResetAll {
            drops_prepared: false,
        }),
        ["reset", "session", "authorization", ..] => Some(SessionEffect::Reset {
            name: "session_authorization".into(),
        }),
        ["reset", "time", "zone", ..] => Some(SessionEffect::Reset {
            name: "timezone".into(),
        }),
        ["reset", name, ..] => Some(SessionEffect::Reset {
            name: (*name).to_owned(),
        }),
        ["discard", "all", ..] => Some(SessionEffect::ResetAll {
            drops_prepared: true,
        }),
        ["deallocate", "all", ..] | ["deallocate", "prepare", "all", ..] => {
            Some(SessionEffect::DeallocateAll)
        }
        _ => None,
    }
}

/// The first `n` words of a statement (identifiers lower-cased unless quoted), skipping
/// comments; stops at `=`.
fn leading_words(stmt: &str, n: usize) -> Vec<String> {
    let b = stmt.as_bytes();
    let mut i = 0;
    let mut words = Vec::new();
    while i < b.len() && words.len() < n {
        let c = b[i];
        if c.is_ascii_whitespace() {
            i += 1;
        } else if b[i..].starts_with(b"--") {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
        } else if b[i..].starts_with(b"/*") {
            i = skip_block_comment(b, i);
        } else if c == b'"' {
            let start = i + 1;
            i += 1;
            while i < b.len() && b[i] != b'"' {
                i += 1;
            }
            words.push(String::from_utf8_lossy(&b[start..i.min(b.len())]).into_owned());
            i += 1;
        } else if c.is_ascii_alphanumeric() || c == b'_' || c >= 0x80 {
            let start = i;
            while i < b.len()
                && (b[i].is_ascii_alphanumeric() || b[i] == b'_' || b[i] == b'.' || b[i] >= 0x80)
            {
                i += 1;
            }
            words.push(String::from_utf8_lossy(&b[start..i]).to_ascii_lowercase());
        } else {
            break;
        }
    }
    words
}

fn skip_block_comment(b: &[u8], mut i: usize) -> usize {
    // Block comments nest in PostgreSQL.
    let mut depth = 0;
    while i < b.len() {
        if b[i..].starts_with(b"/*") {
            depth += 1;
            i += 2;
        } else if b[i..].starts_with(b"*/") {
            depth -= 1;
            i += 2;
            if depth == 0 {
                return i;
            }
        } else {
            i += 1;
        }
    }
    i
}

/// Splits a query string into statements at top-level semicolons, respecting quotes,
/// dollar quotes and comments.
pub fn split_statements(sql: &str) -> Vec<&str> {
    let b = sql.as_bytes();
    let mut out = Vec::new();
    let mut start = 0;
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'\'' | b'"' => {
                let q = b[i];
                i += 1;
                while i < b.len() {
                    if b[i] == q {
                        if b.get(i + 1) == Some(&q) {
                            i += 2;
                            continue;
                        }
                        break;
                    }
                    // E'...' strings may escape quotes with a backslash.
                    if b[i] == b'\\' && q == b'\'' {
                        i += 1;
                    }
                    i += 1;
                }
                i += 1;
            }
            b'-' if b.get(i + 1) == Some(&b'-') => {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
            }
            b'/' if b.get(i + 1) == Some(&b'*') => i = skip_block_comment(b, i),
            b'$' => {
                // $tag$ ... $tag$
                let tag_end = b[i + 1..]
                    .iter()
                    .position(|c| !(c.is_ascii_alphanumeric() || *c == b'_'));
                match tag_end.map(|t| i + 1 + t) {
                    Some(e) if b[e] == b'$' => {
                        let tag = &b[i..=e];
                        let body = e + 1;
                        match b[body..].windows(tag.len()).position(|w| w == tag) {
                            Some(p) => i = body + p + tag.len(),
                            None => i = b.len(),
                        }
                    }
                    _ => i += 1,
                }
            }
            b';' => {
                let s = &sql[start..i];
                if !s.trim().is_empty() {
                    out.push(s);
                }
                i += 1;
                start = i;
            }
            _ => i += 1,
        }
    }
    if start < sql.len() && !sql[start..].trim().is_empty() {
        out.push(&sql[start..]);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_session_sets() {
        assert_eq!(
            session_effects("SET statement_timeout = 100"),
            vec![SessionEffect::Set {
                name: "statement_timeout".into(),
                statement: "SET statement_timeout = 100".into()
            }]
        );
        assert!(session_effects("SET LOCAL statement_timeout = 100").is_empty());
        assert!(session_effects("set transaction isolation level serializable").is_empty());
        assert!(session_effects("select 'set x = 1'").is_empty());
        assert_eq!(
            session_effects("/* hi */ set Session TimeZone to 'UTC'; reset all; discard all"),
            vec![
                SessionEffect::Set {
                    name: "timezone".into(),
                    statement: "/* hi */ set Session TimeZone to 'UTC'".into()
                },
                SessionEffect::ResetAll {
                    drops_prepared: false
                },
                SessionEffect::ResetAll {
                    drops_prepared: true
                },
            ]
        );
        assert_eq!(
            session_effects("SET TIME ZONE 'UTC'")[0],
            SessionEffect::Set {
                name: "timezone".into(),
                statement: "SET TIME ZONE 'UTC'".into()
            }
        );
        assert_eq!(
            session_effects("RESET search_path"),
            vec![SessionEffect::Reset {
                name: "search_path".into()
            }]
        );
    }

    #[test]
    fn splits_respecting_quotes_and_dollar_quotes() {
        let s = split_statements("select ';'; select $x$ ; $x$; -- ;\nselect \"a;b\"");
        assert_eq!(s.len(), 3, "{s:?}");
    }

    #[test]
    fn fingerprint_follows_state() {
        let mut s = SessionState::from_startup(&[
            ("user".into(), "u".into()),
            ("database".into(), "d".into()),
        ]);
        assert_eq!(s.fingerprint(), 0);
        s.apply(&session_effects("SET work_mem = '8MB'"));
        let f = s.fingerprint();
        assert_ne!(f, 0);
        assert!(s.replay_sql().contains("SET work_mem = '8MB'"));
        s.apply(&session_effects("RESET work_mem"));
        assert_eq!(s.fingerprint(), 0);
    }

    #[test]
    fn startup_options_become_settings() {
        let s = SessionState::from_startup(&[
            ("application_name".into(), "it's".into()),
            ("options".into(), "-c search_path=a,b --work-mem=4MB".into()),
        ]);
        let sql = s.replay_sql();
        assert!(
            sql.contains("set_config('application_name', 'it''s', false)"),
            "{sql}"
        );
        assert!(
            sql.contains("set_config('search_path', 'a,b', false)"),
            "{sql}"
        );
        assert!(
            sql.contains("set_config('work_mem', '4MB', false)"),
            "{sql}"
        );
    }

    #[test]
    fn reset_returns_to_startup_values() {
        let mut s = SessionState::from_startup(&[("options".into(), "-c search_path=a".into())]);
        let startup = s.fingerprint();
        s.apply(&session_effects("SET search_path = b"));
        assert_ne!(s.fingerprint(), startup);
        let reset = session_effects("RESET search_path");
        assert!(s.server_diverges(&reset));
        s.apply(&reset);
        assert_eq!(s.fingerprint(), startup);
        s.apply(&session_effects(
            "SET search_path = b; SET work_mem = '8MB'",
        ));
        s.apply(&session_effects("RESET ALL"));
        assert_eq!(s.fingerprint(), startup);
        assert!(!s.server_diverges(&session_effects("RESET work_mem")));
        assert!(s.server_diverges(&session_effects(
            "select set_config('work_mem', '1MB', false)"
        )));
    }
}

#[cfg(test)]
mod mention_tests {
    use super::mentions_any;

    #[test]
    fn finds_words_in_any_case_anywhere() {
        let words: &[&[u8]] = &[b"set", b"discard"];
        assert!(mentions_any(b"SELECT 1; SeT search_path = a", words));
        assert!(mentions_any(b"discard all", words));
        assert!(mentions_any(b"x_set", words));
        assert!(!mentions_any(
            b"SELECT abalance FROM pgbench_accounts WHERE aid = 1",
            words
        ));
        assert!(!mentions_any(b"se", words));
        assert!(!mentions_any(b"", words));
    }
}
