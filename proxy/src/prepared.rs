//! Named prepared statements in transaction mode.
//!
//! A client's statement `S` belongs to the client, not to a server connection. Each distinct
//! (text, parameter types) gets one proxy-wide name `sg_<n>`; clients with the same text share
//! it, and a server connection that lacks it gets a Parse from the proxy right before the
//! client's Bind or Describe needs it (see DESIGN.md "Prepared statements in transaction mode").
//!
//! A statement's meaning depends on more than its text: the same `SELECT * FROM t` names
//! another table under another `search_path`, and a pinned client's temp tables shadow
//! everyone's. The shared name is keyed on that context too (the client's tracked
//! `search_path`, and the client itself while it is pinned), so a server connection never
//! runs a plan made for another client's schema (which PostgreSQL would re-plan, or refuse
//! with "cached plan must not change result type").
//!
//! Each client's own names live in [`ClientStatements`], bounded with LRU eviction
//! (`pool.prepared_statements_per_client`): a forgotten name is unknown again, and using it
//! gets PostgreSQL's own 26000, as on a server that never saw it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::{Bytes, BytesMut};
use shardgate_wire::frontend;

use crate::session_state::{session_effects, SessionEffect};

/// A client's named statements, least recently used first out past the cap.
///
/// The map grows as the client prepares: `LruCache::new(cap)` would allocate (and clear) a
/// table for `cap` entries in every session, 272 KiB at the default cap of 10,000, though most
/// clients name a handful of statements or none.
pub struct ClientStatements {
    map: lru::LruCache<String, Arc<GlobalStatement>>,
    cap: usize,
}

impl ClientStatements {
    pub fn new(cap: usize) -> Self {
        ClientStatements {
            map: lru::LruCache::unbounded(),
            cap: cap.max(1),
        }
    }

    pub fn get(&mut self, name: &str) -> Option<&Arc<GlobalStatement>> {
        self.map.get(name)
    }

    /// Like [`Self::get`] without marking the statement used.
    pub fn peek(&self, name: &str) -> Option<&Arc<GlobalStatement>> {
        self.map.peek(name)
    }

    /// Records `name`; past the cap the least recently used name is forgotten.
    pub fn insert(&mut self, name: String, stmt: Arc<GlobalStatement>) {
        self.map.push(name, stmt);
        // One insert adds at most one name: at most one goes.
        if self.map.len() > self.cap {
            if let Some((evicted, _)) = self.map.pop_lru() {
                tracing::debug!(statement = %evicted, "client's least recently used prepared statement forgotten (pool.prepared_statements_per_client)");
            }
        }
    }

    pub fn remove(&mut self, name: &str) {
        self.map.pop(name);
    }
}

/// A statement under its proxy-wide name, with the Parse that creates it on a server.
#[derive(Debug)]
pub struct GlobalStatement {
    pub name: String,
    /// The statement text and parameter types, for routing its Binds.
    pub query: String,
    pub param_types: Vec<u32>,
    /// A ready-to-send Parse message for `name`.
    pub parse_message: Bytes,
    /// What executing it does to session state (tracked at each Bind, since a prepared
    /// `set_config` acts every time it runs), and what in it pins the session.
    pub effects: Vec<SessionEffect>,
    pub pins: Option<&'static str>,
    /// The text's fingerprint hash (`query_stats`), computed once instead of at every Bind.
    pub fingerprint: u64,
    /// A server has accepted the Parse once: the text is valid SQL for these parameter types.
    accepted: AtomicBool,
}

impl GlobalStatement {
    /// Whether a server has accepted this statement's Parse (see [`Self::mark_accepted`]).
    pub fn accepted(&self) -> bool {
        self.accepted.load(Ordering::Relaxed)
    }

    /// Records that a server answered this statement's Parse with ParseComplete.
    pub fn mark_accepted(&self) {
        self.accepted.store(true, Ordering::Relaxed);
    }
}

/// Text, parameter types, and the context that changes the text's meaning.
type Key = (String, Vec<u32>, String);

impl crate::session::Session {
    /// What changes the meaning of a client's statement text (see the module doc): its
    /// search_path, and the client itself while it is pinned.
    pub(crate) fn statement_context(&self) -> String {
        let mut context = self
            .client_state
            .settings()
            .search_path()
            .unwrap_or_default();
        if self.client_state.pin().is_pinned() {
            // Its temp tables may shadow any name: a pinned client's statements are its own.
            context.push_str(&format!("\u{0}client {}", self.client.id()));
        }
        context
    }
}

/// Interns statements by (text, parameter types, context).
pub struct StatementRegistry {
    statements: Mutex<HashMap<Key, Arc<GlobalStatement>>>,
    next_id: AtomicU64,
    /// Above this many entries, statements no client holds any more are dropped.
    sweep_above: usize,
}

impl Default for StatementRegistry {
    fn default() -> Self {
        StatementRegistry {
            statements: Mutex::default(),
            next_id: AtomicU64::new(1),
            sweep_above: 10_000,
        }
    }
}

impl StatementRegistry {
    /// The shared statement for `query` with `param_types` in `context` (see the module doc:
    /// empty for the server's default search_path).
    pub fn intern(&self, query: &str, param_types: &[u32], context: &str) -> Arc<GlobalStatement> {
        self.intern_keyed(
            query.to_owned(),
            query,
            query.as_bytes(),
            param_types,
            context,
        )
    }

    /// A statement a client sent in `encoding` (not UTF-8): `raw` are its bytes, sent to
    /// servers as they are; `text` is their decoding, for routing. Keyed by encoding and
    /// exact bytes (a NUL, which no statement text holds, keeps these keys apart from UTF-8
    /// ones; each byte becomes the char of its value, which is lossless).
    pub fn intern_encoded(
        &self,
        text: &str,
        raw: &[u8],
        encoding: &str,
        param_types: &[u32],
        context: &str,
    ) -> Arc<GlobalStatement> {
        let mut key = format!("\0{encoding}\0");
        key.extend(raw.iter().map(|b| char::from(*b)));
        self.intern_keyed(key, text, raw, param_types, context)
    }

    fn intern_keyed(
        &self,
        key: String,
        query: &str,
        raw: &[u8],
        param_types: &[u32],
        context: &str,
    ) -> Arc<GlobalStatement> {
        let mut map = self.statements.lock().unwrap_or_else(|p| p.into_inner());
        let key = (key, param_types.to_vec(), context.to_owned());
        if let Some(s) = map.get(&key) {
            return Arc::clone(s);
        }
        if map.len() >= self.sweep_above {
            map.retain(|_, s| Arc::strong_count(s) > 1);
        }
        let name = format!("sg_{}", self.next_id.fetch_add(1, Ordering::Relaxed));
        let mut parse = BytesMut::new();
        frontend::write_parse(&mut parse, &name, raw, param_types);
        let stmt = Arc::new(GlobalStatement {
            name,
            query: query.to_owned(),
            param_types: param_types.to_vec(),
            parse_message: parse.freeze(),
            effects: session_effects(query),
            pins: crate::pinning::pinning_statement(query),
            fingerprint: shardgate_router::fingerprint_hash(query),
            accepted: AtomicBool::new(false),
        });
        map.insert(key, Arc::clone(&stmt));
        stmt
    }

    /// Forgets `stmt` (its plan went stale on servers): the next Parse of its text gets a new
    /// global name and so a fresh Parse on every server connection. Clients still bound to the
    /// old name keep it until they prepare again, as on a direct connection.
    pub fn retire(&self, stmt: &Arc<GlobalStatement>) {
        let mut map = self.statements.lock().unwrap_or_else(|p| p.into_inner());
        map.retain(|_, s| !Arc::ptr_eq(s, stmt));
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.statements.lock().map(|m| m.len()).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_text_shares_a_name_and_types_matter() {
        let r = StatementRegistry::default();
        let a = r.intern("select $1", &[23], "");
        let b = r.intern("select $1", &[23], "");
        let c = r.intern("select $1", &[25], "");
        let d = r.intern("select $1", &[23], "SET search_path = b");
        assert_eq!(a.name, b.name);
        assert_ne!(a.name, c.name);
        assert_ne!(a.name, d.name);
        assert_eq!(r.len(), 3);
    }

    #[test]
    fn retired_statements_get_a_new_name_and_start_unaccepted() {
        let r = StatementRegistry::default();
        let a = r.intern("select * from t", &[], "");
        a.mark_accepted();
        assert!(r.intern("select * from t", &[], "").accepted());
        r.retire(&a);
        let b = r.intern("select * from t", &[], "");
        assert_ne!(a.name, b.name);
        assert!(!b.accepted());
    }

    #[test]
    fn client_names_are_bounded_least_recently_used_first() {
        let r = StatementRegistry::default();
        let mut c = ClientStatements::new(2);
        c.insert("a".into(), r.intern("select 1", &[], ""));
        c.insert("b".into(), r.intern("select 2", &[], ""));
        assert!(c.get("a").is_some());
        c.insert("c".into(), r.intern("select 3", &[], ""));
        assert!(c.get("b").is_none(), "b was the least recently used");
        assert!(c.get("a").is_some() && c.get("c").is_some());
    }

    #[test]
    fn unused_statements_are_swept() {
        let r = StatementRegistry {
            sweep_above: 2,
            ..Default::default()
        };
        let kept = r.intern("a", &[], "");
        drop(r.intern("b", &[], ""));
        drop(r.intern("c", &[], ""));
        assert!(r.len() <= 2);
        assert_eq!(r.intern("a", &[], "").name, kept.name);
    }
}
