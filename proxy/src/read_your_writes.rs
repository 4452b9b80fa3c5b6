//! A client's read-your-writes positions: after it writes on a shard's primary, the WAL
//! position its later reads there must see on a replica (see `replicas` for how they are
//! taken and used).
//!
//! Across a promotion (`shardgate_pool`'s `failover`) the positions stay as they are: WAL
//! positions keep growing on the new timeline, positions taken afterwards come from the new
//! writer, and the monitor keeps in the read rotation only standbys whose WAL receiver is on
//! the writer's timeline, so a position is only ever compared with a replay position on the
//! new timeline. A position the new writer never reached (a write the promoted host did not
//! receive) keeps the client's reads on the primary until the new timeline passes it.

#[derive(Debug)]
pub(crate) struct ReadYourWrites {
    /// Read-your-writes is on for this client.
    enabled: bool,
    /// Per shard: the primary's WAL position after this client's last write there; a replica
    /// serves its reads only once it has replayed that far.
    read_after: Vec<u64>,
    /// The current attachment is on a primary for statements that may write: its WAL
    /// position is taken when it ends.
    may_have_written: bool,
}

impl ReadYourWrites {
    pub(crate) fn new(enabled: bool, shards: usize) -> ReadYourWrites {
        ReadYourWrites {
            enabled,
            read_after: vec![0; shards],
            may_have_written: false,
        }
    }

    pub(crate) fn enabled(&self) -> bool {
        self.enabled
    }

    /// The WAL position a replica of `shard` must have replayed to serve this client's reads
    /// (0: any).
    pub(crate) fn read_after(&self, shard: usize) -> u64 {
        self.read_after.get(shard).copied().unwrap_or(0)
    }

    /// The shard map changed size: an added shard comes last, so the others keep their
    /// positions.
    pub(crate) fn follow_shard_count(&mut self, shards: usize) {
        self.read_after.resize(shards, 0);
    }

    /// A new attachment: whether it may write on a primary.
    pub(crate) fn set_may_have_written(&mut self, may_write: bool) {
        self.may_have_written = may_write;
    }

    /// Whether the attachment ending may have written (and forgets it).
    pub(crate) fn take_may_have_written(&mut self) -> bool {
        std::mem::take(&mut self.may_have_written)
    }

    /// The primary of `shard` was at `lsn` after this client's write.
    pub(crate) fn wrote_at(&mut self, shard: usize, lsn: u64) {
        if let Some(slot) = self.read_after.get_mut(shard) {
            *slot = (*slot).max(lsn);
        }
    }

    /// The position after a write on `shard` could not be read: its reads stay on the
    /// primary.
    pub(crate) fn position_unknown(&mut self, shard: usize) {
        if let Some(slot) = self.read_after.get_mut(shard) {
            *slot = u64::MAX;
        }
    }
}
