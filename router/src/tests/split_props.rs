//! Properties of `Router::split_insert` over many generated statements: every row lands in
//! exactly one part, on its key's shard; each part re-parses to its rows, which (with their
//! placeholders mapped back through `params`) are the client's rows, in the client's order; and
//! each part, planned on its own, routes to its shard.

use super::router;
use super::splits::{assert_rows_round_trip, parsed_rows, parts, split};
use crate::lexer::TokKind;
use crate::plan::KeyValue;
use crate::{BoundParams, InsertPart, Route, Router};

use super::rng::Rng;

/// Values that look like row boundaries, placeholders or comments to a careless splitter.
const TRICKY: &[&str] = &[
    "'),('",
    "$$ ), ( $1 $$",
    "$t$ ) , ( $t$",
    "E'\\'),(\\''",
    "/* ), ( */ 1",
    "'$1'",
    "ARRAY[(1), (2)]",
    "('(' || ')')",
    "-1",
    "1.5e3",
    "now()",
    "'é),(ü'",
    "U&'\\0028'",
    "NULL",
];

const SEPARATORS: &[&str] = &[
    ",",
    " , ",
    ",\n  ",
    ", /* c ( */ ",
    " -- ), (\n, ",
    "/**/,/**/",
];

const TAILS: &[&str] = &[
    "",
    " RETURNING *",
    " ON CONFLICT DO NOTHING",
    " ON CONFLICT (order_id) DO UPDATE SET note = EXCLUDED.note RETURNING order_id",
    ";",
    " -- done",
];

/// The part's text with each placeholder `$m` written back as the client's `$n`.
fn client_numbers(part: &InsertPart) -> String {
    let sql = &part.sql;
    let mut out = String::new();
    let mut at = 0;
    for t in crate::text::tokens(sql) {
        if t.kind == TokKind::Param {
            let m: usize = sql[t.range.start + 1..t.range.end].parse().unwrap_or(0);
            out.push_str(&sql[at..t.range.start]);
            out.push_str(&format!("${}", part.params[m - 1] + 1));
            at = t.range.end;
        }
    }
    out.push_str(&sql[at..]);
    out
}

/// Each part, with its own parameters, is a one-shard statement on its shard.
fn assert_parts_route_home(r: &Router, parts: &[InsertPart], values: &[Option<&[u8]>]) {
    for part in parts {
        let mine: Vec<Option<&[u8]>> = part.params.iter().map(|i| values[*i]).collect();
        let p = BoundParams {
            values: &mine,
            formats: &[],
            types: &[],
        };
        assert_eq!(
            r.route(&r.plan(&part.sql), &p, None),
            Ok(Route::Shard(part.shard)),
            "{}",
            part.sql
        );
    }
}

#[test]
fn generated_inserts_split_into_their_rows() {
    let r = router();
    let mut rng = Rng(0x5eed_1234_abcd_0001);
    let mut split_count = 0;
    for case in 0..400 {
        let rows = 2 + rng.below(10);
        let key_at = rng.below(3);
        let mut columns = vec!["note", "total"];
        columns.insert(key_at, "user_id");
        let mut values: Vec<String> = Vec::new();
        let mut row_texts = Vec::new();
        let mut shards = Vec::new();
        for _ in 0..rows {
            let key = 1 + rng.below(40) as i64;
            let key_text = match rng.below(5) {
                0 => {
                    values.push(key.to_string());
                    format!("${}", values.len())
                }
                1 => format!("'{key}'::int8"),
                2 if rng.below(3) == 0 => "NULL".to_owned(),
                _ => key.to_string(),
            };
            shards.push((key_text != "NULL").then(|| r.shard_for_key(&KeyValue::Int(key))));
            let mut cells = Vec::new();
            for _ in 0..2 {
                if rng.below(4) == 0 {
                    values.push(format!("v{}", values.len()));
                    cells.push(format!("${}", values.len()));
                } else {
                    cells.push(rng.pick(TRICKY).to_owned());
                }
            }
            cells.insert(key_at, key_text);
            row_texts.push(format!("({})", cells.join(", ")));
        }
        // A placeholder reused in a later row and in the tail.
        let reuse = (!values.is_empty() && rng.below(2) == 0).then(|| 1 + rng.below(values.len()));
        let mut body = String::new();
        for (i, row) in row_texts.iter().enumerate() {
            if i > 0 {
                body.push_str(rng.pick(SEPARATORS));
            }
            body.push_str(row);
        }
        let mut tail = rng.pick(TAILS).to_owned();
        if let Some(n) = reuse {
            tail = format!(" RETURNING order_id, ${n}::text AS echo");
        }
        let head = ["", "/* bulk */ ", "-- x\n"][rng.below(3)];
        let sql = format!(
            "{head}INSERT INTO orders ({}) VALUES {body}{tail}",
            columns.join(", ")
        );
        let bytes: Vec<Vec<u8>> = values.iter().map(|v| v.clone().into_bytes()).collect();
        let bound: Vec<Option<&[u8]>> = bytes.iter().map(|v| Some(&v[..])).collect();
        let p = BoundParams {
            values: &bound,
            formats: &[],
            types: &[],
        };
        let mut distinct: Vec<usize> = shards.iter().flatten().copied().collect();
        distinct.sort_unstable();
        distinct.dedup();
        let got = split(&r, &sql, &p).unwrap_or_else(|e| panic!("case {case}: {sql}: {e}"));
        let Some(whole) = got else {
            assert!(distinct.len() <= 1, "case {case}: not split: {sql}");
            continue;
        };
        split_count += 1;
        assert!(distinct.len() >= 2, "case {case}: {sql}");
        // Every row is in the part of its key's shard (NULL keys: the default shard).
        for part in &whole.parts {
            for row in &part.rows {
                assert_eq!(
                    shards[*row].unwrap_or(r.default_shard()),
                    part.shard,
                    "case {case}"
                );
            }
        }
        // Rows, mapped back to the client's placeholders, are the client's rows in order.
        let restored: Vec<InsertPart> = whole
            .parts
            .iter()
            .map(|part| InsertPart {
                sql: client_numbers(part),
                ..part.clone()
            })
            .collect();
        assert_rows_round_trip(&sql, &restored);
        assert_parts_route_home(&r, &whole.parts, &bound);
    }
    assert!(split_count > 200, "only {split_count} cases split");
}

#[test]
fn a_thousand_rows_split_in_one_pass() {
    let r = router();
    let rows: Vec<String> = (1..=1000)
        .map(|k| format!("({k}, 'order {k} (a), (b)', {k}.5)"))
        .collect();
    let sql = format!(
        "INSERT INTO orders (user_id, note, total) VALUES {} RETURNING order_id",
        rows.join(", ")
    );
    let parts = parts(&r, &sql);
    assert_eq!(parts.len(), 3);
    assert_eq!(parts.iter().map(|p| p.rows.len()).sum::<usize>(), 1000);
    for part in &parts {
        assert_eq!(parsed_rows(&part.sql).len(), part.rows.len());
        for row in &part.rows {
            assert_eq!(r.shard_for_key(&KeyValue::Int(*row as i64 + 1)), part.shard);
        }
    }
    assert_rows_round_trip(&sql, &parts);

    // The same with 3,000 parameters (the extended protocol's ORM bulk insert).
    let rows: Vec<String> = (0..1000)
        .map(|i| format!("(${}, ${}, ${})", 3 * i + 1, 3 * i + 2, 3 * i + 3))
        .collect();
    let sql = format!(
        "INSERT INTO orders (user_id, note, total) VALUES {} RETURNING order_id",
        rows.join(",")
    );
    let texts: Vec<String> = (0..3000).map(|i| (i / 3 + 1).to_string()).collect();
    let values: Vec<Option<&[u8]>> = texts.iter().map(|t| Some(t.as_bytes())).collect();
    let p = BoundParams {
        values: &values,
        formats: &[],
        types: &[],
    };
    let whole = split(&r, &sql, &p)
        .unwrap_or_else(|e| panic!("{e}"))
        .unwrap_or_else(|| panic!("not split"));
    for part in &whole.parts {
        assert_eq!(part.params.len(), 3 * part.rows.len());
        let want: Vec<usize> = part
            .rows
            .iter()
            .flat_map(|row| [3 * row, 3 * row + 1, 3 * row + 2])
            .collect();
        assert_eq!(part.params, want);
    }
    assert_parts_route_home(&r, &whole.parts, &values);
}

#[test]
fn a_plan_of_another_text_is_refused_not_guessed() {
    let r = router();
    let (a, b) = (super::splits::key_on(&r, 0), super::splits::key_on(&r, 1));
    let three = r.plan(&format!(
        "INSERT INTO orders (user_id) VALUES ({a}), ({b}), ({a})"
    ));
    let two = format!("INSERT INTO orders (user_id) VALUES ({a}), ({b})");
    let e = r
        .split_insert(&three, &two, &BoundParams::NONE, None)
        .unwrap_err();
    assert_eq!(e.code, "0A000");
    assert!(e.message.contains("found 2 VALUES rows"), "{e}");

    // A shape's plan (literals as parameters) against the literal text: the key parameters
    // are not in the rows.
    let shaped = r.plan("INSERT INTO orders (user_id) VALUES ($1), ($2)");
    let literals = [Some(a.to_string()), Some(b.to_string())];
    let values: Vec<Option<&[u8]>> = literals
        .iter()
        .map(|l| l.as_deref().map(str::as_bytes))
        .collect();
    let p = BoundParams {
        values: &values,
        formats: &[],
        types: &[],
    };
    let e = r.split_insert(&shaped, &two, &p, None).unwrap_err();
    assert_eq!(e.code, "0A000");

    // split_query does it right for a simple-protocol statement, shape or not.
    for _ in 0..2 {
        let query = r.plan_query(&two);
        let whole = r
            .split_query(&query, None)
            .unwrap_or_else(|e| panic!("{e}"))
            .unwrap_or_else(|| panic!("not split"));
        assert_eq!(
            whole
                .parts
                .iter()
                .map(|p| p.sql.as_str())
                .collect::<Vec<_>>(),
            [
                format!("INSERT INTO orders (user_id) VALUES ({a})"),
                format!("INSERT INTO orders (user_id) VALUES ({b})")
            ]
        );
    }
    let one = format!("INSERT INTO orders (user_id) VALUES ({a}), ({a})");
    assert_eq!(r.split_query(&r.plan_query(&one), None), Ok(None));
}
