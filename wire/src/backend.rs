//! Messages a server (backend) sends that shardgate reads, or writes itself to clients.

use bytes::{BufMut, BytesMut};

use crate::frontend::{put_cstr, put_value, write_message};
use crate::{Cursor, DecodeError, Frame};

pub const AUTHENTICATION: u8 = b'R';
pub const BACKEND_KEY_DATA: u8 = b'K';
pub const PARAMETER_STATUS: u8 = b'S';
pub const READY_FOR_QUERY: u8 = b'Z';
pub const ERROR_RESPONSE: u8 = b'E';
pub const NOTICE_RESPONSE: u8 = b'N';
pub const NOTIFICATION_RESPONSE: u8 = b'A';
pub const PARSE_COMPLETE: u8 = b'1';
pub const BIND_COMPLETE: u8 = b'2';
pub const CLOSE_COMPLETE: u8 = b'3';
pub const COMMAND_COMPLETE: u8 = b'C';
pub const DATA_ROW: u8 = b'D';
pub const EMPTY_QUERY_RESPONSE: u8 = b'I';
pub const NO_DATA: u8 = b'n';
pub const PARAMETER_DESCRIPTION: u8 = b't';
pub const ROW_DESCRIPTION: u8 = b'T';
pub const PORTAL_SUSPENDED: u8 = b's';
pub const COPY_DATA: u8 = b'd';
pub const COPY_DONE: u8 = b'c';
pub const COPY_IN_RESPONSE: u8 = b'G';
pub const COPY_OUT_RESPONSE: u8 = b'H';
pub const COPY_BOTH_RESPONSE: u8 = b'W';
pub const FUNCTION_CALL_RESPONSE: u8 = b'V';
pub const NEGOTIATE_PROTOCOL_VERSION: u8 = b'v';

/// Transaction status carried by ReadyForQuery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransactionStatus {
    Idle,
    InTransaction,
    Failed,
}

impl TransactionStatus {
    pub fn as_byte(self) -> u8 {
        match self {
            TransactionStatus::Idle => b'I',
            TransactionStatus::InTransaction => b'T',
            TransactionStatus::Failed => b'E',
        }
    }
}

pub fn ready_for_query_status(frame: &Frame) -> Result<TransactionStatus, DecodeError> {
    let mut c = Cursor::new(frame.tag(), frame.body());
    let status = match c.u8()? {
        b'I' => TransactionStatus::Idle,
        b'T' => TransactionStatus::InTransaction,
        b'E' => TransactionStatus::Failed,
        other => {
            return Err(DecodeError::UnexpectedTag {
                expected: 'I',
                got: other as char,
            })
        }
    };
    c.finish()?;
    Ok(status)
}

/// The fields of an ErrorResponse or NoticeResponse that shardgate looks at.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ErrorFields {
    pub severity: String,
    pub code: String,
    pub message: String,
}

pub fn error_fields(frame: &Frame) -> Result<ErrorFields, DecodeError> {
    let mut c = Cursor::new(frame.tag(), frame.body());
    let mut fields = ErrorFields::default();
    loop {
        let kind = c.u8()?;
        if kind == 0 {
            break;
        }
        // In the server's (or client's) encoding: decoded lossily, only to be shown or matched.
        let value = String::from_utf8_lossy(c.cstr_bytes()?);
        match kind {
            b'V' => fields.severity = value.into_owned(),
            b'S' if fields.severity.is_empty() => fields.severity = value.into_owned(),
            b'C' => fields.code = value.into_owned(),
            b'M' => fields.message = value.into_owned(),
            _ => {}
        }
    }
    c.finish()?;
    Ok(fields)
}

pub fn parameter_status(frame: &Frame) -> Result<(&str, &str), DecodeError> {
    let mut c = Cursor::new(frame.tag(), frame.body());
    let name = c.cstr()?;
    let value = c.cstr()?;
    c.finish()?;
    Ok((name, value))
}

pub fn backend_key_data(frame: &Frame) -> Result<(i32, i32), DecodeError> {
    let mut c = Cursor::new(frame.tag(), frame.body());
    let pid = c.i32()?;
    let secret = c.i32()?;
    c.finish()?;
    Ok((pid, secret))
}

/// An authentication request from the server.
#[derive(Debug, PartialEq, Eq)]
pub enum AuthRequest<'a> {
    Ok,
    CleartextPassword,
    Md5Password { salt: [u8; 4] },
    Sasl { mechanisms: Vec<&'a str> },
    SaslContinue { data: &'a [u8] },
    SaslFinal { data: &'a [u8] },
    Other(i32),
}

pub fn auth_request(frame: &Frame) -> Result<AuthRequest<'_>, DecodeError> {
    let mut c = Cursor::new(frame.tag(), frame.body());
    let req = match c.i32()? {
        0 => AuthRequest::Ok,
        3 => AuthRequest::CleartextPassword,
        5 => {
            let salt = c.take(4)?;
            AuthRequest::Md5Password {
                salt: [salt[0], salt[1], salt[2], salt[3]],
            }
        }
        10 => {
            let mut mechanisms = Vec::new();
            loop {
                let m = c.cstr()?;
                if m.is_empty() {
                    break;
                }
                mechanisms.push(m);
            }
            AuthRequest::Sasl { mechanisms }
        }
        11 => AuthRequest::SaslContinue {
            data: c.remaining(),
        },
        12 => AuthRequest::SaslFinal {
            data: c.remaining(),
        },
        other => return Ok(AuthRequest::Other(other)),
    };
    if matches!(
        req,
        AuthRequest::SaslContinue { .. } | AuthRequest::SaslFinal { .. }
    ) {
        return Ok(req);
    }
    c.finish()?;
    Ok(req)
}

/// Error severities a proxy-made ErrorResponse can carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    Error,
    Fatal,
}

impl Severity {
    fn as_str(self) -> &'static str {
        match self {
            Severity::Error => "ERROR",
            Severity::Fatal => "FATAL",
        }
    }
}

/// Appends an ErrorResponse made by the proxy.
pub fn write_error(
    out: &mut BytesMut,
    severity: Severity,
    code: &str,
    message: &str,
    hint: Option<&str>,
) {
    write_message(out, ERROR_RESPONSE, |b| {
        b.put_u8(b'S');
        put_cstr(b, severity.as_str());
        b.put_u8(b'V');
        put_cstr(b, severity.as_str());
        b.put_u8(b'C');
        put_cstr(b, code);
        b.put_u8(b'M');
        put_cstr(b, message);
        if let Some(hint) = hint {
            b.put_u8(b'H');
            put_cstr(b, hint);
        }
        b.put_u8(0);
    });
}

pub fn write_notice(out: &mut BytesMut, code: &str, message: &str) {
    write_message(out, NOTICE_RESPONSE, |b| {
        for (k, v) in [
            (b'S', "NOTICE"),
            (b'V', "NOTICE"),
            (b'C', code),
            (b'M', message),
        ] {
            b.put_u8(k);
            put_cstr(b, v);
        }
        b.put_u8(0);
    });
}

pub fn write_ready_for_query(out: &mut BytesMut, status: TransactionStatus) {
    out.put_slice(&[READY_FOR_QUERY, 0, 0, 0, 5, status.as_byte()]);
}

pub fn write_parse_complete(out: &mut BytesMut) {
    out.put_slice(&[PARSE_COMPLETE, 0, 0, 0, 4]);
}

pub fn write_close_complete(out: &mut BytesMut) {
    out.put_slice(&[CLOSE_COMPLETE, 0, 0, 0, 4]);
}

pub fn write_parameter_status(out: &mut BytesMut, name: &str, value: &str) {
    write_message(out, PARAMETER_STATUS, |b| {
        put_cstr(b, name);
        put_cstr(b, value);
    });
}

pub fn write_backend_key_data(out: &mut BytesMut, pid: i32, secret: i32) {
    write_message(out, BACKEND_KEY_DATA, |b| {
        b.put_i32(pid);
        b.put_i32(secret);
    });
}

pub fn write_auth_ok(out: &mut BytesMut) {
    write_message(out, AUTHENTICATION, |b| b.put_i32(0));
}

pub fn write_auth_cleartext(out: &mut BytesMut) {
    write_message(out, AUTHENTICATION, |b| b.put_i32(3));
}

pub fn write_auth_md5(out: &mut BytesMut, salt: [u8; 4]) {
    write_message(out, AUTHENTICATION, |b| {
        b.put_i32(5);
        b.put_slice(&salt);
    });
}

pub fn write_auth_sasl(out: &mut BytesMut, mechanisms: &[&str]) {
    write_message(out, AUTHENTICATION, |b| {
        b.put_i32(10);
        for m in mechanisms {
            put_cstr(b, m);
        }
        b.put_u8(0);
    });
}

pub fn write_auth_sasl_continue(out: &mut BytesMut, data: &[u8]) {
    write_message(out, AUTHENTICATION, |b| {
        b.put_i32(11);
        b.put_slice(data);
    });
}

pub fn write_auth_sasl_final(out: &mut BytesMut, data: &[u8]) {
    write_message(out, AUTHENTICATION, |b| {
        b.put_i32(12);
        b.put_slice(data);
    });
}

/// Appends a DataRow; `None` is NULL.
pub fn write_data_row(out: &mut BytesMut, values: &[Option<&str>]) {
    write_message(out, DATA_ROW, |b| {
        b.put_i16(values.len() as i16);
        for v in values {
            put_value(b, v.map(str::as_bytes));
        }
    });
}

pub fn write_command_complete(out: &mut BytesMut, tag: &str) {
    write_message(out, COMMAND_COMPLETE, |b| put_cstr(b, tag));
}

pub fn write_bind_complete(out: &mut BytesMut) {
    out.put_slice(&[BIND_COMPLETE, 0, 0, 0, 4]);
}

pub fn write_no_data(out: &mut BytesMut) {
    out.put_slice(&[NO_DATA, 0, 0, 0, 4]);
}

/// Whether a re-encoded ErrorResponse keeps the server's cursor position (field `P`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CursorPosition {
    Keep,
    /// For a server that ran a text other than the client's, where the position would point
    /// at the wrong place.
    Omit,
}

/// Re-encodes an ErrorResponse with `prefix` put before its message (e.g. the shard's name),
/// keeping every other field (the cursor position as `position` says). Field values are copied
/// as bytes: they are in the server's encoding, which need not be UTF-8.
pub fn write_error_with_prefix(
    out: &mut BytesMut,
    frame: &Frame,
    prefix: &str,
    position: CursorPosition,
) -> Result<(), DecodeError> {
    let mut c = Cursor::new(frame.tag(), frame.body());
    let mut fields = Vec::new();
    loop {
        let kind = c.u8()?;
        if kind == 0 {
            break;
        }
        fields.push((kind, c.cstr_bytes()?));
    }
    write_message(out, frame.tag(), |b| {
        for (kind, value) in &fields {
            if *kind == b'P' && position == CursorPosition::Omit {
                continue;
            }
            b.put_u8(*kind);
            if *kind == b'M' {
                b.put_slice(prefix.as_bytes());
            }
            b.put_slice(value);
            b.put_u8(0);
        }
        b.put_u8(0);
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_round_trip() {
        let mut b = BytesMut::new();
        write_error(&mut b, Severity::Error, "53300", "too many", Some("wait"));
        let f = Frame::from_bytes(b.freeze());
        let e = error_fields(&f).unwrap();
        assert_eq!(e.code, "53300");
        assert_eq!(e.message, "too many");
        assert_eq!(e.severity, "ERROR");
    }

    /// An ErrorResponse with a Latin-1 message (not UTF-8) and a cursor position.
    fn latin1_error() -> Frame {
        let mut b = BytesMut::new();
        write_message(&mut b, ERROR_RESPONSE, |b| {
            for (k, v) in [
                (b'S', &b"ERROR"[..]),
                (b'C', b"22012"),
                (b'M', b"division par z\xe9ro"),
                (b'P', b"8"),
            ] {
                b.put_u8(k);
                b.put_slice(v);
                b.put_u8(0);
            }
            b.put_u8(0);
        });
        Frame::from_bytes(b.freeze())
    }

    /// The (kind, value) fields of an ErrorResponse, as bytes.
    fn raw_fields(frame: &Frame) -> Vec<(u8, Vec<u8>)> {
        let mut c = Cursor::new(frame.tag(), frame.body());
        let mut fields = Vec::new();
        while let Ok(kind @ 1..) = c.u8() {
            fields.push((kind, c.cstr_bytes().unwrap().to_vec()));
        }
        c.finish().unwrap();
        fields
    }

    #[test]
    fn prefixed_error_keeps_non_utf8_bytes_and_can_omit_the_position() {
        let error = latin1_error();
        let mut b = BytesMut::new();
        write_error_with_prefix(&mut b, &error, "shard s1: ", CursorPosition::Omit).unwrap();
        assert_eq!(
            raw_fields(&Frame::from_bytes(b.freeze())),
            vec![
                (b'S', b"ERROR".to_vec()),
                (b'C', b"22012".to_vec()),
                (b'M', b"shard s1: division par z\xe9ro".to_vec()),
            ]
        );
        let mut b = BytesMut::new();
        write_error_with_prefix(&mut b, &error, "shard s1: ", CursorPosition::Keep).unwrap();
        let kept = raw_fields(&Frame::from_bytes(b.freeze()));
        assert_eq!(kept.last(), Some(&(b'P', b"8".to_vec())));
    }

    #[test]
    fn ready_for_query_round_trip() {
        let mut b = BytesMut::new();
        write_ready_for_query(&mut b, TransactionStatus::InTransaction);
        let f = Frame::from_bytes(b.freeze());
        assert_eq!(
            ready_for_query_status(&f).unwrap(),
            TransactionStatus::InTransaction
        );
    }

    #[test]
    fn sasl_request_lists_mechanisms() {
        let mut b = BytesMut::new();
        write_auth_sasl(&mut b, &["SCRAM-SHA-256"]);
        let f = Frame::from_bytes(b.freeze());
        assert_eq!(
            auth_request(&f).unwrap(),
            AuthRequest::Sasl {
                mechanisms: vec!["SCRAM-SHA-256"]
            }
        );
    }
}
