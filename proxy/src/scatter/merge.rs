//! Row streams of several shards into one: concatenation, or a k-way merge of the shards'
//! sorted streams by the ORDER BY keys — then OFFSET and LIMIT applied to the merged stream.
//! Only each shard's head row is held (decoded keys included); the merged rows go to the
//! client as the shards sent them (minus hidden trailing columns), written out every 64 KiB
//! before the next row is read ([`output`](super::output)).

use std::cmp::Ordering;

use shardgate_wire::row::{data_row_values, write_truncated_row};
use shardgate_wire::Frame;

use super::compare::{compare_rows, decode, Direction, Key};
use super::output::{ClientSink, Output};
use super::shard::{join_all, ShardStream};
use super::Stop;

/// One ORDER BY column: where it is and how to read and order it.
#[derive(Debug, Clone)]
pub(crate) struct SortColumnPlan {
    pub index: usize,
    pub type_oid: u32,
    pub format: i16,
    pub direction: Direction,
}

/// What to do with the merged rows.
#[derive(Debug, Clone, Default)]
pub(crate) struct RowPlan {
    /// Empty: concatenate in shard order.
    pub sort: Vec<SortColumnPlan>,
    pub offset: u64,
    pub limit: Option<u64>,
    /// Columns the client sees; rows wider than this lose their trailing columns.
    pub visible: usize,
}

impl RowPlan {
    fn keys(&self, row: &Frame) -> Result<Vec<Key>, Stop> {
        let values = data_row_values(row).map_err(Stop::protocol)?;
        self.sort
            .iter()
            .map(|c| {
                let v = values
                    .get(c.index)
                    .ok_or_else(|| Stop::protocol("a row is shorter than its description"))?;
                decode(c.type_oid, c.format, v.as_ref())
                    .map_err(|e| Stop::unsupported(e.to_string()))
            })
            .collect()
    }

    fn directions(&self) -> Vec<Direction> {
        self.sort.iter().map(|c| c.direction).collect()
    }
}

/// Counts rows through OFFSET and LIMIT and writes the ones that pass.
struct Sink<'o, 'c, C: ClientSink> {
    out: &'o mut Output<'c, C>,
    to_skip: u64,
    remaining: Option<u64>,
    visible: usize,
    written: u64,
}

impl<C: ClientSink> Sink<'_, '_, C> {
    fn full(&self) -> bool {
        self.remaining == Some(0)
    }

    /// Passes `row` on (unless OFFSET skips it), waiting for the client when the output is
    /// due to be written.
    async fn push(&mut self, row: &Frame, width: usize) -> Result<(), Stop> {
        if self.to_skip > 0 {
            self.to_skip -= 1;
            return Ok(());
        }
        if let Some(r) = &mut self.remaining {
            *r = r.saturating_sub(1);
        }
        self.written += 1;
        if width > self.visible {
            write_truncated_row(self.out.buf(), row, self.visible).map_err(Stop::protocol)?;
        } else {
            self.out.buf().extend_from_slice(row.as_bytes());
        }
        self.out.row_written().await
    }
}

fn row_width(row: &Frame) -> usize {
    let b = row.body();
    if b.len() >= 2 {
        u16::from_be_bytes([b[0], b[1]]) as usize
    } else {
        0
    }
}

/// Pulls the next row of shard `i`; a shard that failed stops the merge.
async fn pull(stream: &mut ShardStream<'_>, i: usize) -> Result<Option<Frame>, Stop> {
    let row = stream.next_row().await.map_err(|e| Stop::Server(i, e))?;
    if row.is_none() && stream.error.is_some() {
        return Err(Stop::ShardFailed);
    }
    Ok(row)
}

/// Merges the rows of all shards into `out`; returns the number of rows written. Stops
/// reading once LIMIT is reached (the caller drains what the shards still send).
pub(crate) async fn merge_rows<C: ClientSink>(
    streams: &mut [ShardStream<'_>],
    plan: &RowPlan,
    out: &mut Output<'_, C>,
) -> Result<u64, Stop> {
    let mut sink = Sink {
        out,
        to_skip: plan.offset,
        remaining: plan.limit,
        visible: plan.visible,
        written: 0,
    };
    if sink.full() {
        return Ok(0);
    }
    if plan.sort.is_empty() {
        for (i, s) in streams.iter_mut().enumerate() {
            while let Some(row) = pull(s, i).await? {
                sink.push(&row, row_width(&row)).await?;
                if sink.full() {
                    return Ok(sink.written);
                }
            }
        }
        return Ok(sink.written);
    }
    // k-way merge: the head row of every shard, with its decoded keys.
    let firsts = join_all(
        streams
            .iter_mut()
            .enumerate()
            .map(|(i, s)| pull(s, i))
            .collect(),
    )
    .await;
    let mut heads: Vec<Option<(Frame, Vec<Key>)>> = Vec::with_capacity(firsts.len());
    for first in firsts {
        heads.push(match first? {
            Some(row) => {
                let keys = plan.keys(&row)?;
                Some((row, keys))
            }
            None => None,
        });
    }
    let dirs = plan.directions();
    while let Some(i) = smallest(&heads, &dirs) {
        let Some((row, _)) = heads[i].take() else {
            break;
        };
        sink.push(&row, row_width(&row)).await?;
        if sink.full() {
            break;
        }
        heads[i] = match pull(&mut streams[i], i).await? {
            Some(row) => {
                let keys = plan.keys(&row)?;
                Some((row, keys))
            }
            None => None,
        };
    }
    // Stopped at the LIMIT: the head rows not written go back to their streams (a held
    // portal reads them at its next Execute; otherwise they are drained with the rest).
    for (stream, head) in streams.iter_mut().zip(heads) {
        if let Some((row, _)) = head {
            stream.unread(row);
        }
    }
    Ok(sink.written)
}

/// The shard whose head row sorts first (the lowest shard on ties, for a stable merge).
fn smallest(heads: &[Option<(Frame, Vec<Key>)>], dirs: &[Direction]) -> Option<usize> {
    let mut best: Option<(usize, &[Key])> = None;
    for (i, h) in heads.iter().enumerate() {
        if let Some((_, keys)) = h {
            match best {
                Some((_, b)) if compare_rows(keys, b, dirs) != Ordering::Less => {}
                _ => best = Some((i, keys)),
            }
        }
    }
    best.map(|(i, _)| i)
}

#[cfg(test)]
mod tests {
    use super::*;
    use shardgate_wire::backend::write_data_row;

    /// A DataRow frame with the given values.
    fn row(values: &[Option<&str>]) -> Frame {
        let mut out = bytes::BytesMut::new();
        write_data_row(&mut out, values);
        Frame::from_bytes(out.freeze())
    }

    fn head(v: i64) -> Option<(Frame, Vec<Key>)> {
        Some((row(&[Some(&v.to_string())]), vec![Key::Int(v)]))
    }

    /// Simulates the merge loop on in-memory sorted streams.
    fn merge(streams: Vec<Vec<i64>>, dirs: &[Direction]) -> Vec<i64> {
        let mut iters: Vec<_> = streams.into_iter().map(|s| s.into_iter()).collect();
        let mut heads: Vec<_> = iters.iter_mut().map(|i| i.next().and_then(head)).collect();
        let mut out = Vec::new();
        while let Some(i) = smallest(&heads, dirs) {
            if let Some((_, keys)) = heads[i].take() {
                if let Key::Int(v) = keys[0] {
                    out.push(v);
                }
            }
            heads[i] = iters[i].next().and_then(head);
        }
        out
    }

    #[test]
    fn k_way_merge_orders_across_streams() {
        let asc = [Direction {
            descending: false,
            nulls_first: false,
        }];
        assert_eq!(
            merge(
                vec![vec![1, 4, 9], vec![2, 3, 10], vec![], vec![0, 5]],
                &asc
            ),
            vec![0, 1, 2, 3, 4, 5, 9, 10]
        );
        let desc = [Direction {
            descending: true,
            nulls_first: true,
        }];
        assert_eq!(
            merge(vec![vec![9, 4, 1], vec![10, 3, 2]], &desc),
            vec![10, 9, 4, 3, 2, 1]
        );
    }

    #[test]
    fn ties_go_to_the_lower_shard() {
        let asc = [Direction {
            descending: false,
            nulls_first: false,
        }];
        let heads = vec![None, head(3), head(3), head(5)];
        assert_eq!(smallest(&heads, &asc), Some(1));
        assert_eq!(smallest(&[None, None], &asc), None);
    }

    #[tokio::test]
    async fn sink_applies_offset_limit_and_hides_columns() {
        let mut out = bytes::BytesMut::new();
        let mut output = Output::new(&mut out);
        let mut sink = Sink {
            out: &mut output,
            to_skip: 1,
            remaining: Some(2),
            visible: 1,
            written: 0,
        };
        for v in ["a", "b", "c"] {
            let r = row(&[Some(v), Some("hidden")]);
            sink.push(&r, row_width(&r)).await.unwrap();
            if sink.full() {
                break;
            }
        }
        assert_eq!(sink.written, 2);
        let frames = split_frames(out.freeze());
        let values: Vec<_> = frames.iter().map(|f| data_row_values(f).unwrap()).collect();
        assert_eq!(values.len(), 2);
        assert_eq!(values[0], vec![Some(bytes::Bytes::from("b"))]);
        assert_eq!(values[1], vec![Some(bytes::Bytes::from("c"))]);
    }

    fn split_frames(mut b: bytes::Bytes) -> Vec<Frame> {
        let mut v = Vec::new();
        while b.len() >= 5 {
            let len = u32::from_be_bytes([b[1], b[2], b[3], b[4]]) as usize;
            v.push(Frame::from_bytes(b.split_to(len + 1)));
        }
        v
    }
}
