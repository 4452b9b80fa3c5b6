//! CancelRequest: asks a server to cancel the query a backend is running.

use std::io;
use std::time::Duration;

use bytes::BytesMut;
use shardgate_config::Host;
use shardgate_wire::startup;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tracing::debug;

use crate::conn::open_stream;

/// Upper bound for the whole cancel exchange (connect, send, wait for the server to close).
pub const CANCEL_TIMEOUT: Duration = Duration::from_secs(5);

/// Sends a CancelRequest for (pid, secret) to that server on a new connection, and waits for
/// the server to close it (as libpq does), so the cancel has been delivered when this returns.
pub async fn send_cancel(host: &Host, pid: i32, secret: i32) -> io::Result<()> {
    let exchange = async {
        let mut stream = open_stream(host).await?;
        let mut out = BytesMut::with_capacity(16);
        startup::write_cancel_request(&mut out, pid, secret);
        stream.write_all(&out).await?;
        // The server sends nothing back; it closes the connection once it has read the request.
        let mut sink = [0u8; 64];
        while stream.read(&mut sink).await? > 0 {}
        Ok(())
    };
    let result = match tokio::time::timeout(CANCEL_TIMEOUT, exchange).await {
        Ok(result) => result,
        Err(_) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("cancel request to {host} timed out"),
        )),
    };
    debug!(host = %host, pid, ok = result.is_ok(), "sent cancel request");
    result
}
