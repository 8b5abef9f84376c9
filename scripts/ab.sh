#!/bin/bash
# One `kvs_client bench` run against a fresh server, both taken from DIR (a
# directory holding a kvs_server and a kvs_client build), for before/after
# comparisons of two builds in the same session:
#
#   scripts/ab.sh /tmp/old old --duration 3 --clients 2
#   scripts/ab.sh target/release new --duration 3 --clients 2
#
# Prints: LABEL ops/s p50_us p99_us errors (or FAILED).
set -u
DIR=$1; LABEL=$2; shift 2
N=ab-$$-$RANDOM
$DIR/kvs_server --name $N --workers 2 > /tmp/$N.out 2>&1 &
S=$!
for _ in $(seq 100); do grep -q ready /tmp/$N.out && break; sleep 0.05; done
OUT=$($DIR/kvs_client --name $N bench --no-progress --json "$@" 2>/dev/null)
kill -INT $S; wait $S
rm -f /tmp/$N.out
echo "$LABEL $(echo "$OUT" | python3 -c 'import json,sys; d=json.load(sys.stdin); print(round(d["ops_per_sec"]), d["p50_us"], d["p99_us"], d["errors"])' 2>/dev/null || echo FAILED)"
