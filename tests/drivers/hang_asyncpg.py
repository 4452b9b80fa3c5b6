"""asyncpg on the demo topology: the sequence that once hung (issue 14).

One connection creates a table, runs a two-statement simple query, a 6-parameter typed SELECT
and a statement prepared once and executed 50 times, while two other connections run
transactions that commit, roll back, and fail inside then ROLLBACK; then the first
connection fetches 10,000 rows. Every step has a deadline: a hang fails the script.
Usage: python hang_asyncpg.py POSTGRES_URL
"""

import asyncio
import sys

import asyncpg

URL = sys.argv[1]
DEADLINE = 20.0


async def step(what, aw):
    try:
        return await asyncio.wait_for(aw, DEADLINE)
    except asyncio.TimeoutError:
        raise AssertionError(f"no answer in {DEADLINE}s: {what}")


async def main_connection():
    conn = await step("connect", asyncpg.connect(URL))
    await step("create table", conn.execute(
        "drop table if exists hang_items; create table hang_items (id int, note text)"))
    await step("two statements", conn.execute("SELECT 1; SELECT 'two'"))
    row = await step("6 params", conn.fetchrow(
        "select $1::int, $2::text, $3::bool, $4::float8, $5::int8, $6::date",
        1, "x", True, 1.5, 2**40, __import__("datetime").date(2024, 1, 2)))
    assert row[0] == 1 and row[4] == 2**40, row
    stmt = await step("prepare", conn.prepare("select $1::int * 2"))
    for i in range(50):
        v = await step(f"execute {i}", stmt.fetchval(i))
        assert v == i * 2, (i, v)
    return conn


async def transactions(n):
    conn = await step("connect", asyncpg.connect(URL))
    for round in range(5):
        async with conn.transaction():
            await step("in commit", conn.fetchval("select 1"))
        tr = conn.transaction()
        await step("start", tr.start())
        await step("in rollback", conn.fetchval("select 2"))
        await step("rollback", tr.rollback())
        tr = conn.transaction()
        await step("start", tr.start())
        try:
            await step("error", conn.fetchval("select 1/0"))
            raise AssertionError("1/0 succeeded")
        except asyncpg.DivisionByZeroError:
            pass
        await step("rollback after error", tr.rollback())
        # Outside a transaction too, and with a prepared statement failing in a batch.
        try:
            await step("error outside", conn.fetchval("select $1::int / 0", n))
            raise AssertionError("x/0 succeeded")
        except asyncpg.DivisionByZeroError:
            pass
    await conn.close()


async def main():
    results = await asyncio.gather(main_connection(), transactions(1), transactions(2))
    conn = results[0]
    rows = await step("fetch 10000 rows", conn.fetch(
        "SELECT g, md5(g::text) FROM generate_series(1, 10000) g"))
    assert len(rows) == 10000, len(rows)
    await step("close", conn.close())
    print("OK hang-asyncpg", flush=True)


asyncio.run(main())
