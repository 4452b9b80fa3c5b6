//! `COPY … TO STDOUT` over several shards: each shard's output is streamed to the client in
//! turn, as one COPY. The first shard's CopyOutResponse is the client's; a header line, or
//! the binary file header, comes from the first shard only, and the binary trailer from the
//! last; the row counts are summed into one `COPY N`.

use std::time::Duration;

use bytes::BytesMut;

use shardgate_pool::{ServerConn, ServerError};
use shardgate_router::CopyOutSpec;
use shardgate_wire::{backend, frontend, Frame};

use crate::io::ClientIo;

/// Longest wait for a shard's next message (a COPY of a slow query may take a while to
/// produce its first row).
const FRAME_TIMEOUT: Duration = Duration::from_secs(300);
const BINARY_HEADER: usize = 19;

/// What went wrong on a shard: its ErrorResponse, or a lost connection.
pub(crate) enum OutFailure {
    Refused(String, Frame),
    Lost(String, ServerError),
}

/// Drops what must not repeat from one shard's output.
struct Filter {
    /// Bytes still to drop from the start (a header line: until its line end).
    skip_line: bool,
    skip_binary_header: Option<BytesMut>,
    /// Holds the last two bytes back: the binary trailer, dropped unless this is the last
    /// shard.
    hold_trailer: bool,
    held: Vec<u8>,
}

impl Filter {
    fn new(spec: CopyOutSpec, first: bool, last: bool) -> Filter {
        Filter {
            skip_line: spec.header && !first,
            skip_binary_header: (spec.binary && !first).then(BytesMut::new),
            hold_trailer: spec.binary && !last,
            held: Vec::new(),
        }
    }

    fn passes_all(&self) -> bool {
        !self.skip_line && self.skip_binary_header.is_none() && !self.hold_trailer
    }

    /// The part of `data` the client gets.
    fn pass(&mut self, mut data: &[u8]) -> Vec<u8> {
        if self.skip_line {
            match data.iter().position(|b| *b == b'\n') {
                Some(end) => {
                    self.skip_line = false;
                    data = &data[end + 1..];
                }
                None => return Vec::new(),
            }
        }
        if let Some(header) = self.skip_binary_header.as_mut() {
            header.extend_from_slice(data);
            if header.len() < BINARY_HEADER {
                return Vec::new();
            }
            let ext = u32::from_be_bytes([header[15], header[16], header[17], header[18]]);
            let whole = BINARY_HEADER + ext as usize;
            if header.len() < whole {
                return Vec::new();
            }
            let rest = header.split_off(whole);
            self.skip_binary_header = None;
            return self.hold(&rest);
        }
        self.hold(data)
    }

    fn hold(&mut self, data: &[u8]) -> Vec<u8> {
        if !self.hold_trailer {
            return data.to_vec();
        }
        self.held.extend_from_slice(data);
        let keep = self.held.len().min(2);
        let pass = self.held.len() - keep;
        let out = self.held[..pass].to_vec();
        self.held.drain(..pass);
        out
    }
}

/// Streams `sql` (a COPY TO STDOUT) from each of `servers` in turn to the client. Returns the
/// summed row count, or the first failure (the client's COPY is then ended by the caller with
/// the error).
pub(crate) async fn stream(
    servers: &mut [&mut ServerConn],
    names: &[String],
    sql: &str,
    spec: CopyOutSpec,
    io: &mut ClientIo,
) -> Result<Result<u64, OutFailure>, crate::SessionError> {
    let mut query = BytesMut::new();
    frontend::write_query(&mut query, sql);
    for (i, conn) in servers.iter_mut().enumerate() {
        if let Err(e) = conn.write_all(&query).await {
            return Ok(Err(OutFailure::Lost(names[i].clone(), e)));
        }
    }
    let count = servers.len();
    let mut copied = 0u64;
    let mut failure = None;
    for (i, conn) in servers.iter_mut().enumerate() {
        let mut filter = Filter::new(spec, i == 0, i + 1 == count);
        loop {
            let frame = match tokio::time::timeout(FRAME_TIMEOUT, conn.read_frame()).await {
                Ok(Ok(f)) => f,
                Ok(Err(e)) => {
                    failure.get_or_insert(OutFailure::Lost(names[i].clone(), e));
                    break;
                }
                Err(_) => {
                    conn.mark_broken();
                    failure.get_or_insert(OutFailure::Lost(
                        names[i].clone(),
                        ServerError::Protocol(format!("no COPY data for {FRAME_TIMEOUT:?}")),
                    ));
                    break;
                }
            };
            match frame.tag() {
                backend::COPY_OUT_RESPONSE if i == 0 && failure.is_none() => {
                    io.out.extend_from_slice(frame.as_bytes())
                }
                backend::COPY_DATA if failure.is_none() => {
                    if filter.passes_all() {
                        io.out.extend_from_slice(frame.as_bytes());
                    } else {
                        let data = filter.pass(frame.body());
                        if !data.is_empty() {
                            frontend::write_message(&mut io.out, backend::COPY_DATA, |b| {
                                b.extend_from_slice(&data)
                            });
                        }
                    }
                    io.flush_if_large().await?;
                }
                backend::COMMAND_COMPLETE => {
                    copied += super::streams::copied_rows(std::slice::from_ref(&frame))
                }
                backend::ERROR_RESPONSE => {
                    failure.get_or_insert(OutFailure::Refused(names[i].clone(), frame));
                }
                backend::READY_FOR_QUERY => break,
                _ => {}
            }
        }
        if matches!(failure, Some(OutFailure::Lost(..))) {
            // The rest of the shards are not read: their connections are closed.
            for rest in servers.iter_mut().skip(i) {
                rest.mark_broken();
            }
            break;
        }
    }
    Ok(match failure {
        Some(f) => Err(f),
        None => Ok(copied),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_line_only_from_the_first_shard() {
        let spec = CopyOutSpec {
            binary: false,
            header: true,
        };
        let mut f = Filter::new(spec, false, true);
        assert_eq!(f.pass(b"a,b"), b"");
        assert_eq!(f.pass(b"\n1,2\n"), b"1,2\n");
        assert!(Filter::new(spec, true, false).passes_all());
    }

    #[test]
    fn binary_header_and_trailer_once() {
        let spec = CopyOutSpec {
            binary: true,
            header: false,
        };
        let mut header = b"PGCOPY\n\xff\r\n\0".to_vec();
        header.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 0]);
        let tuple = [0u8, 1, 0, 0, 0, 1, 7];
        let mut middle = Filter::new(spec, false, false);
        let mut got = middle.pass(&header[..5]);
        got.extend(middle.pass(&[&header[5..], &tuple[..]].concat()));
        got.extend(middle.pass(&[0xff, 0xff]));
        assert_eq!(got, tuple);
        let mut first = Filter::new(spec, true, false);
        let mut got = first.pass(&header);
        got.extend(first.pass(&[&tuple[..], &[0xff, 0xff]].concat()));
        assert_eq!(got, [&header[..], &tuple[..]].concat());
        assert!(Filter::new(spec, false, true).pass(&header).is_empty());
    }
}
