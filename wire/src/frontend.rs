//! Messages a client (frontend) sends that shardgate reads or writes itself.
//!
//! Each decoder takes one [`Frame`] and borrows from it; each encoder appends a whole message
//! to a buffer. Only what the proxy needs is decoded: Bind keeps its parameters as raw bytes
//! behind the two names, so renaming a statement copies the rest verbatim.

use bytes::{BufMut, BytesMut};

use crate::{Cursor, DecodeError, Frame};

pub const QUERY: u8 = b'Q';
pub const PARSE: u8 = b'P';
pub const BIND: u8 = b'B';
pub const DESCRIBE: u8 = b'D';
pub const EXECUTE: u8 = b'E';
pub const CLOSE: u8 = b'C';
pub const SYNC: u8 = b'S';
pub const FLUSH: u8 = b'H';
pub const TERMINATE: u8 = b'X';
pub const COPY_DATA: u8 = b'd';
pub const COPY_DONE: u8 = b'c';
pub const COPY_FAIL: u8 = b'f';
pub const FUNCTION_CALL: u8 = b'F';
pub const PASSWORD: u8 = b'p';

fn cursor(frame: &Frame, expected: u8) -> Result<Cursor<'_>, DecodeError> {
    if frame.tag() != expected {
        return Err(DecodeError::UnexpectedTag {
            expected: expected as char,
            got: frame.tag() as char,
        });
    }
    Ok(Cursor::new(frame.tag(), frame.body()))
}

/// The SQL text of a simple Query, as bytes in the client's encoding (which need not be
/// UTF-8: the caller decodes what it must read).
pub fn query_text(frame: &Frame) -> Result<&[u8], DecodeError> {
    let mut c = cursor(frame, QUERY)?;
    let text = c.cstr_bytes()?;
    c.finish()?;
    Ok(text)
}

#[derive(Debug, PartialEq, Eq)]
pub struct Parse<'a> {
    pub name: &'a str,
    /// The statement text in the client's encoding.
    pub query: &'a [u8],
    pub param_types: Vec<u32>,
}

pub fn parse(frame: &Frame) -> Result<Parse<'_>, DecodeError> {
    let mut c = cursor(frame, PARSE)?;
    let name = c.cstr()?;
    let query = c.cstr_bytes()?;
    let n = c.count16()?;
    let mut param_types = Vec::with_capacity(n.min(1024));
    for _ in 0..n {
        param_types.push(c.i32()? as u32);
    }
    c.finish()?;
    Ok(Parse {
        name,
        query,
        param_types,
    })
}

/// A Bind: the portal and statement names, and the offset in the body where the parameter
/// section starts (kept raw; see [`bind_params`] to read values when routing needs them).
#[derive(Debug, PartialEq, Eq)]
pub struct Bind<'a> {
    pub portal: &'a str,
    pub statement: &'a str,
    rest_offset: usize,
}

pub fn bind(frame: &Frame) -> Result<Bind<'_>, DecodeError> {
    let mut c = cursor(frame, BIND)?;
    let portal = c.cstr()?;
    let statement = c.cstr()?;
    let rest_offset = c.position();
    // Validate the whole body now so a malformed Bind is refused before it reaches a server.
    check_bind_params(&mut c)?;
    Ok(Bind {
        portal,
        statement,
        rest_offset,
    })
}

/// The statement a Bind names, without checking the rest of it: for a Bind [`bind`] already
/// accepted (the relay checks every Bind it forwards), read again for statistics.
pub fn bind_statement(frame: &Frame) -> Result<&str, DecodeError> {
    let mut c = cursor(frame, BIND)?;
    c.cstr()?;
    c.cstr()
}

/// How many parameter values a Bind carries, read past its names and formats without
/// decoding them: for checks on every extended-protocol execution that only ask whether a
/// statement has parameters.
pub fn bind_value_count(frame: &Frame) -> Result<usize, DecodeError> {
    let mut c = cursor(frame, BIND)?;
    c.cstr_bytes()?;
    c.cstr_bytes()?;
    let nformats = c.count16()?;
    c.take(nformats * 2)?;
    c.count16()
}

/// Parameter formats and values of a Bind (None is SQL NULL).
#[derive(Debug, PartialEq, Eq)]
pub struct BindParams<'a> {
    pub formats: Vec<i16>,
    pub values: Vec<Option<&'a [u8]>>,
    pub result_formats: Vec<i16>,
}

/// Walks a Bind's parameter section as [`bind_params_from`] reads it, keeping nothing: a Bind
/// is decoded several times per execution (routing, relaying, statistics), and only routing
/// needs its values.
fn check_bind_params(c: &mut Cursor<'_>) -> Result<(), DecodeError> {
    let nformats = c.count16()?;
    c.take(nformats * 2)?;
    let nvalues = c.count16()?;
    for _ in 0..nvalues {
        match c.i32()? {
            -1 => {}
            len if len < 0 => return Err(DecodeError::Negative { tag: 'B' }),
            len => {
                c.take(len as usize)?;
            }
        }
    }
    let nresult = c.count16()?;
    c.take(nresult * 2)?;
    c.finish()
}

fn bind_params_from<'a>(c: &mut Cursor<'a>) -> Result<BindParams<'a>, DecodeError> {
    let nformats = c.count16()?;
    let mut formats = Vec::with_capacity(nformats.min(1024));
    for _ in 0..nformats {
        formats.push(c.i16()?);
    }
    let nvalues = c.count16()?;
    let mut values = Vec::with_capacity(nvalues.min(1024));
    for _ in 0..nvalues {
        let len = c.i32()?;
        if len == -1 {
            values.push(None);
        } else if len < 0 {
            return Err(DecodeError::Negative { tag: 'B' });
        } else {
            values.push(Some(c.take(len as usize)?));
        }
    }
    let nresult = c.count16()?;
    let mut result_formats = Vec::with_capacity(nresult.min(1024));
    for _ in 0..nresult {
        result_formats.push(c.i16()?);
    }
    c.finish()?;
    Ok(BindParams {
        formats,
        values,
        result_formats,
    })
}

/// Reads the parameters of a Bind decoded by [`bind`].
pub fn bind_params<'a>(frame: &'a Frame, bind: &Bind<'_>) -> Result<BindParams<'a>, DecodeError> {
    let mut c = Cursor::new(frame.tag(), frame.body());
    c.take(bind.rest_offset)?;
    bind_params_from(&mut c)
}

/// Re-encodes a Bind with another statement name, copying parameters verbatim.
pub fn write_bind_renamed(out: &mut BytesMut, frame: &Frame, bind: &Bind<'_>, statement: &str) {
    let rest = &frame.body()[bind.rest_offset..];
    let len = 4 + bind.portal.len() + 1 + statement.len() + 1 + rest.len();
    out.reserve(len + 1);
    out.put_u8(BIND);
    out.put_i32(len as i32);
    put_cstr(out, bind.portal);
    put_cstr(out, statement);
    out.put_slice(rest);
}

/// Describe or Close target: 'S' (statement) or 'P' (portal) and its name.
#[derive(Debug, PartialEq, Eq, Clone, Copy)]
pub struct Target<'a> {
    pub kind: u8,
    pub name: &'a str,
}

fn target(frame: &Frame, tag: u8) -> Result<Target<'_>, DecodeError> {
    let mut c = cursor(frame, tag)?;
    let kind = c.u8()?;
    if kind != b'S' && kind != b'P' {
        return Err(DecodeError::UnexpectedTag {
            expected: 'S',
            got: kind as char,
        });
    }
    let name = c.cstr()?;
    c.finish()?;
    Ok(Target { kind, name })
}

pub fn describe(frame: &Frame) -> Result<Target<'_>, DecodeError> {
    target(frame, DESCRIBE)
}

pub fn close(frame: &Frame) -> Result<Target<'_>, DecodeError> {
    target(frame, CLOSE)
}

/// Checks an Execute is well formed (portal name and row limit).
pub fn execute(frame: &Frame) -> Result<(&str, i32), DecodeError> {
    let mut c = cursor(frame, EXECUTE)?;
    let portal = c.cstr()?;
    let max_rows = c.i32()?;
    c.finish()?;
    Ok((portal, max_rows))
}

pub fn put_cstr(out: &mut BytesMut, s: &str) {
    out.put_slice(s.as_bytes());
    out.put_u8(0);
}

/// Appends a length-prefixed value as Bind parameters, DataRow columns and binary array
/// elements carry it: length -1 and no bytes for NULL.
pub fn put_value(out: &mut BytesMut, value: Option<&[u8]>) {
    match value {
        None => out.put_i32(-1),
        Some(v) => {
            out.put_i32(v.len() as i32);
            out.put_slice(v);
        }
    }
}

/// Appends a message whose body is written by `body`, filling in the length afterwards.
pub fn write_message(out: &mut BytesMut, tag: u8, body: impl FnOnce(&mut BytesMut)) {
    out.put_u8(tag);
    let len_at = out.len();
    out.put_i32(0);
    body(out);
    let len = (out.len() - len_at) as i32;
    out[len_at..len_at + 4].copy_from_slice(&len.to_be_bytes());
}

pub fn write_query(out: &mut BytesMut, sql: &str) {
    write_message(out, QUERY, |b| put_cstr(b, sql));
}

pub fn write_parse(out: &mut BytesMut, name: &str, query: &[u8], param_types: &[u32]) {
    write_message(out, PARSE, |b| {
        put_cstr(b, name);
        b.put_slice(query);
        b.put_u8(0);
        b.put_i16(param_types.len() as i16);
        for t in param_types {
            b.put_u32(*t);
        }
    });
}

pub fn write_describe(out: &mut BytesMut, kind: u8, name: &str) {
    write_message(out, DESCRIBE, |b| {
        b.put_u8(kind);
        put_cstr(b, name);
    });
}

pub fn write_close(out: &mut BytesMut, kind: u8, name: &str) {
    write_message(out, CLOSE, |b| {
        b.put_u8(kind);
        put_cstr(b, name);
    });
}

pub fn write_sync(out: &mut BytesMut) {
    out.put_slice(&[SYNC, 0, 0, 0, 4]);
}

pub fn write_terminate(out: &mut BytesMut) {
    out.put_slice(&[TERMINATE, 0, 0, 0, 4]);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(buf: BytesMut) -> Frame {
        Frame::from_bytes(buf.freeze())
    }

    #[test]
    fn parse_round_trip() {
        let mut b = BytesMut::new();
        write_parse(&mut b, "s1", b"select $1", &[23]);
        let f = frame(b);
        let p = parse(&f).unwrap();
        assert_eq!(
            p,
            Parse {
                name: "s1",
                query: b"select $1",
                param_types: vec![23]
            }
        );
    }

    #[test]
    fn bind_rename_keeps_parameters() {
        let mut b = BytesMut::new();
        write_message(&mut b, BIND, |b| {
            put_cstr(b, "");
            put_cstr(b, "mine");
            b.put_i16(1);
            b.put_i16(1);
            b.put_i16(2);
            b.put_i32(4);
            b.put_slice(&42i32.to_be_bytes());
            b.put_i32(-1);
            b.put_i16(0);
        });
        let f = frame(b);
        let bd = bind(&f).unwrap();
        assert_eq!(bd.statement, "mine");
        assert_eq!(bind_statement(&f).unwrap(), "mine");
        assert_eq!(bind_value_count(&f).unwrap(), 2);
        let mut out = BytesMut::new();
        write_bind_renamed(&mut out, &f, &bd, "sg_7");
        let f2 = frame(out);
        let bd2 = bind(&f2).unwrap();
        assert_eq!(bd2.statement, "sg_7");
        let params = bind_params(&f2, &bd2).unwrap();
        assert_eq!(params.formats, vec![1]);
        assert_eq!(params.values, vec![Some(&42i32.to_be_bytes()[..]), None]);
    }

    #[test]
    fn lying_bind_is_an_error_not_a_panic() {
        let mut b = BytesMut::new();
        write_message(&mut b, BIND, |b| {
            put_cstr(b, "");
            put_cstr(b, "");
            b.put_i16(0);
            b.put_i16(1);
            b.put_i32(1_000_000);
            b.put_slice(b"ab");
        });
        assert!(bind(&frame(b)).is_err());
        let mut b = BytesMut::new();
        write_message(&mut b, PARSE, |b| b.put_slice(b"no-nul"));
        assert!(parse(&frame(b)).is_err());
    }

    /// `bind` validates without keeping the parameters; it must accept exactly the bodies
    /// `bind_params` can read, whatever the counts and lengths claim (seeded mutations of a
    /// valid Bind: truncations, flipped bytes, negative and oversized lengths).
    #[test]
    fn bind_validation_agrees_with_reading_the_parameters() {
        let mut base = BytesMut::new();
        put_cstr(&mut base, "p");
        put_cstr(&mut base, "s");
        base.put_i16(2);
        base.put_i16(0);
        base.put_i16(1);
        base.put_i16(3);
        base.put_i32(2);
        base.put_slice(b"42");
        base.put_i32(-1);
        base.put_i32(0);
        base.put_i16(1);
        base.put_i16(1);
        let base = base.to_vec();
        let mut rng = fastrand::Rng::with_seed(0x9E37_79B9_7F4A_7C15);
        let mut next = move || rng.u64(..);
        let (mut accepted, mut refused) = (0, 0);
        for _ in 0..20_000 {
            let mut body = base.clone();
            for _ in 0..1 + next() % 3 {
                let at = (next() % body.len() as u64) as usize;
                match next() % 4 {
                    0 => body.truncate(at),
                    1 => body[at] = next() as u8,
                    2 => body[at] = 0xff,
                    _ => body.insert(at, next() as u8),
                }
                if body.is_empty() {
                    break;
                }
            }
            let mut b = BytesMut::new();
            write_message(&mut b, BIND, |b| b.put_slice(&body));
            let f = frame(b);
            let read = bind(&f).map(|bd| bind_params(&f, &bd).map(|_| ()));
            let mut c = Cursor::new(BIND, f.body());
            let full = c
                .cstr()
                .and_then(|_| c.cstr())
                .and_then(|_| bind_params_from(&mut c));
            assert_eq!(read.is_ok(), full.is_ok(), "body {body:?}");
            // The count read without decoding is the count of a Bind that decodes.
            if let Ok(params) = full {
                assert_eq!(bind_value_count(&f).ok(), Some(params.values.len()));
            }
            if let Ok(params) = read {
                assert!(params.is_ok(), "validated but unreadable: {body:?}");
                accepted += 1;
            } else {
                refused += 1;
            }
        }
        assert!(accepted > 100 && refused > 100, "{accepted} / {refused}");
    }

    #[test]
    fn describe_and_close_targets() {
        let mut b = BytesMut::new();
        write_describe(&mut b, b'S', "x");
        assert_eq!(
            describe(&frame(b)).unwrap(),
            Target {
                kind: b'S',
                name: "x"
            }
        );
        let mut b = BytesMut::new();
        write_close(&mut b, b'Q', "x");
        let mut b2 = BytesMut::new();
        write_message(&mut b2, CLOSE, |b| {
            b.put_u8(b'Q');
            put_cstr(b, "x");
        });
        assert!(close(&frame(b2)).is_err());
    }
}
