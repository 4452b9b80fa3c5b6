//! What a request answered, read from the messages the client gets: rows from CommandComplete
//! tags and the first error's SQLSTATE class.

use shardgate_wire::backend;

/// The rows and first error of one request.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Tally {
    pub(crate) rows: u64,
    /// The first error's SQLSTATE (five ASCII characters).
    pub(crate) error: Option<[u8; 5]>,
}

impl Tally {
    /// A CommandComplete's body (`SELECT 5\0`, `INSERT 0 5\0`, `CREATE TABLE\0`): its count.
    pub(crate) fn command_complete(&mut self, body: &[u8]) {
        let body = body.strip_suffix(b"\0").unwrap_or(body);
        let last = body.rsplit(|b| *b == b' ').next().unwrap_or(b"");
        if last.is_empty() || !last.iter().all(u8::is_ascii_digit) || last.len() == body.len() {
            return;
        }
        let n = last.iter().fold(0u64, |n, d| {
            n.saturating_mul(10).saturating_add(u64::from(d - b'0'))
        });
        self.rows = self.rows.saturating_add(n);
    }

    /// An error with SQLSTATE `code`; only the first of a request counts.
    pub(crate) fn error(&mut self, code: &str) {
        if self.error.is_none() {
            let mut c = [b'?'; 5];
            for (to, from) in c.iter_mut().zip(code.bytes()) {
                *to = from;
            }
            self.error = Some(c);
        }
    }

    /// An ErrorResponse's body: its `C` field.
    fn error_body(&mut self, mut body: &[u8]) {
        while let Some((&kind, rest)) = body.split_first() {
            if kind == 0 {
                break;
            }
            let end = rest.iter().position(|b| *b == 0).unwrap_or(rest.len());
            if kind == b'C' {
                self.error(std::str::from_utf8(&rest[..end]).unwrap_or("?????"));
                return;
            }
            body = rest.get(end + 1..).unwrap_or(&[]);
        }
    }

    /// Reads the whole messages in `buf` (bytes the proxy is about to send the client) for
    /// their CommandCompletes and ErrorResponses; stops at a cut message.
    pub(crate) fn scan(&mut self, buf: &[u8]) {
        let mut at = 0;
        while let Some(header) = buf.get(at..at + 5) {
            let len = u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize;
            let Some(body) = buf.get(at + 5..at + 1 + len.max(4)) else {
                return;
            };
            match header[0] {
                backend::COMMAND_COMPLETE => self.command_complete(body),
                backend::ERROR_RESPONSE => self.error_body(body),
                _ => {}
            }
            at += 1 + len.max(4);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BytesMut;
    use shardgate_wire::backend::{write_command_complete, write_error, Severity};

    #[test]
    fn tags_and_errors() {
        let mut t = Tally::default();
        for tag in [
            "SELECT 5",
            "INSERT 0 3",
            "UPDATE 2",
            "CREATE TABLE",
            "COPY 10",
            "BEGIN",
        ] {
            let mut b = BytesMut::new();
            write_command_complete(&mut b, tag);
            t.scan(&b);
        }
        assert_eq!(t.rows, 20);
        let mut b = BytesMut::new();
        write_error(&mut b, Severity::Error, "0A000", "no", None);
        write_error(&mut b, Severity::Error, "23505", "dup", None);
        t.scan(&b[..b.len() - 3]);
        assert_eq!(t.error, Some(*b"0A000"));
    }
}
