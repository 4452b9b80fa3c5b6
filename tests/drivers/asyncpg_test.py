"""asyncpg through shardgate (transaction mode, small pool).

asyncpg always uses named prepared statements and binary formats.
Usage: python asyncpg_test.py POSTGRES_URL
Exits non-zero with a message on the first failure; prints `OK asyncpg` at the end.
"""

import asyncio
import datetime
import decimal
import io
import json
import sys
import traceback
import uuid

import asyncpg

URL = sys.argv[1] if len(sys.argv) > 1 else None
# Server connections in the proxy's pool (to put a statement on every one of them).
POOL_SIZE = int(sys.argv[2]) if len(sys.argv) > 2 else 4
TABLE = "asyncpg_items"


def step(name):
    print(f"-- {name}", flush=True)


def check(cond, what):
    if not cond:
        raise AssertionError(what)


def eq(got, want, what):
    if got != want:
        raise AssertionError(f"{what}: got {got!r}, want {want!r}")


async def server_has_statement(conn, marker):
    """Whether the server connection running the current transaction holds a protocol-level
    prepared statement whose text contains `marker`."""
    n = await conn.fetchval(
        "select count(*) from pg_prepared_statements where statement like $1 and not from_sql",
        f"%{marker}%",
    )
    return n > 0


async def types_round_trip(conn):
    step("parameterized queries with types (binary)")
    u = uuid.uuid4()
    ts = datetime.datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=datetime.timezone.utc)
    doc = {"a": 1, "b": [True, None, "x"], "c": {"d": 1.5}}
    row = await conn.fetchrow(
        "select $1::int, $2::text, $3::bytea, $4::numeric, $5::timestamptz, $6::uuid,"
        " $7::json, $8::jsonb, $9::int, $10::int[], $11::text[], $12::int8",
        42,
        "héllo 'quoted' \"x\"",
        b"\x00\x01\xffbin",
        decimal.Decimal("12345678901234567890.123456789"),
        ts,
        u,
        json.dumps(doc),
        json.dumps(doc),
        None,
        [1, 2, None, 4],
        ["a", "b c", None],
        2**40,
    )
    eq(row[0], 42, "int")
    eq(row[1], "héllo 'quoted' \"x\"", "text")
    eq(row[2], b"\x00\x01\xffbin", "bytea")
    eq(row[3], decimal.Decimal("12345678901234567890.123456789"), "numeric")
    eq(row[4], ts, "timestamptz")
    eq(row[5], u, "uuid")
    eq(json.loads(row[6]), doc, "json")
    eq(json.loads(row[7]), doc, "jsonb")
    eq(row[8], None, "NULL")
    eq(row[9], [1, 2, None, 4], "int[]")
    eq(row[10], ["a", "b c", None], "text[]")
    eq(row[11], 2**40, "int8")
    # A composite type makes asyncpg introspect the catalog with its own prepared queries.
    await conn.execute("drop type if exists asyncpg_pair cascade")
    await conn.execute("create type asyncpg_pair as (a int, b text)")
    got = await conn.fetchval("select ($1::int, $2::text)::asyncpg_pair", 7, "seven")
    eq(tuple(got), (7, "seven"), "composite")


async def repeated_statement(conn):
    step("statement repeated 20 times")
    q = "select $1::int * 2 as asyncpg_rep, $2::text"
    for i in range(20):
        row = await conn.fetchrow(q, i, f"v{i}")
        eq(tuple(row), (i * 2, f"v{i}"), f"repeat {i}")
    async with conn.transaction():
        eq(await conn.fetchval(q, 21, "x"), 42, "run in a transaction")
        check(await server_has_statement(conn, "asyncpg_rep"),
              "the server connection has no prepared statement for asyncpg_rep")
    step("explicit prepare")
    stmt = await conn.prepare("select $1::int + 100 as asyncpg_explicit")
    for i in range(20):
        eq(await stmt.fetchval(i), i + 100, "prepared statement")
    eq([a.name for a in stmt.get_attributes()], ["asyncpg_explicit"], "attributes")
    # A statement used in a transaction on whichever server connection the proxy picks.
    async with conn.transaction():
        eq(await stmt.fetchval(1), 101, "prepared statement in a transaction")
        check(await server_has_statement(conn, "asyncpg_explicit"),
              "explicit statement not prepared on the server connection")
    # Cursors (portals) need a transaction.
    async with conn.transaction():
        total = 0
        async for r in conn.cursor("select g from generate_series(1, 1000) g", prefetch=100):
            total += r[0]
        eq(total, 500500, "cursor sum")
        cur = await conn.cursor("select g from generate_series(1, 10) g")
        eq([r[0] for r in await cur.fetch(3)], [1, 2, 3], "cursor fetch")
        eq([r[0] for r in await cur.fetch(3)], [4, 5, 6], "cursor fetch 2")


async def table_setup(conn):
    step("create table")
    await conn.execute(f"drop table if exists {TABLE}")
    await conn.execute(
        f"create table {TABLE} (id int primary key, name text, data bytea, amount numeric,"
        " at timestamptz)"
    )


async def transactions(conn):
    step("transaction commit and rollback")
    async with conn.transaction():
        await conn.execute(f"insert into {TABLE} (id, name) values ($1, $2)", 1, "committed")
        await conn.execute(f"insert into {TABLE} (id, name) values ($1, $2)", 2, "committed")
    try:
        async with conn.transaction():
            await conn.execute(f"insert into {TABLE} (id, name) values ($1, $2)", 3, "rolled back")
            raise RuntimeError("roll back please")
    except RuntimeError:
        pass
    ids = [r["id"] for r in await conn.fetch(f"select id from {TABLE} order by id")]
    eq(ids, [1, 2], "ids after commit + rollback")
    step("executemany")
    await conn.executemany(
        f"insert into {TABLE} (id, name, amount) values ($1, $2, $3)",
        [(100 + i, f"many {i}", decimal.Decimal(i) / 4) for i in range(50)],
    )
    eq(await conn.fetchval(f"select count(*) from {TABLE} where id between 100 and 149"), 50,
       "executemany rows")


async def errors(conn):
    step("error then recovery")
    try:
        await conn.fetchval("select 1/0")
        raise AssertionError("division by zero did not fail")
    except asyncpg.exceptions.DivisionByZeroError:
        pass
    eq(await conn.fetchval("select $1::int + 1", 1), 2, "after error")
    try:
        await conn.fetchval("select * from no_such_table_xyz where id = $1", 1)
        raise AssertionError("unknown table did not fail")
    except asyncpg.exceptions.UndefinedTableError:
        pass
    eq(await conn.fetchval("select 'fine'"), "fine", "after a failed prepare")
    try:
        await conn.fetchval("select $1::int", "not an int")
        raise AssertionError("bad parameter did not fail")
    except asyncpg.exceptions.DataError:
        pass
    eq(await conn.fetchval("select $1::int", 5), 5, "after a client-side error")

    step("error inside a transaction, rollback, continue")
    tr = conn.transaction()
    await tr.start()
    await conn.execute(f"insert into {TABLE} (id, name) values ($1, $2)", 10, "in tx")
    try:
        await conn.execute(f"insert into {TABLE} (id, name) values ($1, $2)", 10, "duplicate")
        raise AssertionError("duplicate key did not fail")
    except asyncpg.exceptions.UniqueViolationError:
        pass
    try:
        await conn.fetchval("select 1")
        raise AssertionError("statement in an aborted transaction did not fail")
    except asyncpg.exceptions.InFailedSQLTransactionError:
        pass
    await tr.rollback()
    check(not conn.is_in_transaction(), "still in a transaction after rollback")
    eq(await conn.fetchval(f"select count(*) from {TABLE} where id = 10"), 0, "rolled back row")
    # Savepoints: nested transaction fails, outer commits.
    async with conn.transaction():
        await conn.execute(f"insert into {TABLE} (id, name) values ($1, $2)", 11, "outer")
        try:
            async with conn.transaction():
                await conn.execute(f"insert into {TABLE} (id, name) values ($1, $2)", 11, "dup")
        except asyncpg.exceptions.UniqueViolationError:
            pass
    eq(await conn.fetchval(f"select name from {TABLE} where id = 11"), "outer", "savepoint")


async def cancel_and_simple(conn):
    step("timeout cancels a running query")
    try:
        await conn.fetchval("select pg_sleep(60)", timeout=1)
        raise AssertionError("pg_sleep did not time out")
    except asyncio.TimeoutError:
        pass
    eq(await conn.fetchval("select $1::int", 3), 3, "after the cancel")
    step("simple protocol, several statements")
    await conn.execute("create temp table if not exists t_simple (x int); drop table t_simple;"
                       " select 1; select 2")
    try:
        await conn.execute("select 1; select 1/0; select 3")
        raise AssertionError("division by zero did not fail")
    except asyncpg.exceptions.DivisionByZeroError:
        pass
    eq(await conn.fetchval("select 'fine'"), "fine", "after a failed simple query")


async def schema_change(conn):
    """After ALTER TABLE, a cached `select *` fails with "cached plan must not change result
    type"; asyncpg then prepares it again and retries, which must work through the proxy too,
    whichever server connection the retry lands on."""
    step("schema change under cached prepared statements")
    await conn.execute("drop table if exists asyncpg_ddl")
    await conn.execute("create table asyncpg_ddl (id int, a text)")
    await conn.execute("insert into asyncpg_ddl values (1, 'x')")
    q = "select * from asyncpg_ddl"
    eq([tuple(r) for r in await conn.fetch(q)], [(1, "x")], "before ALTER")
    # Prepare the query on every server connection: POOL_SIZE transactions open at once.
    others = [await asyncpg.connect(URL) for _ in range(POOL_SIZE)]
    try:
        ran = 0
        all_ran = asyncio.Event()

        async def hold(c):
            nonlocal ran
            async with c.transaction():
                await c.fetch(q)
                ran += 1
                if ran == len(others):
                    all_ran.set()
                await all_ran.wait()

        await asyncio.gather(*(hold(c) for c in others))
        await others[0].execute("alter table asyncpg_ddl add column b int default 7")
        for i in range(2 * POOL_SIZE):
            eq([tuple(r) for r in await conn.fetch(q)], [(1, "x", 7)], f"after ALTER ({i})")
        for c in others:
            eq([tuple(r) for r in await c.fetch(q)], [(1, "x", 7)], "other clients after ALTER")
    finally:
        for c in others:
            await c.close()


async def copy(conn):
    step("COPY in and out")
    await conn.execute("drop table if exists asyncpg_copy")
    await conn.execute("create table asyncpg_copy (id int, name text, data bytea)")
    rows = [(i, f"name {i}", bytes([i % 256]) * 3) for i in range(1000)]
    res = await conn.copy_records_to_table("asyncpg_copy", records=rows)
    eq(res, "COPY 1000", "copy_records_to_table")
    buf = io.BytesIO()
    res = await conn.copy_from_query(
        "select id, name from asyncpg_copy where id < $1 order by id", 5, output=buf,
        format="csv")
    eq(res, "COPY 5", "copy_from_query status")
    eq(buf.getvalue().decode(), "".join(f"{i},name {i}\n" for i in range(5)), "copy_from_query")
    res = await conn.copy_to_table(
        "asyncpg_copy", source=io.BytesIO(b"5000,csv,\n5001,csv2,\n"), columns=["id", "name", "data"],
        format="csv")
    eq(res, "COPY 2", "copy_to_table")
    out = io.BytesIO()
    await conn.copy_from_table("asyncpg_copy", output=out, columns=["id", "name"])
    eq(len(out.getvalue().splitlines()), 1002, "copy_from_table lines")
    # A failing COPY leaves the connection usable.
    try:
        await conn.copy_to_table("asyncpg_copy", source=io.BytesIO(b"x\n"), columns=["id"])
        raise AssertionError("bad COPY data did not fail")
    except asyncpg.exceptions.InvalidTextRepresentationError:
        pass
    eq(await conn.fetchval("select count(*) from asyncpg_copy"), 1002, "after failed copy")
    async with conn.transaction():
        await conn.copy_records_to_table("asyncpg_copy", records=[(9, "in tx", None)])
        eq(await conn.fetchval("select count(*) from asyncpg_copy"), 1003, "copy in tx")


async def concurrency():
    step("20 concurrent connections (asyncio.gather)")

    async def worker(n):
        conn = await asyncpg.connect(URL)
        try:
            ins = await conn.prepare(
                f"insert into {TABLE} (id, name, amount, at) values ($1, $2, $3, now())")
            for j in range(5):
                # Same statement names in every client, different texts.
                eq(await conn.fetchval(f"select $1::int + {n} as w{n}", j), j + n, "per-client")
                async with conn.transaction():
                    key = 1000 + n * 100 + j
                    await ins.fetch(key, f"w{n}", decimal.Decimal(j))
                    eq(await conn.fetchval(f"select name from {TABLE} where id = $1", key),
                       f"w{n}", "read own write")
                    eq(await conn.fetchval("select $1::int * 3", n), n * 3, "calc")
        finally:
            await conn.close()

    results = await asyncio.gather(*(worker(n) for n in range(20)), return_exceptions=True)
    failures = [f"worker {n}: {r!r}" for n, r in enumerate(results) if isinstance(r, BaseException)]
    if failures:
        raise AssertionError("concurrent workers failed:\n" + "\n".join(failures))

    step("asyncpg pool of 10 connections, 40 tasks")
    pool = await asyncpg.create_pool(URL, min_size=10, max_size=10)
    try:
        async def task(n):
            async with pool.acquire() as c:
                async with c.transaction():
                    await c.execute(f"update {TABLE} set amount = amount + 1 where id = $1",
                                    1000 + (n % 20) * 100)
                return await c.fetchval("select $1::int", n)

        got = await asyncio.gather(*(task(n) for n in range(40)))
        eq(list(got), list(range(40)), "pool results")
    finally:
        await pool.close()

    conn = await asyncpg.connect(URL)
    try:
        eq(await conn.fetchval(f"select count(*) from {TABLE} where id >= 1000"), 100,
           "rows from concurrent workers")
        eq(await conn.fetchval(f"select sum(amount) from {TABLE} where id >= 1000"),
           decimal.Decimal(20 * (0 + 1 + 2 + 3 + 4) + 40), "updates from the pool")
    finally:
        await conn.close()


async def main():
    if not URL:
        print("usage: asyncpg_test.py POSTGRES_URL", file=sys.stderr)
        return 2
    print(f"asyncpg {asyncpg.__version__}", flush=True)
    conn = await asyncpg.connect(URL)
    try:
        step("connect")
        eq(await conn.fetchval("select 1"), 1, "select 1")
        await types_round_trip(conn)
        await repeated_statement(conn)
        await table_setup(conn)
        await transactions(conn)
        await errors(conn)
        await cancel_and_simple(conn)
        await schema_change(conn)
        await copy(conn)
    finally:
        await conn.close()
    await concurrency()
    print("OK asyncpg", flush=True)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(asyncio.run(main()))
    except Exception:  # noqa: BLE001
        traceback.print_exc()
        print("FAILED asyncpg", flush=True)
        sys.exit(1)
