#!/usr/bin/env bash
# Memory for the same data in Redis and in kvs, in the same run: KEYS keys
# (`bench:1:0:I`, as `kvs_client bench` names them) with VALUE_SIZE-byte
# values, written into a fresh redis-server and a fresh kvs_server.
#
# Redis: `used_memory_rss` from INFO (its own accounting of resident memory).
# kvs: the resident memory of the server and its keeper (VmRSS from
# /proc/PID/status; the store segment is shared memory the server wrote, so
# its pages are in the server's RssShmem), and the store's committed bytes
# as `kvs_client status` reports them.
#
# Usage: scripts/memory.sh   Knobs: KEYS (1000000), VALUE_SIZE (32),
# SKIP_BUILD. Installs redis-server/redis-tools with apt-get when missing
# (needs root). Stops what it starts.
set -euo pipefail
KEYS=${KEYS:-1000000}
VALUE_SIZE=${VALUE_SIZE:-32}
cd "$(dirname "$0")/.."
ROOT=$(pwd)
need() { command -v "$1" >/dev/null 2>&1; }
if ! need redis-server || ! need redis-cli; then
    [ "$(id -u)" -eq 0 ] || { echo "memory.sh: need root to install redis-server and redis-tools" >&2; exit 2; }
    DEBIAN_FRONTEND=noninteractive apt-get update -q >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q redis-server redis-tools >/dev/null
fi
[ -n "${SKIP_BUILD:-}" ] || cargo build --release --bin kvs_server --bin kvs_client >&2
SERVER=$ROOT/target/release/kvs_server
CLIENT=$ROOT/target/release/kvs_client
TMP=$(mktemp -d /tmp/kvs-memory.XXXXXX)
NAME=kvs-memory-$$
REDIS_PID= KVS_PID=
cleanup() {
    set +e
    [ -n "$REDIS_PID" ] && kill "$REDIS_PID" 2>/dev/null && wait "$REDIS_PID" 2>/dev/null
    [ -n "$KVS_PID" ] && kill -INT "$KVS_PID" 2>/dev/null && wait "$KVS_PID" 2>/dev/null
    rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

SOCK=$TMP/redis.sock
redis-server --port 0 --unixsocket "$SOCK" --unixsocketperm 700 --save "" \
    --appendonly no --daemonize no --logfile "$TMP/redis.log" &
REDIS_PID=$!
for _ in $(seq 100); do [ -S "$SOCK" ] && break; sleep 0.1; done
python3 - "$KEYS" "$VALUE_SIZE" <<'PY' | redis-cli -s "$SOCK" --pipe >/dev/null
import sys
n, size = int(sys.argv[1]), int(sys.argv[2])
out = sys.stdout.buffer
for i in range(n):
    k = b"bench:1:0:%d" % i
    v = (b"%x." % i).ljust(size, b"v")
    out.write(b"*3\r\n$3\r\nSET\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n" % (len(k), k, len(v), v))
PY
redis_keys=$(redis-cli -s "$SOCK" dbsize)
redis_rss=$(redis-cli -s "$SOCK" info memory | sed -n 's/^used_memory_rss:\([0-9]*\).*/\1/p')
redis_used=$(redis-cli -s "$SOCK" info memory | sed -n 's/^used_memory:\([0-9]*\).*/\1/p')

"$SERVER" --name "$NAME" >"$TMP/kvs.out" 2>"$TMP/kvs.err" &
KVS_PID=$!
for _ in $(seq 100); do grep -q ready "$TMP/kvs.out" && break; sleep 0.1; done
"$CLIENT" --name "$NAME" bench --no-progress --keys "$KEYS" --value-size "$VALUE_SIZE" \
    --mix 100:0:0:0 --ops 1 >/dev/null
keeper=$(sed -n 's/.*keeper pid \([0-9]*\).*/\1/p' "$TMP/kvs.out")
rss() { awk -v f="$2" '$1 == f":" { print $2 * 1024 }' "/proc/$1/status"; }
kvs_rss=$(rss "$KVS_PID" VmRSS)
kvs_anon=$(rss "$KVS_PID" RssAnon)
kvs_shmem=$(rss "$KVS_PID" RssShmem)
keeper_rss=0
[ -n "$keeper" ] && keeper_rss=$(rss "$keeper" VmRSS)
kvs_status=$("$CLIENT" --name "$NAME" status --json)
python3 - "$KEYS" "$VALUE_SIZE" "$redis_keys" "$redis_rss" "$redis_used" \
    "$kvs_rss" "$kvs_anon" "$kvs_shmem" "$keeper_rss" "$kvs_status" <<'PY'
import sys, json
keys, size, rkeys, rrss, rused, krss, kanon, kshm, keeper = map(int, sys.argv[1:10])
st = json.loads(sys.argv[10])
mb = lambda b: f"{b / 1e6:8.1f} MB"
total = krss + keeper
print(f"{keys} keys, {size}-byte values")
print(f"redis  keys {rkeys:>9}  used_memory_rss {mb(rrss)}  (used_memory {mb(rused)})")
print(f"kvs    keys {st['entries']:>9}  server+keeper RSS {mb(total)}  "
      f"(server anon {mb(kanon)}, store pages {mb(kshm)}, keeper {mb(keeper)}; store committed {mb(st['memory_used'])})")
print(f"kvs / redis = {total / rrss:.2f}   bytes per key: redis {rrss / keys:.0f}, kvs {total / keys:.0f}")
PY
