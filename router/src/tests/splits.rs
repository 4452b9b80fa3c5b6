//! Splitting multi-row INSERTs by shard key (`Router::split_insert`): the per-shard texts cut
//! from the client's text, parameter renumbering, row mappings, and what is not split.

use sqlparser::ast::{SetExpr, Statement};
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::parser::Parser;

use super::router;
use crate::plan::{Hint, KeyValue};
use crate::{BoundParams, InsertPart, InsertSplit, Route, RouteError, Router};

/// A bigint key the test ring puts on `shard`.
pub(super) fn key_on(r: &Router, shard: usize) -> i64 {
    (1..100_000)
        .find(|k| r.shard_for_key(&KeyValue::Int(*k)) == shard)
        .unwrap_or_else(|| panic!("no key on shard {shard}"))
}

/// A second, different bigint key on `shard`.
fn other_key_on(r: &Router, shard: usize, not: i64) -> i64 {
    (not + 1..100_000)
        .find(|k| r.shard_for_key(&KeyValue::Int(*k)) == shard)
        .unwrap_or_else(|| panic!("no second key on shard {shard}"))
}

pub(super) fn split(
    r: &Router,
    sql: &str,
    params: &BoundParams<'_>,
) -> Result<Option<InsertSplit>, RouteError> {
    r.split_insert(&r.plan(sql), sql, params, None)
}

pub(super) fn parts(r: &Router, sql: &str) -> Vec<InsertPart> {
    match split(r, sql, &BoundParams::NONE) {
        Ok(Some(s)) => s.parts,
        other => panic!("{sql}: {other:?}"),
    }
}

/// The VALUES rows of an INSERT as sqlparser reads it: each row's text, by its parentheses'
/// spans (independent of the router's lexer).
pub(super) fn parsed_rows(sql: &str) -> Vec<String> {
    let stmts = Parser::parse_sql(&PostgreSqlDialect {}, sql)
        .unwrap_or_else(|e| panic!("re-parse of {sql}: {e}"));
    let [Statement::Insert(ins)] = stmts.as_slice() else {
        panic!("not one INSERT: {sql}");
    };
    let Some(SetExpr::Values(values)) = ins.source.as_ref().map(|q| &*q.body) else {
        panic!("not INSERT … VALUES: {sql}");
    };
    let offset = |loc: sqlparser::tokenizer::Location| -> usize {
        let line_start: usize = sql
            .split_inclusive('\n')
            .take(loc.line as usize - 1)
            .map(str::len)
            .sum();
        let col: usize = sql[line_start..]
            .chars()
            .take(loc.column as usize - 1)
            .map(char::len_utf8)
            .sum();
        line_start + col
    };
    values
        .rows
        .iter()
        .map(|row| {
            let start = offset(row.opening_token.0.span.start);
            let end = offset(row.closing_token.0.span.end);
            sql[start..end].to_owned()
        })
        .collect()
}

/// Each part's rows, taken back to the client's order by `rows`, give the original rows.
pub(super) fn assert_rows_round_trip(sql: &str, parts: &[InsertPart]) {
    let original = parsed_rows(sql);
    let mut back = vec![None; original.len()];
    for part in parts {
        let mine = parsed_rows(&part.sql);
        assert_eq!(mine.len(), part.rows.len(), "{}", part.sql);
        for (text, at) in mine.into_iter().zip(&part.rows) {
            assert!(back[*at].is_none(), "row {at} in two parts");
            back[*at] = Some(text);
        }
    }
    let back: Vec<String> = back
        .into_iter()
        .map(|t| t.unwrap_or_else(|| panic!("a row is in no part")))
        .collect();
    assert_eq!(back, original);
    let shards: Vec<usize> = parts.iter().map(|p| p.shard).collect();
    let mut sorted = shards.clone();
    sorted.sort_unstable();
    sorted.dedup();
    assert_eq!(shards, sorted, "parts in ascending shard order");
    for part in parts {
        assert!(part.rows.windows(2).all(|w| w[0] < w[1]), "rows in order");
    }
}

#[test]
fn rows_over_three_shards_split_by_slicing_the_text() {
    let r = router();
    let [a, b, c] = [key_on(&r, 0), key_on(&r, 1), key_on(&r, 2)];
    let a2 = other_key_on(&r, 0, a);
    let sql = format!(
        "/* bulk */ INSERT INTO orders (user_id, note) VALUES ({b}, 'x'),\n  ({a}, 'y'), -- second\n  ({c}, 'z'), ({a2}::int8, 'w') RETURNING *;"
    );
    let plan = r.plan(&sql);
    assert!(plan.splittable_insert());
    // route() is unchanged: the spanning INSERT is still refused there.
    assert_eq!(
        r.route(&plan, &BoundParams::NONE, None).map_err(|e| e.code),
        Err("0A000")
    );
    let parts = parts(&r, &sql);
    let got: Vec<(usize, &str, Vec<usize>)> = parts
        .iter()
        .map(|p| (p.shard, p.sql.as_str(), p.rows.clone()))
        .collect();
    let want_a = format!(
        "/* bulk */ INSERT INTO orders (user_id, note) VALUES ({a}, 'y'), -- second\n  ({a2}::int8, 'w') RETURNING *;"
    );
    let want_b =
        format!("/* bulk */ INSERT INTO orders (user_id, note) VALUES ({b}, 'x') RETURNING *;");
    let want_c =
        format!("/* bulk */ INSERT INTO orders (user_id, note) VALUES ({c}, 'z') RETURNING *;");
    assert_eq!(
        got,
        vec![
            (0, want_a.as_str(), vec![1, 3]),
            (1, want_b.as_str(), vec![0]),
            (2, want_c.as_str(), vec![2]),
        ]
    );
    assert!(parts.iter().all(|p| p.params.is_empty()));
    assert_rows_round_trip(&sql, &parts);
    for p in &parts {
        assert_eq!(parsed_rows(&p.sql).len(), p.rows.len());
        // Each part is a one-shard INSERT for the router too.
        assert_eq!(
            r.route(&r.plan(&p.sql), &BoundParams::NONE, None),
            Ok(Route::Shard(p.shard))
        );
    }
}

#[test]
fn one_shard_and_non_splittable_statements_are_not_split() {
    let r = router();
    let [a, b] = [key_on(&r, 0), key_on(&r, 1)];
    let a2 = other_key_on(&r, 0, a);
    // Not split: `Ok(None)`, or the very refusal route() gives.
    let none = |sql: &str| match split(&r, sql, &BoundParams::NONE) {
        Ok(None) => {}
        Err(e) => assert_eq!(
            r.route(&r.plan(sql), &BoundParams::NONE, None),
            Err(e),
            "{sql}"
        ),
        Ok(Some(s)) => panic!("{sql} split: {s:?}"),
    };
    none(&format!(
        "INSERT INTO orders (user_id) VALUES ({a}), ({a2})"
    ));
    none(&format!("INSERT INTO orders (user_id) VALUES ({b})"));
    none(&format!(
        "INSERT INTO orders (user_id) SELECT user_id FROM users WHERE user_id = {a}"
    ));
    none("INSERT INTO orders DEFAULT VALUES");
    assert_eq!(
        split(&r, "INSERT INTO orders DEFAULT VALUES", &BoundParams::NONE).map_err(|e| e.code),
        Err("0A000")
    );
    none(&format!("INSERT INTO countries (id) VALUES ({a}), ({b})"));
    none(&format!(
        "WITH x AS (SELECT 1) INSERT INTO orders (user_id) VALUES ({a}), ({b})"
    ));
    none(&format!(
        "INSERT INTO orders (user_id) VALUES ({a}), ({b}); SELECT 1"
    ));
    none(&format!(
        "EXPLAIN INSERT INTO orders (user_id) VALUES ({a}), ({b})"
    ));
    // A sharded table read inside a row would be read on each part's shard only.
    none(&format!(
        "INSERT INTO orders (user_id, n) VALUES ({a}, (SELECT count(*) FROM users)), ({b}, 0)"
    ));
    // VALUES … LIMIT keeps fewer rows than it lists.
    none(&format!(
        "INSERT INTO orders (user_id) VALUES ({a}), ({b}) LIMIT 1"
    ));
    for sql in [
        format!("INSERT INTO orders (user_id) VALUES ({a}), ({b}); SELECT 1"),
        format!("INSERT INTO orders (user_id) VALUES ({a}), ({b}) LIMIT 1"),
    ] {
        assert!(!r.plan(&sql).splittable_insert(), "{sql}");
    }
    // A hint decides: no split, the statement goes where the hint says.
    let sql = format!("/* shardgate: shard=s2 */ INSERT INTO orders (user_id) VALUES ({a}), ({b})");
    none(&sql);
    assert_eq!(
        r.route(&r.plan(&sql), &BoundParams::NONE, None),
        Ok(Route::Shard(2))
    );
    let sql = format!("INSERT INTO orders (user_id) VALUES ({a}), ({b})");
    let hint = Hint::ShardKey(b.to_string());
    assert_eq!(
        r.split_insert(&r.plan(&sql), &sql, &BoundParams::NONE, Some(&hint)),
        Ok(None)
    );
}

#[test]
fn keys_that_are_not_values_are_refused_with_their_row() {
    let r = router();
    let [a, b] = [key_on(&r, 0), key_on(&r, 1)];
    for (sql, row) in [
        (
            format!("INSERT INTO orders (user_id) VALUES ({a}), ({b}), ({a} + 1)"),
            3,
        ),
        (
            format!("INSERT INTO orders (user_id) VALUES ({a}), (DEFAULT), ({b})"),
            2,
        ),
        (
            format!("INSERT INTO orders (user_id) VALUES ((SELECT 1)), ({a}), ({b})"),
            1,
        ),
        (
            format!("INSERT INTO orders (user_id, n) VALUES ({a}, 1), (random(), 2)"),
            2,
        ),
    ] {
        let e = split(&r, &sql, &BoundParams::NONE).unwrap_err();
        assert_eq!(e.code, "0A000", "{sql}");
        assert!(
            e.message
                .contains(&format!("row {row} must be a literal or a parameter")),
            "{sql}: {e}"
        );
        // The same refusal as route() gives.
        assert_eq!(r.route(&r.plan(&sql), &BoundParams::NONE, None), Err(e));
    }
    // A malformed key literal is the statement's own error.
    let sql = format!("INSERT INTO orders (user_id) VALUES ({a}), ('x{b}')");
    assert_eq!(
        split(&r, &sql, &BoundParams::NONE).map_err(|e| e.code),
        Err("22P02")
    );
    // INSERT … SELECT across shards keeps today's answer.
    let sql = "INSERT INTO orders (user_id) SELECT user_id FROM users";
    assert_eq!(split(&r, sql, &BoundParams::NONE), Ok(None));
    assert!(!r.plan(sql).splittable_insert());
}

#[test]
fn on_conflict_returning_and_column_order_are_kept_in_every_part() {
    let r = router();
    let [a, b, c] = [key_on(&r, 0), key_on(&r, 1), key_on(&r, 2)];
    let tail = "ON CONFLICT (order_id) DO UPDATE SET total = EXCLUDED.total, user_id = EXCLUDED.user_id WHERE i.total < EXCLUDED.total RETURNING *";
    let sql = format!(
        "INSERT INTO public.items AS i (total, order_id, user_id) VALUES (1.5, 10, {c}), (2, 11, {a}), (3, 12, {b}) {tail}"
    );
    let parts = parts(&r, &sql);
    assert_eq!(parts.len(), 3);
    for p in &parts {
        assert!(p.sql.ends_with(tail), "{}", p.sql);
        assert!(
            p.sql
                .starts_with("INSERT INTO public.items AS i (total, order_id, user_id) VALUES ("),
            "{}",
            p.sql
        );
    }
    assert_eq!(
        parts[0].sql,
        format!(
            "INSERT INTO public.items AS i (total, order_id, user_id) VALUES (2, 11, {a}) {tail}"
        )
    );
    assert_rows_round_trip(&sql, &parts);
    // ON CONFLICT … DO NOTHING, unqualified name of a schema-qualified rule.
    let sql = format!(
        "insert into items (user_id) values ({a}), ({b}) on conflict do nothing returning user_id"
    );
    let parts = super::splits::parts(&r, &sql);
    assert_eq!(parts.len(), 2);
    assert!(parts
        .iter()
        .all(|p| p.sql.ends_with(" on conflict do nothing returning user_id")));
    // DO UPDATE SET key = constant: only the part on that constant's shard may run it.
    let sql = format!(
        "INSERT INTO orders (user_id) VALUES ({a}), ({b}) ON CONFLICT (user_id) DO UPDATE SET user_id = {a}"
    );
    assert_eq!(
        split(&r, &sql, &BoundParams::NONE).map_err(|e| e.code),
        Err("0A000")
    );
}

#[test]
fn literals_comments_and_dollar_quotes_do_not_fool_the_row_finder() {
    let r = router();
    let [a, b, c] = [key_on(&r, 0), key_on(&r, 1), key_on(&r, 2)];
    let sql = format!(
        "INSERT INTO orders (note, user_id, data) VALUES\n\
         ('a),(b', {a}, $$ ), ( $1 $$),\n\
         /* ( row ) , ( */ (E'it\\'s ),(', {b}, $tag$ $$ ) $tag$) -- ), (\n\
         , (U&'d\\0061t\\+000061', {c}, '$1'::text),\n\
         ('\"', {a}, \"x\"\"),(\"), (ARRAY[(1), (2)], {b}, ('(' || ')'))\n\
         RETURNING note /* ), ( */"
    );
    let parts = parts(&r, &sql);
    let rows: Vec<Vec<usize>> = parts.iter().map(|p| p.rows.clone()).collect();
    assert_eq!(rows, vec![vec![0, 3], vec![1, 4], vec![2]]);
    assert!(parts.iter().all(|p| p.params.is_empty()), "$1 in literals");
    assert_rows_round_trip(&sql, &parts);
    // The separator after a row (its comma and comments) stays with the row.
    assert!(
        parts[1].sql.contains("$tag$) -- ), (\n, (ARRAY[(1), (2)]"),
        "{}",
        parts[1].sql
    );
    // A backslash ends no standard string: `'C:\'` holds C, a colon and a backslash.
    let backslashes = format!(
        "INSERT INTO orders (note, user_id) VALUES ('C:\\', {a}), ('),(\\', {b}), ('\\''', {c})"
    );
    let split_backslashes = super::splits::parts(&r, &backslashes);
    assert_eq!(split_backslashes.len(), 3);
    assert_rows_round_trip(&backslashes, &split_backslashes);
    assert_eq!(
        split_backslashes[1].sql,
        format!("INSERT INTO orders (note, user_id) VALUES ('),(\\', {b})")
    );
}

#[test]
fn parameters_are_renumbered_by_first_use() {
    let r = router();
    let [a, b, c] = [key_on(&r, 0), key_on(&r, 1), key_on(&r, 2)];
    let sql = "INSERT INTO orders (user_id, note, total) VALUES ($1, $2, $7), ($3, '$1', $7), ($4, $2, $5::numeric), ($6, $2, 0) \
               ON CONFLICT (order_id) DO UPDATE SET note = $8 RETURNING order_id, $9::int AS tag";
    let (ta, tb) = (a.to_string(), b.to_string());
    let bin_b = b.to_be_bytes();
    let bin_c4 = (c as i32).to_be_bytes();
    // Rows' keys: $1 = a (text), $3 = b (binary int8), $4 = c (binary int4), $6 = a (text).
    let values: Vec<Option<&[u8]>> = vec![
        Some(ta.as_bytes()),
        Some(b"n"),
        Some(&bin_b),
        Some(&bin_c4),
        Some(b"9.5"),
        Some(ta.as_bytes()),
        None,
        Some(b"upd"),
        Some(b"7"),
    ];
    let formats = [0, 0, 1, 1, 0, 0, 0, 0, 0];
    let types = [0, 0, 20, 23, 0, 0, 0, 0, 0];
    let p = BoundParams {
        values: &values,
        formats: &formats,
        types: &types,
    };
    let whole = split(&r, sql, &p)
        .unwrap_or_else(|e| panic!("{e}"))
        .unwrap_or_else(|| panic!("not split"));
    let got: Vec<(usize, &str, &[usize], &[usize])> = whole
        .parts
        .iter()
        .map(|p| (p.shard, p.sql.as_str(), &p.params[..], &p.rows[..]))
        .collect();
    let tail = "ON CONFLICT (order_id) DO UPDATE SET note = $";
    assert_eq!(
        got,
        vec![
            (
                0,
                &*format!("INSERT INTO orders (user_id, note, total) VALUES ($1, $2, $3), ($4, $2, 0) {tail}5 RETURNING order_id, $6::int AS tag"),
                &[0, 1, 6, 5, 7, 8][..],
                &[0, 3][..],
            ),
            (
                1,
                &*format!("INSERT INTO orders (user_id, note, total) VALUES ($1, '$1', $2) {tail}3 RETURNING order_id, $4::int AS tag"),
                &[2, 6, 7, 8][..],
                &[1][..],
            ),
            (
                2,
                &*format!("INSERT INTO orders (user_id, note, total) VALUES ($1, $2, $3::numeric) {tail}4 RETURNING order_id, $5::int AS tag"),
                &[3, 1, 4, 7, 8][..],
                &[2][..],
            ),
        ]
    );
    for part in &whole.parts {
        assert_eq!(parsed_rows(&part.sql).len(), part.rows.len());
        // Every placeholder of the part is used, numbered 1..=params.len().
        let used: std::collections::BTreeSet<usize> = crate::text::tokens(&part.sql)
            .into_iter()
            .filter(|t| t.kind == crate::lexer::TokKind::Param)
            .map(|t| {
                part.sql[t.range.start + 1..t.range.end]
                    .parse()
                    .unwrap_or(0)
            })
            .collect();
        assert_eq!(used, (1..=part.params.len()).collect());
    }

    // A bad key value and a missing parameter are the client's errors.
    let values = [Some(&b"x"[..]), Some(ta.as_bytes())];
    let bad = BoundParams {
        values: &values,
        formats: &[],
        types: &[],
    };
    let sql = "INSERT INTO orders (user_id) VALUES ($2), ($1)";
    assert_eq!(split(&r, sql, &bad).map_err(|e| e.code), Err("22P02"));
    let values = [Some(ta.as_bytes()), Some(tb.as_bytes())];
    let two = BoundParams {
        values: &values,
        formats: &[],
        types: &[],
    };
    let sql = "INSERT INTO orders (user_id, n) VALUES ($1, 0), ($2, $3)";
    assert_eq!(split(&r, sql, &two).map_err(|e| e.code), Err("08P01"));
    let sql = "INSERT INTO orders (user_id) VALUES ($1), ($2)";
    let s = split(&r, sql, &two).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(s.map(|s| s.parts.len()), Some(2));
}

#[test]
fn null_keys_go_to_the_default_shard() {
    let r = router();
    let [b, c] = [key_on(&r, 1), key_on(&r, 2)];
    let sql = format!("INSERT INTO orders (user_id) VALUES ({b}), (NULL), ({c})");
    let parts = parts(&r, &sql);
    let got: Vec<(usize, Vec<usize>)> = parts.iter().map(|p| (p.shard, p.rows.clone())).collect();
    assert_eq!(got, vec![(0, vec![1]), (1, vec![0]), (2, vec![2])]);
    // With the other rows on one shard, NULL rows go with them (today's route).
    let sql = format!("INSERT INTO orders (user_id) VALUES ({b}), (NULL)");
    assert_eq!(split(&r, &sql, &BoundParams::NONE), Ok(None));
    assert_eq!(
        r.route(&r.plan(&sql), &BoundParams::NONE, None),
        Ok(Route::Shard(1))
    );
}

#[test]
fn text_and_uuid_keys() {
    let r = router();
    let tenant_on = |shard: usize| {
        (0..100_000)
            .map(|i| format!("tenant-{i}"))
            .find(|t| r.shard_for_key(&KeyValue::Text(t.clone())) == shard)
            .unwrap_or_else(|| panic!("no tenant on {shard}"))
    };
    let (t0, t2) = (tenant_on(0), tenant_on(2));
    let sql = format!(
        "INSERT INTO \"Events\" (kind, tenant) VALUES ('a', '{t2}'), ('b', '{t0}'::text), ('c', $${t2}$$)"
    );
    let parts = parts(&r, &sql);
    let got: Vec<(usize, Vec<usize>)> = parts.iter().map(|p| (p.shard, p.rows.clone())).collect();
    assert_eq!(got, vec![(0, vec![1]), (2, vec![0, 2])]);
    assert_rows_round_trip(&sql, &parts);

    let uuid_on = |shard: usize| {
        (0u8..=255)
            .map(|i| [i; 16])
            .find(|u| r.shard_for_key(&KeyValue::Uuid(*u)) == shard)
            .unwrap_or_else(|| panic!("no uuid on {shard}"))
    };
    let hex = |u: [u8; 16]| u.iter().map(|b| format!("{b:02x}")).collect::<String>();
    let (u1, u2) = (uuid_on(1), uuid_on(2));
    let sql = format!(
        "INSERT INTO sessions (sid, at) VALUES ('{}', now()), ($1, now()), (uuid '{}', now())",
        hex(u1),
        hex(u2)
    );
    let values = [Some(&u2[..])];
    let p = BoundParams {
        values: &values,
        formats: &[1],
        types: &[2950],
    };
    let whole = split(&r, &sql, &p)
        .unwrap_or_else(|e| panic!("{e}"))
        .unwrap_or_else(|| panic!("not split"));
    let got: Vec<(usize, Vec<usize>, Vec<usize>)> = whole
        .parts
        .iter()
        .map(|p| (p.shard, p.rows.clone(), p.params.clone()))
        .collect();
    assert_eq!(got, vec![(1, vec![0], vec![]), (2, vec![1, 2], vec![0])]);
}
