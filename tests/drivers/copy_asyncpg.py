"""asyncpg's copy_records_to_table on the demo topology: it prepares an introspection query
with Parse/Describe/Flush (a read, on a replica's role) and then sends the COPY statement and
its data at once, without waiting for CopyInResponse (it once hung there through shardgate).
Usage: python copy_asyncpg.py POSTGRES_URL
"""

import asyncio
import sys

import asyncpg


async def main():
    conn = await asyncpg.connect(sys.argv[1])
    await conn.execute("create table if not exists copy_items (id bigint, note text)")
    for i in range(5):
        await asyncio.wait_for(
            conn.copy_records_to_table(
                "copy_items", records=[(i, "a"), (i + 100, "b")], columns=["id", "note"]),
            20)
    n = await conn.fetchval("select count(*) from copy_items")
    assert n == 10, n
    await conn.close()
    print("OK copy-asyncpg", flush=True)


asyncio.run(main())
