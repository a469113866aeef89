#!/usr/bin/env bash
# Before and after in one run: two `coffer` server binaries (A, B) and etcd side by side on
# this machine, driven by the same coffer-load, alternating per phase (etcd, A, B), so that
# background load hits all three alike. Prints ops/s per phase and the server's CPU per op
# (user + system time from /proc/<pid>/stat over the phase, divided by the calls; for get and
# update that includes the server side of the unmeasured Creates they pick from).
#
#   scripts/bench-ab.sh OLD/coffer target/release/coffer
#   CALLERS="16 64" OPS="create update" ROUNDS=3 scripts/bench-ab.sh A B
#
# Settings (environment): CALLERS ("1 16 64"), OPS ("create update get"), ROUNDS (2),
# DURATION (seconds per phase, 4), NOETCD (set: A and B only), OUT (target/bench-ab),
# DOOR (set: drive A's and B's etcd doors with the etcd client, as etcd itself is driven,
# instead of their Secret services), WATCH (set: the watch fan-out of bench-vs-etcd.sh instead
# of unary calls, WATCHERS streams (10000) on WATCH_KEYS keys (1000) over 100 connections,
# WATCH_UPDATES_PER_SEC (100) for DURATION; with DOOR, A's and B's doors).
# Needs etcd (Debian's etcd-server) unless NOETCD, and coffer-load built with its `etcd`
# feature (`cargo build --release -p coffer-load --features etcd`).
set -euo pipefail
cd "$(dirname "$0")/.."
A=$1
B=$2
CALLERS=${CALLERS:-"1 16 64"}
OPS=${OPS:-"create update get"}
ROUNDS=${ROUNDS:-2}
DURATION=${DURATION:-4}
OUT=${OUT:-target/bench-ab}
LOAD=${CARGO_TARGET_DIR:-target}/release/coffer-load
TICK=$(getconf CLK_TCK)

rm -rf "$OUT"
mkdir -p "$OUT"
pids=()
trap 'for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait' EXIT
if [ -z "${NOETCD:-}" ]; then
  etcd --name ab --data-dir "$OUT/etcd" --listen-client-urls http://127.0.0.1:23790 \
    --advertise-client-urls http://127.0.0.1:23790 --listen-peer-urls http://127.0.0.1:23800 \
    --initial-advertise-peer-urls http://127.0.0.1:23800 \
    --initial-cluster ab=http://127.0.0.1:23800 --log-level warn >"$OUT/etcd.log" 2>&1 &
  ETCD=$!; pids+=("$ETCD")
fi
if [ -n "${DOOR:-}" ]; then
  TARGET=etcd; AT=127.0.0.1:27073; BT=127.0.0.1:27074
else
  TARGET=coffer; AT=127.0.0.1:27071; BT=127.0.0.1:27072
fi
"$A" serve --data-dir "$OUT/a" --listen 127.0.0.1:27071 --etcd-listen 127.0.0.1:27073 \
  --token-cleaner-interval 0 >"$OUT/a.log" 2>&1 &
SA=$!; pids+=("$SA")
"$B" serve --data-dir "$OUT/b" --listen 127.0.0.1:27072 --etcd-listen 127.0.0.1:27074 \
  --token-cleaner-interval 0 >"$OUT/b.log" 2>&1 &
SB=$!; pids+=("$SB")
for port in 27071 27072 27073 27074 ${ETCD:+23790}; do
  for _ in $(seq 1 200); do
    (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
    sleep 0.1
  done
done

cpu() { awk '{print $14 + $15}' "/proc/$1/stat"; }
phase() { # label target server pid callers op namespace
  local before after conns=$(( $5 < 4 ? $5 : 4 ))
  before=$(cpu "$4")
  "$LOAD" unary --target "$2" --server "$3" --namespace "$7" --concurrency "$5" \
    --connections "$conns" --value-size 1024 --duration "$DURATION" --phase-warmup 0 \
    --ops "$6" --json >"$OUT/$7.json"
  after=$(cpu "$4")
  python3 - "$OUT/$7.json" "$before" "$after" "$TICK" "$1" "$5" "$6" <<'PY'
import json, sys
phases = json.load(open(sys.argv[1]))["phases"]
ok = sum(p["ok"] for p in phases)
secs = sum(p["elapsed_secs"] for p in phases)
cpu = (int(sys.argv[3]) - int(sys.argv[2])) / int(sys.argv[4])
print(f"{sys.argv[5]:5} {sys.argv[7]:7} {sys.argv[6]:>3} callers {ok / secs:9.0f} ops/s"
      f"  server {cpu / ok * 1e6:6.1f} us/op")
PY
}
watch_phase() { # label target server pid namespace
  local before after
  before=$(cpu "$4")
  "$LOAD" watch --target "$2" --server "$3" --server-pid "$4" --namespace "$5" \
    --streams "${WATCHERS:-10000}" --connections 100 --secrets "${WATCH_KEYS:-1000}" \
    --updates-per-sec "${WATCH_UPDATES_PER_SEC:-100}" --duration "$DURATION" --json \
    >"$OUT/$5.json" || echo "$1: not every event delivered, or errors"
  after=$(cpu "$4")
  python3 - "$OUT/$5.json" "$before" "$after" "$TICK" "$1" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
cpu = (int(sys.argv[3]) - int(sys.argv[2])) / int(sys.argv[4])
s, u = d["delivery_from_send_us"], d["update_latency_us"]
print(f"{sys.argv[5]:5} watch {d['streams']} streams: update->event p50 {s['p50']/1000:7.1f} ms"
      f" p99 {s['p99']/1000:7.1f} ms; update p50 {u['p50']/1000:6.1f} ms;"
      f" delivered {d['delivered']}/{d['expected']}; server CPU {cpu:5.1f} s")
PY
}
echo "load average at the start: $(cut -d' ' -f1-3 /proc/loadavg)"
if [ -n "${WATCH:-}" ]; then
  for r in $(seq "$ROUNDS"); do
    [ -n "${ETCD:-}" ] && watch_phase etcd etcd 127.0.0.1:23790 "$ETCD" "we$r"
    watch_phase A "$TARGET" "$AT" "$SA" "wa$r"
    watch_phase B "$TARGET" "$BT" "$SB" "wb$r"
  done
  exit 0
fi
for r in $(seq "$ROUNDS"); do
  for c in $CALLERS; do
    for op in $OPS; do
      [ -n "${ETCD:-}" ] && phase etcd etcd 127.0.0.1:23790 "$ETCD" "$c" "$op" "e$r-$op-$c"
      phase A "$TARGET" "$AT" "$SA" "$c" "$op" "a$r-$op-$c"
      phase B "$TARGET" "$BT" "$SB" "$c" "$op" "b$r-$op-$c"
    done
  done
done
