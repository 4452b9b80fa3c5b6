//! Cross-shard results read in parts inside a transaction, compared with one PostgreSQL: a
//! portal executed with a row limit again and again (JDBC's fetchSize, tokio-postgres
//! `query_portal`), and SQL cursors (`DECLARE … CURSOR FOR`, `FETCH`, `MOVE`, `CLOSE`, as
//! psycopg named cursors and Django's `.iterator()` send them). The chunks, their rows and the
//! command tags must be the same; what shardgate does not run (a backward FETCH, a WITH HOLD
//! cursor across shards) is refused with 0A000 and leaves the transaction usable.

use tokio_postgres::{Client, SimpleQueryMessage};

use shardgate_tests::corpus::compare::{binary_rows, sqlstate, Raw};

/// Reads that are merged, combined and gathered, each with an order that fixes its rows.
const PORTAL_READS: &[&str] = &[
    "select order_id, user_id, amount, status from orders order by order_id",
    "select user_id, name, score from users order by score nulls first, user_id",
    "select status, count(*), sum(amount) from orders group by status order by status",
    "select distinct status from orders order by 1",
    "select user_id, order_id, row_number() over (partition by user_id order by order_id) \
     from orders order by user_id, order_id",
    "select u.name, o.amount from users u join orders o on o.user_id = u.user_id \
     order by o.order_id",
];

/// The chunks of `sql` read through a portal `size` rows at a time, in a transaction, with a
/// keyed statement run between the first two chunks.
async fn portal_chunks(client: &mut Client, sql: &str, size: i32) -> Vec<Vec<Vec<Raw>>> {
    let txn = client.transaction().await.expect("begin");
    let portal = txn.bind(sql, &[]).await.expect("bind");
    let mut chunks = Vec::new();
    loop {
        let rows = txn.query_portal(&portal, size).await.expect("query_portal");
        let n = rows.len();
        chunks.push(binary_rows(&rows));
        if chunks.len() == 1 {
            // Another statement in between: the portal stays where it was.
            txn.query_one("select count(*) from orders where user_id = 7", &[])
                .await
                .expect("keyed read between chunks");
        }
        if n < size as usize {
            break;
        }
    }
    drop(portal);
    txn.commit().await.expect("commit");
    chunks
}

/// Every message of a simple-protocol script, as comparable text.
async fn script(client: &Client, statements: &[&str]) -> Vec<String> {
    let mut out = Vec::new();
    for sql in statements {
        match client.simple_query(sql).await {
            Ok(messages) => {
                for m in messages {
                    out.push(match m {
                        SimpleQueryMessage::Row(r) => format!(
                            "row {:?}",
                            (0..r.len()).map(|i| r.get(i)).collect::<Vec<_>>()
                        ),
                        SimpleQueryMessage::CommandComplete(n) => format!("{sql}: {n}"),
                        SimpleQueryMessage::RowDescription(d) => format!(
                            "columns {:?}",
                            d.iter().map(|c| c.name()).collect::<Vec<_>>()
                        ),
                        _ => "other".into(),
                    })
                }
            }
            Err(e) => out.push(format!("{sql}: error {}", sqlstate(&e))),
        }
    }
    out
}

/// Runs the comparisons; each difference is pushed to `failures`.
pub async fn held_reads_match(proxy: &mut Client, direct: &mut Client, failures: &mut Vec<String>) {
    for sql in PORTAL_READS {
        for size in [1, 97, 1000] {
            let got = portal_chunks(proxy, sql, size).await;
            let want = portal_chunks(direct, sql, size).await;
            if got != want {
                let sizes = |c: &Vec<Vec<Vec<Raw>>>| c.iter().map(Vec::len).collect::<Vec<_>>();
                failures.push(format!(
                    "[portal, {size} rows at a time] {sql}\n    chunks {:?} vs {:?}",
                    sizes(&got),
                    sizes(&want)
                ));
            }
        }
    }

    let cursor_script = [
        "begin",
        "declare c1 cursor for select order_id, user_id, status from orders order by order_id",
        "declare \"Big\" no scroll cursor without hold for \
         select status, count(*) from orders group by status order by 1",
        "fetch forward 400 from c1",
        "fetch 2 in \"Big\"",
        "select count(*) from orders where user_id = 9",
        "move 500 c1",
        "fetch next from c1",
        "fetch all from \"Big\"",
        "fetch all c1",
        "fetch 10 from c1",
        "close c1",
        "fetch 1 from \"Big\"",
        "commit",
        // Gone with its transaction, as in PostgreSQL.
        "begin",
        "declare w cursor for select user_id, order_id, \
         rank() over (partition by status order by amount nulls last, order_id) \
         from orders order by order_id",
        "fetch 250 from w",
        "fetch 250 from w",
        "rollback",
        // A cursor opened after a savepoint is gone after ROLLBACK TO it; one opened before
        // stays, where it was.
        "begin",
        "declare kept cursor for select order_id from orders order by order_id",
        "fetch 3 from kept",
        "savepoint s1",
        "declare gone cursor for select user_id from users order by user_id",
        "fetch 2 from gone",
        "rollback to savepoint s1",
        "fetch 2 from kept",
        "fetch 2 from gone",
        "rollback",
        // Outside a transaction a cursor has nowhere to live.
        "declare nope cursor for select * from orders",
    ];
    let got = script(proxy, &cursor_script).await;
    let want = script(direct, &cursor_script).await;
    if got != want {
        let first = got
            .iter()
            .zip(&want)
            .position(|(a, b)| a != b)
            .unwrap_or(got.len().min(want.len()));
        failures.push(format!(
            "[cursor script] differs at message {first}: {:?} vs {:?} ({} vs {} messages)",
            got.get(first),
            want.get(first),
            got.len(),
            want.len()
        ));
    }

    // Refused with a reason, and the transaction goes on.
    proxy.batch_execute("begin").await.expect("begin");
    proxy
        .batch_execute("declare b cursor for select order_id from orders order by order_id")
        .await
        .expect("declare");
    for refused in [
        "fetch backward 1 from b",
        "declare h cursor with hold for select * from orders",
    ] {
        match proxy.simple_query(refused).await {
            Err(e) if sqlstate(&e) == "0A000" => {}
            other => failures.push(format!("[refusal] {refused}: {other:?}")),
        }
    }
    match proxy.simple_query("fetch 3 from b").await {
        Ok(m)
            if m.iter()
                .filter(|m| matches!(m, SimpleQueryMessage::Row(_)))
                .count()
                == 3 => {}
        other => failures.push(format!("[after a refusal] fetch 3 from b: {other:?}")),
    }
    // Another cursor under a held cursor's name is a duplicate, as in PostgreSQL.
    match proxy
        .simple_query("declare b cursor for select * from users")
        .await
    {
        Err(e) if sqlstate(&e) == "42P03" => {}
        other => failures.push(format!("[duplicate cursor]: {other:?}")),
    }
    proxy.batch_execute("rollback").await.expect("rollback");
}

/// A streamed read holds one batch per shard, not its result: with `limits.max_gather_rows =
/// 100`, a merged cursor and a fetch-size portal read 3,000 rows in order, while a gathered
/// cursor (held whole) past the limit gets 54000 naming it.
pub async fn streamed_reads_pass_the_gather_limit(client: &mut Client) {
    for chunk in (1..=3000).collect::<Vec<i64>>().chunks(500) {
        let values: Vec<String> = chunk.iter().map(|k| format!("({k}, 'u{k}')")).collect();
        client
            .batch_execute(&format!(
                "insert into users (user_id, name) values {}",
                values.join(",")
            ))
            .await
            .expect("insert users");
    }
    let want: Vec<String> = (1..=3000).map(|k| k.to_string()).collect();

    client.batch_execute("begin").await.expect("begin");
    client
        .batch_execute("declare c cursor for select user_id from users order by user_id")
        .await
        .expect("declare");
    let mut got = Vec::new();
    loop {
        let rows: Vec<String> = client
            .simple_query("fetch 250 from c")
            .await
            .expect("fetch")
            .into_iter()
            .filter_map(|m| match m {
                SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
                _ => None,
            })
            .collect();
        if rows.is_empty() {
            break;
        }
        got.extend(rows);
    }
    assert_eq!(got, want, "a streamed cursor past the gather limit");
    match client
        .simple_query("declare d cursor for select distinct name from users")
        .await
    {
        Err(e) if sqlstate(&e) == "54000" => {
            let message = e.as_db_error().map(|d| d.message().to_owned());
            assert!(
                message
                    .as_deref()
                    .is_some_and(|m| m.contains("max_gather_rows")),
                "{message:?}"
            );
        }
        other => panic!("a gathered cursor past the limit: {other:?}"),
    }
    client.batch_execute("rollback").await.expect("rollback");
    // The same read whole: 54000, and the transaction can still be rolled back (the sources
    // past the limit were drained, not closed).
    client.batch_execute("begin").await.expect("begin");
    client
        .batch_execute("select 1 from users where user_id = 1")
        .await
        .expect("keyed read");
    match client.simple_query("select distinct name from users").await {
        Err(e) if sqlstate(&e) == "54000" => {}
        other => panic!("a gathered read past the limit: {other:?}"),
    }
    client
        .batch_execute("rollback")
        .await
        .expect("rollback after 54000");

    let txn = client.transaction().await.expect("begin");
    let portal = txn
        .bind("select user_id from users order by user_id desc", &[])
        .await
        .expect("bind");
    let mut n = 0;
    loop {
        let rows = txn.query_portal(&portal, 333).await.expect("query_portal");
        for r in &rows {
            assert_eq!(r.get::<_, i64>(0), 3000 - n);
            n += 1;
        }
        if rows.len() < 333 {
            break;
        }
    }
    assert_eq!(n, 3000);
    txn.commit().await.expect("commit");
}
