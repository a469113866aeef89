#!/usr/bin/env bash
# A flame graph of `coffer serve` (release build, durable writes, the local key-file KEK) under
# coffer-load's unary load: perf samples the server with DWARF call graphs while the load runs,
# inferno folds and draws them.
#
#   scripts/flamegraph.sh                       # 64 callers of durable Create: docs/bench/flame-create.svg
#   OP=update scripts/flamegraph.sh             # durable Update (after unmeasured creates)
#
# Settings (environment): OP (create|update|get, create), CALLERS (64), CONNECTIONS (4),
# DURATION (seconds sampled, 6), FREQ (samples per second, 250), OUT (target/flamegraph),
# SVG (docs/bench/flame-$OP.svg), PORT (27090), COFFER (the server binary to profile, default
# the release build: set it to profile another build, such as an older commit's, with the same
# load).
#
# Needs perf (Debian's linux-perf) and inferno (`cargo install inferno`); installs what is
# missing. perf needs root or kernel.perf_event_paranoid <= 1.
set -euo pipefail
cd "$(dirname "$0")/.."

OP=${OP:-create}
CALLERS=${CALLERS:-64}
CONNECTIONS=${CONNECTIONS:-4}
DURATION=${DURATION:-6}
FREQ=${FREQ:-250}
OUT=${OUT:-target/flamegraph}
SVG=${SVG:-docs/bench/flame-$OP.svg}
PORT=${PORT:-27090}

command -v perf >/dev/null 2>&1 || {
  apt-get update -q
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q linux-perf
}
command -v inferno-flamegraph >/dev/null 2>&1 || cargo install inferno --locked
cargo build --release -p coffer -p coffer-load
BIN=${CARGO_TARGET_DIR:-target}/release
COFFER=${COFFER:-$BIN/coffer}

rm -rf "$OUT"
mkdir -p "$OUT" "$(dirname "$SVG")"
"$COFFER" serve --data-dir "$OUT/data" --listen "127.0.0.1:$PORT" \
  --token-cleaner-interval 0 >"$OUT/coffer.log" 2>&1 &
SERVER=$!
trap 'kill $SERVER 2>/dev/null || true; wait $SERVER 2>/dev/null || true' EXIT
for _ in $(seq 1 200); do
  (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && break
  sleep 0.1
done
load() {
  "$BIN/coffer-load" unary --server "127.0.0.1:$PORT" --namespace "$1" --concurrency "$CALLERS" \
    --connections "$CONNECTIONS" --value-size 1024 --duration "$2" --phase-warmup 0 --ops "$3"
}
# Warm up (and, for update and get, make the Secrets they pick from), unsampled.
load warm 2 create >/dev/null
perf record -F "$FREQ" -g --call-graph dwarf,32768 -p "$SERVER" -o "$OUT/perf.data" \
  -- sleep "$DURATION" >"$OUT/perf.log" 2>&1 &
PERF=$!
sleep 0.3
case $OP in
  create) load sampled "$DURATION" create ;;
  *) load sampled "$DURATION" "$OP" ;;
esac | tee "$OUT/load.txt"
wait $PERF
perf script -i "$OUT/perf.data" 2>/dev/null | inferno-collapse-perf --all >"$OUT/folded.txt"
inferno-flamegraph --title "coffer serve: $CALLERS callers of durable $OP (1 KiB)" \
  --width 1600 <"$OUT/folded.txt" >"$SVG"
echo "flame graph: $SVG (folded stacks: $OUT/folded.txt)"
