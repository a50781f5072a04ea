#!/usr/bin/env bash
# Compare herald with the baseline server (the physical limit) and the Node peers (ws, socket.io).
#
#   benches/compare.sh [--quick|--full] [--reps N] [--servers "herald baseline ws sio"]
#                      [--scenarios "fanout idle churn replay"] [--out DIR] [--no-build]
#
# Three sizes: --quick (a few minutes, smoke test), the default (about 30 minutes on 2 cores: S1 at 5k
# connections x3 and 19k x1 with 20 s rest after the burst, S2 at 1k subscribers 64 B and 1 KiB with 2 s
# steps, S4 stepped 500..10000 connects/s for 10 s each with 1-5 s holds, S6 1k/10k/100k missed messages),
# and --full (the issue's exact sizes: 60 s rest, 19k x3, 10k subscribers too, 5 s steps, 1-5 s holds,
# 20 s churn steps; well over an hour). Any parameter can be overridden from the environment, e.g.
# `FANOUT_RATES=1000,2000 CHURN_RATES="1000 5000" benches/compare.sh --scenarios "fanout churn"`:
# REPS FANOUT_SUBS FANOUT_SIZES FANOUT_RATES STEP WARM IDLE_SIZES IDLE_REST IDLE_BIG_REPS CHURN_RATES
# CHURN_SECS CHURN_HOLD REPLAY_SIZES FANOUT_P99_LIMIT_MS (default 100; raise it, e.g. to 1000, on a loaded
# machine to find the throughput ceiling rather than the latency-bound one) BASELINE_THREADS (default: 1, the
# single-threaded baseline, which reaches the most on 2 cores where the generator needs the other core; 2 for
# fan-out to more than 2,000 subscribers, where one message's 10k sends take ~90 ms on one core).
# Without FANOUT_RATES, fanout searches: rates grow x1.5 from 100k deliveries/s until p99 > limit, then 3
# bisections between the last good and the first bad rate (~5% apart), then one step at half the best.
#
# One process holds at most RLIMIT_NOFILE sockets (20,000 here, and that is a hard limit), so idle and churn
# spread their connections over several herald-bench worker processes (`--procs`), each binding its
# connections to its own 127.0.0.x source addresses: idle uses ceil(connections / 9000) processes, churn
# enough that rate x longest hold stays under 15,000 sockets per process. IDLE_PROCS and CHURN_PROCS
# override the count. The servers have the same limit: churn above ~19.9k concurrent sockets fails there.
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
# generator-bound result is visible (fanout: `generator-bound` in logs/bench.log and "generator_bound" in
# the JSON when its receiving or publisher thread used > 90% of a core, "other_cores_busy" when other
# processes shared the machine; a failing step on a shared machine is repeated up to twice).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
QUICK=0
REPS="${REPS:-}"
SERVERS="herald baseline ws sio"
SCENARIOS="fanout idle churn replay"
OUT=""
NO_BUILD=0
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) QUICK=1 ;;
    --full) QUICK=2 ;;
    --reps) REPS="$2"; shift ;;
    --servers) SERVERS="$2"; shift ;;
    --scenarios) SCENARIOS="$2"; shift ;;
    --out) OUT="$2"; shift ;;
    --no-build) NO_BUILD=1 ;;
    -h|--help) sed -n '2,38p' "$0"; exit 0 ;;
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

# ---- parameters (each may be preset in the environment)
if [ $QUICK = 1 ]; then
  REPS=${REPS:-1}
  : "${FANOUT_SUBS:=200}" "${FANOUT_SIZES:=64}" "${STEP:=2}" "${WARM:=0.5}"
  : "${IDLE_SIZES:=2000}" "${IDLE_REST:=5}" "${IDLE_BIG_REPS:=1}"
  : "${CHURN_RATES:=100 500}" "${CHURN_SECS:=3}" "${CHURN_HOLD:=1 2}"
  : "${REPLAY_SIZES:=1000 2000}"
elif [ $QUICK = 2 ]; then
  REPS=${REPS:-3}
  : "${FANOUT_SUBS:=1000 10000}" "${FANOUT_SIZES:=64 1024}" "${STEP:=5}" "${WARM:=1}"
  : "${IDLE_SIZES:=5000 19000}" "${IDLE_REST:=60}" "${IDLE_BIG_REPS:=3}"
  : "${CHURN_RATES:=500 1000 2000 3000 5000 7000 10000}" "${CHURN_SECS:=20}" "${CHURN_HOLD:=1 5}"
  : "${REPLAY_SIZES:=1000 10000 100000}"
else
  REPS=${REPS:-3}
  : "${FANOUT_SUBS:=1000}" "${FANOUT_SIZES:=64 1024}" "${STEP:=2}" "${WARM:=0.5}"
  : "${IDLE_SIZES:=5000 19000}" "${IDLE_REST:=20}" "${IDLE_BIG_REPS:=1}"
  : "${CHURN_RATES:=500 1000 2000 3000 4000 5000 7000 10000}" "${CHURN_SECS:=10}" "${CHURN_HOLD:=1 5}"
  : "${REPLAY_SIZES:=1000 10000 100000}"
fi
read -r HOLD_MIN HOLD_MAX <<<"$CHURN_HOLD"
: "${FANOUT_P99_LIMIT_MS:=100}"
THREADS=${BASELINE_THREADS:-1}
FANOUT_LADDER=()
if [ -n "${FANOUT_RATES:-}" ]; then FANOUT_LADDER=(--rates "$FANOUT_RATES"); fi
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
# herald runs as in production: anonymous connections are refused and every client presents a JWT (HS256,
# in the `token` query parameter) that herald verifies at the handshake, so S4 measures "connect, JWT,
# subscribe". One token (user `bench`) serves every connection, hence the per-user limit is raised.
JWT_SECRET=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')
TOKEN=""
# start_server NAME: sets SPID, URL, PROTO
start_server() {
  local name=$1 log="$OUT/logs/$1-$(date +%s%N).log" cmd
  PROTO=herald
  case "$name" in
    herald)
      mkdir -p "$SCRATCH/data"; local dd; dd=$(mktemp -d "$SCRATCH/data/d.XXXX")
      # The per-connection rate limit would throttle the benchmark publisher, and the default
      # history_size (1000) is smaller than the replay scenario's message count.
      # The churn scenario opens up to 10k connects/s from one address (default limit 5,000/s per IP).
      (cd "$SCRATCH" && exec env HERALD_AUTH__HMAC_SECRET="$JWT_SECRET" HERALD_AUTH__ANONYMOUS=false \
        HERALD_LIMITS__MAX_CONNECTIONS_PER_USER=1000000 HERALD_LIMITS__CONNECTS_PER_SECOND_PER_IP=1000000 \
        HERALD_LIMITS__MAX_CONNECTIONS_PER_IP=1000000 HERALD_LIMITS__MESSAGES_PER_SECOND=100000000 HERALD_LIMITS__MESSAGES_BURST=100000000 \
        HERALD_NAMESPACES__DEFAULT__HISTORY_SIZE=1000000 \
        RUST_LOG=${RUST_LOG:-warn} "$TARGET/release/herald" serve --listen 127.0.0.1:0 --admin-listen 127.0.0.1:0 \
        --data-dir "$dd" >"$log" 2>&1) &
      ;;
    baseline) "$TARGET/release/baseline-server" --listen 127.0.0.1:0 --threads "$THREADS" >"$log" 2>&1 & ;;
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
  if [ "$name" = herald ]; then
    if [ -z "$TOKEN" ]; then
      TOKEN=$(cd "$SCRATCH" && HERALD_AUTH__HMAC_SECRET="$JWT_SECRET" "$TARGET/release/herald" token --sub bench --ttl 7d)
    fi
    URL="$URL?token=$TOKEN"
  fi
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

# churn_procs RATE: worker processes so that RATE x the longest hold fits under 15k sockets each
churn_procs() {
  if [ -n "${CHURN_PROCS:-}" ]; then echo "$CHURN_PROCS"; return; fi
  awk -v r="$1" -v h="$HOLD_MAX" 'BEGIN { p = r * h / 15000; c = int(p); if (c < p) c++; if (c < 1) c = 1; print c }'
}

for sc in $SCENARIOS; do
  for srv in $SERVERS; do
    if [ "$sc" = replay ] && [ "$srv" != herald ]; then continue; fi  # only herald keeps history
    case "$sc" in
      fanout)
        for subs in $FANOUT_SUBS; do
        for size in $FANOUT_SIZES; do
          echo "== fanout ${subs} subs ${size}B: $srv" >&2
          THREADS=${BASELINE_THREADS:-$([ "$subs" -gt 2000 ] && echo 2 || echo 1)}
          start_server "$srv"
          THREADS=${BASELINE_THREADS:-1}
          bench "$srv" "$OUT/runs/warmup-fanout$size-$srv.json" fanout --subscribers "$subs" --size "$size" \
            --rates 500 --step-secs 1 --warmup-secs 0.2
          for r in $(seq 1 "$REPS"); do
            bench "$srv" "$OUT/runs/fanout$subs-$size-$srv-$r.json" fanout --subscribers "$subs" --size "$size" \
              ${FANOUT_LADDER[@]+"${FANOUT_LADDER[@]}"} --step-secs "$STEP" --warmup-secs "$WARM" --drain-secs 1 \
              --p99-limit-ms "$FANOUT_P99_LIMIT_MS"
          done
          stop_server
        done
        done ;;
      idle)
        for n in $IDLE_SIZES; do
          reps=$REPS; [ "$n" -gt 10000 ] && reps=$IDLE_BIG_REPS
          for r in $(seq 1 "$reps"); do
            echo "== idle $n rep $r: $srv" >&2
            start_server "$srv"; sleep 1
            bench "$srv" "$OUT/runs/idle$n-$srv-$r.json" idle --connections "$n" --burst \
              --rest-secs "$IDLE_REST" --settle-secs 3 --procs "${IDLE_PROCS:-$(( (n + 8999) / 9000 ))}"
            stop_server
          done
        done ;;
      churn)
        echo "== churn: $srv" >&2
        start_server "$srv"
        bench "$srv" "$OUT/runs/warmup-churn-$srv.json" churn --rate 50 --duration-secs 1 --hold-min-secs 0.2 --hold-max-secs 0.5
        for rate in $CHURN_RATES; do
          fails=0
          for r in $(seq 1 "$REPS"); do
            f="$OUT/runs/churn$rate-$srv-$r.json"
            bench "$srv" "$f" churn --rate "$rate" --duration-secs "$CHURN_SECS" \
              --hold-min-secs "$HOLD_MIN" --hold-max-secs "$HOLD_MAX" --procs "$(churn_procs "$rate")"
            ok=$(python3 -c 'import json,sys
try:
  r=json.load(open(sys.argv[1])); print(int(r["connect_errors"]+r["subscribe_errors"]==0 and (r["connect_to_subscribed"].get("p99_ms") or 1e9)<=100))
except Exception: print(0)' "$f")
            [ "$ok" = 1 ] || fails=$((fails + 1))
          done
          echo "   churn $rate/s: $fails of $REPS repetitions over the limit" >&2
          # a rate where most repetitions fail ends the ramp (higher rates only fail harder)
          if [ $((fails * 2)) -gt "$REPS" ]; then break; fi
        done
        stop_server ;;
      replay)
        echo "== replay: $srv" >&2
        start_server "$srv"
        bench "$srv" "$OUT/runs/warmup-replay-$srv.json" replay --messages 500
        for m in $REPLAY_SIZES; do
          for r in $(seq 1 "$REPS"); do
            bench "$srv" "$OUT/runs/replay$m-$srv-$r.json" replay --messages "$m"
          done
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
