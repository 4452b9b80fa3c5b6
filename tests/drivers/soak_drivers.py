"""The protocol soak's Python clients: psycopg 3 (sync, in threads), psycopg 3 async (with
pipeline mode) and asyncpg, each running a seeded random mix of requests until the time is up.
Every request has a deadline; one that is not answered in time, or that ends unexpectedly, is
printed as `FAIL …`. At the end, `REQUESTS <driver> <n>` per driver.
Usage: python soak_drivers.py URL SECONDS SEED CLIENTS DEADLINE
"""

import asyncio
import random
import sys
import threading
import time

import asyncpg
import psycopg

URL = sys.argv[1]
SECONDS = float(sys.argv[2])
SEED = int(sys.argv[3])
CLIENTS = int(sys.argv[4])
DEADLINE = float(sys.argv[5])
END = time.monotonic() + SECONDS

counts = {"psycopg": 0, "psycopg-async": 0, "asyncpg": 0}
failures = []
lock = threading.Lock()


def fail(what):
    with lock:
        failures.append(what)
    print(f"FAIL {what}", flush=True)


def count(driver):
    with lock:
        counts[driver] += 1


# ----- asyncpg -------------------------------------------------------------------------------

async def asyncpg_op(conn, rng, op):
    key = rng.randint(1, 2000)
    if op == "simple":
        await conn.execute("SELECT 1; SELECT 'two'")
    elif op == "typed":
        row = await conn.fetchrow("select $1::int8, $2::text, $3::bool", key, "x", True)
        assert row[0] == key
    elif op == "prepared":
        stmt = await conn.prepare("select $1::int8 * 2")
        for i in range(5):
            assert await stmt.fetchval(i) == i * 2
    elif op == "write":
        await conn.execute(
            "insert into users (user_id, name) values ($1, $2) "
            "on conflict (user_id) do update set name = excluded.name", key, "asyncpg")
    elif op == "read":
        await conn.fetch("select name from users where user_id = $1", key)
    elif op == "tx":
        async with conn.transaction():
            await conn.fetch("select name from users where user_id = $1", key)
    elif op == "tx-error":
        tr = conn.transaction()
        await tr.start()
        try:
            await conn.fetchval("select 1/0")
            raise AssertionError("1/0 succeeded")
        except asyncpg.DivisionByZeroError:
            pass
        await tr.rollback()
    elif op == "error":
        try:
            await conn.fetchval("select $1::int / 0", key)
            raise AssertionError("x/0 succeeded")
        except asyncpg.DivisionByZeroError:
            pass
    elif op == "large":
        rows = await conn.fetch("SELECT g, md5(g::text) FROM generate_series(1, 10000) g")
        assert len(rows) == 10000
    elif op == "copy":
        await conn.copy_records_to_table(
            "soak_log", records=[(key, f"asyncpg {i}") for i in range(100)],
            columns=["id", "note"])
    elif op == "cancel":
        # A timeout makes asyncpg cancel the running statement.
        try:
            await conn.fetchval("select pg_sleep(3)", timeout=0.1)
        except asyncio.TimeoutError:
            pass
        assert await conn.fetchval("select 1") == 1


ASYNCPG_OPS = ["simple", "typed", "prepared", "write", "read", "tx", "tx-error", "error",
               "large", "copy", "cancel"]
ASYNCPG_WEIGHTS = [10, 10, 8, 10, 10, 8, 6, 6, 2, 3, 2]


async def asyncpg_client(n):
    rng = random.Random(SEED * 1000 + n)
    conn = None
    while time.monotonic() < END:
        if conn is None:
            conn = await asyncio.wait_for(asyncpg.connect(URL), DEADLINE)
        op = rng.choices(ASYNCPG_OPS + ["disconnect"], ASYNCPG_WEIGHTS + [2])[0]
        if op == "disconnect":
            task = asyncio.ensure_future(conn.fetchval("select pg_sleep(1)"))
            await asyncio.sleep(0.05)
            task.cancel()
            conn.terminate()
            conn = None
            count("asyncpg")
            continue
        try:
            await asyncio.wait_for(asyncpg_op(conn, rng, op), DEADLINE)
            count("asyncpg")
        except asyncio.TimeoutError:
            fail(f"asyncpg {op}: no answer in {DEADLINE}s")
            return
        except Exception as e:  # noqa: BLE001 - every unexpected outcome is a failure
            fail(f"asyncpg {op}: {type(e).__name__}: {e}")
            return
    if conn is not None:
        await conn.close()


# ----- psycopg async (pipeline mode included) ------------------------------------------------

async def psycopg_async_op(conn, rng, op):
    key = rng.randint(1, 2000)
    if op == "simple":
        await conn.execute("select 1")
    elif op == "params":
        cur = await conn.execute("select %s::int8, %s::text", (key, "x"))
        assert (await cur.fetchone())[0] == key
    elif op == "pipeline":
        async with conn.pipeline():
            async with conn.transaction("s-1"):
                pass
            # One implicit transaction up to the pipeline's Sync: one shard.
            c1 = await conn.execute("select user_id from users where user_id = %s", (key,))
            c2 = await conn.execute("select name from users where user_id = %s", (key,))
        await c1.fetchall()
        await c2.fetchall()
    elif op == "pipeline-error":
        try:
            async with conn.pipeline():
                await conn.execute("select 1")
                await conn.execute("select 1/0")
                await conn.execute("select 3")
            raise AssertionError("1/0 succeeded")
        except psycopg.errors.DivisionByZero:
            pass
    elif op == "tx":
        async with conn.transaction():
            await conn.execute(
                "insert into users (user_id, name) values (%s, 'psycopg-async') "
                "on conflict (user_id) do update set name = excluded.name", (key,))
            async with conn.transaction():
                await conn.execute("select 1")
    elif op == "tx-error":
        try:
            async with conn.transaction():
                await conn.execute("select 1/0")
            raise AssertionError("1/0 succeeded")
        except psycopg.errors.DivisionByZero:
            pass
    elif op == "copy":
        async with conn.cursor() as cur:
            async with cur.copy("copy soak_log (id, note) from stdin") as copy:
                for i in range(100):
                    await copy.write_row((key, f"psycopg-async {i}"))
    elif op == "large":
        cur = await conn.execute("select g, md5(g::text) from generate_series(1, 10000) g")
        assert len(await cur.fetchall()) == 10000


PSYCOPG_ASYNC_OPS = ["simple", "params", "pipeline", "pipeline-error", "tx", "tx-error", "copy",
                     "large"]
PSYCOPG_ASYNC_WEIGHTS = [10, 10, 8, 4, 8, 5, 3, 2]


async def psycopg_async_client(n):
    rng = random.Random(SEED * 2000 + n)
    conn = None
    while time.monotonic() < END:
        if conn is None:
            conn = await asyncio.wait_for(
                psycopg.AsyncConnection.connect(URL, autocommit=True), DEADLINE)
        op = rng.choices(PSYCOPG_ASYNC_OPS, PSYCOPG_ASYNC_WEIGHTS)[0]
        try:
            await asyncio.wait_for(psycopg_async_op(conn, rng, op), DEADLINE)
            count("psycopg-async")
        except asyncio.TimeoutError:
            fail(f"psycopg-async {op}: no answer in {DEADLINE}s")
            return
        except Exception as e:  # noqa: BLE001
            fail(f"psycopg-async {op}: {type(e).__name__}: {e}")
            return
    if conn is not None:
        await conn.close()


# ----- psycopg sync (threads) ----------------------------------------------------------------

def psycopg_sync_client(n):
    rng = random.Random(SEED * 3000 + n)
    conn = None
    while time.monotonic() < END:
        if conn is None:
            conn = psycopg.connect(URL, autocommit=True, connect_timeout=int(DEADLINE))
        op = rng.choice(["simple", "params", "tx", "tx-error", "cancel", "disconnect", "copy-out"])
        key = rng.randint(1, 2000)
        # The deadline: a watchdog cancels, then reports, a request that takes too long.
        done = threading.Event()
        timed_out = []

        def watchdog(c=conn):
            if not done.wait(DEADLINE):
                timed_out.append(True)
                try:
                    c.cancel()
                except Exception:  # noqa: BLE001
                    pass

        w = threading.Thread(target=watchdog, daemon=True)
        w.start()
        try:
            if op == "simple":
                conn.execute("select 1").fetchone()
            elif op == "params":
                assert conn.execute("select %s::int8", (key,)).fetchone()[0] == key
            elif op == "tx":
                with conn.transaction():
                    conn.execute("select name from users where user_id = %s", (key,))
            elif op == "tx-error":
                try:
                    with conn.transaction():
                        conn.execute("select 1/0")
                    raise AssertionError("1/0 succeeded")
                except psycopg.errors.DivisionByZero:
                    pass
            elif op == "cancel":
                t = threading.Timer(0.1, conn.cancel)
                t.start()
                try:
                    conn.execute("select pg_sleep(3)")
                except psycopg.errors.QueryCanceled:
                    pass
                t.join()
                conn.execute("select 1")
            elif op == "disconnect":
                conn.close()
                conn = None
            elif op == "copy-out":
                with conn.cursor() as cur:
                    with cur.copy("copy (select g from generate_series(1, 5000) g) to stdout") as copy:
                        got = sum(len(b) for b in copy)
                assert got > 5000
            done.set()
            if timed_out:
                fail(f"psycopg {op}: no answer in {DEADLINE}s")
                return
            count("psycopg")
        except Exception as e:  # noqa: BLE001
            done.set()
            what = "no answer in time" if timed_out else f"{type(e).__name__}: {e}"
            fail(f"psycopg {op}: {what}")
            return
    if conn is not None:
        conn.close()


async def main():
    threads = [threading.Thread(target=psycopg_sync_client, args=(i,)) for i in range(CLIENTS)]
    for t in threads:
        t.start()
    tasks = [asyncpg_client(i) for i in range(CLIENTS)]
    tasks += [psycopg_async_client(i) for i in range(CLIENTS)]
    await asyncio.gather(*tasks)
    await asyncio.to_thread(lambda: [t.join() for t in threads])
    for driver, n in counts.items():
        print(f"REQUESTS {driver} {n}", flush=True)
    sys.exit(1 if failures else 0)


asyncio.run(main())
