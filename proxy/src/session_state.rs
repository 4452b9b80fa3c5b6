//! Session state that must follow a client from one pooled server connection to the next.
//!
//! In transaction mode consecutive transactions of a client may run on different server
//! connections. Session-level `SET`s (and the GUCs a client passes in its startup packet) are
//! tracked here and replayed: a server connection remembers a fingerprint of the state applied
//! to it, and only when it differs from the client's does the proxy run `RESET ALL` plus the
//! client's settings before forwarding. Recognising SET/RESET/DISCARD needs only the first
//! words of each statement: the router's lexer (`shardgate_router::{split_statements,
//! leading_names}`) finds them without a full SQL parse, so the proxy and the router never
//! disagree on where a statement ends.

use std::hash::{Hash, Hasher};

use litemap::LiteMap;

use shardgate_router::SESSION_WORDS;

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

/// The client's session settings, by lower-cased parameter name. Sorted vectors, not B-trees:
/// a client has a handful (two or three from its startup packet), and every idle session
/// keeps them.
#[derive(Debug, Default, Clone)]
pub struct SessionState {
    settings: LiteMap<String, Setting>,
    /// Values from the startup packet: what RESET goes back to, as on a direct connection.
    startup: LiteMap<String, String>,
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

    /// The client's `search_path` as tracked (a SET statement or a startup value), if it set
    /// one.
    pub fn search_path(&self) -> Option<String> {
        self.settings.get("search_path").map(|s| match s {
            Setting::Value(v) => v.clone(),
            Setting::Statement(s) => s.clone(),
        })
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
                SessionEffect::ResetAll { drops_prepared } => {
                    // RESET ALL keeps the role and session authorization (as PostgreSQL
                    // does); DISCARD ALL resets them too.
                    let kept: Vec<(String, Setting)> = if *drops_prepared {
                        Vec::new()
                    } else {
                        self.settings
                            .iter()
                            .filter(|(k, _)| is_identity(k))
                            .map(|(k, v)| (k.clone(), v.clone()))
                            .collect()
                    };
                    self.settings = self
                        .startup
                        .iter()
                        .map(|(k, v)| (k.clone(), Setting::Value(v.clone())))
                        .chain(kept)
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
    ///
    /// `RESET ALL` leaves `role` and `session_authorization` alone (PostgreSQL marks them
    /// `GUC_NO_RESET_ALL`): without their own RESETs a `SET ROLE` (or a `set_config('role', …)`)
    /// of the connection's previous client would survive into the next client's session and
    /// defeat row-level security between them. This runs only when the connection carries
    /// another state than the client's (its fingerprint differs), never on the common path.
    pub fn replay_sql(&self) -> String {
        let mut sql = String::from("RESET SESSION AUTHORIZATION;RESET ROLE;RESET ALL;");
        // SET SESSION AUTHORIZATION also resets the role: replay it first.
        let identity_first = self
            .settings
            .iter()
            .filter(|(name, _)| name.as_str() == "session_authorization")
            .chain(
                self.settings
                    .iter()
                    .filter(|(name, _)| name.as_str() != "session_authorization"),
            );
        for (name, setting) in identity_first {
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

/// The settings that say who the session is: RESET ALL leaves them alone.
fn is_identity(name: &str) -> bool {
    name == "role" || name == "session_authorization"
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

/// Which of the words a statement needs to change session state or pin the session it
/// contains. One scan of the text serves every check: without any of them neither
/// [`session_effects_of`] nor `pinning::pinning_statement_of` can find anything, and each
/// looks closer only when its own words are there (TPC-B's `UPDATE … SET` was scanned four
/// times: 14% of the proxy's instructions).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct SessionWords(u64);

impl SessionWords {
    pub(crate) fn scan(sql: &str) -> SessionWords {
        SessionWords(SESSION_WORDS.found(sql.as_bytes()))
    }

    /// The text's fingerprint hash and its session words, from one pass over it (the scan
    /// alone when `fingerprint` is false: the statistics are off).
    pub(crate) fn scan_with_fingerprint(sql: &str, fingerprint: bool) -> (Option<u64>, Self) {
        if fingerprint {
            let (hash, found) = shardgate_router::fingerprint_hash_and_words(sql, &SESSION_WORDS);
            (Some(hash), SessionWords(found))
        } else {
            (None, SessionWords::scan(sql))
        }
    }

    /// Some word is there: the text may touch session state.
    pub(crate) fn any(self) -> bool {
        self.0 != 0
    }

    /// `temp`, `listen`, `advisory`, `hold` or `prepare`: the text may pin the session.
    pub(crate) fn may_pin(self) -> bool {
        self.0 & PIN_WORDS != 0
    }

    /// `set`, `discard` or `deallocate`: the text may have session effects.
    fn may_have_effects(self) -> bool {
        self.0 & EFFECT_WORDS != 0
    }

    fn set_config(self) -> bool {
        self.0 & SET_CONFIG != 0
    }
}

/// Session effects of every statement in a query string.
pub fn session_effects(sql: &str) -> Vec<SessionEffect> {
    session_effects_of(sql, SessionWords::scan(sql))
}

/// [`session_effects`] of a text already scanned.
pub(crate) fn session_effects_of(sql: &str, words: SessionWords) -> Vec<SessionEffect> {
    if !words.may_have_effects() {
        return Vec::new();
    }
    // `UPDATE … SET`, `OFFSET`, `charset`: the word is there but no statement starts with a
    // session command. One lexer pass without allocations says so before the full analysis.
    let starts_session_statement = starts_session_statement(sql);
    let set_config = words.set_config();
    if !starts_session_statement && !set_config {
        return Vec::new();
    }
    let mut effects: Vec<SessionEffect> = if starts_session_statement {
        shardgate_router::split_statements(sql)
            .into_iter()
            .filter_map(statement_effect)
            .collect()
    } else {
        Vec::new()
    };
    if set_config && crate::pinning::set_config_may_persist(sql) {
        effects.push(SessionEffect::Untracked);
    }
    effects
}

/// Whether a statement of `sql` starts with SET, RESET, DISCARD, DEALLOCATE or DO (comments
/// skipped), the only statements `statement_effect` reads.
fn starts_session_statement(sql: &str) -> bool {
    use shardgate_router::lexer::{Lexer, TokKind};
    // One statement (no `;` but a final one): only its first token matters, and the lexer
    // stops there instead of reading the whole text (TPC-B's `UPDATE … SET`). A `;` in a
    // string or comment only sends the text the long way.
    let one_statement = sql
        .find(';')
        .is_none_or(|at| sql[at + 1..].trim().is_empty());
    let mut at_start = true;
    for tok in Lexer::new(sql) {
        match tok.kind {
            TokKind::Comment => continue,
            TokKind::Semicolon => {
                at_start = true;
                continue;
            }
            TokKind::Word if at_start => {
                let word = &sql[tok.range];
                if ["set", "reset", "discard", "deallocate", "do"]
                    .iter()
                    .any(|k| word.eq_ignore_ascii_case(k))
                {
                    return true;
                }
            }
            _ => {}
        }
        if one_statement {
            return false;
        }
        at_start = false;
    }
    false
}

// The bits of `SessionWords`, in the order of `shardgate_router::SESSION_WORDS`.
/// Words without which no statement can change session state.
const EFFECT_WORDS: u64 = 0b111;
/// Words without which `pinning::pinning_statement_of` finds nothing.
const PIN_WORDS: u64 = 0b1111_1000;
const SET_CONFIG: u64 = 1 << 8;

fn statement_effect(stmt: &str) -> Option<SessionEffect> {
    let words = shardgate_router::leading_names(stmt, 4);
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
        // A DO block that mentions `set` may run any SET (a role included) out of sight:
        // the connection is reset before another client gets it.
        ["do", ..] => Some(SessionEffect::Untracked),
        _ => None,
    }
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
        assert!(session_effects("UPDATE t SET a = 1 WHERE b = 2").is_empty());
        assert!(session_effects("select 1 offset 2").is_empty());
        assert_eq!(
            session_effects("UPDATE t SET a = 1; /* c */ SET work_mem = '8MB'").len(),
            1
        );
        assert_eq!(
            session_effects("UPDATE t SET a = set_config('x', 'y', false)"),
            vec![SessionEffect::Untracked]
        );
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
    fn a_set_after_a_backslash_ending_a_string_is_tracked() {
        // `\` ends no standard string: the SET after it is a statement of its own (the
        // proxy's former lexer read `\'` as an escaped quote and missed it).
        assert_eq!(
            session_effects("SELECT 'C:\\'; SET search_path = b"),
            vec![SessionEffect::Set {
                name: "search_path".into(),
                statement: "SET search_path = b".into()
            }]
        );
        assert!(session_effects("SELECT E'\\'; SET search_path = b'").is_empty());
        assert_eq!(session_effects("SET myapp.a = 1; SET myapp.b = 2").len(), 2);
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
    fn role_survives_reset_all_and_every_replay_resets_identity() {
        let mut s = SessionState::from_startup(&[]);
        s.apply(&session_effects(
            "SET ROLE tenant_a; SET SESSION AUTHORIZATION alice",
        ));
        s.apply(&session_effects("RESET ALL"));
        let sql = s.replay_sql();
        assert!(
            sql.starts_with("RESET SESSION AUTHORIZATION;RESET ROLE;RESET ALL;SET SESSION AUTHORIZATION alice;SET ROLE tenant_a;"),
            "{sql}"
        );
        s.apply(&session_effects("DISCARD ALL"));
        assert_eq!(s.fingerprint(), 0);
        assert!(s.server_diverges(&session_effects(
            "DO $$ BEGIN EXECUTE 'SET ROLE tenant_a'; END $$"
        )));
        assert!(SessionState::default().replay_sql().contains("RESET ROLE"));
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
    use super::SessionWords;

    #[test]
    fn a_statement_starts_with_a_session_command_or_not() {
        use super::starts_session_statement as starts;
        assert!(!starts(
            "UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid = 2;"
        ));
        assert!(!starts("UPDATE t SET a = 1"));
        assert!(starts("SET work_mem = '8MB';  "));
        assert!(starts("/* why */ -- and\n reset all"));
        assert!(!starts("/* c */ select 1;"));
        // More than one statement, or a `;` that only looks like an end: read in full.
        assert!(starts("UPDATE t SET a = 1; SET work_mem = '8MB'"));
        assert!(starts("select ';'; discard all"));
        assert!(!starts("select ';' -- ; set x = 1"));
        assert!(starts("select 1; -- c\n do $$ begin end $$"));
    }

    /// The masks follow the router's word list by position: they must name these words.
    #[test]
    fn the_masks_name_the_routers_words() {
        use super::{EFFECT_WORDS, PIN_WORDS, SESSION_WORDS, SET_CONFIG};
        let named = |mask: u64| -> Vec<&str> {
            SESSION_WORDS
                .words()
                .iter()
                .enumerate()
                .filter(|(i, _)| mask & (1 << i) != 0)
                .map(|(_, w)| std::str::from_utf8(w).unwrap())
                .collect()
        };
        assert_eq!(named(EFFECT_WORDS), ["set", "discard", "deallocate"]);
        assert_eq!(
            named(PIN_WORDS),
            ["temp", "listen", "advisory", "hold", "prepare"]
        );
        assert_eq!(named(SET_CONFIG), ["set_config"]);
    }

    #[test]
    fn session_words_say_which_checks_to_run() {
        let words = SessionWords::scan("UPDATE pgbench_tellers SET tbalance = tbalance + 1");
        assert!(words.any() && words.may_have_effects());
        assert!(!words.may_pin() && !words.set_config());
        let words = SessionWords::scan("select pg_catalog.SET_CONFIG('work_mem', '9MB', false)");
        assert!(words.set_config() && words.may_have_effects() && !words.may_pin());
        let words = SessionWords::scan("CREATE TEMPORARY TABLE scratch (a int)");
        assert!(words.may_pin() && !words.may_have_effects());
        assert!(SessionWords::scan("RESET search_path").may_have_effects());
        assert!(SessionWords::scan("select pg_advisory_lock(1)").may_pin());
        assert!(!SessionWords::scan("SELECT abalance FROM pgbench_accounts WHERE aid = 1").any());
        // With the statistics on, the fingerprint's pass finds the same words.
        for sql in [
            "UPDATE pgbench_tellers SET tbalance = tbalance + 1",
            "select pg_catalog.SET_CONFIG('work_mem', '9MB', false)",
            "do $$ begin execute 'set work_mem = ''1MB'''; end $$ -- temp",
            "SELECT abalance FROM pgbench_accounts WHERE aid = 1",
        ] {
            let (hash, words) = SessionWords::scan_with_fingerprint(sql, true);
            assert_eq!(words, SessionWords::scan(sql), "{sql}");
            assert_eq!(hash, Some(shardgate_router::fingerprint_hash(sql)));
            assert_eq!(
                SessionWords::scan_with_fingerprint(sql, false),
                (None, words)
            );
        }
    }
}
