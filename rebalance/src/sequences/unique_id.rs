//! `shardgate.unique_id()`: a 64-bit id unique across shards and proxies, roughly ordered by
//! time, for applications that want an id before the insert. Installed on every shard (each
//! database) with the shard's lane baked in:
//!
//! ```text
//!  63   62 ............ 22   21 ....... 12   11 ........ 0
//!   0   ms since 2024-01-01   lane (10 bits)  counter (12 bits)
//! ```
//!
//! Two shards differ in the lane bits, so they can never produce the same value, whatever
//! their clocks say. Within a shard the counter is a sequence taken mod 4096: ids repeat only
//! if one shard hands out more than 4096 in one millisecond (4 million a second, beyond what
//! one PostgreSQL sequence serves). 41 bits of milliseconds last until 2093.

use tokio_postgres::Client;

/// 2024-01-01T00:00:00Z in Unix milliseconds.
pub const EPOCH_MS: i64 = 1_704_067_200_000;
/// Bits of the counter below the lane.
pub const COUNTER_BITS: u32 = 12;
/// Bits of the lane (so at most 1024 lanes: `sharding.id_lanes` ≤ 1024).
pub const LANE_BITS: u32 = 10;

/// The function body for `lane`.
fn body(lane: u32) -> String {
    let shift = COUNTER_BITS + LANE_BITS;
    let mask = (1u32 << COUNTER_BITS) - 1;
    format!(
        "SELECT (((floor(extract(epoch FROM clock_timestamp()) * 1000)::bigint - {EPOCH_MS}) \
         << {shift}) | ({lane}::bigint << {COUNTER_BITS}) \
         | (nextval('shardgate.unique_id_counter'::regclass) & {mask}))"
    )
}

/// Installs (or moves to `lane`) `shardgate.unique_id()` on `client`'s database; nothing when
/// it is already there with this lane. Returns whether anything changed.
pub(crate) async fn install(client: &Client, lane: u32) -> Result<bool, tokio_postgres::Error> {
    let body = body(lane);
    let current = client
        .query_opt(
            "SELECT prosrc FROM pg_proc WHERE oid = to_regprocedure('shardgate.unique_id()')",
            &[],
        )
        .await?;
    if current.is_some_and(|r| r.get::<_, String>(0) == body) {
        return Ok(false);
    }
    // SECURITY DEFINER: callers need no privilege on the counter; a fixed search_path so the
    // definer's rights cannot be borrowed through a caller's objects.
    let sql = format!(
        "CREATE SCHEMA IF NOT EXISTS shardgate; \
         GRANT USAGE ON SCHEMA shardgate TO PUBLIC; \
         CREATE SEQUENCE IF NOT EXISTS shardgate.unique_id_counter; \
         CREATE OR REPLACE FUNCTION shardgate.unique_id() RETURNS bigint \
         LANGUAGE sql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp \
         AS $sg_unique_id${body}$sg_unique_id$; \
         COMMENT ON FUNCTION shardgate.unique_id() IS \
         'shardgate: a 64-bit id unique across shards (id lane {lane})'"
    );
    client.batch_execute(&sql).await?;
    Ok(true)
}

/// The parts of an id: (Unix milliseconds, lane, counter).
pub fn decode(id: i64) -> (i64, u32, u32) {
    let counter = (id & ((1 << COUNTER_BITS) - 1)) as u32;
    let lane = ((id >> COUNTER_BITS) & ((1 << LANE_BITS) - 1)) as u32;
    let ms = (id >> (COUNTER_BITS + LANE_BITS)) + EPOCH_MS;
    (ms, lane, counter)
}

#[cfg(test)]
mod tests {
    #[test]
    fn decode_takes_the_layout_apart() {
        let ms = 1_750_000_000_123i64;
        let id = ((ms - super::EPOCH_MS) << 22) | (5 << 12) | 77;
        assert_eq!(super::decode(id), (ms, 5, 77));
        assert!(id > 0);
    }
}
