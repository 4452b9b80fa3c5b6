//! The untagged startup family: StartupMessage, SSLRequest, GSSENCRequest, CancelRequest.

use bytes::{BufMut, BytesMut};

use crate::{Cursor, DecodeError};

pub const PROTOCOL_3_0: i32 = 196_608;
pub const SSL_REQUEST: i32 = 80_877_103;
pub const GSSENC_REQUEST: i32 = 80_877_104;
pub const CANCEL_REQUEST: i32 = 80_877_102;

#[derive(Debug, PartialEq, Eq)]
pub enum StartupPacket {
    Startup {
        params: Vec<(String, String)>,
    },
    SslRequest,
    GssEncRequest,
    Cancel {
        pid: i32,
        secret: i32,
    },
    /// A protocol version shardgate does not speak (major version other than 3).
    UnsupportedVersion(i32),
}

/// Decodes a startup-family packet body (after its length).
pub fn decode(body: &[u8]) -> Result<StartupPacket, DecodeError> {
    let mut c = Cursor::new(b'?', body);
    let code = c.i32()?;
    let packet = match code {
        SSL_REQUEST => StartupPacket::SslRequest,
        GSSENC_REQUEST => StartupPacket::GssEncRequest,
        CANCEL_REQUEST => {
            let pid = c.i32()?;
            let secret = c.i32()?;
            StartupPacket::Cancel { pid, secret }
        }
        v if v >> 16 == 3 => {
            // 3.x: minor versions above 0 are answered later with NegotiateProtocolVersion.
            let mut params = Vec::new();
            loop {
                let name = c.cstr()?;
                if name.is_empty() {
                    break;
                }
                let value = c.cstr()?;
                params.push((name.to_owned(), value.to_owned()));
            }
            StartupPacket::Startup { params }
        }
        other => return Ok(StartupPacket::UnsupportedVersion(other)),
    };
    c.finish()?;
    Ok(packet)
}

/// Appends a StartupMessage for protocol 3.0 with the given parameters.
pub fn write_startup(out: &mut BytesMut, params: &[(&str, &str)]) {
    let start = out.len();
    out.put_i32(0);
    out.put_i32(PROTOCOL_3_0);
    for (k, v) in params {
        crate::frontend::put_cstr(out, k);
        crate::frontend::put_cstr(out, v);
    }
    out.put_u8(0);
    let len = (out.len() - start) as i32;
    out[start..start + 4].copy_from_slice(&len.to_be_bytes());
}

pub fn write_cancel_request(out: &mut BytesMut, pid: i32, secret: i32) {
    out.put_i32(16);
    out.put_i32(CANCEL_REQUEST);
    out.put_i32(pid);
    out.put_i32(secret);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn startup_round_trip() {
        let mut b = BytesMut::new();
        write_startup(&mut b, &[("user", "app"), ("database", "db")]);
        let p = decode(&b[4..]).unwrap();
        assert_eq!(
            p,
            StartupPacket::Startup {
                params: vec![
                    ("user".into(), "app".into()),
                    ("database".into(), "db".into())
                ]
            }
        );
    }

    #[test]
    fn cancel_and_ssl() {
        let mut b = BytesMut::new();
        write_cancel_request(&mut b, 7, 9);
        assert_eq!(
            decode(&b[4..]).unwrap(),
            StartupPacket::Cancel { pid: 7, secret: 9 }
        );
        assert_eq!(
            decode(&SSL_REQUEST.to_be_bytes()).unwrap(),
            StartupPacket::SslRequest
        );
        assert_eq!(
            decode(&[0, 2, 0, 0]).unwrap(),
            StartupPacket::UnsupportedVersion(2 << 16)
        );
        assert!(decode(&[0, 3, 0, 0, b'u']).is_err());
    }
}
