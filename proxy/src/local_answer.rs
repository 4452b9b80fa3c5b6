//! Batches the proxy answers without a server: `SHARDGATE ROUTE`, `SET shardgate.role`, and a
//! transaction's BEGIN (with SET TRANSACTION, and an empty transaction's COMMIT or ROLLBACK)
//! while the shard it belongs to is not known yet: deferred, and sent ahead of the
//! transaction's first statement on that statement's shard.

use shardgate_router::{Plan, ShardgateParam, StatementKind};
use shardgate_wire::{backend, frontend, Frame};

use crate::routing::explain;
use crate::session::Session;

/// The first words of the statements [`Session::answer_locally`] may answer.
const LOCAL_ANSWER_WORDS: [&str; 9] = [
    "shardgate",
    "begin",
    "start",
    "commit",
    "end",
    "rollback",
    "abort",
    "set",
    "reset",
];

/// Whether `text` starts with one of [`LOCAL_ANSWER_WORDS`] (else the proxy answers nothing
/// of it itself, and need not plan it to know).
fn starts_with_local_answer_word(text: &str) -> bool {
    shardgate_router::first_word(text)
        .is_some_and(|w| LOCAL_ANSWER_WORDS.iter().any(|k| w.eq_ignore_ascii_case(k)))
}

/// Transaction control the proxy answers itself while the transaction's shard is not known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LocalTransaction {
    /// Deferred, to go out ahead of the transaction's first statement.
    Begin {
        read_only: bool,
    },
    /// Of a transaction that ran nothing yet: its deferred BEGIN is dropped.
    Commit,
    Rollback,
}

impl LocalTransaction {
    fn command_tag(self) -> &'static str {
        match self {
            LocalTransaction::Begin { .. } => "BEGIN",
            LocalTransaction::Commit => "COMMIT",
            LocalTransaction::Rollback => "ROLLBACK",
        }
    }
}

impl Session {
    /// Answers batches that need no server: `SHARDGATE ROUTE`, and a BEGIN (and an empty
    /// transaction's COMMIT/ROLLBACK) while the shard is not known yet. Returns whether it did.
    pub(crate) fn answer_locally(&mut self, batch: &[Frame]) -> bool {
        let routing = self.view.topo().routing;
        if routing && self.answer_transaction_locally(batch) {
            return true;
        }
        let [frame] = batch else { return false };
        if frame.tag() != frontend::QUERY {
            return false;
        }
        let Ok(bytes) = frontend::query_text(frame) else {
            return false;
        };
        // A plain pooler only answers SHARDGATE ROUTE itself: skip everything else before
        // decoding the text. (Its first bytes are whole characters in every client encoding,
        // and ASCII letters and spaces are the same bytes in all of them.)
        if !routing
            && !bytes
                .trim_ascii_start()
                .get(..9)
                .is_some_and(|w| w.eq_ignore_ascii_case(b"shardgate"))
        {
            return false;
        }
        let text = &*self.sql(bytes);
        // Every statement answered here starts with one of these words (the router classifies
        // BEGIN/START, COMMIT/END, ROLLBACK/ABORT, SET and RESET by their first word, and
        // SHARDGATE ROUTE is the proxy's own): any other statement, the usual one, is not
        // planned twice (routing plans it next).
        if !starts_with_local_answer_word(text) {
            return false;
        }
        // By shape: a statement with literals must not be parsed again for this check.
        let plan = self.shared.topo().router.plan_query(text).plan;
        if plan.statement_count != 1 {
            return false;
        }
        if let Some(control) = self.local_transaction(&plan) {
            self.take_local_transaction(control, text);
            backend::write_command_complete(&mut self.io.out, control.command_tag());
            self.io.push_ready(self.txn.status());
            return true;
        }
        match &plan.kind {
            StatementKind::ShardgateRoute(inner) => {
                self.answer_route(inner);
                true
            }
            // `SET shardgate.role = primary` is the proxy's alone (PostgreSQL would refuse the
            // bare keyword `primary`).
            StatementKind::ShardgateSet(set)
                if set.name == ShardgateParam::Role && plan.refusal.is_none() =>
            {
                self.routing.observe_shardgate_sets(&plan);
                backend::write_command_complete(&mut self.io.out, "SET");
                self.io.push_ready(self.txn.status());
                true
            }
            // `SET TRANSACTION …` right after a deferred BEGIN goes out with it (and a READ
            // ONLY one lets the transaction use a replica).
            StatementKind::SetTransaction { read_only } => {
                if !self.txn.extend_deferred_begin(text, *read_only) {
                    return false;
                }
                backend::write_command_complete(&mut self.io.out, "SET");
                self.io.push_ready(self.txn.status());
                true
            }
            _ => false,
        }
    }

    /// The BEGIN / COMMIT / ROLLBACK that `plan` (of one statement) is, if the proxy answers it
    /// now (see [`Session::answer_locally`]).
    fn local_transaction(&self, plan: &Plan) -> Option<LocalTransaction> {
        if plan.statement_count != 1 {
            return None;
        }
        match plan.kind {
            StatementKind::Begin { read_only }
                if self.txn.is_idle()
                    && !self.client.mode_is_session()
                    && self.shared.topo().defers_begin =>
            {
                Some(LocalTransaction::Begin { read_only })
            }
            StatementKind::Commit if self.txn.has_deferred_begin() => {
                Some(LocalTransaction::Commit)
            }
            StatementKind::Rollback if self.txn.has_deferred_begin() => {
                Some(LocalTransaction::Rollback)
            }
            _ => None,
        }
    }

    /// [`Session::local_transaction`] of a statement's text.
    fn local_transaction_in(&self, text: &str) -> Option<LocalTransaction> {
        if !starts_with_local_answer_word(text) {
            return None;
        }
        self.local_transaction(&self.shared.topo().router.plan_query(text).plan)
    }

    /// Defers the BEGIN `text` opens, or drops the deferred one a COMMIT / ROLLBACK ends.
    fn take_local_transaction(&mut self, control: LocalTransaction, text: &str) {
        match control {
            LocalTransaction::Begin { read_only } => {
                self.txn.defer_begin(text.to_owned(), read_only)
            }
            LocalTransaction::Commit | LocalTransaction::Rollback => {
                self.txn.drop_deferred_begin();
                self.routing.end_transaction();
            }
        }
    }

    /// The extended-protocol form of the BEGIN (and empty transaction's COMMIT / ROLLBACK)
    /// that [`Session::answer_locally`] answers: one `Parse? Bind Describe? Execute Sync` run of
    /// such a statement is answered message by message as the server would.
    fn answer_transaction_locally(&mut self, batch: &[Frame]) -> bool {
        if batch.last().is_none_or(|f| f.tag() != frontend::SYNC) {
            return false;
        }
        let Some(stmt) = self.one_statement(batch) else {
            return false;
        };
        let Some(control) = self.local_transaction_in(&stmt.text) else {
            return false;
        };
        self.take_local_transaction(control, &stmt.text);
        self.answer_one_statement(batch, stmt, control.command_tag());
        true
    }

    /// A batch that opens a transaction with an extended-protocol BEGIN and goes on with more
    /// statements (pgjdbc with autocommit off sends them together): the BEGIN is answered
    /// here and deferred, as when it comes alone, and the rest of the batch is returned, to be
    /// routed as the transaction's first statement.
    pub(crate) fn split_leading_begin(&mut self, batch: &[Frame]) -> Option<Vec<Frame>> {
        if !self.shared.topo().routing || batch.first()?.tag() == frontend::QUERY {
            return None;
        }
        let end = batch.iter().position(|f| f.tag() == frontend::EXECUTE)?;
        if end + 2 >= batch.len() {
            // Nothing follows but the Sync: `answer_locally` answers it whole.
            return None;
        }
        let mut begin = batch[..=end].to_vec();
        begin.push(Frame::from_bytes(bytes::Bytes::from_static(&[
            frontend::SYNC,
            0,
            0,
            0,
            4,
        ])));
        let stmt = self.one_statement(&begin)?;
        let control = self.local_transaction_in(&stmt.text)?;
        if !matches!(control, LocalTransaction::Begin { .. }) {
            return None;
        }
        self.take_local_transaction(control, &stmt.text);
        begin.pop();
        self.answer_statement_messages(&begin, stmt, "BEGIN");
        Some(batch[end + 1..].to_vec())
    }

    /// The deferred BEGIN to send to the server ahead of `batch`, taken; `None` when there is
    /// none, or when the batch only prepares or describes statements (`Parse`, `Describe`,
    /// `Close` up to `Sync`, as drivers do before their first execution of a statement): that
    /// runs outside the transaction, whose BEGIN waits for a statement that says where the
    /// transaction belongs (the client is told it is still in its transaction).
    pub(crate) fn take_deferred_begin(&mut self, batch: &[Frame]) -> Option<String> {
        // (asyncpg prepares with Parse/Describe/Flush: no Sync.)
        let prepares_only = batch
            .last()
            .is_some_and(|f| matches!(f.tag(), frontend::SYNC | frontend::FLUSH))
            && batch.iter().all(|f| {
                matches!(
                    f.tag(),
                    frontend::PARSE
                        | frontend::DESCRIBE
                        | frontend::CLOSE
                        | frontend::SYNC
                        | frontend::FLUSH
                )
            });
        if prepares_only {
            None
        } else {
            self.txn.take_deferred_begin()
        }
    }

    /// `SHARDGATE ROUTE <statement>`: one row saying where the statement would go and why.
    fn answer_route(&mut self, sql: &str) {
        let explained = explain(&self.shared.topo().router, sql, self.routing.hint());
        shardgate_wire::row::write_text_row_description(
            &mut self.io.out,
            &["shard", "role", "keys", "reason"],
        );
        let row: Vec<Option<&str>> = explained.iter().map(|v| Some(v.as_str())).collect();
        backend::write_data_row(&mut self.io.out, &row);
        backend::write_command_complete(&mut self.io.out, "SELECT 1");
        self.io.push_ready(self.txn.status());
    }
}
