//! Cutting tagged messages out of a byte stream by their header, with a size limit.

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt};

/// Length of a tagged message header: one tag byte and a big-endian i32 length that counts
/// itself but not the tag.
pub const HEADER_LEN: usize = 5;

/// One whole message, header included, as it came off the wire.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    bytes: Bytes,
}

impl Frame {
    /// Wraps bytes that hold exactly one message with its header.
    pub fn from_bytes(bytes: Bytes) -> Self {
        debug_assert!(bytes.len() >= HEADER_LEN);
        Frame { bytes }
    }

    pub fn tag(&self) -> u8 {
        self.bytes[0]
    }

    /// The body after the 5-byte header.
    pub fn body(&self) -> &[u8] {
        &self.bytes[HEADER_LEN..]
    }

    /// The whole message, header included, ready to forward.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    pub fn into_bytes(self) -> Bytes {
        self.bytes
    }

    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    pub fn is_empty(&self) -> bool {
        false
    }
}

#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("message of {claimed} bytes is larger than the limit of {limit} bytes")]
    TooLarge { claimed: usize, limit: usize },
    #[error("message length {0} is invalid")]
    BadLength(i32),
    #[error("connection closed in the middle of a message")]
    UnexpectedEof,
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// Checks a tagged message header and returns the total message length (header included),
/// or `None` if fewer than 5 bytes are available.
pub fn peek_tagged_len(buf: &[u8], limit: usize) -> Result<Option<usize>, FrameError> {
    if buf.len() < HEADER_LEN {
        return Ok(None);
    }
    let len = i32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]);
    if len < 4 {
        return Err(FrameError::BadLength(len));
    }
    let total = len as usize + 1;
    if total > limit {
        return Err(FrameError::TooLarge {
            claimed: total,
            limit,
        });
    }
    Ok(Some(total))
}

/// Below this much free room a read first makes more (see `read_frame`).
const MIN_READ_ROOM: usize = 128;

/// Reads tagged messages from a stream. `read_frame` is cancel-safe: a frame is only taken out
/// of the internal buffer once it is complete, so it can sit in a `tokio::select!`.
pub struct FrameReader<R> {
    inner: R,
    buf: BytesMut,
    limit: usize,
    /// The last read filled all the room there was: more is likely waiting.
    filled: bool,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    pub fn new(inner: R, limit: usize) -> Self {
        FrameReader {
            inner,
            // Grows by 8 KiB when a read needs room (see `read_frame`); small to start so
            // that idle connections stay cheap.
            buf: BytesMut::with_capacity(1024),
            limit,
            filled: false,
        }
    }

    /// Wraps a stream whose first bytes were already read into `buffered`.
    pub fn with_buffered(inner: R, limit: usize, buffered: BytesMut) -> Self {
        FrameReader {
            inner,
            buf: buffered,
            limit,
            filled: false,
        }
    }

    pub fn get_ref(&self) -> &R {
        &self.inner
    }

    pub fn get_mut(&mut self) -> &mut R {
        &mut self.inner
    }

    pub fn into_parts(self) -> (R, BytesMut) {
        (self.inner, self.buf)
    }

    pub fn limit(&self) -> usize {
        self.limit
    }

    pub fn set_limit(&mut self, limit: usize) {
        self.limit = limit;
    }

    /// Whether a complete frame is already buffered (no I/O needed to read it).
    pub fn has_buffered_frame(&self) -> bool {
        matches!(peek_tagged_len(&self.buf, self.limit), Ok(Some(n)) if self.buf.len() >= n)
    }

    /// Returns a buffered frame without doing any I/O, if one is complete.
    pub fn try_frame(&mut self) -> Result<Option<Frame>, FrameError> {
        match peek_tagged_len(&self.buf, self.limit)? {
            Some(total) if self.buf.len() >= total => {
                let bytes = self.buf.split_to(total).freeze();
                Ok(Some(Frame::from_bytes(bytes)))
            }
            Some(total) => {
                // Reserve what the frame needs (it is under the limit) so large
                // messages are read in few syscalls.
                self.buf.reserve(total - self.buf.len());
                Ok(None)
            }
            None => Ok(None),
        }
    }

    /// Moves the whole messages at the front of the buffer whose tag `pass` accepts to `out`,
    /// as they are, without cutting a frame for each (a result's rows); returns their bytes.
    /// A message that is not whole, has another tag or a bad length ends the run, for
    /// [`FrameReader::try_frame`] to read or report.
    pub fn forward_run(&mut self, pass: impl Fn(u8) -> bool, out: &mut BytesMut) -> usize {
        let mut end = 0;
        while let Some(&tag) = self.buf.get(end) {
            if !pass(tag) {
                break;
            }
            match peek_tagged_len(&self.buf[end..], self.limit) {
                Ok(Some(n)) if self.buf.len() - end >= n => end += n,
                _ => break,
            }
        }
        if end > 0 {
            out.extend_from_slice(&self.buf[..end]);
            self.buf.advance(end);
        }
        end
    }

    /// Reads the next whole frame; `Ok(None)` on a clean end of stream between messages.
    pub async fn read_frame(&mut self) -> Result<Option<Frame>, FrameError> {
        loop {
            if let Some(frame) = self.try_frame()? {
                return Ok(Some(frame));
            }
            let room = self.buf.capacity() - self.buf.len();
            if room < MIN_READ_ROOM || (self.filled && room < 1024) {
                // 8 KiB more only while reads fill the buffer (a stream of messages, e.g.
                // COPY data); otherwise 1 KiB, which a buffer whose frames are all gone takes
                // back in place: thousands of mostly idle clients keep 1 KiB each, not 10.
                // Not before the room is nearly used up: a frame still held (a client's
                // statement until its reply ends) makes a reserve allocate a new buffer, and
                // the first frame cut from it another shared header.
                self.buf.reserve(if self.filled { 8 * 1024 } else { 1024 });
            }
            let room = self.buf.capacity() - self.buf.len();
            let n = self.inner.read_buf(&mut self.buf).await?;
            self.filled = n == room;
            if n == 0 {
                return if self.buf.is_empty() {
                    Ok(None)
                } else {
                    Err(FrameError::UnexpectedEof)
                };
            }
        }
    }

    /// Reads an untagged startup-family packet (length-prefixed, no tag byte). Returns its body
    /// after the length; `Ok(None)` on a clean end of stream.
    pub async fn read_startup_packet(&mut self) -> Result<Option<Bytes>, FrameError> {
        loop {
            if self.buf.len() >= 4 {
                let len = i32::from_be_bytes([self.buf[0], self.buf[1], self.buf[2], self.buf[3]]);
                if len < 8 {
                    return Err(FrameError::BadLength(len));
                }
                let total = len as usize;
                if total > self.limit {
                    return Err(FrameError::TooLarge {
                        claimed: total,
                        limit: self.limit,
                    });
                }
                if self.buf.len() >= total {
                    let mut packet = self.buf.split_to(total);
                    packet.advance(4);
                    return Ok(Some(packet.freeze()));
                }
            }
            let n = self.inner.read_buf(&mut self.buf).await?;
            if n == 0 {
                return if self.buf.is_empty() {
                    Ok(None)
                } else {
                    Err(FrameError::UnexpectedEof)
                };
            }
        }
    }

    /// Bytes read from the stream but not yet returned as frames.
    pub fn buffered(&self) -> &[u8] {
        &self.buf
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn forwards_a_run_of_whole_messages_of_one_kind() {
        // Two whole D, a C, then a D cut short.
        let mut data = vec![b'D', 0, 0, 0, 6, 1, 2, b'D', 0, 0, 0, 5, 3];
        data.extend_from_slice(&[b'C', 0, 0, 0, 5, 0, b'D', 0, 0, 0, 9, 1]);
        let mut reader = FrameReader::new(&data[..], 1024);
        let first = reader.read_frame().await.unwrap().unwrap();
        assert_eq!(first.body(), &[1, 2]);
        let mut out = BytesMut::new();
        // The next D goes as it is; the C stops the run and is read as a frame.
        assert_eq!(reader.forward_run(|t| t == b'D', &mut out), 6);
        assert_eq!(&out[..], &[b'D', 0, 0, 0, 5, 3]);
        assert_eq!(reader.forward_run(|t| t == b'D', &mut out), 0);
        assert_eq!(reader.read_frame().await.unwrap().unwrap().tag(), b'C');
        // A message not yet whole stays for read_frame.
        assert_eq!(reader.forward_run(|t| t == b'D', &mut out), 0);
        assert_eq!(reader.buffered(), &[b'D', 0, 0, 0, 9, 1]);
        // A bad length is left for read_frame to report.
        let bad = [b'D', 0, 0, 0, 2];
        let mut reader = FrameReader::new(&bad[..], 1024);
        reader.buf.extend_from_slice(&bad);
        assert_eq!(reader.forward_run(|t| t == b'D', &mut out), 0);
        assert!(matches!(reader.try_frame(), Err(FrameError::BadLength(2))));
    }

    #[tokio::test]
    async fn splits_frames_and_rejects_oversized() {
        let mut data = vec![b'Q', 0, 0, 0, 8, b's', b'e', b'l', 0, b'S', 0, 0, 0, 4];
        data.extend_from_slice(&[b'Q', 0x7f, 0, 0, 0]);
        let mut reader = FrameReader::new(&data[..], 1024);
        let f = reader.read_frame().await.unwrap().unwrap();
        assert_eq!(f.tag(), b'Q');
        assert_eq!(f.body(), b"sel\0");
        let f = reader.read_frame().await.unwrap().unwrap();
        assert_eq!(f.tag(), b'S');
        assert!(f.body().is_empty());
        assert!(matches!(
            reader.read_frame().await,
            Err(FrameError::TooLarge { .. })
        ));
    }

    #[tokio::test]
    async fn eof_mid_message_is_an_error() {
        let data = [b'Q', 0, 0, 0, 9, b's'];
        let mut reader = FrameReader::new(&data[..], 1024);
        assert!(matches!(
            reader.read_frame().await,
            Err(FrameError::UnexpectedEof)
        ));
        let mut empty = FrameReader::new(&[][..], 1024);
        assert!(empty.read_frame().await.unwrap().is_none());
    }

    #[tokio::test]
    async fn bad_length_is_an_error() {
        let data = [b'Q', 0, 0, 0, 3];
        let mut reader = FrameReader::new(&data[..], 1024);
        assert!(matches!(
            reader.read_frame().await,
            Err(FrameError::BadLength(3))
        ));
    }
}
