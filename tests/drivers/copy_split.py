"""COPY into a sharded table through shardgate from Python drivers: psycopg 3's
copy.write_row (text format) and binary COPY with set_types, and asyncpg's
copy_records_to_table (binary format). Each loads 3,000 orders of many users; the Rust test
then checks on the shards that every row is on its key's shard.
Usage: python copy_split.py POSTGRES_URL
"""

import asyncio
import sys

import asyncpg
import psycopg

URL = sys.argv[1]
N = 3000


def psycopg_copies():
    with psycopg.connect(URL, autocommit=True) as conn:
        with conn.cursor() as cur:
            with cur.copy("COPY orders (order_id, user_id, note) FROM STDIN") as copy:
                for i in range(N):
                    copy.write_row((1_000_000 + i, i % 301, f"psycopg text {i}\twith tab"))
            assert cur.rowcount == N, cur.rowcount
            with cur.copy(
                    "COPY orders (order_id, user_id, note) FROM STDIN (FORMAT BINARY)") as copy:
                copy.set_types(["int8", "int8", "text"])
                for i in range(N):
                    copy.write_row((2_000_000 + i, i % 307, None))
            assert cur.rowcount == N, cur.rowcount
            # A transaction: the COPY is rolled back with it.
        with conn.transaction(force_rollback=True):
            with conn.cursor().copy("COPY orders (order_id, user_id) FROM STDIN") as copy:
                for i in range(100):
                    copy.write_row((9_000_000 + i, i))
        n = conn.execute("select count(*) from orders where order_id >= 9000000").fetchone()[0]
        assert n == 0, n


async def asyncpg_copies():
    conn = await asyncpg.connect(URL)
    records = [(3_000_000 + i, i % 311, "asyncpg") for i in range(N)]
    result = await asyncio.wait_for(
        conn.copy_records_to_table(
            "orders", records=records, columns=["order_id", "user_id", "note"]),
        60)
    assert result == f"COPY {N}", result
    await conn.close()


psycopg_copies()
asyncio.run(asyncpg_copies())
print("OK copy-split-python", flush=True)
