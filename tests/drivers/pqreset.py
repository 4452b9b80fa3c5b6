"""libpq's PQreset (reconnect on the same connection object) through shardgate, with psycopg's
low-level libpq binding: psycopg.pq.PGconn.reset() calls PQreset.
Usage: python pqreset.py POSTGRES_URL
"""

import sys

from psycopg import pq

URL = sys.argv[1]


def scalar(conn, sql):
    res = conn.exec_(sql.encode())
    if res.status != pq.ExecStatus.TUPLES_OK:
        raise AssertionError(f"{sql}: {res.status.name} {res.error_message.decode()}")
    return res.get_value(0, 0).decode()


conn = pq.PGconn.connect(URL.encode())
assert conn.status == pq.ConnStatus.OK, conn.error_message
assert scalar(conn, "select 41 + 1") == "42"
first_pid = scalar(conn, "select pg_backend_pid()")
print("libpq", pq.version(), "backend pid before reset", first_pid, flush=True)
for i in range(3):
    # Also with a transaction left open: the reset must not leave it on the server.
    res = conn.exec_(b"begin")
    assert res.status == pq.ExecStatus.COMMAND_OK, res.error_message
    assert scalar(conn, "select 1") == "1"
    conn.reset()
    assert conn.status == pq.ConnStatus.OK, conn.error_message
    assert conn.transaction_status == pq.TransactionStatus.IDLE, conn.transaction_status
    assert scalar(conn, f"select {i} + 1") == str(i + 1)
conn.finish()
print("OK pqreset", flush=True)
