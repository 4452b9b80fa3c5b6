//! SQL to route: PostgreSQL-compatible hashing of shard keys, the consistent-hash ring, and
//! (with the routing work) statement classification and shard-key extraction.

pub mod hash;
pub mod ring;
