"""psycopg 3 through shardgate (transaction mode, small pool).

Usage: python psycopg_test.py POSTGRES_URL
Exits non-zero with a message on the first failure; prints `OK psycopg` at the end.
"""

import datetime
import decimal
import json
import sys
import threading
import traceback
import uuid

import psycopg
from psycopg.types.json import Json, Jsonb

URL = sys.argv[1] if len(sys.argv) > 1 else None
TABLE = "psycopg_items"


def step(name):
    print(f"-- {name}", flush=True)


def check(cond, what):
    if not cond:
        raise AssertionError(what)


def eq(got, want, what):
    if got != want:
        raise AssertionError(f"{what}: got {got!r}, want {want!r}")


def connect(**kw):
    return psycopg.connect(URL, autocommit=True, **kw)


def server_has_statement(conn, marker):
    """Whether the server connection running this transaction holds a prepared statement whose
    text contains `marker` (the proxy renames statements, so look at the text)."""
    row = conn.execute(
        "select count(*) from pg_prepared_statements where statement like %s and not from_sql",
        (f"%{marker}%",),
        prepare=False,
    ).fetchone()
    return row[0] > 0


def types_round_trip(conn):
    step("parameterized queries with types")
    u = uuid.uuid4()
    ts = datetime.datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=datetime.timezone.utc)
    doc = {"a": 1, "b": [True, None, "x"], "c": {"d": 1.5}}
    row = conn.execute(
        "select %s::int, %s::text, %s::bytea, %s::numeric, %s::timestamptz, %s::uuid,"
        " %s::json, %s::jsonb, %s::int, %s::int[], %s::text[]",
        (
            42,
            "héllo 'quoted' \"x\"",
            b"\x00\x01\xffbin",
            decimal.Decimal("12345678901234567890.123456789"),
            ts,
            u,
            Json(doc),
            Jsonb(doc),
            None,
            [1, 2, None, 4],
            ["a", "b c", None],
        ),
    ).fetchone()
    eq(row[0], 42, "int")
    eq(row[1], "héllo 'quoted' \"x\"", "text")
    eq(bytes(row[2]), b"\x00\x01\xffbin", "bytea")
    eq(row[3], decimal.Decimal("12345678901234567890.123456789"), "numeric")
    eq(row[4], ts, "timestamptz")
    eq(row[5], u, "uuid")
    eq(row[6], doc, "json")
    eq(row[7], doc, "jsonb")
    eq(row[8], None, "NULL")
    eq(row[9], [1, 2, None, 4], "int[]")
    eq(row[10], ["a", "b c", None], "text[]")
    # The same in binary format.
    with conn.cursor(binary=True) as cur:
        row = cur.execute(
            "select %s::int8, %s::bytea, %s::numeric, %s::uuid, %s::jsonb, %s::int4[]",
            (2**40, b"\x00bin", decimal.Decimal("-1.50"), u, Jsonb(doc), [3, None]),
        ).fetchone()
    eq(row, (2**40, b"\x00bin", decimal.Decimal("-1.50"), u, doc, [3, None]), "binary row")


def repeated_statement(conn, marker):
    step(f"statement repeated 20 times (prepare_threshold={conn.prepare_threshold})")
    q = f"select %s::int * 2 as {marker}, %s::text"
    for i in range(20):
        row = conn.execute(q, (i, f"v{i}")).fetchone()
        eq(row, (i * 2, f"v{i}"), f"repeat {i}")
    # psycopg must have moved it to a server-side prepared statement by now, and the server
    # connection that runs it must hold it (the proxy prepares it there if needed).
    with conn.transaction():
        eq(conn.execute(q, (21, "x")).fetchone(), (42, "x"), "prepared run in a transaction")
        check(
            server_has_statement(conn, marker),
            f"the server connection has no prepared statement for {marker}",
        )


def table_setup(conn):
    step("create table")
    conn.execute(f"drop table if exists {TABLE}")
    conn.execute(
        f"create table {TABLE} (id int primary key, name text, data bytea, amount numeric,"
        " at timestamptz)"
    )


def transactions(conn):
    step("transaction commit and rollback")
    with conn.transaction():
        conn.execute(f"insert into {TABLE} (id, name) values (%s, %s)", (1, "committed"))
        conn.execute(f"insert into {TABLE} (id, name) values (%s, %s)", (2, "committed too"))
    try:
        with conn.transaction():
            conn.execute(f"insert into {TABLE} (id, name) values (%s, %s)", (3, "rolled back"))
            raise RuntimeError("roll back please")
    except RuntimeError:
        pass
    ids = [r[0] for r in conn.execute(f"select id from {TABLE} order by id")]
    eq(ids, [1, 2], "ids after commit + rollback")
    # Explicit statements, non-autocommit connection.
    with psycopg.connect(URL) as c2:
        c2.execute(f"insert into {TABLE} (id, name) values (%s, %s)", (4, "explicit"))
        c2.rollback()
        c2.execute(f"insert into {TABLE} (id, name) values (%s, %s)", (5, "explicit"))
        c2.commit()
        eq(
            [r[0] for r in c2.execute(f"select id from {TABLE} where id >= 4")],
            [5],
            "implicit transactions",
        )
        c2.rollback()


def errors(conn):
    step("error then recovery")
    try:
        conn.execute("select 1/0")
        raise AssertionError("division by zero did not fail")
    except psycopg.errors.DivisionByZero:
        pass
    eq(conn.execute("select %s::int + 1", (1,)).fetchone()[0], 2, "after error")
    try:
        conn.execute("select * from no_such_table_xyz where id = %s", (1,))
        raise AssertionError("unknown table did not fail")
    except psycopg.errors.UndefinedTable:
        pass
    eq(conn.execute("select 'fine'").fetchone()[0], "fine", "after extended error")

    step("error inside a transaction, rollback, continue")
    conn.execute("begin")
    conn.execute(f"insert into {TABLE} (id, name) values (%s, %s)", (10, "in tx"))
    try:
        conn.execute(f"insert into {TABLE} (id, name) values (%s, %s)", (10, "duplicate"))
        raise AssertionError("duplicate key did not fail")
    except psycopg.errors.UniqueViolation:
        pass
    try:
        conn.execute("select 1")
        raise AssertionError("statement in an aborted transaction did not fail")
    except psycopg.errors.InFailedSqlTransaction:
        pass
    eq(conn.info.transaction_status, psycopg.pq.TransactionStatus.INERROR, "tx status")
    conn.execute("rollback")
    eq(conn.info.transaction_status, psycopg.pq.TransactionStatus.IDLE, "tx status")
    eq(
        conn.execute(f"select count(*) from {TABLE} where id = 10").fetchone()[0],
        0,
        "rolled back row",
    )
    # Errors with a prepared statement in play (psycopg prepared it above).
    with conn.transaction():
        conn.execute(f"insert into {TABLE} (id, name) values (%s, %s)", (11, "savepoint"))
        try:
            with conn.transaction():
                conn.execute(f"insert into {TABLE} (id, name) values (%s, %s)", (11, "dup"))
        except psycopg.errors.UniqueViolation:
            pass
    eq(
        conn.execute(f"select name from {TABLE} where id = 11").fetchone()[0],
        "savepoint",
        "savepoint rollback kept the outer transaction",
    )


def copy(conn):
    step("COPY in and out")
    conn.execute("drop table if exists psycopg_copy")
    conn.execute("create table psycopg_copy (id int, name text, data bytea)")
    rows = [(i, f"name {i}\twith tab" if i % 7 == 0 else f"name {i}", bytes([i % 256]) * 3)
            for i in range(1000)]
    with conn.cursor() as cur:
        with cur.copy("copy psycopg_copy (id, name, data) from stdin") as cp:
            for r in rows:
                cp.write_row(r)
        eq(cur.rowcount, 1000, "copy in rowcount")
    # Binary COPY too.
    with conn.cursor() as cur:
        with cur.copy("copy psycopg_copy (id, name, data) from stdin (format binary)") as cp:
            cp.set_types(["int4", "text", "bytea"])
            cp.write_row((5000, "binary", b"\x00\x01"))
    eq(conn.execute("select count(*) from psycopg_copy").fetchone()[0], 1001, "count after copy")
    got = []
    with conn.cursor() as cur:
        with cur.copy("copy (select id, name, data from psycopg_copy where id < 1000 order by id)"
                      " to stdout") as cp:
            cp.set_types(["int4", "text", "bytea"])
            for r in cp.rows():
                got.append((r[0], r[1], bytes(r[2])))
    eq(got, rows, "copy out rows")
    # COPY that fails half-way leaves a usable connection.
    try:
        with conn.cursor() as cur:
            with cur.copy("copy psycopg_copy (id) from stdin") as cp:
                cp.write_row((1,))
                cp.write("not a number\n")
        raise AssertionError("bad COPY data did not fail")
    except psycopg.errors.InvalidTextRepresentation:
        pass
    eq(conn.execute("select count(*) from psycopg_copy").fetchone()[0], 1001, "after failed copy")
    # COPY inside a transaction that rolls back.
    conn.execute("begin")
    with conn.cursor() as cur:
        with cur.copy("copy psycopg_copy (id) from stdin") as cp:
            cp.write_row((7777,))
    conn.execute("rollback")
    eq(conn.execute("select count(*) from psycopg_copy where id = 7777").fetchone()[0], 0,
       "copy rolled back")


def prepare_thresholds():
    for threshold in (0, 1):
        with connect(prepare_threshold=threshold) as c:
            step(f"prepare_threshold={threshold}")
            marker = f"thr{threshold}"
            repeated_statement(c, marker)
            # With threshold 0 even the first execution is prepared.
            q = f"select %s::text as first_{marker}"
            with c.transaction():
                eq(c.execute(q, ("a",)).fetchone()[0], "a", "first run")
                if threshold == 0:
                    check(server_has_statement(c, f"first_{marker}"),
                          "threshold 0: first execution was not prepared on the server")
            for i in range(5):
                eq(c.execute(q, (str(i),)).fetchone()[0], str(i), "rerun")
    # Explicitly prepared with prepare=True; and psycopg's own cache with many statements
    # (prepared_max smaller than the number of statements: psycopg deallocates as it goes).
    with connect(prepare_threshold=0) as c:
        c.prepared_max = 5
        for round_ in range(3):
            for k in range(12):
                eq(c.execute(f"select %s::int + {k} as many_{k}", (round_,)).fetchone()[0],
                   round_ + k, "many statements")
        eq(c.execute("select %s::int", (9,), prepare=True).fetchone()[0], 9, "prepare=True")


def savepoint_rollback_keeps_prepared_working():
    """psycopg answers a rolled-back savepoint with DEALLOCATE ALL inside the outer transaction
    (DEALLOCATE is not transactional) and then prepares its statements again."""
    step("savepoint rollback + DEALLOCATE ALL inside a transaction")
    with connect(prepare_threshold=0) as c:
        q = "select %s::int + 1 as sp_dealloc"
        for attempt in range(3):
            with c.transaction():
                eq(c.execute(q, (1,)).fetchone()[0], 2, "before the savepoint")
                try:
                    with c.transaction():
                        c.execute("select 1/0")
                except psycopg.errors.DivisionByZero:
                    pass
                eq(c.execute(q, (2,)).fetchone()[0], 3, f"after DEALLOCATE ALL ({attempt})")
                eq(c.execute("select %s::text as sp_other", ("x",)).fetchone()[0], "x", "other")
            eq(c.execute(q, (3,)).fetchone()[0], 4, "after the transaction")
        # Committed explicitly by the user, outside and inside a transaction.
        c.execute("deallocate all")
        eq(c.execute(q, (4,)).fetchone()[0], 5, "after DEALLOCATE ALL")
        with c.transaction():
            c.execute("deallocate all")
            eq(c.execute(q, (5,)).fetchone()[0], 6, "after DEALLOCATE ALL in a transaction")
        eq(c.execute(q, (6,)).fetchone()[0], 7, "after the commit")
        for i in range(10):
            eq(c.execute(q, (i,)).fetchone()[0], i + 1, "again")


def pipeline_cursor_cancel_and_big_data():
    step("pipeline mode")
    with connect(prepare_threshold=0) as c:
        with c.pipeline() as p:
            curs = [c.execute("select %s::int + 0 as pipe", (i,)) for i in range(30)]
            p.sync()
            eq([cur.fetchone()[0] for cur in curs], list(range(30)), "pipelined results")
        try:
            with c.pipeline():
                c.execute("select %s::int as pipe_ok", (1,))
                c.execute("select 1/%s::int as pipe_err", (0,))
                c.execute("select %s::int as pipe_skipped", (2,))
            raise AssertionError("the pipeline did not fail")
        except psycopg.errors.DivisionByZero:
            pass
        with c.pipeline():
            cur = c.execute("select %s::int + 0 as pipe", (7,))
        eq(cur.fetchone()[0], 7, "after a failed pipeline")
        with c.transaction():
            with c.pipeline():
                for i in range(10):
                    c.execute(f"insert into {TABLE} (id, name) values (%s, %s)", (500 + i, "pipe"))
        eq(c.execute(f"select count(*) from {TABLE} where name = 'pipe'").fetchone()[0], 10,
           "pipelined inserts")

    step("server-side (named) cursor")
    with psycopg.connect(URL) as c:
        with c.cursor(name="big_cursor") as cur:
            cur.itersize = 100
            cur.execute("select g, repeat('x', 100) from generate_series(1, 5000) g")
            total = sum(r[0] for r in cur)
        eq(total, 5000 * 5001 // 2, "named cursor sum")
        c.commit()

    step("large values and results")
    with connect() as c:
        blob = bytes(range(256)) * (8 * 4096)  # 8 MiB
        got = c.execute("select %s::bytea", (blob,)).fetchone()[0]
        check(bytes(got) == blob, "8 MiB bytea round trip differs")
        rows = c.execute("select g, md5(g::text) from generate_series(1, 100000) g").fetchall()
        eq(len(rows), 100000, "100k rows")
        eq(rows[-1][0], 100000, "last row")

    step("cancel a running query")
    with connect() as c:
        done = threading.Event()

        def canceller():
            # Cancel until the query is gone: a cancel sent before the query reached the
            # server is dropped, so one is not enough.
            while not done.wait(0.2):
                c.cancel_safe()

        t = threading.Thread(target=canceller)
        t.start()
        try:
            c.execute("select pg_sleep(60)")
            raise AssertionError("pg_sleep was not cancelled")
        except psycopg.errors.QueryCanceled:
            pass
        finally:
            done.set()
            t.join()
        eq(c.execute("select %s::int", (3,)).fetchone()[0], 3, "after cancel")


def set_inside_transaction_with_savepoint():
    """A session-level SET inside a transaction that recovers from an error through a savepoint
    (psycopg's nested transaction) is committed: the client keeps it, nobody else sees it."""
    step("SET in a transaction with a rolled-back savepoint")
    get = "select current_setting('shardgate_test.tag', true)"
    with connect() as other, connect() as a:
        with a.transaction():
            a.execute("set shardgate_test.tag = 'mine'")
            try:
                with a.transaction():
                    a.execute("select 1/0")
            except psycopg.errors.DivisionByZero:
                pass
        # Each autocommit statement may land on another server connection of the pool.
        # PostgreSQL keeps the SET (it precedes the savepoint); the proxy may conservatively
        # forget it, but the client must see one value whichever connection it gets, and no
        # other client may see it.
        seen = set()
        for i in range(8):
            seen.add(a.execute(get).fetchone()[0] or "")
            check(other.execute(get).fetchone()[0] in (None, ""),
                  f"another client sees the setting ({i})")
        check(len(seen) == 1, f"the client sees different values on different connections: {seen}")
        print(f"   setting after the transaction: {seen.pop()!r} (PostgreSQL: 'mine')", flush=True)
        a.execute("set shardgate_test.tag = 'mine'")
        # And a SET rolled back to a savepoint is gone, for everyone.
        with a.transaction():
            a.execute("savepoint s1")
            a.execute("set shardgate_test.tag = 'undone'")
            a.execute("rollback to savepoint s1")
        for i in range(8):
            eq(a.execute(get).fetchone()[0], "mine", f"after rollback to savepoint ({i})")
            check(other.execute(get).fetchone()[0] in (None, ""),
                  f"another client sees the setting after rollback to savepoint ({i})")


def concurrency():
    step("20 concurrent connections (threads)")
    errors_seen = []

    def worker(n):
        try:
            with connect(prepare_threshold=1) as c:
                for j in range(5):
                    # Every client names its first prepared statement _pg3_0, each for a
                    # different text here: names must not mix between clients.
                    eq(c.execute(f"select %s::int + {n} as w{n}", (j,)).fetchone()[0], j + n,
                       "per-client statement")
                    with c.transaction():
                        c.execute(
                            f"insert into {TABLE} (id, name, amount, at) values (%s, %s, %s, now())",
                            (1000 + n * 100 + j, f"w{n}", decimal.Decimal(j)),
                        )
                        got = c.execute(f"select name from {TABLE} where id = %s",
                                        (1000 + n * 100 + j,)).fetchone()[0]
                        eq(got, f"w{n}", "read own write")
                        eq(c.execute("select %s::int * 3", (n,)).fetchone()[0], n * 3, "calc")
        except Exception as e:  # noqa: BLE001
            errors_seen.append(f"worker {n}: {e!r}\n{traceback.format_exc()}")

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors_seen:
        raise AssertionError("concurrent workers failed:\n" + "\n".join(errors_seen))
    with connect() as c:
        eq(c.execute(f"select count(*) from {TABLE} where id >= 1000").fetchone()[0], 100,
           "rows from concurrent workers")


def main():
    if not URL:
        print("usage: psycopg_test.py POSTGRES_URL", file=sys.stderr)
        return 2
    print(f"psycopg {psycopg.__version__} (libpq {psycopg.pq.version()})", flush=True)
    with connect() as conn:
        step("connect")
        eq(conn.execute("select 1").fetchone()[0], 1, "select 1")
        types_round_trip(conn)
        repeated_statement(conn, "rep_default")
        table_setup(conn)
        transactions(conn)
        errors(conn)
        copy(conn)
    prepare_thresholds()
    savepoint_rollback_keeps_prepared_working()
    pipeline_cursor_cancel_and_big_data()
    set_inside_transaction_with_savepoint()
    concurrency()
    print("OK psycopg", flush=True)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except Exception:  # noqa: BLE001
        traceback.print_exc()
        print("FAILED psycopg", flush=True)
        sys.exit(1)
