#!/usr/bin/env bash
# What read-your-writes costs per write transaction: pgbench -N (write transactions) through
# two shardgates in front of the same primary + streaming replica (the demo's), one with
# replicas.read_your_writes on (the default) and one with it off, interleaved, 3 rounds.
# Build first: cargo build --release -p shardgate-proxy
set -euo pipefail
BIN="${CARGO_TARGET_DIR:-target}/release/shardgate"
PGBIN="$(pg_config --bindir 2>/dev/null || ls -d /usr/lib/postgresql/*/bin | tail -1)"
D=$(mktemp -d /var/tmp/shardgate-ryw.XXXX)
chmod 755 "$D"
cleanup() {
    kill "${OFF:-}" 2>/dev/null || true
    kill -INT "${DEMO:-}" 2>/dev/null || true
    wait 2>/dev/null || true
    rm -rf "$D"
}
trap cleanup EXIT
"$BIN" demo --shards 1 --replicas 1 --port 16432 --admin-port 19930 --dir "$D" >"$D/demo.log" 2>&1 &
DEMO=$!
for _ in $(seq 1 60); do grep -q "admin:" "$D/demo.log" 2>/dev/null && break; sleep 1; done
CFG=$(find "$D" -name shardgate.toml | head -1)
sed -e 's/127.0.0.1:16432/127.0.0.1:16433/' -e 's/127.0.0.1:19930/127.0.0.1:19931/' "$CFG" >"$D/off.toml"
printf '\n[replicas]\nread_your_writes = false\n' >>"$D/off.toml"
RUST_LOG=error "$BIN" serve --config "$D/off.toml" >"$D/off.log" 2>&1 &
OFF=$!
sleep 2
export PGPASSWORD=app-secret
"$PGBIN/pgbench" -h 127.0.0.1 -p 16432 -U app -i -s 1 app >/dev/null 2>&1
for round in 1 2 3; do
    for port in 16432 16433; do
        [ "$port" = 16432 ] && ryw=on || ryw=off
        tps=$("$PGBIN/pgbench" -h 127.0.0.1 -p $port -U app -N -c 8 -j 2 -T 10 -M extended app 2>/dev/null | awk '/^tps/ {print $3; exit}')
        lat=$("$PGBIN/pgbench" -h 127.0.0.1 -p $port -U app -N -c 1 -T 5 -M extended app 2>/dev/null | awk '/latency average/ {print $4}')
        echo "round $round read_your_writes=$ryw tps(-c 8)=$tps latency(-c 1)=${lat} ms"
    done
done
