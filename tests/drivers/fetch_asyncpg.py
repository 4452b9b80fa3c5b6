"""asyncpg's fetchrow/fetchval over several shards: asyncpg executes them with a row limit of
one (Execute max_rows = 1), which shardgate once refused with 0A000 for a cross-shard read.
The answers must be PostgreSQL's: the first row of the merged, ordered result.
Usage: python fetch_asyncpg.py POSTGRES_URL
"""

import asyncio
import sys

import asyncpg


async def main():
    conn = await asyncpg.connect(sys.argv[1])
    base = 700_000
    users = range(base + 1, base + 41)
    for u in users:
        await conn.execute("insert into users (user_id, name) values ($1, $2)", u, f"u{u}")
        await conn.execute("insert into orders (user_id, amount) values ($1, $2)",
                           u, (u - base) * 2)
    where = f"user_id > {base} and user_id <= {base + 40}"
    count = await conn.fetchval(f"select count(*) from orders where {where}")
    assert count == 40, count
    total = await conn.fetchval(f"select sum(amount) from orders where user_id > $1", base)
    assert total == sum(i * 2 for i in range(1, 41)), total
    top = await conn.fetchrow(
        f"select user_id, amount from orders where {where} order by amount desc limit 5")
    assert (top["user_id"], top["amount"]) == (base + 40, 80), top
    low = await conn.fetchrow(f"select user_id from users where {where} order by user_id")
    assert low["user_id"] == base + 1, low
    # fetch (no row limit) is unchanged.
    rows = await conn.fetch(f"select user_id from users where {where} order by user_id")
    assert [r["user_id"] for r in rows] == list(users)
    # In a transaction too.
    async with conn.transaction():
        n = await conn.fetchval(f"select count(*) from users where {where}")
        assert n == 40, n
    await conn.close()
    print("OK fetch-asyncpg", flush=True)


asyncio.run(main())
