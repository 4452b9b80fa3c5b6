//! Result rows from a server: RowDescription and DataRow, read where a cross-shard merge must
//! look inside them and written again when it changes them (hidden columns, result formats).

use std::ops::Range;

use bytes::{BufMut, Bytes, BytesMut};

use crate::backend::{DATA_ROW, ROW_DESCRIPTION};
use crate::frame::HEADER_LEN;
use crate::frontend::{put_cstr, put_value, write_message};
use crate::{Cursor, DecodeError, Frame};

/// One column of a RowDescription, as the server sent it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Field {
    pub name: String,
    pub table_oid: u32,
    pub column: i16,
    pub type_oid: u32,
    pub type_len: i16,
    pub type_mod: i32,
    pub format: i16,
}

/// The columns of a RowDescription frame.
pub fn row_description(frame: &Frame) -> Result<Vec<Field>, DecodeError> {
    let mut c = Cursor::new(frame.tag(), frame.body());
    let n = c.count16()?;
    let mut fields = Vec::with_capacity(n);
    for _ in 0..n {
        fields.push(Field {
            name: c.cstr()?.to_owned(),
            table_oid: c.i32()? as u32,
            column: c.i16()?,
            type_oid: c.i32()? as u32,
            type_len: c.i16()?,
            type_mod: c.i32()?,
            format: c.i16()?,
        });
    }
    c.finish()?;
    Ok(fields)
}

impl Field {
    /// A text column of the proxy's own result sets: no table, variable length, text format.
    pub fn text(name: &str) -> Field {
        Field {
            name: name.to_owned(),
            table_oid: 0,
            column: 0,
            type_oid: 25,
            type_len: -1,
            type_mod: -1,
            format: 0,
        }
    }
}

/// Appends a RowDescription of text columns named `names` (as the proxy's own result sets use).
pub fn write_text_row_description(out: &mut BytesMut, names: &[&str]) {
    let fields: Vec<Field> = names.iter().map(|n| Field::text(n)).collect();
    write_row_description(out, &fields);
}

/// Appends a RowDescription with `fields`.
pub fn write_row_description(out: &mut BytesMut, fields: &[Field]) {
    write_message(out, ROW_DESCRIPTION, |b| {
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

/// The values of a DataRow frame: `None` for NULL (a negative length), else the value's byte
/// range inside the whole frame (header included), so it can be sliced out without a copy.
pub fn data_row(frame: &Frame) -> Result<Vec<Option<Range<usize>>>, DecodeError> {
    let mut c = Cursor::new(frame.tag(), frame.body());
    let n = c.count16()?;
    let mut values = Vec::with_capacity(n);
    for _ in 0..n {
        let Ok(len) = usize::try_from(c.i32()?) else {
            values.push(None);
            continue;
        };
        let start = HEADER_LEN + c.position();
        c.take(len)?;
        values.push(Some(start..start + len));
    }
    c.finish()?;
    Ok(values)
}

/// The values of a DataRow as cheap slices of the frame (`None` for NULL).
pub fn data_row_values(frame: &Frame) -> Result<Vec<Option<Bytes>>, DecodeError> {
    let bytes = frame.clone().into_bytes();
    Ok(data_row(frame)?
        .into_iter()
        .map(|r| r.map(|r| bytes.slice(r)))
        .collect())
}

/// Appends a DataRow made of the first `keep` values of `frame` (to drop hidden columns).
pub fn write_truncated_row(
    out: &mut BytesMut,
    frame: &Frame,
    keep: usize,
) -> Result<(), DecodeError> {
    let ranges = data_row(frame)?;
    let bytes = frame.as_bytes();
    write_message(out, DATA_ROW, |b| {
        let kept = &ranges[..keep.min(ranges.len())];
        b.put_i16(kept.len() as i16);
        for r in kept {
            put_value(b, r.clone().map(|r| &bytes[r]));
        }
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::write_data_row;

    fn field(name: &str, type_oid: u32, format: i16) -> Field {
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

    fn frame(write: impl FnOnce(&mut BytesMut)) -> Frame {
        let mut out = BytesMut::new();
        write(&mut out);
        Frame::from_bytes(out.freeze())
    }

    #[test]
    fn row_description_round_trips() {
        let fields = vec![field("a", 23, 0), field("b", 25, 1)];
        let f = frame(|out| write_row_description(out, &fields));
        assert_eq!(row_description(&f).unwrap(), fields);
    }

    #[test]
    fn text_row_description_is_text_columns() {
        let f = frame(|out| write_text_row_description(out, &["shard", "role"]));
        assert_eq!(
            row_description(&f).unwrap(),
            vec![field("shard", 25, 0), field("role", 25, 0)]
        );
    }

    #[test]
    fn data_rows_decode_and_truncate() {
        let f = frame(|out| write_data_row(out, &[Some("1"), None, Some("xyz")]));
        let v = data_row_values(&f).unwrap();
        assert_eq!(v[0].as_deref(), Some(&b"1"[..]));
        assert_eq!(v[1], None);
        assert_eq!(v[2].as_deref(), Some(&b"xyz"[..]));
        let t = frame(|out| write_truncated_row(out, &f, 2).unwrap());
        assert_eq!(
            data_row_values(&t).unwrap(),
            vec![Some(Bytes::from("1")), None]
        );
    }

    #[test]
    fn malformed_rows_are_errors() {
        let short_value = frame(|out| {
            write_message(out, DATA_ROW, |b| {
                b.put_i16(2);
                b.put_i32(10);
                b.put_slice(b"abc");
            })
        });
        assert_eq!(
            data_row(&short_value),
            Err(DecodeError::Truncated { tag: 'D' })
        );
        let negative_count = frame(|out| write_message(out, DATA_ROW, |b| b.put_i16(-1)));
        assert_eq!(
            data_row(&negative_count),
            Err(DecodeError::Negative { tag: 'D' })
        );
        let unterminated_name = frame(|out| {
            write_message(out, ROW_DESCRIPTION, |b| {
                b.put_i16(1);
                b.put_slice(b"name-without-nul");
            })
        });
        assert_eq!(
            row_description(&unterminated_name),
            Err(DecodeError::Truncated { tag: 'T' })
        );
        let negative_fields = frame(|out| write_message(out, ROW_DESCRIPTION, |b| b.put_i16(-2)));
        assert_eq!(
            row_description(&negative_fields),
            Err(DecodeError::Negative { tag: 'T' })
        );
    }
}
