//! Route resolution: parameters (text and binary), hints and their precedence, refusals,
//! cross-shard rules, the cache.

use std::sync::Arc;

use super::{config, router};
use crate::hash::{hashint8extended, hashtextextended};
use crate::plan::{Hint, KeyValue};
use crate::{BoundParams, KeyType, Route, Router};

/// Two bigint keys that the test ring puts on different shards.
fn keys_on_two_shards(r: &Router) -> (i64, i64) {
    let first = r.shard_for_key(&KeyValue::Int(1));
    let other = (2..1000)
        .find(|k| r.shard_for_key(&KeyValue::Int(*k)) != first)
        .unwrap_or(2);
    (1, other)
}

fn route(r: &Router, sql: &str) -> Result<Route, crate::RouteError> {
    r.route(&r.plan(sql), &BoundParams::NONE, None)
}

fn shard_of(r: &Router, k: i64) -> usize {
    r.shard_for_key(&KeyValue::Int(k))
}

#[test]
fn keys_hash_with_postgres_functions() {
    let r = router();
    assert_eq!(r.shard_names(), ["s0", "s1", "s2"]);
    assert_eq!(r.default_shard(), 0);
    assert_eq!(
        shard_of(&r, 42),
        r.ring().shard_for_hash(hashint8extended(42, 0))
    );
    let t = KeyValue::Text("acme".into());
    assert_eq!(
        r.shard_for_key(&t),
        r.ring().shard_for_hash(hashtextextended("acme", 0))
    );
    let seeded = Router::new(&config("hash_seed = 7")).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        seeded.shard_for_key(&KeyValue::Int(42)),
        seeded.ring().shard_for_hash(hashint8extended(42, 7))
    );
    let p = seeded.key_predicate(1, "user_id", KeyType::Bigint);
    assert!(
        p.starts_with("((hashint8extended(user_id::int8, 7)) >> 50) IN ("),
        "{p}"
    );
    assert!(r
        .key_predicate(0, "name", KeyType::Text)
        .starts_with("((hashtextextended(name::text, 0)) >> 50) IN ("));
    assert!(r
        .key_predicate(0, "sid", KeyType::Uuid)
        .starts_with("((uuid_hash_extended(sid, 0)) >> 50) IN ("));
}

#[test]
fn literal_keys_route_to_their_shards() {
    let r = router();
    let (a, b) = keys_on_two_shards(&r);
    assert_eq!(
        route(&r, &format!("SELECT * FROM orders WHERE user_id = {a}")),
        Ok(Route::Shard(shard_of(&r, a)))
    );
    let mut both = vec![shard_of(&r, a), shard_of(&r, b)];
    both.sort_unstable();
    assert_eq!(
        route(
            &r,
            &format!("SELECT * FROM orders WHERE user_id IN ({b}, {a})")
        ),
        Ok(Route::Shards(both))
    );
    assert_eq!(route(&r, "SELECT * FROM countries"), Ok(Route::Shard(0)));
    assert_eq!(route(&r, "SELECT * FROM orders"), Ok(Route::AllShards));
    assert_eq!(
        route(&r, "SELECT * FROM orders WHERE user_id = NULL"),
        Ok(Route::Shard(0))
    );
}

#[test]
fn text_and_binary_parameters() {
    let r = router();
    let plan = r.plan("SELECT * FROM orders WHERE user_id = $1");
    let (a, b) = keys_on_two_shards(&r);
    let text = b.to_string();
    let values = [Some(text.as_bytes())];
    let p = BoundParams {
        values: &values,
        formats: &[],
        types: &[],
    };
    assert_eq!(r.route(&plan, &p, None), Ok(Route::Shard(shard_of(&r, b))));
    let bin = a.to_be_bytes();
    let values = [Some(&bin[..])];
    let p = BoundParams {
        values: &values,
        formats: &[1],
        types: &[20],
    };
    assert_eq!(r.route(&plan, &p, None), Ok(Route::Shard(shard_of(&r, a))));
    let four = (b as i32).to_be_bytes();
    let values = [Some(&four[..])];
    let p = BoundParams {
        values: &values,
        formats: &[1],
        types: &[23],
    };
    assert_eq!(r.route(&plan, &p, None), Ok(Route::Shard(shard_of(&r, b))));
    let values = [None];
    let p = BoundParams {
        values: &values,
        formats: &[],
        types: &[],
    };
    assert_eq!(
        r.route(&plan, &p, None),
        Ok(Route::Shard(0)),
        "NULL key matches nothing"
    );
    let values = [Some(&b"x"[..])];
    let p = BoundParams {
        values: &values,
        formats: &[],
        types: &[],
    };
    assert_eq!(r.route(&plan, &p, None).map_err(|e| e.code), Err("22P02"));
    assert_eq!(
        r.route(&plan, &BoundParams::NONE, None).map_err(|e| e.code),
        Err("08P01")
    );

    let plan = r.plan("SELECT * FROM orders WHERE user_id = ANY($1)");
    let arr = format!("{{{a},{b},NULL}}");
    let values = [Some(arr.as_bytes())];
    let p = BoundParams {
        values: &values,
        formats: &[0],
        types: &[1016],
    };
    let mut both = vec![shard_of(&r, a), shard_of(&r, b)];
    both.sort_unstable();
    assert_eq!(r.route(&plan, &p, None), Ok(Route::Shards(both)));

    let plan = r.plan("SELECT * FROM sessions WHERE sid = $1");
    let uuid = [7u8; 16];
    let values = [Some(&uuid[..])];
    let p = BoundParams {
        values: &values,
        formats: &[1],
        types: &[2950],
    };
    assert_eq!(
        r.route(&plan, &p, None),
        Ok(Route::Shard(r.shard_for_key(&KeyValue::Uuid(uuid))))
    );
}

#[test]
fn multi_row_insert_must_stay_on_one_shard() {
    let r = router();
    let (a, b) = keys_on_two_shards(&r);
    let same = route(
        &r,
        &format!("INSERT INTO orders (user_id) VALUES ({a}), ({a})"),
    );
    assert_eq!(same, Ok(Route::Shard(shard_of(&r, a))));
    let e = route(
        &r,
        &format!("INSERT INTO orders (user_id) VALUES ({a}), ({b})"),
    )
    .unwrap_err();
    assert_eq!(e.code, "0A000");
    let names = r.shard_names();
    let (x, y) = (
        shard_of(&r, a).min(shard_of(&r, b)),
        shard_of(&r, a).max(shard_of(&r, b)),
    );
    assert_eq!(
        e.message,
        format!(
            "INSERT rows go to shards {} and {}: write them in separate statements",
            names[x], names[y]
        )
    );
    let e = route(
        &r,
        &format!("SELECT * FROM orders o, users u WHERE o.user_id = {a} AND u.user_id = {b}"),
    )
    .unwrap_err();
    assert!(e.message.contains("must run on one shard"), "{e}");
}

#[test]
fn hints_take_precedence() {
    let r = router();
    let (a, b) = keys_on_two_shards(&r);
    let comment =
        format!("/* shardgate: shard_key={b} */ SELECT * FROM orders WHERE user_id = {a}");
    assert_eq!(route(&r, &comment), Ok(Route::Shard(shard_of(&r, b))));
    let session = Hint::ShardKey(a.to_string());
    let plan = r.plan(&comment);
    assert_eq!(
        r.route(&plan, &BoundParams::NONE, Some(&session)),
        Ok(Route::Shard(shard_of(&r, b))),
        "comment > session"
    );
    let plan = r.plan(&format!("SELECT * FROM orders WHERE user_id = {b}"));
    assert_eq!(
        r.route(&plan, &BoundParams::NONE, Some(&session)),
        Ok(Route::Shard(shard_of(&r, a))),
        "session > SQL"
    );
    assert_eq!(
        route(&r, "SELECT * FROM orders -- shardgate: shard=s2"),
        Ok(Route::Shard(2))
    );
    let e = route(&r, "/* shardgate: shard=s9 */ SELECT 1").unwrap_err();
    assert_eq!(e.code, "42704");
    assert!(e.message.contains("s0, s1, s2"), "{e}");
    // A shard_key hint is hashed as the statement's key type.
    let acme = r.shard_for_key(&KeyValue::Text("acme".into()));
    assert_eq!(
        route(
            &r,
            "/* shardgate: shard_key=acme */ SELECT * FROM \"Events\""
        ),
        Ok(Route::Shard(acme))
    );
    assert_eq!(
        route(&r, "/* shardgate: shard_key=acme */ SELECT 1").map_err(|e| e.code),
        Err("22P02")
    );
    // Hints lift "cannot see where it goes" refusals, not errors in the statement.
    assert_eq!(
        route(
            &r,
            "/* shardgate: shard=s1 */ INSERT INTO orders VALUES (1)"
        ),
        Ok(Route::Shard(1))
    );
    assert_eq!(
        route(
            &r,
            "/* shardgate: shard=s1 */ SELECT * FROM orders WHERE user_id = 'x'"
        )
        .map_err(|e| e.code),
        Err("22P02")
    );
    assert_eq!(
        route(&r, "/* shardgate: shard=s1 */ UPDATE orders SET total = 0"),
        Ok(Route::Shard(1))
    );
    assert_eq!(
        route(
            &r,
            "/* shardgate: shard=s1 */ SELECT DISTINCT status FROM orders"
        ),
        Ok(Route::Shard(1))
    );
}

#[test]
fn keyless_writes_and_cross_shard_reads() {
    let r = router();
    let e = route(&r, "UPDATE orders SET total = 0 WHERE total < 0").unwrap_err();
    assert_eq!(e.code, "0A000");
    assert!(
        e.message
            .contains("UPDATE on sharded table orders without its shard key user_id"),
        "{e}"
    );
    assert!(e.hint.as_deref().is_some_and(|h| h.contains("broadcast")));
    let broadcast =
        Router::new(&config("keyless_writes = \"broadcast\"")).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        route(&broadcast, "UPDATE orders SET total = 0 WHERE total < 0"),
        Ok(Route::AllShards)
    );
    assert_eq!(
        route(&r, "CREATE INDEX ON orders (total)"),
        Ok(Route::AllShards)
    );
    // Gathered into PostgreSQL rather than refused.
    assert_eq!(
        route(&r, "SELECT DISTINCT status FROM orders"),
        Ok(Route::AllShards)
    );
    let e = route(&r, "SELECT DISTINCT status FROM orders FOR UPDATE").unwrap_err();
    assert_eq!(e.code, "0A000", "{e:?}");
    let (a, _) = keys_on_two_shards(&r);
    assert_eq!(
        route(
            &r,
            &format!("SELECT DISTINCT status FROM orders WHERE user_id = {a}")
        ),
        Ok(Route::Shard(shard_of(&r, a)))
    );
    let sql = "SELECT * FROM orders o JOIN users u ON o.id = u.id";
    assert_eq!(route(&r, sql), Ok(Route::AllShards));
    let gathered = r.plan(sql).gather.clone().map(|g| g.reason);
    assert!(
        gathered.is_some_and(|g| g.contains("join of sharded tables that is not on the shard key"))
    );
    // One shard: nothing is cross-shard.
    let one = config("").shards[..1].to_vec();
    let mut c = config("");
    c.shards = one;
    let single = Router::new(&c).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        route(&single, "SELECT DISTINCT status FROM orders"),
        Ok(Route::Shard(0))
    );
}

#[test]
fn updates_of_the_key_stay_on_their_shard() {
    let r = router();
    let (a, b) = keys_on_two_shards(&r);
    let same = (a + 1..5000)
        .find(|k| shard_of(&r, *k) == shard_of(&r, a))
        .unwrap_or(a);
    assert_eq!(
        route(
            &r,
            &format!("UPDATE orders SET user_id = {same} WHERE user_id = {a}")
        ),
        Ok(Route::Shard(shard_of(&r, a)))
    );
    let e = route(
        &r,
        &format!("UPDATE orders SET user_id = {b} WHERE user_id = {a}"),
    )
    .unwrap_err();
    assert_eq!(e.code, "0A000");
    assert!(e.message.contains("would move rows of orders"), "{e}");
    let plan = r.plan("UPDATE orders SET user_id = $1 WHERE user_id = $2");
    let (ta, tb) = (a.to_string(), b.to_string());
    let values = [Some(tb.as_bytes()), Some(ta.as_bytes())];
    let p = BoundParams {
        values: &values,
        formats: &[],
        types: &[],
    };
    assert_eq!(r.route(&plan, &p, None).map_err(|e| e.code), Err("0A000"));
    let values = [Some(ta.as_bytes()), Some(ta.as_bytes())];
    let p = BoundParams {
        values: &values,
        formats: &[],
        types: &[],
    };
    assert_eq!(r.route(&plan, &p, None), Ok(Route::Shard(shard_of(&r, a))));
}

#[test]
fn plans_are_cached_by_text() {
    let r = router();
    let first = r.plan("SELECT * FROM orders WHERE user_id = $1");
    let second = r.plan("SELECT * FROM orders WHERE user_id = $1");
    assert!(Arc::ptr_eq(&first, &second));
    let stats = r.cache_stats();
    assert_eq!((stats.hits, stats.misses), (1, 1));
    r.plan("SELECT 2");
    assert_eq!(r.cache_stats().misses, 2);
    let uncached = Router::new(&config("").clone()).map(|_| ()).ok();
    assert!(uncached.is_some());
    let mut c = config("");
    c.sharding.route_cache_size = 0;
    let none = Router::new(&c).unwrap_or_else(|e| panic!("{e}"));
    let (x, y) = (none.plan("SELECT 1"), none.plan("SELECT 1"));
    assert!(!Arc::ptr_eq(&x, &y));
    assert_eq!(none.cache_stats().hits, 0);
    // A bounded cache evicts the least recently used text.
    c.sharding.route_cache_size = 2;
    let small = Router::new(&c).unwrap_or_else(|e| panic!("{e}"));
    for sql in [
        "SELECT 1", "SELECT 2", "SELECT 1", "SELECT 3", "SELECT 1", "SELECT 2",
    ] {
        small.plan(sql);
    }
    assert_eq!(
        (small.cache_stats().hits, small.cache_stats().misses),
        (2, 4)
    );
}

#[test]
fn side_effect_functions_can_be_added() {
    let r = router().with_side_effect_functions(&["Audit_Log"]);
    assert_eq!(
        r.plan("SELECT audit_log('x')").kind,
        crate::StatementKind::Read {
            locking: false,
            side_effects: true
        }
    );
    assert_eq!(
        r.plan("SELECT other('x')").kind,
        crate::StatementKind::Read {
            locking: false,
            side_effects: false
        }
    );
}

#[test]
fn bad_config_is_an_error() {
    let mut c = config("");
    c.sharding.slot_bits = 40;
    assert!(Router::new(&c).is_err());
    let mut c = config("");
    c.sharding.default_shard = Some("nope".into());
    assert!(Router::new(&c).is_err());
}

#[test]
fn unparseable_statements_are_counted_once_per_text() {
    let router = super::router();
    assert_eq!(router.unparsed_count(), 0);
    let p = router.plan("DO $$ begin perform 1; end $$");
    assert_eq!(p.kind, crate::StatementKind::Unparsed);
    router.plan("DO $$ begin perform 1; end $$");
    assert_eq!(router.unparsed_count(), 1);
    router.plan("select 1");
    assert_eq!(router.unparsed_count(), 1);
}
