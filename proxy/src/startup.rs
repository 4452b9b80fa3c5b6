//! Before a session exists: TLS/GSS negotiation (answered "no" for now), the startup packet,
//! and cancel requests, which arrive on their own short connection.

use shardgate_wire::sqlstate;
use shardgate_wire::startup::{self, StartupPacket};

use crate::io::ClientIo;
use crate::{SessionError, Shared};

/// Reads startup-family packets until a StartupMessage arrives. Returns `None` when the
/// connection was a cancel request (already handled).
pub async fn read_startup(
    io: &mut ClientIo,
    shared: &Shared,
) -> Result<Option<Vec<(String, String)>>, SessionError> {
    let mut negotiations = 0;
    loop {
        let packet = match io.reader.read_startup_packet().await {
            Ok(Some(p)) => p,
            Ok(None) => return Err(SessionError::ClientGone),
            Err(e) => return Err(io.frame_error(e).await),
        };
        let decoded = match startup::decode(&packet) {
            Ok(d) => d,
            Err(e) => {
                let msg = format!("invalid startup packet: {e}");
                io.fatal(sqlstate::PROTOCOL_VIOLATION, &msg, None).await;
                return Err(SessionError::Protocol(msg));
            }
        };
        match decoded {
            StartupPacket::SslRequest | StartupPacket::GssEncRequest => {
                negotiations += 1;
                if negotiations > 2 {
                    let msg = "too many encryption negotiation requests";
                    io.fatal(sqlstate::PROTOCOL_VIOLATION, msg, None).await;
                    return Err(SessionError::Protocol(msg.into()));
                }
                // 'N': no TLS / no GSS encryption; the client continues in plaintext (or gives
                // up if it requires encryption).
                io.send(b"N").await?;
            }
            StartupPacket::Cancel { pid, secret } => {
                shared.cancels.cancel(pid, secret).await;
                return Ok(None);
            }
            StartupPacket::UnsupportedVersion(v) => {
                let msg = format!(
                    "unsupported frontend protocol {}.{}: shardgate speaks protocol 3.0",
                    v >> 16,
                    v & 0xffff
                );
                io.fatal(sqlstate::PROTOCOL_VIOLATION, &msg, None).await;
                return Err(SessionError::Protocol(msg));
            }
            StartupPacket::Startup { params } => {
                if !params.iter().any(|(k, _)| k == "user") {
                    let msg = "no PostgreSQL user name specified in startup packet";
                    io.fatal(sqlstate::INVALID_AUTHORIZATION, msg, None).await;
                    return Err(SessionError::Protocol(msg.into()));
                }
                if params
                    .iter()
                    .any(|(k, v)| k == "replication" && v != "false" && v != "off" && v != "0")
                {
                    let msg = "replication connections are not supported through shardgate";
                    io.fatal(
                        sqlstate::FEATURE_NOT_SUPPORTED,
                        msg,
                        Some("connect to the server directly for replication"),
                    )
                    .await;
                    return Err(SessionError::Protocol(msg.into()));
                }
                // Protocol options (`_pq_.*`) are not supported; drop them like an older server,
                // and tell the client (as PostgreSQL does) when it asked for a newer 3.x minor
                // version or for options: NegotiateProtocolVersion with 3.0 and their names.
                let (options, params): (Vec<_>, Vec<_>) = params
                    .into_iter()
                    .partition(|(k, _)| k.starts_with("_pq_."));
                let minor = packet
                    .get(2..4)
                    .map_or(0, |b| u16::from_be_bytes([b[0], b[1]]));
                if minor > 0 || !options.is_empty() {
                    let mut out = bytes::BytesMut::new();
                    shardgate_wire::frontend::write_message(
                        &mut out,
                        shardgate_wire::backend::NEGOTIATE_PROTOCOL_VERSION,
                        |b| {
                            b.extend_from_slice(&startup::PROTOCOL_3_0.to_be_bytes());
                            b.extend_from_slice(&(options.len() as i32).to_be_bytes());
                            for (k, _) in &options {
                                shardgate_wire::frontend::put_cstr(b, k);
                            }
                        },
                    );
                    io.send(&out).await?;
                }
                return Ok(Some(params));
            }
        }
    }
}
