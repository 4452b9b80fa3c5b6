//! Reading every row of the sharded tables straight from the shards and checking it against the
//! ring (each row on the shard the ring names, none twice) and against the workload's model.

use shardgate_router::Ring;
use shardgate_tests::PgCluster;

use super::env::{owner, superuser};
use super::workload::State;

/// Every row found, and every misplaced or duplicated one.
pub struct Found {
    pub state: State,
    pub problems: Vec<String>,
}

/// Reads `accounts` and `events` from each named cluster and checks placement by `ring` (a
/// cluster whose name is not in the ring must hold no rows).
pub async fn read_all(clusters: &[(&str, &PgCluster)], ring: &Ring) -> Found {
    let mut found = Found {
        state: State::default(),
        problems: Vec::new(),
    };
    for (name, c) in clusters {
        let here = ring.shard_index(name);
        let su = superuser(c).await;
        let misplaced = |what: String, k: i64, problems: &mut Vec<String>| {
            let want = &ring.shards()[owner(ring, k)];
            if here != Some(owner(ring, k)) {
                problems.push(format!("{what} is on {name}; the ring puts it on {want}"));
            }
        };
        if exists(&su, "accounts").await {
            for r in su
                .query("select user_id, balance, note from accounts", &[])
                .await
                .expect("read accounts")
            {
                let k: i64 = r.get(0);
                misplaced(format!("account {k}"), k, &mut found.problems);
                if found
                    .state
                    .accounts
                    .insert(k, (r.get(1), r.get(2)))
                    .is_some()
                {
                    found
                        .problems
                        .push(format!("account {k} twice (on {name})"));
                }
            }
        }
        if exists(&su, "events").await {
            for r in su
                .query("select user_id, id, payload from events", &[])
                .await
                .expect("read events")
            {
                let (k, id): (i64, i64) = (r.get(0), r.get(1));
                misplaced(format!("event ({k}, {id})"), k, &mut found.problems);
                if found.state.events.insert((k, id), r.get(2)).is_some() {
                    found
                        .problems
                        .push(format!("event ({k}, {id}) twice (on {name})"));
                }
            }
        }
    }
    found
}

async fn exists(c: &tokio_postgres::Client, table: &str) -> bool {
    c.query_one("select to_regclass($1) is not null", &[&table])
        .await
        .expect("to_regclass")
        .get(0)
}

/// The differences between what the model expects and what the shards hold (at most `limit`
/// lines per table, then a count).
pub fn diff(want: &State, got: &State, limit: usize) -> Vec<String> {
    let mut out = Vec::new();
    diff_maps("account", &want.accounts, &got.accounts, limit, &mut out);
    diff_maps("event", &want.events, &got.events, limit, &mut out);
    out
}

fn diff_maps<K: Ord + std::fmt::Debug, V: PartialEq + std::fmt::Debug>(
    what: &str,
    want: &std::collections::BTreeMap<K, V>,
    got: &std::collections::BTreeMap<K, V>,
    limit: usize,
    out: &mut Vec<String>,
) {
    let mut lines = Vec::new();
    for (k, v) in want {
        match got.get(k) {
            None => lines.push(format!("{what} {k:?} missing (expected {v:?})")),
            Some(g) if g != v => lines.push(format!("{what} {k:?} is {g:?}, expected {v:?}")),
            Some(_) => {}
        }
    }
    for (k, v) in got {
        if !want.contains_key(k) {
            lines.push(format!("{what} {k:?} = {v:?} should not exist"));
        }
    }
    let n = lines.len();
    out.extend(lines.into_iter().take(limit));
    if n > limit {
        out.push(format!("… and {} more {what} differences", n - limit));
    }
}

/// `problems` as a short report: the first `limit` lines and how many there were.
pub fn summary(problems: &[String], limit: usize) -> String {
    let mut s: Vec<String> = problems.iter().take(limit).cloned().collect();
    if problems.len() > limit {
        s.push(format!("… {} in all", problems.len()));
    }
    s.join("\n")
}
