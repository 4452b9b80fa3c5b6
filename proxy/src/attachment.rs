//! The session's current (or last) attachment to a server: which shard and host, whether it
//! was taken for reads only, the shard-map version it was routed by, the guards counting it as
//! a running query, the bytes waiting to be written to it, and where the client's cancels go.

use bytes::BytesMut;
use shardgate_pool::{HostChoice, QueryGuard, ServerConn, ServerError};
use shardgate_router::ShardIndex;
use shardgate_wire::Frame;

use crate::cancel::CancelSlot;
use crate::control::CountGuard;

pub(crate) struct Attachment {
    /// The shard of the current (or last) server connection, an index into the shard list of
    /// map version `version`.
    shard: ShardIndex,
    host: HostChoice,
    /// Taken for reads only (on a replica, or the primary when none was eligible).
    read: bool,
    /// The shard-map version the connection was routed by.
    version: u64,
    /// Counts the attachment as a query running on its host (for balancing) and the client
    /// as active.
    guard: Option<(QueryGuard, CountGuard)>,
    /// Bytes for the server, written at the next flush point.
    to_server: BytesMut,
    /// Where the client's CancelRequests go.
    cancel: CancelSlot,
}

impl Attachment {
    /// No connection yet: the shard is `shard` (the default) by map `version`.
    pub(crate) fn new(shard: ShardIndex, version: u64, cancel: CancelSlot) -> Attachment {
        Attachment {
            shard,
            host: HostChoice::Primary,
            read: false,
            version,
            guard: None,
            // Allocated at the first statement (and kept): an idle login costs nothing here.
            to_server: BytesMut::new(),
            cancel,
        }
    }

    pub(crate) fn shard(&self) -> ShardIndex {
        self.shard
    }

    pub(crate) fn host(&self) -> HostChoice {
        self.host
    }

    /// Taken for reads only.
    pub(crate) fn is_read(&self) -> bool {
        self.read
    }

    /// The next checkout is for `shard`.
    pub(crate) fn set_shard(&mut self, shard: ShardIndex) {
        self.shard = shard;
    }

    /// The checkout chose `host` of the shard.
    pub(crate) fn set_host(&mut self, host: HostChoice) {
        self.host = host;
    }

    /// The connection checked out is for reads only (or not).
    pub(crate) fn set_read(&mut self, read: bool) {
        self.read = read;
    }

    /// Shard, host and read-only, to put back with [`Attachment::set_place`].
    pub(crate) fn place(&self) -> (ShardIndex, HostChoice, bool) {
        (self.shard, self.host, self.read)
    }

    pub(crate) fn set_place(&mut self, (shard, host, read): (ShardIndex, HostChoice, bool)) {
        self.shard = shard;
        self.host = host;
        self.read = read;
    }

    /// The connection was routed by shard-map `version`.
    pub(crate) fn routed_by(&mut self, version: u64) {
        self.version = version;
    }

    /// A map other than `current` routed the connection: shard indices may mean other
    /// shards now.
    pub(crate) fn map_changed(&self, current: u64) -> bool {
        self.version != current
    }

    /// Counts the attachment as a query on its host and the client as active.
    pub(crate) fn hold(&mut self, guard: QueryGuard, active: CountGuard) {
        self.guard = Some((guard, active));
    }

    /// The guards, taken (the connection moves to a transaction's waiting participants).
    pub(crate) fn take_guard(&mut self) -> Option<(QueryGuard, CountGuard)> {
        self.guard.take()
    }

    /// The attachment ended: no query runs on the host for this client.
    pub(crate) fn drop_guard(&mut self) {
        self.guard = None;
    }

    /// The bytes waiting to be written to the server.
    pub(crate) fn outgoing(&mut self) -> &mut BytesMut {
        &mut self.to_server
    }

    /// Queues a client message for the server as it came.
    pub(crate) fn forward(&mut self, frame: &Frame) {
        self.to_server.extend_from_slice(frame.as_bytes());
    }

    pub(crate) fn outgoing_is_empty(&self) -> bool {
        self.to_server.is_empty()
    }

    /// Writes the waiting bytes to `server`; they are gone whether that worked or not.
    pub(crate) async fn send(&mut self, server: &mut ServerConn) -> Result<(), ServerError> {
        let res = server.write_all(&self.to_server).await;
        self.to_server.clear();
        res
    }

    /// The client's CancelRequests go to `server` from now on.
    pub(crate) async fn aim_cancel_at(&self, server: &ServerConn) {
        let (pid, secret) = server.backend_key();
        self.cancel.aim(server.shared_host(), pid, secret).await;
    }

    /// The client's CancelRequests go nowhere (before its connection goes back, or when the
    /// connection aimed at was not kept).
    pub(crate) async fn clear_cancel_target(&self) {
        self.cancel.disarm().await;
    }
}
