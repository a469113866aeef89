#!/usr/bin/env bash
# Side by side with etcd: one run drives a single etcd member and a Coffer server, both on
# loopback with their data directories on the same disk, with the same load client
# (coffer-load --target coffer|etcd), then writes the results (JSON per run, a CSV), a markdown
# table with the ratio Coffer/etcd, and a PNG chart. The same Coffer server also serves its etcd
# v3 door (--etcd-listen), which the etcd client (coffer-load --target etcd) drives exactly as
# it drives etcd: a second table and chart compare the door with etcd (door-table.md,
# docs/bench/door-vs-etcd.png; there the door's results are labelled "coffer").
#
#   scripts/bench-vs-etcd.sh                   # full run (about 5 minutes of load)
#   DURATION=2 WATCHERS=1000 scripts/bench-vs-etcd.sh   # a quick one
#
# Settings (environment): DURATION (measured seconds per phase, 5), WARMUP (unmeasured seconds
# at the start of each phase, 1), CALLERS ("1 16 64"), WATCHERS (10000), WATCH_KEYS (1000),
# WATCH_CONNECTIONS (100), WATCH_UPDATES_PER_SEC (100), WATCH_SECS (10), OUT (results directory,
# target/bench-vs-etcd), PNG (docs/bench/vs-etcd.png), DOOR_PNG (docs/bench/door-vs-etcd.png),
# ETCD_PORT, ETCD_PEER, COFFER_PORT, DOOR_PORT.
#
# Needs root for apt-get when etcd, protoc or the DejaVu font is missing (Debian packages
# etcd-server, protobuf-compiler, fonts-dejavu-core).
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-5}
WARMUP=${WARMUP:-1}
CALLERS=${CALLERS:-"1 16 64"}
WATCHERS=${WATCHERS:-10000}
WATCH_KEYS=${WATCH_KEYS:-1000}
WATCH_CONNECTIONS=${WATCH_CONNECTIONS:-100}
WATCH_UPDATES_PER_SEC=${WATCH_UPDATES_PER_SEC:-100}
WATCH_SECS=${WATCH_SECS:-10}
OUT=${OUT:-target/bench-vs-etcd}
PNG=${PNG:-docs/bench/vs-etcd.png}
DOOR_PNG=${DOOR_PNG:-docs/bench/door-vs-etcd.png}
FONT=/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf

# --- what the run needs ------------------------------------------------------------------------
missing=()
command -v etcd >/dev/null 2>&1 || missing+=(etcd-server)
command -v protoc >/dev/null 2>&1 || missing+=(protobuf-compiler)
[ -e "$FONT" ] || missing+=(fonts-dejavu-core)
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing ${missing[*]}"
  apt-get update -q
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}"
fi
cargo build --release -p coffer -p coffer-load --features coffer-load/etcd,coffer-load/plot
cargo build --release -p coffer-kms-local
BIN=target/release
ulimit -n 200000 2>/dev/null || ulimit -n "$(ulimit -Hn)"

rm -rf "$OUT"
mkdir -p "$OUT/results" "$OUT/door-results" "$(dirname "$PNG")"
OUT=$(cd "$OUT" && pwd)

# Ports (override if taken).
ETCD_PORT=${ETCD_PORT:-23790}; ETCD_PEER=${ETCD_PEER:-23800}; COFFER_PORT=${COFFER_PORT:-27070}
DOOR_PORT=${DOOR_PORT:-27079}

pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
}
trap cleanup EXIT

# --- the two servers -----------------------------------------------------------------------------
# etcd: one member, defaults (a Put is acknowledged once its WAL entry is fsync'd).
etcd --name bench --data-dir "$OUT/etcd-data" \
  --listen-client-urls "http://127.0.0.1:$ETCD_PORT" --advertise-client-urls "http://127.0.0.1:$ETCD_PORT" \
  --listen-peer-urls "http://127.0.0.1:$ETCD_PEER" --initial-advertise-peer-urls "http://127.0.0.1:$ETCD_PEER" \
  --initial-cluster "bench=http://127.0.0.1:$ETCD_PEER" --log-level warn >"$OUT/etcd.log" 2>&1 &
ETCD_PID=$!; pids+=("$ETCD_PID")
# Coffer: durable writes (the default: fsync'd before the acknowledgement), local KEK file; the
# Secret service and the etcd door.
"$BIN/coffer" serve --data-dir "$OUT/coffer-data" --listen "127.0.0.1:$COFFER_PORT" \
  --etcd-listen "127.0.0.1:$DOOR_PORT" --token-cleaner-interval 0 >"$OUT/coffer.log" 2>&1 &
COFFER_PID=$!; pids+=("$COFFER_PID")
for port in "$ETCD_PORT" "$COFFER_PORT" "$DOOR_PORT"; do
  for _ in $(seq 1 200); do
    (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
    sleep 0.1
  done
done

{
  echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "cpus: $(nproc); kernel: $(uname -r)"
  echo "etcd: $(etcd --version | head -1)"
  echo "coffer: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
  echo "disk of the data dirs: $(df -h "$OUT" | tail -1)"
  # A benchmark is only as good as the machine is quiet: what else ran is stated with it.
  echo "load average at the start: $(cut -d' ' -f1-3 /proc/loadavg)"
  echo "busiest other processes: $(ps -eo pcpu=,comm= --sort=-pcpu | grep -v -e ' etcd$' -e ' coffer$' -e ' ps$' | head -3 | tr -s ' ' | paste -sd ';')"
  echo "settings: DURATION=$DURATION WARMUP=$WARMUP CALLERS='$CALLERS' WATCHERS=$WATCHERS WATCH_KEYS=$WATCH_KEYS WATCH_CONNECTIONS=$WATCH_CONNECTIONS WATCH_UPDATES_PER_SEC=$WATCH_UPDATES_PER_SEC WATCH_SECS=$WATCH_SECS"
} | tee "$OUT/env.txt"

status=0
# --- unary: create (put of a new key), get, update (put of an existing key) ----------------------
# Coffer and etcd alternate at each caller count, so that background load hits both alike.
for c in $CALLERS; do
  conns=$(( c < 4 ? c : 4 ))
  for run in coffer etcd door; do
    case $run in
      coffer) target=coffer; server=127.0.0.1:$COFFER_PORT ;;
      etcd) target=etcd; server=127.0.0.1:$ETCD_PORT ;;
      door) target=etcd; server=127.0.0.1:$DOOR_PORT ;;
    esac
    echo "== unary $run, $c callers over $conns connections"
    "$BIN/coffer-load" unary --target "$target" --server "$server" --namespace "bench-c$c" \
      --concurrency "$c" --connections "$conns" --value-size 1024 \
      --duration "$DURATION" --phase-warmup "$WARMUP" --ops create,get,update --json \
      >"$OUT/results/unary-$run-c$c.json" || { echo "unary $run c=$c had errors"; status=1; }
  done
done

# --- watch fan-out -----------------------------------------------------------------------------
# WATCHERS streams, each with one watch on one of WATCH_KEYS keys (WATCHERS/WATCH_KEYS watchers
# per key) plus 2 namespace (prefix) watchers, over WATCH_CONNECTIONS connections; then
# WATCH_UPDATES_PER_SEC updates for WATCH_SECS; delivery latency = update acknowledged -> event
# received, every delivery counted.
for run in coffer etcd door; do
  case $run in
    coffer) target=coffer; server=127.0.0.1:$COFFER_PORT; pid=$COFFER_PID ;;
    etcd) target=etcd; server=127.0.0.1:$ETCD_PORT; pid=$ETCD_PID ;;
    door) target=etcd; server=127.0.0.1:$DOOR_PORT; pid=$COFFER_PID ;;
  esac
  echo "== watch $run, $WATCHERS watchers"
  "$BIN/coffer-load" watch --target "$target" --server "$server" --server-pid "$pid" \
    --namespace "watch-bench-$run" --streams "$WATCHERS" --connections "$WATCH_CONNECTIONS" \
    --secrets "$WATCH_KEYS" --updates-per-sec "$WATCH_UPDATES_PER_SEC" --duration "$WATCH_SECS" --json \
    >"$OUT/results/watch-$run.json" || { echo "watch $run: not every event delivered or errors"; status=1; }
done

echo "load average at the end (the run's own load included): $(cut -d' ' -f1-3 /proc/loadavg)" | tee -a "$OUT/env.txt"
cleanup; pids=()
# The data directories are not results (and run to gigabytes): OUT may be under docs/.
rm -rf "$OUT/etcd-data" "$OUT/coffer-data"
# The door's runs, labelled "coffer" beside etcd's for the second table and chart.
for f in "$OUT"/results/*-door*.json; do
  base=$(basename "$f"); base=${base/-door/-coffer}
  sed 's/"target": *"etcd"/"target": "coffer"/' "$f" >"$OUT/door-results/$base"
  mv "$f" "$OUT/door-results/${base/-coffer/-door}.orig"
done
cp "$OUT"/results/*-etcd*.json "$OUT/door-results/"
"$BIN/coffer-load" plot vs-etcd --dir "$OUT/results" --png "$PNG" \
  --markdown "$OUT/table.md" --csv "$OUT/results.csv"
"$BIN/coffer-load" plot vs-etcd --dir "$OUT/door-results" --png "$DOOR_PNG" \
  --markdown "$OUT/door-table.md" --csv "$OUT/door-results.csv"
echo "results: $OUT/results/*.json, $OUT/results.csv, $OUT/table.md; chart: $PNG"
echo "the door: $OUT/door-results/*.json, $OUT/door-table.md; chart: $DOOR_PNG"
exit $status
