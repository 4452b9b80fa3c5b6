//! PostgreSQL wire-protocol framing and the handful of messages shardgate must read or write.
//!
//! shardgate forwards bytes: it cuts messages out of a stream by their 5-byte header and only
//! decodes the few it has to look inside (the startup family, Query, Parse, Bind, Describe, Close
//! from clients; ReadyForQuery, ErrorResponse, ParameterStatus, BackendKeyData, the auth
//! requests, and the RowDescription and DataRow a cross-shard merge reads, from servers). Every
//! decoder here works on one isolated frame whose length was checked first, never on the socket
//! buffer, and returns an error instead of panicking on any input.

pub mod backend;
pub mod frame;
pub mod frontend;
pub mod row;
pub mod sqlstate;
pub mod startup;
pub mod stream;

pub use frame::{Frame, FrameError, FrameReader};

/// Errors from decoding a message body.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("message '{tag}' is truncated")]
    Truncated { tag: char },
    #[error("message '{tag}' has {extra} bytes past its last field")]
    TrailingBytes { tag: char, extra: usize },
    #[error("message '{tag}' has a string that is not valid UTF-8")]
    NotUtf8 { tag: char },
    #[error("message '{tag}' has a negative count or length")]
    Negative { tag: char },
    #[error("unexpected message: expected '{expected}', got '{got}'")]
    UnexpectedTag { expected: char, got: char },
}

/// A read cursor over one message body that never reads past its end.
pub(crate) struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
    tag: char,
}

impl<'a> Cursor<'a> {
    pub(crate) fn new(tag: u8, buf: &'a [u8]) -> Self {
        Cursor {
            buf,
            pos: 0,
            tag: tag as char,
        }
    }

    pub(crate) fn truncated(&self) -> DecodeError {
        DecodeError::Truncated { tag: self.tag }
    }

    pub(crate) fn position(&self) -> usize {
        self.pos
    }

    pub(crate) fn remaining(&self) -> &'a [u8] {
        &self.buf[self.pos..]
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.pos >= self.buf.len()
    }

    /// A NUL-terminated string as bytes: SQL text and error messages are in the client's or
    /// server's encoding, which need not be UTF-8.
    pub(crate) fn cstr_bytes(&mut self) -> Result<&'a [u8], DecodeError> {
        let rest = self.remaining();
        let nul = memchr::memchr(0, rest).ok_or_else(|| self.truncated())?;
        self.pos += nul + 1;
        Ok(&rest[..nul])
    }

    pub(crate) fn cstr(&mut self) -> Result<&'a str, DecodeError> {
        let rest = self.remaining();
        let nul = memchr::memchr(0, rest).ok_or_else(|| self.truncated())?;
        let s = std::str::from_utf8(&rest[..nul])
            .map_err(|_| DecodeError::NotUtf8 { tag: self.tag })?;
        self.pos += nul + 1;
        Ok(s)
    }

    pub(crate) fn u8(&mut self) -> Result<u8, DecodeError> {
        let b = *self.remaining().first().ok_or_else(|| self.truncated())?;
        self.pos += 1;
        Ok(b)
    }

    pub(crate) fn i16(&mut self) -> Result<i16, DecodeError> {
        let bytes = self.take(2)?;
        Ok(i16::from_be_bytes([bytes[0], bytes[1]]))
    }

    pub(crate) fn i32(&mut self) -> Result<i32, DecodeError> {
        let bytes = self.take(4)?;
        Ok(i32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]))
    }

    /// A count that must not be negative.
    pub(crate) fn count16(&mut self) -> Result<usize, DecodeError> {
        let n = self.i16()?;
        usize::try_from(n).map_err(|_| DecodeError::Negative { tag: self.tag })
    }

    pub(crate) fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        let end = self.pos.checked_add(n).ok_or_else(|| self.truncated())?;
        let bytes = self
            .buf
            .get(self.pos..end)
            .ok_or_else(|| self.truncated())?;
        self.pos = end;
        Ok(bytes)
    }

    pub(crate) fn finish(&self) -> Result<(), DecodeError> {
        if self.is_empty() {
            Ok(())
        } else {
            Err(DecodeError::TrailingBytes {
                tag: self.tag,
                extra: self.buf.len() - self.pos,
            })
        }
    }
}
