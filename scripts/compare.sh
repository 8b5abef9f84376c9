#!/usr/bin/env bash
# Side-by-side: Redis over a unix socket (redis-benchmark) against kvs over
# shared memory (kvs_client bench), same key count, value size and
# concurrency, in the same run. Prints a table with ratios.
#
# Usage: scripts/compare.sh            (from the repository root)
# Knobs (environment): KEYS (10000), VALUE_SIZE (32), OPS (50000, the
# unpipelined runs), PIPE_OPS (1000000, the pipelined runs), PIPELINE (32),
# KVS_WORKERS (2), DEPTH (256), BATCH (256: keys per get_many/set_many), ROWS (all, or single: only the one-client
# GET and SET rows, for large values), SKIP_BUILD (set to skip cargo build).
#
# Large values: keep KEYS x VALUE_SIZE within memory, and OPS small, e.g.
#   KEYS=100 VALUE_SIZE=1048576 OPS=2000 ROWS=single scripts/compare.sh
#
# Installs redis-server and redis-tools with apt-get when missing (needs
# root). Every process it starts is stopped on exit, and the temp dir and
# the kvs region are removed.
set -euo pipefail

KEYS=${KEYS:-10000}
VALUE_SIZE=${VALUE_SIZE:-32}
OPS=${OPS:-50000}
PIPE_OPS=${PIPE_OPS:-1000000}
PIPELINE=${PIPELINE:-32}
KVS_WORKERS=${KVS_WORKERS:-2}
DEPTH=${DEPTH:-256}
BATCH=${BATCH:-256}
ROWS=${ROWS:-all}

cd "$(dirname "$0")/.."
ROOT=$(pwd)

need() { command -v "$1" >/dev/null 2>&1; }
if ! need redis-server || ! need redis-benchmark; then
    echo "compare.sh: installing redis-server and redis-tools" >&2
    if [ "$(id -u)" -ne 0 ]; then
        echo "compare.sh: need root for apt-get (or install redis-server and redis-tools yourself)" >&2
        exit 2
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q >/dev/null
    apt-get install -y -q redis-server redis-tools >/dev/null
    # Debian's package may start its own service; this script runs its own
    # instance on a private socket and leaves any service alone.
fi
need python3 || { echo "compare.sh: python3 is needed to read the JSON results" >&2; exit 2; }

if [ -z "${SKIP_BUILD:-}" ]; then
    cargo build --release --bin kvs_server --bin kvs_client >&2
fi
SERVER=$ROOT/target/release/kvs_server
CLIENT=$ROOT/target/release/kvs_client

TMP=$(mktemp -d /tmp/kvs-compare.XXXXXX)
NAME=kvs-compare-$$
REDIS_PID=
KVS_PID=
cleanup() {
    set +e
    [ -n "$REDIS_PID" ] && kill "$REDIS_PID" 2>/dev/null && wait "$REDIS_PID" 2>/dev/null
    [ -n "$KVS_PID" ] && kill -INT "$KVS_PID" 2>/dev/null && wait "$KVS_PID" 2>/dev/null
    rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

wait_for() { # file pattern
    for _ in $(seq 100); do
        grep -q "$2" "$1" 2>/dev/null && return 0
        sleep 0.1
    done
    echo "compare.sh: timed out waiting for '$2' in $1" >&2
    cat "$1" >&2
    exit 2
}

# --- start both servers ---
SOCK=$TMP/redis.sock
redis-server --port 0 --unixsocket "$SOCK" --unixsocketperm 700 \
    --save "" --appendonly no --daemonize no --logfile "$TMP/redis.log" &
REDIS_PID=$!
for _ in $(seq 100); do [ -S "$SOCK" ] && break; sleep 0.1; done
[ -S "$SOCK" ] || { echo "compare.sh: redis did not start" >&2; cat "$TMP/redis.log" >&2; exit 2; }

"$SERVER" --name "$NAME" --workers "$KVS_WORKERS" --no-keeper >"$TMP/kvs.out" 2>"$TMP/kvs.err" &
KVS_PID=$!
wait_for "$TMP/kvs.out" ready

# Fill Redis's key space (redis-benchmark names keys key:000000000042).
redis-benchmark -s "$SOCK" -t set -c 4 -P 32 -n $((KEYS * 20)) -r "$KEYS" -d "$VALUE_SIZE" -q >/dev/null

RESULTS=$TMP/results.tsv
: >"$RESULTS"

# redis LABEL TEST CLIENTS PIPELINE REQUESTS
redis() {
    local line
    line=$(redis-benchmark -s "$SOCK" -t "$2" -c "$3" -P "$4" -n "$5" -r "$KEYS" -d "$VALUE_SIZE" --csv |
        grep -i "^\"$2\"" | head -1)
    # "GET","rps","avg_ms","min_ms","p50_ms",...
    python3 - "$1" "$line" >>"$RESULTS" <<'EOF'
import sys, csv
label, line = sys.argv[1], sys.argv[2]
row = next(csv.reader([line]))
print(f"{label}\tredis\t{float(row[1]):.0f}\t{float(row[4]) * 1000:.2f}")
EOF
}

# kvs LABEL MIX CLIENTS DEPTH OPS [MORE BENCH ARGS]
kvs() {
    local json
    json=$("$CLIENT" --name "$NAME" bench --no-progress --json --mix "$2" --clients "$3" \
        --depth "$4" --ops "$5" --keys "$KEYS" --value-size "$VALUE_SIZE" "${@:6}")
    python3 - "$1" "$json" >>"$RESULTS" <<'EOF'
import sys, json
label, r = sys.argv[1], json.loads(sys.argv[2])
if r["errors"]:
    sys.exit(f"compare.sh: kvs bench reported {r['errors']} errors")
print(f"{label}\tkvs\t{r['ops_per_sec']:.0f}\t{r['p50_us']:.2f}")
EOF
}

echo "compare.sh: $(nproc) cores, $KEYS keys, $VALUE_SIZE-byte values, kvs with $KVS_WORKERS workers" >&2
echo "compare.sh: running (each pair back to back) ..." >&2
redis "GET  1 client" get 1 1 "$OPS"
kvs "GET  1 client" 100:0:0:0 1 1 "$OPS"
redis "SET  1 client" set 1 1 "$OPS"
kvs "SET  1 client" 0:100:0:0 1 1 "$OPS"
if [ "$ROWS" != single ]; then
redis "GET  4 clients" get 4 1 $((OPS * 2))
kvs "GET  4 clients" 100:0:0:0 4 1 $((OPS * 4))
redis "GET  4 clients pipelined" get 4 "$PIPELINE" "$PIPE_OPS"
kvs "GET  4 clients pipelined" 100:0:0:0 4 "$PIPELINE" "$PIPE_OPS"
kvs "GET  1 client async deep" 100:0:0:0 1 "$DEPTH" $((PIPE_OPS * 2))
kvs "GET  1 client batch $BATCH" 100:0:0:0 1 1 $((PIPE_OPS * 4)) --batch "$BATCH"
kvs "GET  1 process 2 thr batch $BATCH" 100:0:0:0 1 1 $((PIPE_OPS * 8)) --batch "$BATCH" --threads 2
redis "SET  4 clients pipelined" set 4 "$PIPELINE" "$PIPE_OPS"
kvs "SET  4 clients pipelined" 0:100:0:0 4 "$PIPELINE" "$PIPE_OPS"
kvs "SET  1 client batch $BATCH" 0:100:0:0 1 1 "$PIPE_OPS" --batch "$BATCH"
fi

python3 - "$RESULTS" "$PIPELINE" "$DEPTH" <<'EOF'
import sys
rows = {}
order = []
for line in open(sys.argv[1]):
    label, who, ops, p50 = line.rstrip("\n").split("\t")
    if label not in rows:
        rows[label] = {}
        order.append(label)
    rows[label][who] = (float(ops), float(p50))
pipe, depth = sys.argv[2], sys.argv[3]
print(f"{'scenario':<28} {'redis ops/s':>12} {'kvs ops/s':>12} {'x ops/s':>8} {'redis p50 us':>13} {'kvs p50 us':>11} {'x p50':>7}")
def ratio(a, b):
    return f"{a / b:.1f}" if b > 0 else "inf"
for label in order:
    r, k = rows[label].get("redis"), rows[label].get("kvs")
    if r is None and k is not None:
        # Compared with the pipelined Redis row of the same op.
        op = label.split()[0]
        r = rows.get(f"{op}  4 clients pipelined", {}).get("redis")
        label_out = label + " *"
    else:
        label_out = label
    print(f"{label_out:<28} {r[0]:>12.0f} {k[0]:>12.0f} {ratio(k[0], r[0]):>8} {r[1]:>13.2f} {k[1]:>11.2f} {ratio(r[1], k[1]):>7}")
print(f"redis pipelined rows: redis-benchmark -P {pipe}; kvs: --depth {pipe} async tickets per client.")
print(f"* kvs: one client process (async --depth {depth}, or --batch calls), against Redis 4 clients -P {pipe};")
print("  batch latency is the whole call's (N keys).")
print("x ops/s = kvs / redis; x p50 = redis p50 / kvs p50 (higher is better for kvs).")
EOF
