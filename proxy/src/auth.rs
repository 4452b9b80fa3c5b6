//! Client authentication: SCRAM-SHA-256 (default), md5 or trust, per user from the config.
//! Over TLS, SCRAM-SHA-256-PLUS (channel binding `tls-server-end-point`) is offered too.
//!
//! SCRAM secrets are derived once per user when the proxy starts (PBKDF2 is deliberately slow),
//! so a login costs two HMACs, not 4096.

use std::collections::HashMap;

use bytes::BytesMut;
use pgwire::api::auth::sasl::scram::{gen_salted_password, ScramSecret, ScramServerAuth};
use rand::RngCore;
use shardgate_config::{AuthMethod, Config, User};
use shardgate_wire::backend;
use shardgate_wire::{frontend, sqlstate, Frame};

use crate::io::ClientIo;
use crate::SessionError;

const SCRAM_ITERATIONS: usize = 4096;
const SCRAM_MECHANISM: &str = "SCRAM-SHA-256";
const SCRAM_PLUS_MECHANISM: &str = "SCRAM-SHA-256-PLUS";

/// What the proxy needs to check one user's password.
pub struct UserAuth {
    pub user: User,
    scram: Option<(Vec<u8>, Vec<u8>)>, // salt, salted password
}

/// Credentials of all configured users, prepared for fast logins.
pub struct Authenticator {
    users: HashMap<String, UserAuth>,
}

impl Authenticator {
    pub fn new(config: &Config) -> Self {
        let users = config
            .users
            .iter()
            .map(|u| {
                let scram = match (u.auth, u.password.as_deref()) {
                    (AuthMethod::ScramSha256, Some(pw)) => {
                        let mut salt = vec![0u8; 16];
                        rand::rng().fill_bytes(&mut salt);
                        let salted = gen_salted_password(pw, &salt, SCRAM_ITERATIONS);
                        Some((salt, salted))
                    }
                    _ => None,
                };
                (
                    u.name.clone(),
                    UserAuth {
                        user: u.clone(),
                        scram,
                    },
                )
            })
            .collect();
        Authenticator { users }
    }

    pub fn user(&self, name: &str) -> Option<&UserAuth> {
        self.users.get(name)
    }
}

/// Runs the authentication exchange. On failure the client has been sent a FATAL error.
pub async fn authenticate(
    io: &mut ClientIo,
    auth: Option<&UserAuth>,
    user_name: &str,
) -> Result<(), SessionError> {
    // An unknown user goes through the same exchange as a wrong password (as PostgreSQL does),
    // so the answer does not reveal which user names exist.
    let method = auth.map(|a| a.user.auth).unwrap_or(AuthMethod::ScramSha256);
    let ok = match method {
        AuthMethod::Trust => auth.is_some(),
        AuthMethod::Md5 => md5_exchange(io, auth, user_name).await?,
        AuthMethod::ScramSha256 => scram_exchange(io, auth).await?,
    };
    if ok {
        return Ok(());
    }
    let msg = format!("password authentication failed for user \"{user_name}\"");
    io.fatal(
        sqlstate::INVALID_PASSWORD,
        &msg,
        Some("check the user name and password configured in shardgate's [[users]]"),
    )
    .await;
    Err(SessionError::AuthFailed)
}

async fn read_password_message(io: &mut ClientIo) -> Result<Frame, SessionError> {
    let frame = io.read_frame().await?.ok_or(SessionError::ClientGone)?;
    if frame.tag() != frontend::PASSWORD {
        io.fatal(
            sqlstate::PROTOCOL_VIOLATION,
            "expected a password message during authentication",
            None,
        )
        .await;
        return Err(SessionError::Protocol("expected password message".into()));
    }
    Ok(frame)
}

async fn md5_exchange(
    io: &mut ClientIo,
    auth: Option<&UserAuth>,
    user_name: &str,
) -> Result<bool, SessionError> {
    let mut salt = [0u8; 4];
    rand::rng().fill_bytes(&mut salt);
    let mut out = BytesMut::new();
    backend::write_auth_md5(&mut out, salt);
    io.send(&out).await?;
    let frame = read_password_message(io).await?;
    let body = frame.body();
    let given = body.strip_suffix(&[0]).unwrap_or(body);
    let Some(password) = auth.and_then(|a| a.user.password.as_deref()) else {
        return Ok(false);
    };
    let expected = postgres_protocol::authentication::md5_hash(
        user_name.as_bytes(),
        password.as_bytes(),
        salt,
    );
    Ok(constant_time_eq(given, expected.as_bytes()))
}

async fn scram_exchange(io: &mut ClientIo, auth: Option<&UserAuth>) -> Result<bool, SessionError> {
    // Channel binding whenever the client came over TLS with the certificate we presented
    // (whatever the user, so the offer does not tell which users exist). A certificate whose
    // signature algorithm pgwire cannot hash (e.g. Ed25519) gets plain SCRAM.
    let mut server = ScramServerAuth::new();
    let plus = io
        .reader
        .get_ref()
        .tls_local_cert_pem()
        .is_some_and(|pem| server.configure_certificate(&pem).is_ok());
    let mut out = BytesMut::new();
    if plus {
        // PLUS first: the stronger one, which libpq and tokio-postgres pick when they can.
        backend::write_auth_sasl(&mut out, &[SCRAM_PLUS_MECHANISM, SCRAM_MECHANISM]);
    } else {
        backend::write_auth_sasl(&mut out, &[SCRAM_MECHANISM]);
    }
    io.send(&out).await?;

    let first = read_password_message(io).await?;
    // The mechanism and the gs2 header must agree: `p=` (binding) with -PLUS only, as
    // PostgreSQL checks; pgwire then refuses `y` while PLUS was offered (a downgrade).
    let client_first = match sasl_initial_response(first.body()) {
        Some((SCRAM_PLUS_MECHANISM, data)) if plus && data.starts_with(b"p=") => data,
        Some((SCRAM_MECHANISM, data)) if !data.starts_with(b"p") => data,
        _ => {
            io.fatal(
                sqlstate::PROTOCOL_VIOLATION,
                "expected a SASL SCRAM-SHA-256 (or -PLUS with channel binding) initial response",
                None,
            )
            .await;
            return Err(SessionError::Protocol("bad SASL initial response".into()));
        }
    };
    // Unknown users get a made-up secret so the exchange looks the same and then fails.
    let (salt, salted) = match auth.and_then(|a| a.scram.clone()) {
        Some(s) => s,
        None => {
            let mut salt = vec![0u8; 16];
            rand::rng().fill_bytes(&mut salt);
            (salt, vec![0u8; 32])
        }
    };
    let secret = ScramSecret::SaltedPassword {
        salt,
        salted_password: salted,
    };
    let (server_first, waiting) =
        match server.on_client_first_message_with_secret(client_first, secret) {
            Ok(v) => v,
            Err(e) => {
                io.fatal(
                    sqlstate::PROTOCOL_VIOLATION,
                    &format!("invalid SCRAM message: {e}"),
                    None,
                )
                .await;
                return Err(SessionError::Protocol("bad SCRAM client-first".into()));
            }
        };
    out.clear();
    backend::write_auth_sasl_continue(&mut out, server_first.as_bytes());
    io.send(&out).await?;

    let last = read_password_message(io).await?;
    match waiting.on_client_final_message(last.body()) {
        Ok(server_final) if auth.is_some() => {
            out.clear();
            backend::write_auth_sasl_final(&mut out, server_final.as_bytes());
            io.send(&out).await?;
            Ok(true)
        }
        _ => Ok(false),
    }
}

/// SASLInitialResponse: mechanism name, then an i32 length and that many bytes (-1: none).
fn sasl_initial_response(body: &[u8]) -> Option<(&str, &[u8])> {
    let nul = body.iter().position(|b| *b == 0)?;
    let mechanism = std::str::from_utf8(&body[..nul]).ok()?;
    let rest = &body[nul + 1..];
    let len = i32::from_be_bytes(rest.get(..4)?.try_into().ok()?);
    let data = if len < 0 {
        &[][..]
    } else {
        rest.get(4..4 + len as usize)?
    };
    Some((mechanism, data))
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
