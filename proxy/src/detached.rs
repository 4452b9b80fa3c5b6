//! The session between requests, holding no server connection: reading the client's next
//! batch (with the idle and shutdown timeouts), and answering a batch that cannot get one.

use shardgate_wire::{frontend, sqlstate, Frame};

use crate::boundary::ends_batch;
use crate::session::{sleep_or_forever, Session};
use crate::SessionError;

/// Messages buffered while detached before the proxy takes a connection anyway.
const MAX_DETACHED_BATCH_BYTES: usize = 1024 * 1024;

/// Messages of a typical extended-protocol batch (Parse, Bind, Describe, Execute, Sync and a
/// little more).
const EXTENDED_BATCH_FRAMES: usize = 8;

/// A spent batch's allocation is kept for the next batch up to this many messages (a bulk
/// pipeline's is let go: a session's memory stays bounded).
const KEPT_BATCH_FRAMES: usize = 64;

impl Session {
    /// Keeps the allocation of a batch whose messages were all relayed for the client's next
    /// batch, in `parked` while nothing is parked: one allocation per session, not per batch.
    pub(crate) fn keep_batch_buffer(&mut self, mut spent: Vec<Frame>) {
        if self.parked.capacity() == 0 && spent.capacity() <= KEPT_BATCH_FRAMES {
            spent.clear();
            self.parked = spent;
        }
    }

    /// Waits for the client's next unit of work while holding no server connection.
    pub(crate) async fn read_detached_batch(
        &mut self,
        initial: Vec<Frame>,
    ) -> Result<Option<Vec<Frame>>, SessionError> {
        if initial.last().is_some_and(|f| ends_batch(f.tag())) {
            return Ok(Some(initial));
        }
        let mut bytes = initial.iter().map(Frame::len).sum();
        let mut batch = initial;
        let idle_timeout = self.view.config().listen.client_idle_timeout;
        loop {
            // A message already read (the rest of a pipelined batch) needs no wait.
            let buffered = match self.io.buffered_frame() {
                Ok(frame) => frame,
                Err(e) => return Err(self.io.frame_error(e).await),
            };
            let frame = if let Some(frame) = buffered {
                Some(frame)
            } else {
                self.io.flush().await?;
                tokio::select! {
                    // In order: no random start (a thread-local RNG draw per turn).
                    biased;
                    f = self.io.read_frame() => f?,
                    _ = sleep_or_forever(idle_timeout), if batch.is_empty() => {
                        self.io.fatal(sqlstate::IDLE_SESSION_TIMEOUT, "terminating connection due to idle timeout", Some("listen.client_idle_timeout closed this idle connection; reconnect")).await;
                        return Err(SessionError::IdleTimeout);
                    }
                    () = self.shutdown.fired(), if batch.is_empty() => {
                        self.io.fatal(sqlstate::ADMIN_SHUTDOWN, "terminating connection because shardgate is shutting down", Some("reconnect to another shardgate instance")).await;
                        return Err(SessionError::Shutdown);
                    }
                }
            };
            let Some(frame) = frame else { return Ok(None) };
            if self.replies.skipping() {
                if frame.tag() == frontend::SYNC {
                    self.replies.stop_skipping();
                    self.io.push_ready(self.txn.status());
                }
                continue;
            }
            match frame.tag() {
                frontend::TERMINATE => return Ok(None),
                // Nothing pending: a lone Sync is answered here without a server.
                frontend::SYNC if batch.is_empty() => self.io.push_ready(self.txn.status()),
                // Parses of statements a server already accepted need no server connection.
                frontend::SYNC if self.answer_parses_locally(&batch) => {
                    batch.clear();
                    bytes = 0;
                }
                frontend::QUERY | frontend::FUNCTION_CALL | frontend::SYNC | frontend::FLUSH => {
                    batch.push(frame);
                    return Ok(Some(batch));
                }
                frontend::PARSE
                | frontend::BIND
                | frontend::DESCRIBE
                | frontend::EXECUTE
                | frontend::CLOSE => {
                    bytes += frame.len();
                    if batch.capacity() == 0 {
                        // Room for a driver's whole extended batch (Parse, Bind, Describe,
                        // Execute, Sync) at once: one allocation, not a Vec grown twice.
                        batch.reserve_exact(EXTENDED_BATCH_FRAMES);
                    }
                    batch.push(frame);
                    if bytes > MAX_DETACHED_BATCH_BYTES {
                        return Ok(Some(batch));
                    }
                }
                // COPY messages outside a COPY are ignored, as the server does.
                frontend::COPY_DATA | frontend::COPY_DONE | frontend::COPY_FAIL => {}
                other => {
                    let msg = format!("invalid frontend message type {}", other as char);
                    self.io
                        .fatal(sqlstate::PROTOCOL_VIOLATION, &msg, None)
                        .await;
                    return Err(SessionError::Protocol(msg));
                }
            }
        }
    }

    /// Answers a batch that could not get a server connection: one error, then the client's
    /// messages up to Sync are skipped as after any error.
    pub(crate) fn fail_batch(
        &mut self,
        batch: &[Frame],
        code: &str,
        msg: &str,
        hint: Option<&str>,
    ) {
        self.io.push_error(code, msg, hint);
        match batch.last().map(|f| f.tag()) {
            Some(frontend::QUERY | frontend::FUNCTION_CALL | frontend::SYNC) => {
                self.io.push_ready(self.txn.status())
            }
            _ => self.replies.skip_rest_of_batch(),
        }
    }
}
