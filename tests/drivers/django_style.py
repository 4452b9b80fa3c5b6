"""A Django-style request through psycopg 3 on the demo topology (2 shards): autocommit off, so
psycopg opens a transaction at the first statement; the request reads keyless (every shard),
writes two users that live on different shards, uses a nested atomic block (a savepoint) that
fails and is rolled back to, and commits. Then a second request writes two users and rolls back.
Then `QuerySet.iterator()`: a named (server-side) cursor over every shard, read in chunks, with
a parameter. Checked from a fresh connection. Every step has a deadline.
Usage: python django_style.py POSTGRES_URL KEY_ON_SHARD_0 KEY_ON_SHARD_1
"""

import sys

import psycopg

URL = sys.argv[1]
A, B = int(sys.argv[2]), int(sys.argv[3])


def count(conn, sql, *params):
    return conn.execute(sql, params).fetchone()[0]


with psycopg.connect(URL, connect_timeout=20, options="-c statement_timeout=20000") as conn:
    assert not conn.autocommit
    before = count(conn, "select count(*) from users")
    conn.execute("insert into users (user_id, name) values (%s, 'django-a')", (A,))
    conn.execute("insert into users (user_id, name) values (%s, 'django-b')", (B,))
    # A nested atomic block that fails: rolled back to its savepoint, the request goes on.
    try:
        with conn.transaction():
            conn.execute("update users set name = 'never' where user_id = %s", (A,))
            conn.execute("insert into users (user_id, name) values (%s, 'dup')", (B,))
        raise AssertionError("the duplicate insert should fail")
    except psycopg.errors.UniqueViolation:
        pass
    # bulk_create: one INSERT with rows for both shards, server-side bound, RETURNING ids in
    # the order of the rows.
    bulk = [(A + 2_000_000, "bulk-a"), (B + 2_000_000, "bulk-b"), (A + 3_000_000, "bulk-c")]
    placeholders = ", ".join(["(%s, %s)"] * len(bulk))
    flat = [v for row in bulk for v in row]
    got = conn.execute(
        f"insert into users (user_id, name) values {placeholders} returning user_id", flat
    ).fetchall()
    assert [r[0] for r in got] == [r[0] for r in bulk], got
    # Deleting them by a parameter list that spans both shards (queryset.delete()).
    conn.execute("delete from users where user_id = any(%s)", ([r[0] for r in bulk],))
    # The transaction still sees its own rows on both shards.
    assert count(conn, "select count(*) from users") == before + 2
    assert count(conn, "select count(*) from users where user_id in (%s, %s)", A, B) == 2
    conn.commit()

    conn.execute("insert into users (user_id, name) values (%s, 'gone')", (A + 1_000_000,))
    conn.execute("insert into users (user_id, name) values (%s, 'gone')", (B + 1_000_000,))
    conn.rollback()

    # QuerySet.iterator(): a server-side cursor (DECLARE, Describe, FETCH FORWARD n) over
    # every shard, in chunks smaller than the result, with a parameter.
    sql = "select user_id, name from users where user_id >= %s order by user_id"
    whole = conn.execute(sql, (0,)).fetchall()
    assert len(whole) >= 2, whole
    with conn.cursor(name="django_it") as cur:
        cur.itersize = 1
        cur.execute(sql, (0,))
        assert [d.name for d in cur.description] == ["user_id", "name"], cur.description
        chunked = list(cur)
    assert chunked == whole, (chunked, whole)
    conn.commit()

with psycopg.connect(URL, autocommit=True, connect_timeout=20) as check:
    names = dict(
        check.execute(
            "select user_id, name from users where user_id in (%s, %s, %s, %s)",
            (A, B, A + 1_000_000, B + 1_000_000),
        ).fetchall()
    )
    assert names == {A: "django-a", B: "django-b"}, names

print("OK django-style")
