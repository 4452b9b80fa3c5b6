//! Where a cross-shard result goes: the client's output buffer, written to the client's socket
//! whenever it is large (the session's 64 KiB flush threshold, `ClientIo::flush_if_large`).
//! The merge awaits that write before it reads another row, so a client that reads slowly stops the proxy reading the shards' sockets (and the
//! shards then wait in their own sends): a result of any size costs the proxy about one
//! flush's worth of memory plus each shard's read buffer.
//!
//! Until the first write, everything this result added can still be taken back (a shard's
//! error or a refusal then replaces the rows, as before streaming). After it, an error follows
//! the rows already sent, as PostgreSQL itself sends an error in the middle of a result.

use std::future::Future;

use bytes::BytesMut;

use super::Stop;

/// The client's side of a cross-shard read.
pub(crate) trait ClientSink {
    /// The bytes for the client not yet written.
    fn buffer(&mut self) -> &mut BytesMut;

    /// When the buffer is large, writes it to the client and empties it; `Err` when the
    /// client is gone.
    fn write_out_if_large(&mut self) -> impl Future<Output = Result<(), ClientGone>>;
}

/// The client's connection failed while a result was being written to it.
#[derive(Debug)]
pub(crate) struct ClientGone;

/// A plain buffer is a client that is never written to: the whole result stays in memory
/// (the tests that compare whole results byte for byte use it).
impl ClientSink for BytesMut {
    fn buffer(&mut self) -> &mut BytesMut {
        self
    }

    async fn write_out_if_large(&mut self) -> Result<(), ClientGone> {
        Ok(())
    }
}

impl ClientSink for crate::io::ClientIo {
    fn buffer(&mut self) -> &mut BytesMut {
        &mut self.out
    }

    async fn write_out_if_large(&mut self) -> Result<(), ClientGone> {
        self.row_written().await.map_err(|_| ClientGone)
    }
}

/// One result on its way to the client.
pub(crate) struct Output<'c, C: ClientSink> {
    client: &'c mut C,
    /// Where this result begins in the buffer (0 once part of it was written).
    start: usize,
    /// Part of this result already went to the client.
    sent: bool,
}

impl<'c, C: ClientSink> Output<'c, C> {
    pub(crate) fn new(client: &'c mut C) -> Self {
        let start = client.buffer().len();
        Output {
            client,
            start,
            sent: false,
        }
    }

    pub(crate) fn buf(&mut self) -> &mut BytesMut {
        self.client.buffer()
    }

    /// Writes the buffer out when it is large; call after each row. Waits for a slow client.
    pub(crate) async fn row_written(&mut self) -> Result<(), Stop> {
        let before = self.client.buffer().len();
        self.client
            .write_out_if_large()
            .await
            .map_err(|_| Stop::ClientGone)?;
        // A plain buffer keeps everything: it never sends, so nothing is committed.
        if self.client.buffer().len() < before {
            self.start = 0;
            self.sent = true;
        }
        Ok(())
    }

    /// Drops what this result buffered so far, when none of it was sent; an error written
    /// next then replaces the result. Once rows were sent, they stay and the error follows.
    pub(crate) fn take_back(&mut self) {
        if !self.sent {
            let start = self.start;
            self.client.buffer().truncate(start);
        }
    }

    /// Whether rows already went to the client (an error can only follow them).
    pub(crate) fn sent(&self) -> bool {
        self.sent
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Where the test client writes out.
    const FLUSH_AT: usize = 64 * 1024;

    /// A client that records what was written to it.
    #[derive(Default)]
    struct Recorder {
        buf: BytesMut,
        written: Vec<u8>,
    }

    impl ClientSink for Recorder {
        fn buffer(&mut self) -> &mut BytesMut {
            &mut self.buf
        }

        async fn write_out_if_large(&mut self) -> Result<(), ClientGone> {
            if self.buf.len() < FLUSH_AT {
                return Ok(());
            }
            self.written.extend_from_slice(&self.buf);
            self.buf.clear();
            Ok(())
        }
    }

    #[tokio::test]
    async fn takes_back_until_written_then_keeps() {
        let mut client = Recorder::default();
        client.buf.extend_from_slice(b"earlier");
        let mut out = Output::new(&mut client);
        out.buf().extend_from_slice(b"row");
        out.row_written().await.unwrap();
        out.take_back();
        assert_eq!(&client.buf[..], b"earlier");

        let mut out = Output::new(&mut client);
        out.buf().extend_from_slice(&vec![b'x'; FLUSH_AT]);
        out.row_written().await.unwrap();
        assert!(out.sent());
        out.buf().extend_from_slice(b"tail");
        out.take_back();
        assert_eq!(&client.buf[..], b"tail");
        assert_eq!(client.written.len(), "earlier".len() + FLUSH_AT);
    }

    #[tokio::test]
    async fn a_plain_buffer_keeps_the_whole_result() {
        let mut buf = BytesMut::new();
        let mut out = Output::new(&mut buf);
        out.buf().extend_from_slice(&vec![b'x'; FLUSH_AT + 1]);
        out.row_written().await.unwrap();
        assert!(!out.sent());
        out.take_back();
        assert!(buf.is_empty());
    }
}
