//! Sequences of moved tables. A `bigserial` or identity column on a sharded table draws from a
//! sequence on each shard; the rows a target receives carry values from the sources' sequences,
//! so before new rows are written on the target its sequence must be past every value the
//! sources handed out, or a new row could collide with a moved one.

use shardgate_config::Shard;

use super::conn::Conns;
use super::plan::Plan;

/// The sequences owned by a table's columns (serial and identity), as `regclass` text.
const OWNED_SEQUENCES: &str = "SELECT s.oid::regclass::text
    FROM pg_class s
    JOIN pg_depend d ON d.classid = 'pg_class'::regclass AND d.objid = s.oid
        AND d.refclassid = 'pg_class'::regclass AND d.deptype IN ('a', 'i')
    WHERE s.relkind = 'S' AND d.refobjid = $1::text::regclass";

/// Moves each target's sequences of the sharded tables past the highest value any of its
/// sources has handed out (never backwards). Runs with the fence closed, so no moving row can
/// take a newer value meanwhile.
pub(crate) async fn align(plan: &Plan, conns: &mut Conns) -> Result<(), String> {
    let pairs = plan
        .targets()
        .into_iter()
        .map(|t| {
            let from = plan.moves_to(&t.name).map(|m| m.source.clone()).collect();
            (t.clone(), from)
        })
        .collect();
    align_pairs(plan, conns, pairs).await
}

/// The reverse, when a committed move is undone: each source's sequences move past the values
/// its targets handed out since the commit.
pub(crate) async fn align_back(plan: &Plan, conns: &mut Conns) -> Result<(), String> {
    let pairs = plan
        .sources()
        .into_iter()
        .map(|s| {
            let from = plan.moves_from(&s.name).map(|m| m.target.clone()).collect();
            (s.clone(), from)
        })
        .collect();
    align_pairs(plan, conns, pairs).await
}

async fn align_pairs(
    plan: &Plan,
    conns: &mut Conns,
    pairs: Vec<(Shard, Vec<Shard>)>,
) -> Result<(), String> {
    for (target, sources) in &pairs {
        for db in &plan.databases {
            for t in &plan.tables {
                let owned = conns
                    .query(target, db, OWNED_SEQUENCES, &[&t.qualified()])
                    .await?;
                for row in owned {
                    let seq: String = row.get(0);
                    // The same sequence name on the other side (the schema was copied).
                    let read = format!(
                        "SELECT CASE WHEN is_called THEN last_value ELSE last_value - 1 END \
                         FROM {seq}"
                    );
                    let mut highest: Option<i64> = None;
                    for source in sources {
                        let exists = conns
                            .one(source, db, "SELECT to_regclass($1) IS NOT NULL", &[&seq])
                            .await?
                            .get::<_, bool>(0);
                        if exists {
                            let v: i64 = conns.one(source, db, &read, &[]).await?.get(0);
                            highest = Some(highest.map_or(v, |h| h.max(v)));
                        }
                    }
                    let Some(highest) = highest else { continue };
                    let set = format!(
                        "SELECT setval($1::text::regclass, greatest(({read}), $2::int8, 1))"
                    );
                    conns.one(target, db, &set, &[&seq, &highest]).await?;
                    tracing::debug!(job = %plan.job_id, shard = %target.name, %seq, highest,
                        "sequence moved past the other side's");
                }
            }
        }
    }
    Ok(())
}
