//! Writes to reference tables (copies on every shard, `router::reference`): before an INSERT
//! runs on every shard, the columns it leaves to their defaults are checked in the catalog of
//! one shard. A default that is not a constant (a serial's `nextval`, an identity column,
//! `now()`, `gen_random_uuid()`) would give each copy another value — all the more with id
//! lanes, which give each shard's sequences different values — so such an INSERT is refused
//! with 0A000 and the advice to give the value explicitly.

use shardgate_pool::ServerConn;
use shardgate_router::{default_is_constant, Plan, ReferenceInsert, RouteError};
use shardgate_wire::sqlstate;

use crate::routing::feature_error;

/// One line per column in order: name, identity, generated, default expression.
fn columns_sql(ins: &ReferenceInsert) -> String {
    let regclass = ins.regclass.replace('\'', "''");
    format!(
        "SELECT string_agg(a.attname || E'\\t' || (a.attidentity <> '')::text || E'\\t' \
         || (a.attgenerated <> '')::text || E'\\t' \
         || coalesce(replace(pg_get_expr(d.adbin, d.adrelid), E'\\n', ' '), ''), E'\\n' ORDER BY a.attnum) \
         FROM pg_catalog.pg_attribute a LEFT JOIN pg_catalog.pg_attrdef d \
         ON d.adrelid = a.attrelid AND d.adnum = a.attnum \
         WHERE a.attrelid = pg_catalog.to_regclass('{regclass}') AND a.attnum > 0 AND NOT a.attisdropped"
    )
}

/// Why the INSERT cannot run as is on every shard, judged on the catalog lines of
/// [`columns_sql`]: the first omitted column whose default is not a constant.
fn omitted_per_shard_default(ins: &ReferenceInsert, catalog: &str) -> Option<RouteError> {
    for (position, line) in catalog.lines().enumerate() {
        let mut fields = line.split('\t');
        let (Some(name), Some(identity), Some(generated), default) = (
            fields.next(),
            fields.next(),
            fields.next(),
            fields.next().unwrap_or(""),
        ) else {
            continue;
        };
        if generated == "true" || ins.gives(position, name) {
            continue;
        }
        let what = if identity == "true" {
            "its identity sequence".to_owned()
        } else if !default.is_empty() && !default_is_constant(default) {
            format!("its default {default}")
        } else {
            continue;
        };
        return Some(feature_error(
            format!(
                "INSERT into reference table {} leaves column {name} to {what}, which would give each shard's copy another value",
                ins.table
            ),
            &format!("give {name} a value explicitly in the INSERT: the copies on every shard must be identical"),
        ));
    }
    None
}

/// For an INSERT into a reference table: refuses it when a column it omits has a default that
/// differs per shard (asked of `conn`'s shard; inside the client's transaction when `conn` is
/// in it: a read of the catalog, which cannot fail it).
pub(crate) async fn check_insert(conn: &mut ServerConn, plan: &Plan) -> Result<(), RouteError> {
    let Some(ins) = plan
        .reference_write
        .as_ref()
        .and_then(|w| w.insert.as_ref())
    else {
        return Ok(());
    };
    match crate::multi_txn::fanout::query_value(conn, &columns_sql(ins)).await {
        // An unknown table: the INSERT itself will say so.
        Ok(None) => Ok(()),
        Ok(Some(catalog)) => match omitted_per_shard_default(ins, &catalog) {
            Some(e) => Err(e),
            None => Ok(()),
        },
        Err(e) => Err(RouteError {
            code: sqlstate::CONNECTION_FAILURE,
            message: format!(
                "could not read the columns of reference table {}: {e}",
                ins.table
            ),
            hint: None,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn insert(columns: Option<&[&str]>, width: Option<usize>) -> ReferenceInsert {
        ReferenceInsert {
            regclass: "\"plans\"".into(),
            table: "plans".into(),
            columns: columns.map(|c| c.iter().map(|s| s.to_string()).collect()),
            width,
        }
    }

    const CATALOG: &str = "plan_id\tfalse\tfalse\tnextval('plans_plan_id_seq'::regclass)\nname\tfalse\tfalse\t\nprice\tfalse\tfalse\t0\ncreated\tfalse\tfalse\tnow()\nlabel\tfalse\ttrue\tupper(name)";

    #[test]
    fn omitted_columns_with_per_shard_defaults_are_found() {
        let all = insert(Some(&["plan_id", "name", "price", "created"]), None);
        assert!(omitted_per_shard_default(&all, CATALOG).is_none());
        // price's default is a constant, name has none: fine.
        let some = insert(Some(&["plan_id", "created"]), None);
        assert!(omitted_per_shard_default(&some, CATALOG).is_none());
        let e =
            omitted_per_shard_default(&insert(Some(&["name", "created"]), None), CATALOG).unwrap();
        assert_eq!(e.code, "0A000");
        assert!(
            e.message.contains("plan_id") && e.message.contains("nextval"),
            "{}",
            e.message
        );
        let e = omitted_per_shard_default(&insert(None, Some(3)), CATALOG).unwrap();
        assert!(e.message.contains("created"), "{}", e.message);
        let identity = "id\ttrue\tfalse\t\nname\tfalse\tfalse\t";
        let e = omitted_per_shard_default(&insert(Some(&["name"]), None), identity).unwrap();
        assert!(e.message.contains("identity"), "{}", e.message);
        assert!(columns_sql(&insert(None, None)).contains("to_regclass('\"plans\"')"));
    }
}
