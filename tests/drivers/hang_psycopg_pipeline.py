"""psycopg 3 async pipeline mode on the demo topology: a transaction with a savepoint inside a
pipeline (issue 14: it never returned through shardgate). Every step has a deadline.
Usage: python hang_psycopg_pipeline.py POSTGRES_URL
"""

import asyncio
import sys

import psycopg

URL = sys.argv[1]
DEADLINE = 20.0


async def step(what, aw):
    try:
        return await asyncio.wait_for(aw, DEADLINE)
    except asyncio.TimeoutError:
        raise AssertionError(f"no answer in {DEADLINE}s: {what}")


async def savepoint_in_pipeline(conn):
    async with conn.pipeline():
        async with conn.transaction("s-1"):
            pass


async def statements_in_pipeline(conn):
    async with conn.pipeline():
        async with conn.transaction("s-2"):
            cur = await conn.execute("select 1")
            async with conn.transaction():
                await conn.execute("select 2")
        r = await cur.fetchone()
        assert r == (1,), r


async def error_in_pipeline(conn):
    try:
        async with conn.pipeline():
            async with conn.transaction():
                await conn.execute("select 1/0")
                await conn.execute("select 3")
        raise AssertionError("1/0 succeeded")
    except psycopg.errors.DivisionByZero:
        pass
    r = await (await conn.execute("select 4")).fetchone()
    assert r == (4,), r


async def main():
    conn = await step("connect", psycopg.AsyncConnection.connect(URL, autocommit=True))
    await step("savepoint in pipeline", savepoint_in_pipeline(conn))
    await step("statements in pipeline", statements_in_pipeline(conn))
    await step("error in pipeline", error_in_pipeline(conn))
    conn2 = await step("connect", psycopg.AsyncConnection.connect(URL))
    await step("savepoint in pipeline (non-autocommit)", savepoint_in_pipeline(conn2))
    await step("close", conn.close())
    await step("close", conn2.close())
    print("OK hang-psycopg", flush=True)


asyncio.run(main())
