#!/usr/bin/env bash
# S5: what the cluster adds. In one run, on release builds:
#   single  - one node, cluster disabled (the local log): publisher and subscribers on it;
#   same    - a two-node cluster, publisher and subscribers on node 1 (the bridge, no node hop);
#   cross   - the same cluster, publisher on node 1, subscribers on node 2 (every delivery crosses RabbitMQ).
# Fan-out at 1k, 3k, 5k and 10k msg/s (herald-bench fanout, 10 subscribers, 64 B): delivery latency p50/p99;
# and publish throughput (herald-bench replay's fill: 10,000 publishes, 256 in flight) per setup. The nodes
# run with session.max_inflight 1024, so the one publishing connection is not capped at 32 in flight.
# Uses the RabbitMQ on 127.0.0.1:5672 with a cluster name of its own and deletes its streams after.
#
# Usage: benches/cluster.sh [--out DIR] [--no-build]      (REPS=N repeats each measurement, default 2)
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
OUT=benches/results/cluster-$(date -u +%Y%m%dT%H%M%SZ)
BUILD=1
while [ $# -gt 0 ]; do
  case "$1" in
    --out) OUT=$2; shift ;;
    --no-build) BUILD=0 ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
  shift
done
REPS=${REPS:-2}
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
if [ "$BUILD" = 1 ]; then
  cargo build --release -p herald --bin herald -p herald-bench
fi
HERALD=$TARGET/release/herald
BENCH=$TARGET/release/herald-bench
mkdir -p "$OUT"
WORK=$(mktemp -d)
NAME=bench-$(date +%s)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  if command -v rabbitmqctl >/dev/null 2>&1; then
    for q in $(rabbitmqctl list_queues name 2>/dev/null | grep "^herald\.$NAME\." || true); do
      rabbitmqctl delete_queue "$q" >/dev/null 2>&1 || true
    done
  fi
  rm -rf "$WORK"
}
trap cleanup EXIT

# node N CLUSTER(true|false): starts it and sets URL to its ws URL; the pid goes to PIDS (not called in
# a command substitution: a subshell would lose the pid, and the node would outlive the script).
start_node() {
  local n=$1 cluster=$2
  HERALD_AUTH__ANONYMOUS=true HERALD_LIMITS__MESSAGES_PER_SECOND=10000000 \
  HERALD_LIMITS__MESSAGES_BURST=10000000 HERALD_NAMESPACES__DEFAULT__HISTORY_SIZE=100000 \
  HERALD_SESSION__MAX_INFLIGHT=1024 \
  HERALD_CLUSTER__ENABLED=$cluster HERALD_CLUSTER__NAME=$NAME RUST_LOG=warn \
    "$HERALD" serve --listen 127.0.0.1:0 --admin-listen 127.0.0.1:0 --data-dir "$WORK/n$n-$cluster" \
    >"$WORK/n$n-$cluster.out" 2>"$WORK/n$n-$cluster.err" &
  PIDS+=($!)
  for _ in $(seq 1 100); do
    grep -q "^herald listening" "$WORK/n$n-$cluster.out" 2>/dev/null && break
    sleep 0.1
  done
  URL=$(sed -n 's/^herald listening ws=\([^ ]*\) .*/ws:\/\/\1\/ws/p' "$WORK/n$n-$cluster.out")
}

fanout() { # label url [publish-url]
  local label=$1 url=$2 pub=${3:-}
  for r in $(seq 1 "$REPS"); do
    "$BENCH" fanout --url "$url" ${pub:+--publish-url "$pub"} --subscribers 10 --size 64 \
      --rates 1000,3000,5000,10000 --step-secs 4 --warmup-secs 1 --drain-secs 1 --all-steps \
      --label "$label" --out "$OUT/fanout-$label-$r.json" >/dev/null 2>"$OUT/fanout-$label-$r.err"
  done
}
publish_rate() { # label url
  local label=$1 url=$2
  for r in $(seq 1 "$REPS"); do
    "$BENCH" replay --url "$url" --messages 10000 --size 64 --window 256 \
      --label "$label" --out "$OUT/replay-$label-$r.json" >/dev/null 2>"$OUT/replay-$label-$r.err"
  done
}

echo "== single node" >&2
start_node 0 false
U0=$URL
fanout single "$U0"
publish_rate single "$U0"
echo "== two-node cluster $NAME" >&2
start_node 1 true
U1=$URL
start_node 2 true
U2=$URL
# Wait until both nodes publish (connected, generation agreed).
for u in "$U1" "$U2"; do
  for _ in $(seq 1 100); do
    "$BENCH" replay --url "$u" --messages 1 --window 1 --timeout-secs 2 --out /dev/null >/dev/null 2>&1 && break
    sleep 0.2
  done
done
fanout same "$U1"
fanout cross "$U2" "$U1"
publish_rate cluster "$U1"

python3 - "$OUT" <<'EOF'
import glob, json, os, statistics, sys
out = sys.argv[1]
def med(xs):
    return statistics.median(xs) if xs else float("nan")
rows = []
for label in ["single", "same", "cross"]:
    for rate in [1000, 3000, 5000, 10000]:
        p50s, p99s, lost = [], [], 0
        for f in glob.glob(os.path.join(out, f"fanout-{label}-*.json")):
            for st in json.load(open(f)).get("steps", []):
                if st["rate"] == rate:
                    lat = st["latency"]
                    p50s.append(lat.get("p50_ms", float("nan")))
                    p99s.append(lat.get("p99_ms", float("nan")))
                    lost += st.get("lost_deliveries", 0)
        rows.append((label, rate, med(p50s), med(p99s), lost))
acked = {}
for label in ["single", "cluster"]:
    xs = []
    for f in glob.glob(os.path.join(out, f"replay-{label}-*.json")):
        v = json.load(open(f))
        xs.append(v.get("publish_per_s", float("nan")))
    acked[label] = med(xs)
lines = ["| setup | rate msg/s | p50 ms | p99 ms | lost |", "|---|---|---|---|---|"]
for label, rate, p50, p99, lost in rows:
    lines.append(f"| {label} | {rate} | {p50:.2f} | {p99:.2f} | {lost} |")
lines.append("")
lines.append("| setup | publish acked/s (10,000, 256 in flight) |")
lines.append("|---|---|")
for k, v in acked.items():
    lines.append(f"| {k} | {v:,.0f} |")
text = "\n".join(lines)
open(os.path.join(out, "summary.md"), "w").write(text + "\n")
print(text)
EOF
