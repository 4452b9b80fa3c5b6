//! Capturing a cross-shard read's output instead of sending it: while a [`Capture`] is set on
//! the client's I/O, what the merge or gather writes for the client stays in the buffer (no
//! flush), within the gather limits; afterwards [`Captured::split`] takes it apart into what
//! precedes the rows, the RowDescription, and the rows.

use std::collections::VecDeque;

use bytes::{Bytes, BytesMut};
use shardgate_wire::backend;
use shardgate_wire::frame::peek_tagged_len;

use super::HeldResult;

/// A capture in progress: from `from` in the client's buffer on.
#[derive(Debug)]
pub(crate) struct Capture {
    from: usize,
    max_rows: u64,
    max_bytes: u64,
    rows: u64,
    too_large: bool,
}

impl Capture {
    pub(crate) fn new(from: usize, max_rows: u64, max_bytes: u64) -> Capture {
        Capture {
            from,
            max_rows,
            max_bytes,
            rows: 0,
            too_large: false,
        }
    }

    pub(crate) fn from(&self) -> usize {
        self.from
    }

    /// Called after each row the merge writes: past a limit, everything captured is dropped
    /// and the rest of the result is read and dropped too (the servers' results end cleanly;
    /// the client gets 54000).
    pub(crate) fn row_written(&mut self, out: &mut BytesMut) {
        self.rows += 1;
        let bytes = out.len().saturating_sub(self.from) as u64;
        if self.too_large || self.rows > self.max_rows || bytes > self.max_bytes {
            self.too_large = true;
            out.truncate(self.from);
        }
    }

    pub(crate) fn finish(self, captured: BytesMut) -> Captured {
        if self.too_large {
            Captured::TooLarge {
                max_rows: self.max_rows,
                max_bytes: self.max_bytes,
            }
        } else {
            Captured::split(captured)
        }
    }
}

/// A captured result.
#[derive(Debug)]
pub(crate) enum Captured {
    /// Rows: `before` holds what came before them (ParseComplete, BindComplete,
    /// ParameterDescription, notices), the RowDescription is in the result.
    Rows {
        before: BytesMut,
        result: Box<HeldResult>,
    },
    /// It ended with an error (or something else the client must get as it is): the bytes
    /// go to the client unchanged.
    AsIs(BytesMut),
    /// Past a limit.
    TooLarge { max_rows: u64, max_bytes: u64 },
}

impl Captured {
    /// Splits a captured result into its parts, or keeps it whole when it holds an error.
    pub(crate) fn split(captured: BytesMut) -> Captured {
        let frozen = captured.clone().freeze();
        let mut before = BytesMut::new();
        let mut description = None;
        let mut rows = VecDeque::new();
        let mut at = 0;
        while at < frozen.len() {
            let Ok(Some(len)) = peek_tagged_len(&frozen[at..], usize::MAX) else {
                return Captured::AsIs(captured);
            };
            let end = (at + len).min(frozen.len());
            let frame: Bytes = frozen.slice(at..end);
            match frame[0] {
                backend::DATA_ROW => rows.push_back(frame),
                backend::ROW_DESCRIPTION => description = Some(frame),
                // The read's own end: each Execute or FETCH writes its own.
                backend::COMMAND_COMPLETE | backend::PORTAL_SUSPENDED => {}
                backend::ERROR_RESPONSE | backend::EMPTY_QUERY_RESPONSE => {
                    return Captured::AsIs(captured)
                }
                _ if rows.is_empty() => before.extend_from_slice(&frame),
                // A notice among the rows: not worth keeping its place.
                _ => {}
            }
            at = end;
        }
        Captured::Rows {
            before,
            result: Box::new(HeldResult::new(description, rows)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shardgate_wire::backend::{
        write_bind_complete, write_command_complete, write_data_row, write_error,
        write_parse_complete, Severity,
    };
    use shardgate_wire::row::write_text_row_description;

    #[test]
    fn splits_a_result_into_prelude_description_and_rows() {
        let mut out = BytesMut::new();
        write_parse_complete(&mut out);
        write_bind_complete(&mut out);
        write_text_row_description(&mut out, &["a"]);
        write_data_row(&mut out, &[Some("1")]);
        write_data_row(&mut out, &[None]);
        write_command_complete(&mut out, "SELECT 2");
        let Captured::Rows { before, result } = Captured::split(out) else {
            panic!("not split");
        };
        assert_eq!(&before[..], &[b'1', 0, 0, 0, 4, b'2', 0, 0, 0, 4]);
        assert_eq!(result.description.as_ref().map(|d| d[0]), Some(b'T'));
        assert_eq!(result.rows.len(), 2);
    }

    #[test]
    fn keeps_an_error_whole() {
        let mut out = BytesMut::new();
        write_data_row(&mut out, &[Some("1")]);
        write_error(&mut out, Severity::Error, "22012", "division by zero", None);
        let len = out.len();
        match Captured::split(out) {
            Captured::AsIs(b) => assert_eq!(b.len(), len),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_result_past_a_limit_is_dropped_as_it_comes() {
        let mut out = BytesMut::from(&b"earlier"[..]);
        let mut c = Capture::new(out.len(), 2, 1 << 20);
        for _ in 0..3 {
            write_data_row(&mut out, &[Some("x")]);
            c.row_written(&mut out);
        }
        assert_eq!(&out[..], b"earlier");
        assert!(matches!(
            c.finish(out.split_off(7)),
            Captured::TooLarge { max_rows: 2, .. }
        ));
    }
}
