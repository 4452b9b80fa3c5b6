//! The client side of startup and authentication: StartupMessage, then cleartext, md5 or
//! SCRAM-SHA-256, then ParameterStatus and BackendKeyData until ReadyForQuery.

use bytes::BytesMut;
use postgres_protocol::authentication::md5_hash;
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};
use postgres_protocol::message::frontend as pgfront;
use shardgate_wire::backend::{self, AuthRequest, TransactionStatus};
use shardgate_wire::{startup, Frame, FrameError, FrameReader};
use tokio::io::AsyncWriteExt;

use crate::conn::ConnectTarget;
use crate::error::ServerError;
use shardgate_wire::stream::Stream;

const SCRAM_SHA_256: &str = "SCRAM-SHA-256";

/// What the server told us during startup.
pub(crate) struct Startup {
    pub backend_key: (i32, i32),
    pub parameters: Vec<(String, String)>,
    pub status: TransactionStatus,
}

/// Where the authentication exchange is.
enum AuthState {
    /// Waiting for the server's first request.
    Start,
    /// Sent a password (cleartext or md5): only Ok may follow.
    PasswordSent,
    /// Sent SASLInitialResponse: SASLContinue must follow.
    ScramFirst(Box<ScramSha256>),
    /// Sent SASLResponse: SASLFinal must follow.
    ScramFinal(Box<ScramSha256>),
    /// Verified the server's SCRAM signature: only Ok may follow.
    ScramDone,
}

pub(crate) async fn startup(
    reader: &mut FrameReader<Stream>,
    target: &ConnectTarget,
) -> Result<Startup, ServerError> {
    let mut out = BytesMut::with_capacity(128);
    startup::write_startup(
        &mut out,
        &[
            ("user", target.user.as_str()),
            ("database", target.database.as_str()),
            ("application_name", target.application_name.as_str()),
        ],
    );
    send(reader, &mut out).await?;

    authenticate(reader, target, &mut out).await?;

    let mut backend_key = (0, 0);
    let mut parameters = Vec::new();
    loop {
        let frame = next(reader).await?;
        match frame.tag() {
            backend::PARAMETER_STATUS => {
                let (name, value) = backend::parameter_status(&frame).map_err(protocol)?;
                parameters.push((name.to_owned(), value.to_owned()));
            }
            backend::BACKEND_KEY_DATA => {
                backend_key = backend::backend_key_data(&frame).map_err(protocol)?;
            }
            backend::READY_FOR_QUERY => {
                let status = backend::ready_for_query_status(&frame).map_err(protocol)?;
                return Ok(Startup {
                    backend_key,
                    parameters,
                    status,
                });
            }
            backend::ERROR_RESPONSE => return Err(refused(&frame)),
            backend::NOTICE_RESPONSE | backend::NEGOTIATE_PROTOCOL_VERSION => {}
            other => {
                return Err(ServerError::Protocol(format!(
                    "unexpected message '{}' during startup",
                    other as char
                )))
            }
        }
    }
}

/// Runs the authentication exchange until AuthenticationOk.
async fn authenticate(
    reader: &mut FrameReader<Stream>,
    target: &ConnectTarget,
    out: &mut BytesMut,
) -> Result<(), ServerError> {
    let mut state = AuthState::Start;
    loop {
        let frame = next(reader).await?;
        match frame.tag() {
            backend::AUTHENTICATION => {}
            backend::ERROR_RESPONSE => return Err(refused(&frame)),
            backend::NOTICE_RESPONSE | backend::NEGOTIATE_PROTOCOL_VERSION => continue,
            other => {
                return Err(ServerError::Protocol(format!(
                    "unexpected message '{}' during authentication",
                    other as char
                )))
            }
        }
        let request = backend::auth_request(&frame).map_err(protocol)?;
        state = match (state, request) {
            (
                AuthState::Start | AuthState::PasswordSent | AuthState::ScramDone,
                AuthRequest::Ok,
            ) => return Ok(()),
            (AuthState::Start, AuthRequest::CleartextPassword) => {
                let password = password(target)?;
                pgfront::password_message(password.as_bytes(), out).map_err(encode)?;
                send(reader, out).await?;
                AuthState::PasswordSent
            }
            (AuthState::Start, AuthRequest::Md5Password { salt }) => {
                let password = password(target)?;
                let hash = md5_hash(target.user.as_bytes(), password.as_bytes(), salt);
                pgfront::password_message(hash.as_bytes(), out).map_err(encode)?;
                send(reader, out).await?;
                AuthState::PasswordSent
            }
            (AuthState::Start, AuthRequest::Sasl { mechanisms }) => {
                if !mechanisms.contains(&SCRAM_SHA_256) {
                    return Err(ServerError::Auth(format!(
                        "server offers SASL mechanisms {mechanisms:?}; only {SCRAM_SHA_256} is supported"
                    )));
                }
                let password = password(target)?;
                let scram = ScramSha256::new(password.as_bytes(), ChannelBinding::unsupported());
                pgfront::sasl_initial_response(SCRAM_SHA_256, scram.message(), out)
                    .map_err(encode)?;
                send(reader, out).await?;
                AuthState::ScramFirst(Box::new(scram))
            }
            (AuthState::ScramFirst(scram), AuthRequest::SaslContinue { data }) => {
                let scram = salt_password(scram, data).await?;
                pgfront::sasl_response(scram.message(), out).map_err(encode)?;
                send(reader, out).await?;
                AuthState::ScramFinal(scram)
            }
            (AuthState::ScramFinal(mut scram), AuthRequest::SaslFinal { data }) => {
                scram.finish(data).map_err(|e| {
                    ServerError::Auth(format!("SCRAM server signature rejected: {e}"))
                })?;
                AuthState::ScramDone
            }
            (_, AuthRequest::Other(code)) => {
                return Err(ServerError::Auth(format!(
                    "server asks for an unsupported authentication method (code {code})"
                )))
            }
            (_, request) => {
                return Err(ServerError::Protocol(format!(
                    "unexpected authentication request {request:?}"
                )))
            }
        };
    }
}

/// SCRAM's client proof from the server-first message: PBKDF2 over the password with the
/// server's salt and iteration count (4,096 HMAC rounds by default: 28.6 million instructions
/// in `bench profile`). On a blocking thread: on the runtime's thread it stalled every session
/// of a one-thread proxy each time a pool opened a connection.
async fn salt_password(
    mut scram: Box<ScramSha256>,
    server_first: &[u8],
) -> Result<Box<ScramSha256>, ServerError> {
    let server_first = server_first.to_vec();
    tokio::task::spawn_blocking(move || scram.update(&server_first).map(|()| scram))
        .await
        .map_err(|e| ServerError::Auth(format!("SCRAM proof computation failed: {e}")))?
        .map_err(|e| ServerError::Auth(format!("bad SCRAM server-first message: {e}")))
}

fn password(target: &ConnectTarget) -> Result<&str, ServerError> {
    target.password.as_deref().ok_or_else(|| {
        ServerError::Auth(format!(
            "server asks for a password for role {} but none is configured: set users.server_password",
            target.user
        ))
    })
}

async fn send(reader: &mut FrameReader<Stream>, out: &mut BytesMut) -> Result<(), ServerError> {
    let stream = reader.get_mut();
    stream.write_all(out).await?;
    out.clear();
    Ok(())
}

async fn next(reader: &mut FrameReader<Stream>) -> Result<Frame, ServerError> {
    match reader.read_frame().await {
        Ok(Some(frame)) => Ok(frame),
        Ok(None) | Err(FrameError::UnexpectedEof) => Err(ServerError::Closed),
        Err(FrameError::Io(e)) => Err(ServerError::Io(e)),
        Err(e) => Err(ServerError::Protocol(e.to_string())),
    }
}

fn refused(frame: &Frame) -> ServerError {
    match backend::error_fields(frame) {
        Ok(fields) => ServerError::Refused {
            code: fields.code,
            message: fields.message,
        },
        Err(e) => ServerError::Protocol(format!("bad ErrorResponse: {e}")),
    }
}

fn protocol(e: shardgate_wire::DecodeError) -> ServerError {
    ServerError::Protocol(e.to_string())
}

fn encode(e: std::io::Error) -> ServerError {
    ServerError::Protocol(format!("could not encode an authentication message: {e}"))
}
