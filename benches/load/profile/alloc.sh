#!/usr/bin/env bash
# S1 allocator experiment: a fresh herald (optionally under extra env, e.g. LD_PRELOAD of jemalloc or of
# nodelay.so), 5,000 idle connections, a burst of 20 x 30 KB messages to each, 20 s rest; prints RSS per
# connection idle / after the burst / after the rest.
#
#   benches/load/profile/alloc.sh NAME [ENV=VALUE ...]
#   benches/load/profile/alloc.sh jemalloc LD_PRELOAD=/usr/lib/x86_64-linux-gnu/libjemalloc.so.2 \
#       MALLOC_CONF=background_thread:true,dirty_decay_ms:1000,muzzy_decay_ms:0
# BENCH_HERALD_BIN=PATH runs another herald binary (herald refuses unknown HERALD_* variables).
# The nodelay shim: gcc -shared -fPIC -O2 -o /tmp/nodelay.so benches/load/profile/nodelay.c -ldl
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../../.." && pwd)
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
name=$1; shift
out=${OUT:-/tmp/herald-alloc}; mkdir -p "$out"
d=$(mktemp -d "$out/data.XXXX")
env "$@" HERALD_LIMITS__MESSAGES_PER_SECOND=100000000 HERALD_LIMITS__MESSAGES_BURST=100000000 RUST_LOG=warn \
  "${BENCH_HERALD_BIN:-$TARGET/release/herald}" serve --listen 127.0.0.1:0 --admin-listen 127.0.0.1:0 --data-dir "$d" >"$out/$name.log" 2>&1 &
pid=$!
a=""
for _ in $(seq 50); do a=$(grep -o 'ws=[^ ]*' "$out/$name.log" | cut -d= -f2 || true); [ -n "$a" ] && break; sleep 0.1; done
sleep 1
"$TARGET/release/herald-bench" idle --url "ws://$a/ws" --server-pid "$pid" --connections 5000 --burst --rest-secs 20 \
  --settle-secs 3 --label "$name" --out "$out/$name.json" 2>/dev/null
kill "$pid"; wait "$pid" || true
python3 -c '
import json,sys; r=json.load(open(sys.argv[1])); b=r["burst"]
print(sys.argv[2], "idle B/conn", round(r["server_bytes_per_connection"]), "after burst",
      round(b["server_bytes_per_connection_after_burst"]), "after rest", round(b["server_bytes_per_connection_after_rest"]))' \
  "$out/$name.json" "$name"
