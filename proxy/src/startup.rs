//! Before a session exists: TLS negotiation (`S` and the handshake when `[tls]` allows it,
//! `N` otherwise; GSS encryption is always `N`), the startup packet, and cancel requests,
//! which arrive on their own short connection.

use shardgate_config::TlsMode;
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
        let is_ssl_request = matches!(decoded, StartupPacket::SslRequest);
        match decoded {
            StartupPacket::SslRequest | StartupPacket::GssEncRequest => {
                negotiations += 1;
                if negotiations > 2 {
                    let msg = "too many encryption negotiation requests";
                    io.fatal(sqlstate::PROTOCOL_VIOLATION, msg, None).await;
                    return Err(SessionError::Protocol(msg.into()));
                }
                if is_ssl_request {
                    negotiate_tls(io, shared).await?;
                } else {
                    // 'N': no GSS encryption; the client goes on with an SSLRequest or in
                    // plaintext (or gives up if it requires GSS encryption).
                    io.send(b"N").await?;
                }
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
                if tls_missing(io, shared) {
                    let msg = "TLS is required: shardgate does not accept unencrypted connections";
                    io.fatal(
                        sqlstate::INVALID_AUTHORIZATION,
                        msg,
                        Some("connect with sslmode=require (or verify-ca / verify-full)"),
                    )
                    .await;
                    return Err(SessionError::Protocol(msg.into()));
                }
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
                if let Some(refusal) = shardgate_setting_in_startup(&params) {
                    io.fatal(refusal.code, &refusal.message, Some(&refusal.hint))
                        .await;
                    return Err(SessionError::Protocol(refusal.message));
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

/// Answers an SSLRequest: `S` and the server side of the handshake when a certificate is
/// configured and the client is on plaintext TCP, `N` otherwise (a unix socket gets `N` as
/// from PostgreSQL; the client then goes on in plaintext or gives up).
async fn negotiate_tls(io: &mut ClientIo, shared: &Shared) -> Result<(), SessionError> {
    let tls = shared.tls.current();
    let stream = io.reader.get_ref();
    let acceptor = match &tls.acceptor {
        Some(a) if !stream.is_unix() => a,
        _ => return io.send(b"N").await,
    };
    if stream.is_tls() {
        let msg = "SSLRequest on a connection that is already encrypted";
        io.fatal(sqlstate::PROTOCOL_VIOLATION, msg, None).await;
        return Err(SessionError::Protocol(msg.into()));
    }
    // Bytes the client sent after the SSLRequest, before our answer, arrived unencrypted;
    // reading them as if they came through TLS would let a man in the middle inject them
    // (CVE-2021-23214 in PostgreSQL). Refuse, as PostgreSQL does.
    if !io.reader.buffered().is_empty() {
        let msg = "received unencrypted data after SSL request";
        io.fatal(sqlstate::PROTOCOL_VIOLATION, msg, None).await;
        return Err(SessionError::Protocol(msg.into()));
    }
    io.send(b"S").await?;
    io.reader
        .get_mut()
        .accept_tls(acceptor, tls.cert_pem.clone())
        .await
        // The client is mid-handshake: rustls has sent it an alert, an ErrorResponse would
        // not be understood.
        .map_err(|e| SessionError::Protocol(format!("TLS handshake failed: {e}")))
}

/// Whether `tls.mode = "require"` refuses this connection: plaintext TCP. Unix-socket
/// clients cannot use TLS (PostgreSQL never offers it there) and are local, so they pass.
fn tls_missing(io: &ClientIo, shared: &Shared) -> bool {
    let stream = io.reader.get_ref();
    shared.tls.current().mode == TlsMode::Require && !stream.is_tls() && !stream.is_unix()
}

/// Why a startup packet that sets a `shardgate.*` parameter is refused.
struct StartupRefusal {
    code: &'static str,
    message: String,
    hint: String,
}

/// `shardgate.*` settings are the proxy's (and `shardgate.bypass` the rebalancer's), never
/// the server's: a client may not pass them through a startup parameter or `options`, as it
/// may not through `SET` (where the router refuses unknown ones with 42704).
fn shardgate_setting_in_startup(params: &[(String, String)]) -> Option<StartupRefusal> {
    let mut names = Vec::new();
    for (k, v) in params {
        if k == "options" {
            names.extend(
                crate::session_state::parse_options(v)
                    .into_iter()
                    .map(|(n, _)| n),
            );
        } else {
            names.push(k.clone());
        }
    }
    let name = names
        .into_iter()
        .map(|n| n.to_ascii_lowercase())
        .find(|n| n.starts_with("shardgate."))?;
    Some(match name.as_str() {
        "shardgate.shard_key" | "shardgate.shard" | "shardgate.role" => StartupRefusal {
            code: sqlstate::FEATURE_NOT_SUPPORTED,
            message: format!("{name} cannot be set in the startup packet"),
            hint: format!("run SET {name} = … after connecting"),
        },
        _ => StartupRefusal {
            code: sqlstate::UNDEFINED_OBJECT,
            message: format!(
                "unrecognized configuration parameter \"{name}\" in the startup packet"
            ),
            hint: "shardgate knows shardgate.shard_key, shardgate.shard and shardgate.role; \
                   remove the setting from the connection's options"
                .into(),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::shardgate_setting_in_startup;

    fn params(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn shardgate_settings_are_refused_in_startup() {
        let r = shardgate_setting_in_startup(&params(&[("options", "-c shardgate.bypass=on")]))
            .expect("refused");
        assert_eq!(r.code, "42704");
        assert!(r.message.contains("shardgate.bypass"), "{}", r.message);
        let r =
            shardgate_setting_in_startup(&params(&[("SHARDGATE.Bypass", "on")])).expect("refused");
        assert_eq!(r.code, "42704");
        let r = shardgate_setting_in_startup(&params(&[("options", "--shardgate.role=replica")]))
            .expect("refused");
        assert_eq!(r.code, "0A000");
        assert!(shardgate_setting_in_startup(&params(&[
            ("user", "u"),
            ("options", "-c search_path=a,b"),
            ("application_name", "shardgate.app"),
        ]))
        .is_none());
    }
}
