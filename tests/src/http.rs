//! One HTTP/1.1 request to a proxy's admin server on loopback, for the tests that read its API,
//! probes and metrics: blocking (call it from `spawn_blocking` inside a runtime), no client
//! crate, `Connection: close`, a read timeout so a hung server fails the test instead of
//! stalling it.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// Longest wait for the answer (a rebalance request may take a while to be accepted).
const READ_TIMEOUT: Duration = Duration::from_secs(60);

/// `method path` on `127.0.0.1:port`, with `Authorization: Bearer <token>` when given and
/// `body` as JSON; returns the status and the body. Status 0 when nothing answers.
pub fn request(
    port: u16,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: &str,
) -> (u16, String) {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return (0, String::new());
    };
    let _ = s.set_read_timeout(Some(READ_TIMEOUT));
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\n{auth}Content-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    if s.write_all(req.as_bytes()).is_err() {
        return (0, String::new());
    }
    let mut raw = String::new();
    let _ = s.read_to_string(&mut raw);
    let status = raw
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = raw.split_once("\r\n\r\n").map_or("", |(_, b)| b).to_owned();
    (status, body)
}
