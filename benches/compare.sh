#!/usr/bin/env bash
# Compare herald with the baseline server (the physical limit) and the Node peers (ws, socket.io).
#
#   benches/compare.sh [--quick] [--reps N] [--servers "herald baseline ws sio"]
#                      [--scenarios "fanout idle churn replay"] [--out DIR] [--no-build]
#
# For each scenario and server: a fresh server process, a warm-up run that is thrown away, then N
# repetitions (3 by default; idle restarts the server for every repetition so memory starts clean).
# Every run is driven by the same herald-bench client with the same payloads. Results go to
# DIR (default benches/results/<timestamp>): one JSON per run, summary.json and summary.md (median,
# min-max spread, ratio against the baseline's median) and PNG plots. --quick finishes in a few
# minutes (smaller sizes, one repetition).
#
# Needs: cargo, node + npm (peers are installed with `npm install` into a scratch dir; node_modules is
# never written into the repo), python3 (summary). Each run reports the generator's own CPU, so a
# generator-bound result is visible (fanout: generator_recv_thread_util close to 1.0).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
QUICK=0
REPS=""
SERVERS="herald baseline ws sio"
SCENARIOS="fanout idle churn replay"
OUT=""
NO_BUILD=0
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) QUICK=1 ;;
    --reps) REPS="$2"; shift ;;
    --servers) SERVERS="$2"; shift ;;
    --scenarios) SCENARIOS="$2"; shift ;;
    --out) OUT="$2"; shift ;;
    --no-build) NO_BUILD=1 ;;
    -h|--help) sed -n '2,18p' "$0"; exit 0 ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
  shift
done
OUT=${OUT:-$ROOT/benches/results/$(date +%Y%m%d-%H%M%S)}
mkdir -p "$OUT/runs" "$OUT/logs"
OUT=$(cd "$OUT" && pwd)
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
SCRATCH=$(mktemp -d /tmp/herald-compare.XXXXXX)
SPID=""

cleanup() {
  if [ -n "$SPID" ]; then kill "$SPID" 2>/dev/null || true; wait "$SPID" 2>/dev/null || true; fi
  rm -rf "$SCRATCH"
}
trap cleanup EXIT

# ---- parameters
if [ $QUICK = 1 ]; then
  REPS=${REPS:-1}
  FANOUT_SUBS=200; FANOUT_SIZES="64"; FANOUT_RATES="500,1000,2000,5000,10000,20000"; STEP=2; WARM=0.5
  IDLE_N=2000; IDLE_EXTRA="--burst --burst-count 5 --rest-secs 5 --settle-secs 2"
  CHURN="--rate 100 --duration-secs 3 --hold-min-secs 1 --hold-max-secs 2"
  REPLAY_M=2000
else
  REPS=${REPS:-3}
  FANOUT_SUBS=1000; FANOUT_SIZES="64 1024"; FANOUT_RATES="100,200,500,1000,2000,3000,5000,7000,10000,15000,20000,30000,50000"; STEP=5; WARM=1
  IDLE_N=10000; IDLE_EXTRA="--burst --rest-secs 60 --settle-secs 5"
  CHURN="--rate 500 --duration-secs 10 --hold-min-secs 1 --hold-max-secs 5"
  REPLAY_M=50000
fi

# ---- build and install
if [ $NO_BUILD = 0 ]; then
  echo "== building release binaries (target: $TARGET)" >&2
  (cd "$ROOT" && cargo build --release -p herald-bench >&2)
  case " $SERVERS " in *" herald "*) (cd "$ROOT" && cargo build --release --bin herald >&2) ;; esac
fi
BENCH=$TARGET/release/herald-bench
case " $SERVERS " in *" ws "*|*" sio "*)
  echo "== installing Node peers into $SCRATCH/peers" >&2
  mkdir -p "$SCRATCH/peers"
  cp "$ROOT"/benches/peers/package.json "$ROOT"/benches/peers/*.js "$SCRATCH/peers/"
  (cd "$SCRATCH/peers" && npm install --no-audit --no-fund --loglevel=error >&2)
;; esac

# ---- servers
# start_server NAME: sets SPID, URL, PROTO
start_server() {
  local name=$1 log="$OUT/logs/$1-$(date +%s%N).log" cmd
  PROTO=herald
  case "$name" in
    herald)
      mkdir -p "$SCRATCH/data"; local dd; dd=$(mktemp -d "$SCRATCH/data/d.XXXX")
      # The per-connection rate limit would throttle the benchmark publisher, and the default
      # history_size (1000) is smaller than the replay scenario's message count.
      (cd "$SCRATCH" && exec env HERALD_LIMITS__MESSAGES_PER_SECOND=100000000 HERALD_LIMITS__MESSAGES_BURST=100000000 \
        HERALD_NAMESPACES__DEFAULT__HISTORY_SIZE=1000000 \
        RUST_LOG=${RUST_LOG:-warn} "$TARGET/release/herald" serve --listen 127.0.0.1:0 --admin-listen 127.0.0.1:0 \
        --data-dir "$dd" >"$log" 2>&1) &
      ;;
    baseline) "$TARGET/release/baseline-server" --listen 127.0.0.1:0 >"$log" 2>&1 & ;;
    ws) node "$SCRATCH/peers/ws-server.js" --listen 127.0.0.1:0 >"$log" 2>&1 & ;;
    sio) node "$SCRATCH/peers/sio-server.js" --listen 127.0.0.1:0 >"$log" 2>&1 & PROTO=sio ;;
    *) echo "unknown server $name" >&2; exit 2 ;;
  esac
  SPID=$!
  local addr="" i
  for i in $(seq 1 200); do
    addr=$(grep -o 'ws=[^ ]*' "$log" 2>/dev/null | head -1 | cut -d= -f2 || true)
    [ -n "$addr" ] && break
    kill -0 "$SPID" 2>/dev/null || break
    sleep 0.1
  done
  if [ -z "$addr" ]; then echo "server $name did not start; log:" >&2; cat "$log" >&2; exit 1; fi
  if [ "$PROTO" = sio ]; then URL="ws://$addr/socket.io/?EIO=4&transport=websocket"; else URL="ws://$addr/ws"; fi
}

stop_server() {
  if [ -n "$SPID" ]; then kill "$SPID" 2>/dev/null || true; wait "$SPID" 2>/dev/null || true; SPID=""; fi
}

# bench LABEL OUTFILE SCENARIO ARGS...
bench() {
  local label=$1 out=$2 sc=$3; shift 3
  "$BENCH" "$sc" --url "$URL" --proto "$PROTO" --server-pid "$SPID" --label "$label" --out "$out" "$@" \
    2>>"$OUT/logs/bench.log" || echo "  (run failed: $label $sc, see logs/bench.log)" >&2
}

for sc in $SCENARIOS; do
  for srv in $SERVERS; do
    if [ "$sc" = replay ] && [ "$srv" != herald ]; then continue; fi  # only herald keeps history
    case "$sc" in
      fanout)
        for size in $FANOUT_SIZES; do
          echo "== fanout ${size}B: $srv" >&2
          start_server "$srv"
          bench "$srv" "$OUT/runs/warmup-fanout$size-$srv.json" fanout --subscribers "$FANOUT_SUBS" --size "$size" \
            --rates 500 --step-secs 1 --warmup-secs 0.2
          for r in $(seq 1 "$REPS"); do
            bench "$srv" "$OUT/runs/fanout$size-$srv-$r.json" fanout --subscribers "$FANOUT_SUBS" --size "$size" \
              --rates "$FANOUT_RATES" --step-secs "$STEP" --warmup-secs "$WARM"
          done
          stop_server
        done ;;
      idle)
        for r in $(seq 1 "$REPS"); do
          echo "== idle rep $r: $srv" >&2
          start_server "$srv"; sleep 1
          # shellcheck disable=SC2086
          bench "$srv" "$OUT/runs/idle-$srv-$r.json" idle --connections "$IDLE_N" $IDLE_EXTRA
          stop_server
        done ;;
      churn)
        echo "== churn: $srv" >&2
        start_server "$srv"
        bench "$srv" "$OUT/runs/warmup-churn-$srv.json" churn --rate 50 --duration-secs 1 --hold-min-secs 0.2 --hold-max-secs 0.5
        for r in $(seq 1 "$REPS"); do
          # shellcheck disable=SC2086
          bench "$srv" "$OUT/runs/churn-$srv-$r.json" churn $CHURN
        done
        stop_server ;;
      replay)
        echo "== replay: $srv" >&2
        start_server "$srv"
        bench "$srv" "$OUT/runs/warmup-replay-$srv.json" replay --messages 500
        for r in $(seq 1 "$REPS"); do
          bench "$srv" "$OUT/runs/replay-$srv-$r.json" replay --messages "$REPLAY_M"
        done
        stop_server ;;
    esac
  done
done

echo "== summarising into $OUT" >&2
python3 "$ROOT/benches/load/summarize.py" "$OUT" > "$OUT/summary.md"
# plots from the median repetition of each server
mapfile -t MEDIANS < <(python3 -c 'import json,sys; print("\n".join(json.load(open(sys.argv[1]))["median_runs"]))' "$OUT/summary.json")
if [ ${#MEDIANS[@]} -gt 0 ]; then "$BENCH" plot --dir "$OUT/plots" "${MEDIANS[@]}" || true; fi
cat "$OUT/summary.md"
