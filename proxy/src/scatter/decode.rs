//! Reading the few backend messages a cross-shard merge must look inside: RowDescription
//! (column names, type OIDs, formats), DataRow (field values as byte ranges), and
//! ErrorResponse (all fields, so a shard's error reaches the client intact but for a prefix).
//! Everything here works on one whole frame the server connection already cut out, and fails
//! with a message (never a panic) on malformed input.

use bytes::{BufMut, Bytes, BytesMut};
use shardgate_wire::backend;
use shardgate_wire::frontend::{put_cstr, write_message};
use shardgate_wire::Frame;

/// One RowDescription field, as PostgreSQL sent it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Field {
    pub name: String,
    pub table_oid: u32,
    pub column: i16,
    pub type_oid: u32,
    pub type_len: i16,
    pub type_mod: i32,
    pub format: i16,
}

/// Why a backend message could not be read; `&'static str` names the message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum DecodeError {
    #[error("truncated {0}")]
    Truncated(&'static str),
    #[error("unterminated string in {0}")]
    Unterminated(&'static str),
    #[error("invalid UTF-8 in {0}")]
    InvalidUtf8(&'static str),
    #[error("trailing bytes in {0}")]
    TrailingBytes(&'static str),
    #[error("negative RowDescription field count")]
    NegativeFieldCount,
    #[error("negative DataRow column count")]
    NegativeColumnCount,
}

/// Cursor over a message body that reports truncation as an error.
struct Reader<'a> {
    buf: &'a [u8],
    what: &'static str,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.buf.len() < n {
            return Err(DecodeError::Truncated(self.what));
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }

    fn i16(&mut self) -> Result<i16, DecodeError> {
        let b = self.take(2)?;
        Ok(i16::from_be_bytes([b[0], b[1]]))
    }

    fn i32(&mut self) -> Result<i32, DecodeError> {
        let b = self.take(4)?;
        Ok(i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn cstr(&mut self) -> Result<&'a str, DecodeError> {
        let end = self
            .buf
            .iter()
            .position(|b| *b == 0)
            .ok_or(DecodeError::Unterminated(self.what))?;
        let s = std::str::from_utf8(&self.buf[..end])
            .map_err(|_| DecodeError::InvalidUtf8(self.what))?;
        self.buf = &self.buf[end + 1..];
        Ok(s)
    }

    fn finish(&self) -> Result<(), DecodeError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(DecodeError::TrailingBytes(self.what))
        }
    }
}

/// The fields of a RowDescription frame.
pub(crate) fn row_description(frame: &Frame) -> Result<Vec<Field>, DecodeError> {
    let mut r = Reader {
        buf: frame.body(),
        what: "RowDescription",
    };
    let n = r.i16()?;
    let n = usize::try_from(n).map_err(|_| DecodeError::NegativeFieldCount)?;
    let mut fields = Vec::with_capacity(n);
    for _ in 0..n {
        let name = r.cstr()?.to_owned();
        let table_oid = r.i32()? as u32;
        let column = r.i16()?;
        let type_oid = r.i32()? as u32;
        let type_len = r.i16()?;
        let type_mod = r.i32()?;
        let format = r.i16()?;
        fields.push(Field {
            name,
            table_oid,
            column,
            type_oid,
            type_len,
            type_mod,
            format,
        });
    }
    r.finish()?;
    Ok(fields)
}

/// Appends a RowDescription with `fields`.
pub(crate) fn write_row_description(out: &mut BytesMut, fields: &[Field]) {
    write_message(out, backend::ROW_DESCRIPTION, |b| {
        b.put_i16(fields.len() as i16);
        for f in fields {
            put_cstr(b, &f.name);
            b.put_u32(f.table_oid);
            b.put_i16(f.column);
            b.put_u32(f.type_oid);
            b.put_i16(f.type_len);
            b.put_i32(f.type_mod);
            b.put_i16(f.format);
        }
    });
}

/// The format code of result column `i` under Bind result-format codes `formats` (none = all
/// text, one = all that one, else one per column).
pub(crate) fn result_format(formats: &[i16], i: usize) -> i16 {
    match formats {
        [] => 0,
        [one] => *one,
        many => many.get(i).copied().unwrap_or(0),
    }
}

/// The value ranges of a DataRow: `None` for NULL, else the byte range inside the frame.
pub(crate) fn data_row(frame: &Frame) -> Result<Vec<Option<std::ops::Range<usize>>>, DecodeError> {
    let body = frame.body();
    let mut r = Reader {
        buf: body,
        what: "DataRow",
    };
    let n = r.i16()?;
    let n = usize::try_from(n).map_err(|_| DecodeError::NegativeColumnCount)?;
    let mut values = Vec::with_capacity(n);
    for _ in 0..n {
        let len = r.i32()?;
        if len < 0 {
            values.push(None);
            continue;
        }
        let start = body.len() - r.buf.len() + shardgate_wire::frame::HEADER_LEN;
        r.take(len as usize)?;
        values.push(Some(start..start + len as usize));
    }
    r.finish()?;
    Ok(values)
}

/// The values of a DataRow as cheap slices of the frame (`None` for NULL).
pub(crate) fn data_row_values(frame: &Frame) -> Result<Vec<Option<Bytes>>, DecodeError> {
    let bytes = frame.clone().into_bytes();
    Ok(data_row(frame)?
        .into_iter()
        .map(|r| r.map(|r| bytes.slice(r)))
        .collect())
}

/// Appends a DataRow made of the first `keep` values of `frame` (to drop hidden columns).
pub(crate) fn write_truncated_row(
    out: &mut BytesMut,
    frame: &Frame,
    keep: usize,
) -> Result<(), DecodeError> {
    let ranges = data_row(frame)?;
    let bytes = frame.as_bytes();
    write_message(out, backend::DATA_ROW, |b| {
        let kept = &ranges[..keep.min(ranges.len())];
        b.put_i16(kept.len() as i16);
        for r in kept {
            match r {
                None => b.put_i32(-1),
                Some(r) => {
                    b.put_i32(r.len() as i32);
                    b.put_slice(&bytes[r.clone()]);
                }
            }
        }
    });
    Ok(())
}

/// Appends `CommandComplete "SELECT n"`.
pub(crate) fn write_select_complete(out: &mut BytesMut, rows: u64) {
    write_message(out, backend::COMMAND_COMPLETE, |b| {
        put_cstr(b, &format!("SELECT {rows}"))
    });
}

/// The (code, value) fields of an ErrorResponse or NoticeResponse.
pub(crate) fn error_response_fields(frame: &Frame) -> Result<Vec<(u8, String)>, DecodeError> {
    let mut r = Reader {
        buf: frame.body(),
        what: "ErrorResponse",
    };
    let mut fields = Vec::new();
    loop {
        let code = r.take(1)?[0];
        if code == 0 {
            break;
        }
        fields.push((code, r.cstr()?.to_owned()));
    }
    r.finish()?;
    Ok(fields)
}

/// Appends a copy of a shard's ErrorResponse whose message starts with `prefix`. The cursor
/// position (`P`) is dropped when the shard ran a text other than the client's, where it
/// would point at the wrong place.
pub(crate) fn write_prefixed_error(
    out: &mut BytesMut,
    frame: &Frame,
    prefix: &str,
    keep_position: bool,
) -> Result<(), DecodeError> {
    let fields = error_response_fields(frame)?;
    write_message(out, backend::ERROR_RESPONSE, |b| {
        for (code, value) in &fields {
            if *code == b'P' && !keep_position {
                continue;
            }
            b.put_u8(*code);
            if *code == b'M' {
                put_cstr(b, &format!("{prefix}{value}"));
            } else {
                put_cstr(b, value);
            }
        }
        b.put_u8(0);
    });
    Ok(())
}

/// The message and SQLSTATE of an ErrorResponse, for logs and internal queries.
pub(crate) fn error_summary(frame: &Frame) -> (String, String) {
    match error_response_fields(frame) {
        Ok(fields) => {
            let get = |c: u8| {
                fields
                    .iter()
                    .find(|(k, _)| *k == c)
                    .map(|(_, v)| v.clone())
                    .unwrap_or_default()
            };
            (get(b'C'), get(b'M'))
        }
        Err(e) => ("XX000".into(), e.to_string()),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A DataRow frame with the given values.
    pub(crate) fn row(values: &[Option<&[u8]>]) -> Frame {
        let mut out = BytesMut::new();
        write_message(&mut out, backend::DATA_ROW, |b| {
            b.put_i16(values.len() as i16);
            for v in values {
                match v {
                    None => b.put_i32(-1),
                    Some(v) => {
                        b.put_i32(v.len() as i32);
                        b.put_slice(v);
                    }
                }
            }
        });
        Frame::from_bytes(out.freeze())
    }

    pub(crate) fn field(name: &str, type_oid: u32, format: i16) -> Field {
        Field {
            name: name.into(),
            table_oid: 0,
            column: 0,
            type_oid,
            type_len: -1,
            type_mod: -1,
            format,
        }
    }

    #[test]
    fn row_description_round_trips() {
        let fields = vec![field("a", 23, 0), field("b", 25, 1)];
        let mut out = BytesMut::new();
        write_row_description(&mut out, &fields);
        let frame = Frame::from_bytes(out.freeze());
        assert_eq!(row_description(&frame).unwrap(), fields);
    }

    #[test]
    fn data_rows_decode_and_truncate() {
        let f = row(&[Some(b"1"), None, Some(b"xyz")]);
        let v = data_row_values(&f).unwrap();
        assert_eq!(v[0].as_deref(), Some(&b"1"[..]));
        assert_eq!(v[1], None);
        assert_eq!(v[2].as_deref(), Some(&b"xyz"[..]));
        let mut out = BytesMut::new();
        write_truncated_row(&mut out, &f, 2).unwrap();
        let t = Frame::from_bytes(out.freeze());
        assert_eq!(
            data_row_values(&t).unwrap(),
            vec![Some(Bytes::from("1")), None]
        );
    }

    #[test]
    fn malformed_rows_are_errors() {
        let mut out = BytesMut::new();
        write_message(&mut out, backend::DATA_ROW, |b| {
            b.put_i16(2);
            b.put_i32(10);
            b.put_slice(b"abc");
        });
        assert!(data_row(&Frame::from_bytes(out.freeze())).is_err());
        let mut out = BytesMut::new();
        write_message(&mut out, backend::ROW_DESCRIPTION, |b| {
            b.put_i16(1);
            b.put_slice(b"name-without-nul");
        });
        assert!(row_description(&Frame::from_bytes(out.freeze())).is_err());
    }

    #[test]
    fn errors_get_a_prefix_and_keep_their_fields() {
        let mut out = BytesMut::new();
        write_message(&mut out, backend::ERROR_RESPONSE, |b| {
            for (k, v) in [
                (b'S', "ERROR"),
                (b'C', "22012"),
                (b'M', "division by zero"),
                (b'P', "8"),
            ] {
                b.put_u8(k);
                put_cstr(b, v);
            }
            b.put_u8(0);
        });
        let frame = Frame::from_bytes(out.freeze());
        let mut w = BytesMut::new();
        write_prefixed_error(&mut w, &frame, "shard s1: ", false).unwrap();
        let fields = error_response_fields(&Frame::from_bytes(w.freeze())).unwrap();
        assert_eq!(
            fields,
            vec![
                (b'S', "ERROR".into()),
                (b'C', "22012".into()),
                (b'M', "shard s1: division by zero".into())
            ]
        );
    }
}
