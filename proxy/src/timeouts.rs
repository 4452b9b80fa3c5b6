//! The timeouts that bound how long a client holds a server connection (`[timeouts]`, as
//! PgBouncer's and PgDog's settings): a request running past `query_timeout` is canceled on
//! the server (the client gets the server's 57014); a client idle inside a transaction past
//! `idle_in_transaction_timeout` (25P03) or in a transaction past `transaction_timeout`
//! (25P04, PostgreSQL 17's name) is disconnected and its transaction rolled back. The client
//! write timeout lives in `io` (the flush).

use std::time::{Duration, Instant};

use shardgate_config::Timeouts;
use shardgate_pool::PooledConn;
use shardgate_wire::sqlstate;

use crate::session::Session;
use crate::SessionError;

/// Which timeout fired.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Expired {
    Query,
    IdleInTransaction,
    Transaction,
}

impl Expired {
    fn label(self) -> &'static str {
        match self {
            Expired::Query => "query",
            Expired::IdleInTransaction => "idle_in_transaction",
            Expired::Transaction => "transaction",
        }
    }
}

/// Counts a fired timeout (`shardgate_timeouts_total{kind}`).
pub(crate) fn count(kind: &'static str) {
    metrics::counter!("shardgate_timeouts_total", "kind" => kind).increment(1);
}

/// Whether any timeout the relay loop watches is set (the write timeout is the flush's).
pub(crate) fn any_session_timeout(t: &Timeouts) -> bool {
    !(t.query_timeout.is_zero()
        && t.idle_in_transaction_timeout.is_zero()
        && t.transaction_timeout.is_zero())
}

/// Since when the attached client has been waiting for a reply, idle in a transaction, and in
/// a transaction; updated at each turn of the relay loop.
#[derive(Debug, Default)]
pub(crate) struct SessionClock {
    request_since: Option<Instant>,
    idle_in_transaction_since: Option<Instant>,
    transaction_since: Option<Instant>,
    /// The current request was canceled already (the server's answer is awaited).
    canceled: bool,
}

impl SessionClock {
    /// `busy`: replies are outstanding; `in_transaction`: the client is inside a transaction.
    pub(crate) fn observe(&mut self, busy: bool, in_transaction: bool, now: Instant) {
        if busy {
            self.request_since.get_or_insert(now);
        } else {
            self.request_since = None;
            self.canceled = false;
        }
        if in_transaction {
            self.transaction_since.get_or_insert(now);
        } else {
            self.transaction_since = None;
        }
        if in_transaction && !busy {
            self.idle_in_transaction_since.get_or_insert(now);
        } else {
            self.idle_in_transaction_since = None;
        }
    }

    /// The earliest deadline under `t`, and which it is.
    pub(crate) fn next(&self, t: &Timeouts) -> Option<(Instant, Expired)> {
        let at = |since: Option<Instant>, limit: Duration, kind| {
            since
                .filter(|_| !limit.is_zero())
                .map(|s| (s + limit, kind))
        };
        [
            at(self.request_since, t.query_timeout, Expired::Query).filter(|_| !self.canceled),
            at(
                self.idle_in_transaction_since,
                t.idle_in_transaction_timeout,
                Expired::IdleInTransaction,
            ),
            at(
                self.transaction_since,
                t.transaction_timeout,
                Expired::Transaction,
            ),
        ]
        .into_iter()
        .flatten()
        .min_by_key(|(at, _)| *at)
    }
}

/// Sleeps until `deadline`, or forever without one.
pub(crate) async fn sleep_until(deadline: Option<(Instant, Expired)>) -> Expired {
    match deadline {
        Some((at, kind)) => {
            tokio::time::sleep_until(at.into()).await;
            kind
        }
        None => std::future::pending().await,
    }
}

impl Session {
    /// Acts on a fired timeout: `Ok(())` to go on relaying (the query was canceled), or the
    /// error that ends the session (the caller's cleanup rolls the transaction back, or closes
    /// the server connection when a reply is still outstanding).
    pub(crate) async fn on_timeout(
        &mut self,
        server: &PooledConn,
        clock: &mut SessionClock,
        kind: Expired,
    ) -> Result<(), SessionError> {
        count(kind.label());
        let busy = !self.replies.is_empty();
        if busy {
            // The server stops the statement and answers 57014, which goes to the client as
            // any error; cancels race only with this connection's own next statement, which
            // the session has not sent yet.
            let (pid, secret) = server.backend_key();
            let host = server.host().clone();
            tokio::spawn(async move {
                if let Err(e) = shardgate_pool::send_cancel(&host, pid, secret).await {
                    tracing::warn!(error = %e, server = %host, "could not send a timeout's cancel");
                }
            });
        }
        let (code, message, hint) = match kind {
            Expired::Query => {
                clock.canceled = true;
                // The server's 57014 says "due to user request": say whose request it was.
                let limit = self.shared.config().timeouts.query_timeout;
                shardgate_wire::backend::write_notice(
                    &mut self.io.out,
                    "01000",
                    &format!(
                        "shardgate: timeouts.query_timeout ({}) reached, canceling the statement",
                        shardgate_config::format_duration(limit)
                    ),
                );
                tracing::info!(shard = self.attachment.shard(), "query_timeout: canceling the running request");
                return Ok(());
            }
            Expired::IdleInTransaction => (
                sqlstate::IDLE_IN_TRANSACTION_SESSION_TIMEOUT,
                "terminating connection due to idle-in-transaction timeout",
                "timeouts.idle_in_transaction_timeout ended this transaction; commit sooner, or raise it",
            ),
            Expired::Transaction => (
                sqlstate::TRANSACTION_TIMEOUT,
                "terminating connection due to transaction timeout",
                "timeouts.transaction_timeout ended this transaction; make it shorter, or raise it",
            ),
        };
        tracing::info!(
            shard = self.attachment.shard(),
            kind = kind.label(),
            "timeout: disconnecting the client"
        );
        self.io.fatal(code, message, Some(hint)).await;
        Err(SessionError::Timeout(kind.label()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deadlines_follow_the_state() {
        let t = Timeouts {
            query_timeout: Duration::from_secs(5),
            idle_in_transaction_timeout: Duration::from_secs(2),
            transaction_timeout: Duration::from_secs(10),
            client_write_timeout: Duration::ZERO,
        };
        let start = Instant::now();
        let mut c = SessionClock::default();
        c.observe(false, false, start);
        assert_eq!(c.next(&t), None);
        c.observe(true, true, start);
        assert_eq!(c.next(&t), Some((start + t.query_timeout, Expired::Query)));
        c.canceled = true;
        assert_eq!(
            c.next(&t),
            Some((start + t.transaction_timeout, Expired::Transaction))
        );
        let later = start + Duration::from_secs(1);
        c.observe(false, true, later);
        assert_eq!(
            c.next(&t),
            Some((
                later + t.idle_in_transaction_timeout,
                Expired::IdleInTransaction
            ))
        );
        c.observe(false, false, later);
        assert_eq!(c.next(&t), None);
    }
}
