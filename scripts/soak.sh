#!/usr/bin/env bash
# Soak: a mixed run of DURATION seconds (default 600) against `coffer serve` with the
# coffer-kms-local plugin: writers, readers, WATCHERS watch streams (default 10,000) and a KMS key
# rotation half-way, sampling the server's RSS and open fds every second. Writes
# $OUT/soak.json (the report), $OUT/soak.csv (the samples) and the chart $PNG. The run fails
# (exit 1) on any error and when the server's RSS grows faster than MAX_RSS_SLOPE KiB per
# minute after the warm-up (default 1024), with no history kept (HISTORY_RETENTION seconds,
# default 0: kept versions grow sled's page cache for the whole retention, by design).
#
#   scripts/soak.sh                       # the full 10 minutes
#   DURATION=30 WATCHERS=1000 scripts/soak.sh
#
# Uses the same build as scripts/bench-vs-etcd.sh (features etcd,plot: needs protoc from
# protobuf-compiler) and DejaVu Sans (fonts-dejavu-core) for the chart.
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-600}
WATCHERS=${WATCHERS:-10000}
MAX_RSS_SLOPE=${MAX_RSS_SLOPE:-1024}
HISTORY_RETENTION=${HISTORY_RETENTION:-0}
OUT=${OUT:-target/soak}
PNG=${PNG:-docs/bench/soak.png}
FONT=/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf

missing=()
command -v protoc >/dev/null 2>&1 || missing+=(protobuf-compiler)
[ -e "$FONT" ] || missing+=(fonts-dejavu-core)
if [ ${#missing[@]} -gt 0 ]; then
  apt-get update -q
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}"
fi
cargo build --release -p coffer -p coffer-load --features coffer-load/etcd,coffer-load/plot
cargo build --release -p coffer-kms-local
ulimit -n 200000 2>/dev/null || ulimit -n "$(ulimit -Hn)"

rm -rf "$OUT"
mkdir -p "$OUT" "$(dirname "$PNG")"
status=0
target/release/coffer-load soak --duration "$DURATION" --watchers "$WATCHERS" \
  --max-rss-slope "$MAX_RSS_SLOPE" --history-retention "$HISTORY_RETENTION" \
  --csv "$OUT/soak.csv" --work-dir "$OUT/work" --json >"$OUT/soak.json" || status=1
target/release/coffer-load plot soak --csv "$OUT/soak.csv" --report "$OUT/soak.json" --png "$PNG"
echo "report: $OUT/soak.json; samples: $OUT/soak.csv; chart: $PNG"
exit $status
