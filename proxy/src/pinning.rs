//! Session pinning (DESIGN.md "Session pinning"): in transaction mode a statement that creates
//! state a hand-over to another server connection cannot carry — temp objects, LISTEN, session
//! advisory locks, WITH HOLD cursors, SQL-level PREPARE — pins the client to its server
//! connection until it disconnects; the connection is then reset (`DISCARD ALL`, `RESET ROLE`,
//! `RESET SESSION AUTHORIZATION`) before another client gets it. With `pool.pinning =
//! "refuse"` such statements are refused with 0A000 instead.
//!
//! Settings do not pin: `SET` (role and session authorization included) follows the client
//! to each connection (`session_state`), and a `set_config(…, false)` the proxy cannot follow
//! makes the next hand-over reset the connection, so it never reaches another client.
//!
//! Detection reads the statement text with the router's lexer (never inside literals or
//! comments). It errs on the side of pinning: a pin costs the pool a connection for the
//! client's lifetime, a missed one leaks state to another client.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use shardgate_pool::PoolKey;
use shardgate_router::lexer::{code_tokens, code_words, leading_names, split_statements, TokKind};
use shardgate_router::RouteError;
use shardgate_wire::sqlstate;

use shardgate_config::Pinning;
use shardgate_pool::HostChoice;
use shardgate_wire::{frontend, Frame};

use crate::control::CountGuard;
use crate::session::Session;
use crate::session_state::SessionWords;

/// Functions that take a session-level advisory lock (their `_xact_` forms end with the
/// transaction and do not pin).
const SESSION_LOCK_FUNCTIONS: &[&str] = &[
    "pg_advisory_lock",
    "pg_advisory_lock_shared",
    "pg_try_advisory_lock",
    "pg_try_advisory_lock_shared",
];

/// What in `sql` pins the session, named for the client (e.g. `CREATE TEMP TABLE`), or
/// `None` when nothing does.
pub(crate) fn pinning_statement(sql: &str) -> Option<&'static str> {
    pinning_statement_of(sql, SessionWords::scan(sql))
}

/// [`pinning_statement`] of a text already scanned: most statements have none of the words
/// a pinning statement needs.
pub(crate) fn pinning_statement_of(sql: &str, words: SessionWords) -> Option<&'static str> {
    if !words.may_pin() {
        return None;
    }
    // Temp objects the same text creates and drops again (a scratch table) leave nothing
    // behind: they do not pin.
    let mut temp_objects: Vec<String> = Vec::new();
    for stmt in split_statements(sql) {
        let words = leading_names(stmt, 8);
        let w: Vec<&str> = words.iter().map(String::as_str).collect();
        let is_temp = |x: &&str| {
            matches!(*x, "temp" | "temporary") || x.starts_with("pg_temp.") || *x == "pg_temp"
        };
        match w.as_slice() {
            // ON COMMIT DROP: gone when the transaction ends, like everything else it did.
            ["create", rest @ ..] if rest.iter().any(is_temp) && !drops_on_commit(stmt) => {
                if let Some(what) = statement_pins(stmt, &w) {
                    return Some(what);
                }
                match object_name(rest) {
                    Some(name) => temp_objects.push(name),
                    None => return Some("CREATE TEMP"),
                }
            }
            ["drop", rest @ ..] => {
                if let Some(name) = object_name(rest) {
                    temp_objects.retain(|n| *n != name);
                }
            }
            _ => {
                if let Some(what) = statement_pins(stmt, &w) {
                    return Some(what);
                }
            }
        }
    }
    (!temp_objects.is_empty()).then_some("CREATE TEMP")
}

/// The name after `table|view|sequence [if [not] exists]` in a statement's leading words,
/// without a `pg_temp.` qualifier.
fn object_name(words: &[&str]) -> Option<String> {
    let mut rest = words
        .iter()
        .skip_while(|w| !matches!(**w, "table" | "view" | "sequence"))
        .skip(1)
        .skip_while(|w| matches!(**w, "if" | "not" | "exists"));
    let name = rest.next()?;
    Some(name.strip_prefix("pg_temp.").unwrap_or(name).to_owned())
}

fn statement_pins(stmt: &str, w: &[&str]) -> Option<&'static str> {
    match w {
        ["listen", ..] => return Some("LISTEN"),
        ["prepare", "transaction", ..] => {}
        ["prepare", ..] => return Some("PREPARE"),
        _ => {}
    }
    // Anywhere in the statement: WITH HOLD, SELECT … INTO TEMP, and function calls.
    let toks = code_tokens(stmt);
    let word = |i: usize| {
        toks.get(i)
            .filter(|t| t.kind == TokKind::Word)
            .map(|t| &stmt[t.range.clone()])
    };
    for i in 0..toks.len() {
        let Some(this) = word(i) else { continue };
        let next = word(i + 1);
        if this.eq_ignore_ascii_case("with") && next.is_some_and(|n| n.eq_ignore_ascii_case("hold"))
        {
            return Some("DECLARE … WITH HOLD");
        }
        if this.eq_ignore_ascii_case("into")
            && next.is_some_and(|n| {
                n.eq_ignore_ascii_case("temp") || n.eq_ignore_ascii_case("temporary")
            })
        {
            return Some("SELECT … INTO TEMP");
        }
        if SESSION_LOCK_FUNCTIONS
            .iter()
            .any(|f| this.eq_ignore_ascii_case(f))
        {
            return Some("a session advisory lock (pg_advisory_lock)");
        }
    }
    None
}

/// Whether a CREATE TEMP TABLE ends with `ON COMMIT DROP`.
fn drops_on_commit(stmt: &str) -> bool {
    let words: Vec<&str> = code_words(stmt).collect();
    words.windows(3).any(|w| {
        w[0].eq_ignore_ascii_case("on")
            && w[1].eq_ignore_ascii_case("commit")
            && w[2].eq_ignore_ascii_case("drop")
    })
}

/// Whether `sql` calls `set_config` in a way that may outlast the transaction (`is_local` not a
/// literal true).
pub(crate) fn set_config_may_persist(sql: &str) -> bool {
    split_statements(sql).into_iter().any(|stmt| {
        let toks = code_tokens(stmt);
        toks.iter().enumerate().any(|(i, t)| {
            t.kind == TokKind::Word
                && stmt[t.range.clone()].eq_ignore_ascii_case("set_config")
                && !set_config_is_local(stmt, &toks[i + 1..])
        })
    })
}

/// Whether the call whose argument list starts at `toks` (`(` first) passes a literal true as
/// `is_local`. Anything else — false, a parameter, an expression — may change the session.
fn set_config_is_local(stmt: &str, toks: &[shardgate_router::lexer::Tok]) -> bool {
    let text = |t: &shardgate_router::lexer::Tok| &stmt[t.range.clone()];
    if toks.first().map(text) != Some("(") {
        return false;
    }
    let mut depth = 0usize;
    let mut commas = 0;
    let mut third = Vec::new();
    for t in toks {
        match text(t) {
            "(" => depth += 1,
            ")" => {
                depth -= 1;
                if depth == 0 {
                    break;
                }
            }
            "," if depth == 1 => {
                commas += 1;
                continue;
            }
            _ => {}
        }
        if commas == 2 && depth >= 1 {
            third.push(text(t));
        }
    }
    match third.as_slice() {
        [v] => {
            let v = v.trim_matches('\'');
            ["true", "t", "on", "yes", "y", "1"]
                .iter()
                .any(|x| v.eq_ignore_ascii_case(x))
        }
        _ => false,
    }
}

/// The 0A000 a client gets for a pinning statement under `pool.pinning = "refuse"`.
pub(crate) fn refusal(what: &str) -> RouteError {
    RouteError {
        code: sqlstate::FEATURE_NOT_SUPPORTED,
        message: format!(
            "{what} creates session state that transaction pooling cannot keep, and \
             pool.pinning = \"refuse\""
        ),
        hint: Some(
            "use session pool mode for this client, or set pool.pinning = \"on\" to keep the \
             client on its server connection"
                .into(),
        ),
    }
}

/// The 0A000 for a pinning statement that would run on several shards at once.
pub(crate) fn many_shards_refusal(what: &str) -> RouteError {
    RouteError {
        code: sqlstate::FEATURE_NOT_SUPPORTED,
        message: format!(
            "{what} would create session state on several shards; a session can be pinned to \
             one shard's server connection only"
        ),
        hint: Some("restrict the statement to one shard with its shard key or a hint".into()),
    }
}

impl Session {
    /// What in a detached batch would pin the session (its Queries, Parses, and the
    /// statements its Binds name).
    pub(crate) fn batch_pins(&mut self, batch: &[Frame]) -> Option<&'static str> {
        if !self.client.mode_is_transaction() {
            return None;
        }
        batch.iter().find_map(|frame| match frame.tag() {
            frontend::QUERY => frontend::query_text(frame)
                .ok()
                .and_then(|text| pinning_statement(&self.sql(text))),
            frontend::PARSE => frontend::parse(frame)
                .ok()
                .and_then(|p| pinning_statement(&self.sql(p.query))),
            frontend::BIND => {
                let bind = frontend::bind(frame).ok()?;
                self.client_state.statements_mut().get(bind.statement)?.pins
            }
            _ => None,
        })
    }

    /// A statement that pins (`what`) is about to be forwarded to the connection held now:
    /// pin the session to it, or refuse the statement (`pool.pinning = "refuse"`, or a
    /// replica connection, whose client would later need the primary).
    pub(crate) fn pin_here(&mut self, what: &'static str) -> Result<(), RouteError> {
        if !self.client.mode_is_transaction() || self.client_state.pin().is_pinned() {
            return Ok(());
        }
        if self.shared.config().pool.pinning == Pinning::Refuse {
            return Err(refusal(what));
        }
        if self.attachment.host() != HostChoice::Primary {
            return Err(RouteError {
                code: sqlstate::FEATURE_NOT_SUPPORTED,
                message: format!(
                    "{what} would pin this session to a replica, where its later writes \
                     could not run"
                ),
                hint: Some(
                    "run it outside a read-only transaction (or with /* shardgate: \
                     role=primary */)"
                        .into(),
                ),
            });
        }
        let key = self.pool().key().clone();
        self.client_state
            .pin_mut()
            .pin(what, &key, &self.shared.pins);
        Ok(())
    }
}

/// Pinned clients per pool (`pinned` in `/api/v1/pools`; their sum is the
/// `shardgate_pinned_clients` gauge). One entry per pool ever pinned, as bounded as the pools.
#[derive(Debug, Default)]
pub(crate) struct PinCounts {
    by_pool: Mutex<HashMap<PoolKey, Arc<AtomicU64>>>,
}

impl PinCounts {
    pub(crate) fn of_pool(&self, key: &PoolKey) -> u64 {
        let map = self.by_pool.lock().unwrap_or_else(|p| p.into_inner());
        map.get(key).map_or(0, |c| c.load(Ordering::Relaxed))
    }

    fn guard(&self, key: &PoolKey) -> CountGuard {
        let mut map = self.by_pool.lock().unwrap_or_else(|p| p.into_inner());
        CountGuard::new(map.entry(key.clone()).or_default())
    }
}

/// A session's pin: why it holds its server connection, counted while it lasts.
#[derive(Debug, Default)]
pub(crate) struct Pin {
    held: Option<(&'static str, CountGuard)>,
}

impl Pin {
    pub(crate) fn is_pinned(&self) -> bool {
        self.held.is_some()
    }

    /// The statement that pinned the session.
    pub(crate) fn reason(&self) -> Option<&'static str> {
        self.held.as_ref().map(|h| h.0)
    }

    /// Pins the session to its current connection of pool `key` (a no-op when pinned).
    pub(crate) fn pin(&mut self, what: &'static str, key: &PoolKey, counts: &PinCounts) {
        if self.held.is_none() {
            tracing::debug!(shard = %key.shard, reason = what, "client pinned to its server connection");
            self.held = Some((what, counts.guard(key)));
        }
    }

    /// The pinned connection was reset or lost: the session is free again.
    pub(crate) fn release(&mut self) {
        self.held = None;
    }
}

#[cfg(test)]
mod tests {
    use super::pinning_statement as pins;

    #[test]
    fn finds_statements_that_create_session_state() {
        for sql in [
            "CREATE TEMP TABLE person (id int)",
            "create temporary table t as select 1",
            "CREATE LOCAL TEMPORARY TABLE t (x int) ON COMMIT DELETE ROWS",
            "create or replace temp view v as select 1",
            "create table pg_temp.t (x int)",
            "select 1; LISTEN jobs",
            "select pg_advisory_lock(42)",
            "SELECT pg_catalog.pg_try_advisory_lock_shared(1, 2)",
            "DECLARE c CURSOR WITH HOLD FOR SELECT 1",
            "PREPARE q AS SELECT 1",
            "select 1 into temp t",
            "create temp table a (x int); drop table b",
        ] {
            assert!(pins(sql).is_some(), "{sql}");
        }
    }

    #[test]
    fn set_config_is_local_only_with_a_literal_true() {
        use super::set_config_may_persist as persists;
        assert!(persists("select set_config('role', 'x', false)"));
        assert!(persists("select set_config('role', $1, $2)"));
        assert!(!persists("select set_config('search_path', 'a', true)"));
        assert!(!persists("SELECT set_config('x.y', f(1, 2), 'on')"));
    }

    #[test]
    fn leaves_everything_else_alone() {
        for sql in [
            "select 1",
            "select pg_advisory_xact_lock(42)",
            "select 'CREATE TEMP TABLE x' as temp",
            "-- listen\nselect 1",
            "PREPARE TRANSACTION 'gid'",
            "DECLARE c CURSOR WITHOUT HOLD FOR SELECT 1",
            "select set_config('search_path', 'a', false)",
            "create temp table t (x int) on commit drop",
            "create temp table if not exists t_simple (x int); drop table t_simple; select 1",
            "create table temperatures (x int)",
            "select * from holdings",
        ] {
            assert_eq!(pins(sql), None, "{sql}");
        }
    }
}
