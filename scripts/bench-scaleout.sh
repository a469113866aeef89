#!/usr/bin/env bash
# Scale-out, side by side in one run (issue 16): the same load client (coffer-load unary, 1 KiB
# values, durable writes everywhere) against
#   sled1   1 Coffer replica on its embedded sled store (the default),
#   etcd1   1 Coffer replica over a 1-member etcd (--storage etcd://),
#   etcd3   3 Coffer replicas over a 3-member etcd, the connections spread over the replicas,
# then reads/s (Get, served from each replica's watch-fed cache after its read barrier) for 1, 2
# and 3 replicas over the same 3-member etcd, and etcd's own figures with the same client
# (coffer-load --target etcd: Put and Range of 1 KiB plaintext values, on the first member) as
# the baseline of what etcd gives the replicas. Everything runs on this one machine (client,
# replicas and etcd members share its cores and disk): the figures are ratios within one run, not
# a cluster's capacity; README "Scale-out" models the separate-machines case from them.
#
#   scripts/bench-scaleout.sh                       # about 4 minutes of load
#   DURATION=2 CALLERS=16 scripts/bench-scaleout.sh # a quick one
#
# Settings (environment): DURATION (measured seconds per phase, 5), WARMUP (1), CALLERS
# ("16 64"), CONNECTIONS (6: divisible by 1, 2 and 3 replicas), OUT (target/bench-scaleout),
# BASE_PORT (25000: the ports BASE_PORT.. BASE_PORT+40 are used).
#
# Needs etcd (Debian etcd-server) and protoc for coffer-load's etcd client (protobuf-compiler);
# apt-get'd when missing, which needs root.
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-5}
WARMUP=${WARMUP:-1}
CALLERS=${CALLERS:-"16 64"}
CONNECTIONS=${CONNECTIONS:-6}
OUT=${OUT:-target/bench-scaleout}
BASE_PORT=${BASE_PORT:-25000}

missing=()
command -v etcd >/dev/null 2>&1 || missing+=(etcd-server)
command -v protoc >/dev/null 2>&1 || missing+=(protobuf-compiler)
if [ ${#missing[@]} -gt 0 ]; then
  apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}"
fi
cargo build --release -p coffer -p coffer-load --features coffer-load/etcd
BIN=${CARGO_TARGET_DIR:-target}/release
ulimit -n 65536 2>/dev/null || true

rm -rf "$OUT"
mkdir -p "$OUT/results"
OUT=$(cd "$OUT" && pwd)

pids=()
stop_all() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  pids=()
}
trap stop_all EXIT

wait_port() {
  for _ in $(seq 1 300); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.1
  done
  echo "nothing listens on 127.0.0.1:$1" >&2
  return 1
}

# etcd_cluster NAME N FIRST_PORT: N members on loopback, default durability (fsync per commit).
etcd_cluster() {
  local name=$1 n=$2 port=$3 cluster="" i
  for i in $(seq 1 "$n"); do
    cluster+="${cluster:+,}$name-$i=http://127.0.0.1:$((port + 10 + i))"
  done
  for i in $(seq 1 "$n"); do
    etcd --name "$name-$i" --data-dir "$OUT/$name-$i" \
      --listen-client-urls "http://127.0.0.1:$((port + i))" \
      --advertise-client-urls "http://127.0.0.1:$((port + i))" \
      --listen-peer-urls "http://127.0.0.1:$((port + 10 + i))" \
      --initial-advertise-peer-urls "http://127.0.0.1:$((port + 10 + i))" \
      --initial-cluster "$cluster" --initial-cluster-token "$name" \
      --initial-cluster-state new --log-level warn >"$OUT/$name-$i.log" 2>&1 &
    pids+=("$!")
  done
  for i in $(seq 1 "$n"); do wait_port $((port + i)); done
}

# replica NAME PORT [serve flags...]: a durable `coffer serve` on 127.0.0.1:PORT.
replica() {
  local name=$1 port=$2
  shift 2
  "$BIN/coffer" serve --data-dir "$OUT/$name" --listen "127.0.0.1:$port" \
    --token-cleaner-interval 0 "$@" >"$OUT/$name.log" 2>&1 &
  pids+=("$!")
  wait_port "$port"
}

# load RUN SERVERS CALLERS OPS [TARGET]: one coffer-load unary run, its JSON kept.
status=0
load() {
  local run=$1 servers=$2 c=$3 ops=$4 target=${5:-coffer}
  echo "== $run, $c callers over $CONNECTIONS connections: $ops"
  "$BIN/coffer-load" unary --target "$target" --server "$servers" --namespace "$run-c$c" \
    --concurrency "$c" --connections "$CONNECTIONS" --value-size 1024 \
    --duration "$DURATION" --phase-warmup "$WARMUP" --ops "$ops" --json \
    >"$OUT/results/$run-c$c.json" || { echo "$run c=$c had errors"; status=1; }
}

{
  echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "cpus: $(nproc); kernel: $(uname -r); load before: $(cut -d' ' -f1-3 /proc/loadavg)"
  echo "etcd: $(etcd --version | head -1)"
  echo "coffer: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
  echo "disk of the data dirs: $(df -h "$OUT" | tail -1)"
  echo "settings: DURATION=$DURATION WARMUP=$WARMUP CALLERS='$CALLERS' CONNECTIONS=$CONNECTIONS"
} | tee "$OUT/env.txt"

P=$BASE_PORT
# --- sled1: the embedded default (its KEK file is then shared by the etcd replicas) ---------------
replica sled1 $P
for c in $CALLERS; do load sled1 "127.0.0.1:$P" "$c" create,get,update; done
stop_all
KEK=$OUT/sled1/kek.key

# --- etcd1: one replica over one etcd member -------------------------------------------------------
etcd_cluster e1 1 $((P + 100))
replica etcd1 $((P + 1)) --storage "etcd://127.0.0.1:$((P + 101))/coffer" --kek-file "$KEK"
for c in $CALLERS; do
  load etcd1 "127.0.0.1:$((P + 1))" "$c" create,get,update
  load raw1 "127.0.0.1:$((P + 101))" "$c" create,get,update etcd
done
stop_all

# --- etcd3: three replicas over a 3-member etcd ----------------------------------------------------
etcd_cluster e3 3 $((P + 200))
url="etcd://127.0.0.1:$((P + 201)),127.0.0.1:$((P + 202)),127.0.0.1:$((P + 203))/coffer"
servers=""
for i in 1 2 3; do
  replica "etcd3-r$i" $((P + 1 + i)) --storage "$url" --kek-file "$KEK"
  servers+="${servers:+,}127.0.0.1:$((P + 1 + i))"
done
for c in $CALLERS; do
  load etcd3 "$servers" "$c" create,get,update
  load raw3 "127.0.0.1:$((P + 201))" "$c" create,get,update etcd
done
# Reads from cache per replica count, over the same cluster (the other replicas idle).
for n in 1 2 3; do
  list=$(echo "$servers" | cut -d, -f1-"$n")
  for c in $CALLERS; do load "reads-r$n" "$list" "$c" get; done
done
stop_all
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)" | tee -a "$OUT/env.txt"

# --- the table: ops/s and p99, and the ratio to sled1 at the same caller count --------------------
python3 - "$OUT" "$CALLERS" <<'EOF' | tee "$OUT/table.md"
import json, os, sys
out, callers = sys.argv[1], sys.argv[2].split()
def phases(run, c):
    p = os.path.join(out, "results", f"{run}-c{c}.json")
    if not os.path.exists(p):
        return {}
    return {ph["op"]: ph for ph in json.load(open(p))["phases"]}
rows = [("sled1", "1 replica, sled"), ("etcd1", "1 replica, 1-member etcd"),
        ("etcd3", "3 replicas, 3-member etcd"),
        ("raw1", "etcd alone, 1 member (no Coffer)"),
        ("raw3", "etcd alone, 3 members (no Coffer)")]
print("| setup | callers | create/s | get/s | update/s | create p99 ms | get p99 ms | vs sled create / get / update |")
print("|---|---|---|---|---|---|---|---|")
for c in callers:
    base = phases("sled1", c)
    for run, label in rows:
        ph = phases(run, c)
        def ops(op):
            return ph.get(op, {}).get("ops_per_sec", 0.0)
        def p99(op):
            return ph.get(op, {}).get("latency_us", {}).get("p99", 0) / 1000
        def ratio(op):
            b = base.get(op, {}).get("ops_per_sec", 0.0)
            return f"{ops(op) / b:.2f}x" if b else "-"
        print(f"| {label} | {c} | {ops('create'):.0f} | {ops('get'):.0f} | {ops('update'):.0f} | "
              f"{p99('create'):.1f} | {p99('get'):.1f} | {ratio('create')} / {ratio('get')} / {ratio('update')} |")
print()
print("| replicas serving reads (3-member etcd) | callers | get/s | get p99 ms | vs 1 replica |")
print("|---|---|---|---|---|")
for c in callers:
    one = phases("reads-r1", c).get("get", {}).get("ops_per_sec", 0.0)
    for n in (1, 2, 3):
        g = phases(f"reads-r{n}", c).get("get", {})
        r = g.get("ops_per_sec", 0.0)
        print(f"| {n} | {c} | {r:.0f} | {g.get('latency_us', {}).get('p99', 0) / 1000:.1f} | "
              f"{(r / one if one else 0):.2f}x |")
EOF
echo "results: $OUT/results/*.json, $OUT/table.md, $OUT/env.txt"
exit $status
