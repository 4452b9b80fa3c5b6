//! Per-client bounds on what the proxy holds for a client while attached.

/// `program_limit_exceeded`.
const PROGRAM_LIMIT_EXCEEDED: &str = "54000";

use crate::session::Session;
use crate::SessionError;

impl Session {
    /// Messages held back while the previous request runs (`bytes` of them: the start of the next
    /// batch, not yet routed) must stay within `pool.max_held_bytes`: past it the client gets
    /// 54000 naming the limit and is disconnected (its pipeline cannot be answered in order
    /// once messages are dropped).
    pub(crate) async fn check_held(
        &mut self,
        bytes: usize,
        max: usize,
    ) -> Result<(), SessionError> {
        if bytes <= max {
            return Ok(());
        }
        let msg = format!(
            "pipelined messages held for the next statement exceed pool.max_held_bytes \
             ({max} bytes)"
        );
        self.io
            .fatal(
                PROGRAM_LIMIT_EXCEEDED,
                &msg,
                Some("send a Bind or Query sooner, or raise pool.max_held_bytes"),
            )
            .await;
        Err(SessionError::Protocol(msg))
    }
}
