//! Cross-shard results a client reads in parts inside a transaction: a portal executed with a
//! row limit (JDBC's `fetchSize`, asyncpg cursors, tokio-postgres `query_portal`) and SQL
//! cursors (`DECLARE … CURSOR FOR` a cross-shard read, then `FETCH`/`MOVE`/`CLOSE`: psycopg
//! named cursors, Django's `.iterator()`).
//!
//! One PostgreSQL keeps such a portal open and runs its query a little further at each
//! Execute. So does the proxy for a merged read (ORDER BY merge, concatenation, LIMIT and
//! OFFSET): each shard's rows wait in a named portal on the shard, read in batches of 100 to
//! 1000 rows, and each Execute or FETCH merges on from where the last stopped (`scatter::resume`);
//! the proxy holds at most one batch per shard, whatever the result's size, and the
//! transaction's other statements run on the same connections in between. A re-aggregated or
//! gathered read is run once and its rows held, bounded by `limits.max_gather_rows` and
//! `limits.max_gather_bytes` (54000 past them). At most [`MAX_HELD`] results per transaction;
//! the transaction's end drops them all, as it does a PostgreSQL portal.

mod answer;
mod capture;

pub(crate) use capture::{Capture, Captured};

use std::collections::{HashMap, VecDeque};

use bytes::Bytes;
use shardgate_router::cursor::{cursor_command, CursorCommand};
use shardgate_wire::{frontend, Frame};

/// Most results held at once by one transaction.
pub(crate) const MAX_HELD: usize = 64;

/// The part of a held read still on the shards.
#[derive(Debug)]
pub(crate) struct HeldStream {
    pub(crate) merge: crate::scatter::HeldMerge,
    /// The shards, in the order the merge knows them.
    pub(crate) shards: Vec<shardgate_router::ShardIndex>,
}

/// A result held for a portal or cursor of the client's transaction.
#[derive(Debug, Default)]
pub(crate) struct HeldResult {
    /// The result's RowDescription frame (for Describe and FETCH).
    description: Option<Bytes>,
    /// DataRow frames not yet read (of a streamed read: those read before it was parked).
    rows: VecDeque<Bytes>,
    /// The rest of a streamed read, on the shards.
    stream: Option<HeldStream>,
    /// How many savepoints were open when it was created (see [`HeldResults::rolled_back_to`]).
    depth: usize,
}

impl HeldResult {
    pub(crate) fn new(description: Option<Bytes>, rows: VecDeque<Bytes>) -> HeldResult {
        HeldResult {
            description,
            rows,
            stream: None,
            depth: 0,
        }
    }

    /// Takes the next `n` rows (all with `None`).
    fn take(&mut self, n: Option<u64>) -> impl Iterator<Item = Bytes> + '_ {
        let n = n.map_or(self.rows.len(), |n| {
            usize::try_from(n)
                .unwrap_or(usize::MAX)
                .min(self.rows.len())
        });
        self.rows.drain(..n)
    }
}

/// The held results of the client's transaction, by portal or cursor name (`""` is the
/// unnamed portal). PostgreSQL keeps portals and cursors in one namespace; so does this.
#[derive(Debug, Default)]
pub(crate) struct HeldResults {
    results: HashMap<String, HeldResult>,
    /// Numbers the shards' portals of streamed reads.
    portals: u64,
}

impl HeldResults {
    pub(crate) fn contains(&self, name: &str) -> bool {
        self.results.contains_key(name)
    }

    /// A name for a streamed read's portal on the shards, unique in the session.
    pub(crate) fn next_portal_name(&mut self) -> String {
        self.portals += 1;
        format!("shardgate_held_{}", self.portals)
    }

    pub(crate) fn is_full(&self) -> bool {
        self.results.len() >= MAX_HELD
    }

    /// Holds `result` under `name`, created with `depth` savepoints open.
    pub(crate) fn insert(&mut self, name: String, mut result: HeldResult, depth: usize) {
        result.depth = depth;
        self.results.insert(name, result);
    }

    /// `ROLLBACK TO` a savepoint, leaving `depth` open: what was created after it is gone.
    pub(crate) fn rolled_back_to(&mut self, depth: usize) {
        self.results.retain(|_, r| r.depth < depth);
    }

    /// `RELEASE` of a savepoint, leaving `depth` open: what was created inside it now belongs
    /// to the level around it.
    pub(crate) fn released_to(&mut self, depth: usize) {
        for r in self.results.values_mut() {
            r.depth = r.depth.min(depth);
        }
    }

    /// The transaction ended: every portal and cursor with it.
    pub(crate) fn clear(&mut self) {
        self.results.clear();
    }

    /// Whether the proxy answers this batch from held results: it executes or describes a
    /// held portal, binds a new portal under a held name, or is a FETCH, MOVE or CLOSE on a
    /// held cursor. A Close message of a held portal drops it (the Close goes on to a server,
    /// which answers it as PostgreSQL does for any portal name), a Bind to the unnamed portal
    /// drops a held unnamed one (as PostgreSQL replaces it), and `CLOSE ALL` drops all of
    /// them (and then runs on the servers too).
    pub(crate) fn claims(&mut self, batch: &[Frame], text: impl Fn(&[u8]) -> String) -> bool {
        if self.results.is_empty() {
            return false;
        }
        let mut claimed = false;
        for frame in batch {
            let named = match frame.tag() {
                frontend::EXECUTE => frontend::execute(frame).ok().map(|(p, _)| p.to_owned()),
                frontend::DESCRIBE => frontend::describe(frame)
                    .ok()
                    .filter(|t| t.kind == b'P')
                    .map(|t| t.name.to_owned()),
                // Dropped here and not claimed: the server answers CloseComplete for a
                // portal it does not have (pgjdbc sends the Close ahead of its next query).
                frontend::CLOSE => {
                    if let Ok(t) = frontend::close(frame) {
                        if t.kind == b'P' {
                            self.results.remove(t.name);
                        }
                    }
                    None
                }
                frontend::BIND => match frontend::bind(frame) {
                    Ok(b) if b.portal.is_empty() => {
                        self.results.remove("");
                        None
                    }
                    Ok(b) => Some(b.portal.to_owned()),
                    Err(_) => None,
                },
                frontend::QUERY => frontend::query_text(frame)
                    .ok()
                    .and_then(|t| self.cursor_name(&text(t))),
                frontend::PARSE => frontend::parse(frame)
                    .ok()
                    .and_then(|p| self.cursor_name(&text(p.query))),
                _ => None,
            };
            claimed |= named.is_some_and(|n| self.results.contains_key(&n));
        }
        claimed
    }

    /// The held cursor a FETCH/MOVE/CLOSE names (`CLOSE ALL` drops them all and names none).
    fn cursor_name(&mut self, sql: &str) -> Option<String> {
        match cursor_command(sql)? {
            CursorCommand::Fetch { name, .. } | CursorCommand::Close(name) => Some(name),
            CursorCommand::CloseAll => {
                self.results.clear();
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BytesMut;

    fn frame(write: impl FnOnce(&mut BytesMut)) -> Frame {
        let mut b = BytesMut::new();
        write(&mut b);
        Frame::from_bytes(b.freeze())
    }

    fn execute(portal: &str) -> Frame {
        frame(|b| {
            frontend::write_message(b, frontend::EXECUTE, |b| {
                frontend::put_cstr(b, portal);
                b.extend_from_slice(&10i32.to_be_bytes());
            })
        })
    }

    fn held(rows: usize) -> HeldResult {
        HeldResult::new(
            None,
            (0..rows).map(|i| Bytes::from(vec![b'D'; i + 1])).collect(),
        )
    }

    #[test]
    fn claims_batches_that_read_a_held_result() {
        let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        let mut h = HeldResults::default();
        let sync = frame(frontend::write_sync);
        assert!(!h.claims(&[execute("C_1"), sync.clone()], text));
        h.insert("C_1".into(), held(3), 0);
        h.insert("big".into(), held(1), 0);
        assert!(h.claims(&[execute("C_1"), sync.clone()], text));
        assert!(!h.claims(&[execute("C_2"), sync.clone()], text));
        let fetch = frame(|b| frontend::write_query(b, "FETCH FORWARD 10 FROM BIG"));
        assert!(h.claims(&[fetch], text));
        let other = frame(|b| frontend::write_query(b, "FETCH 10 FROM other"));
        assert!(!h.claims(&[other], text));
        let close = frame(|b| frontend::write_close(b, b'P', "C_1"));
        assert!(!h.claims(&[close, sync.clone()], text));
        assert!(!h.contains("C_1") && h.contains("big"));
        let close_all = frame(|b| frontend::write_query(b, "CLOSE ALL"));
        assert!(!h.claims(&[close_all], text));
        assert!(!h.contains("big"));
    }

    #[test]
    fn rollback_to_a_savepoint_drops_what_was_opened_after_it() {
        let mut h = HeldResults::default();
        // SAVEPOINT a; DECLARE in_a; RELEASE a; SAVEPOINT b; DECLARE in_b; ROLLBACK TO b.
        h.insert("top".into(), held(1), 0);
        h.insert("in_a".into(), held(1), 1);
        h.released_to(0);
        h.insert("in_b".into(), held(1), 1);
        h.rolled_back_to(1);
        assert!(h.contains("top") && h.contains("in_a") && !h.contains("in_b"));
    }

    #[test]
    fn takes_rows_in_parts() {
        let mut r = held(4);
        let sizes: Vec<usize> = r.take(Some(3)).map(|row| row.len()).collect();
        assert_eq!(sizes, [1, 2, 3]);
        assert_eq!(r.take(Some(3)).count(), 1);
        assert_eq!(r.take(None).count(), 0);
    }
}
