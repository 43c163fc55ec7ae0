#!/usr/bin/env bash
# Latency at concurrency 1 through infermux, repeated: the mock upstream and
# infermux pinned to CPU 0, wrk to CPU 1, N runs of 4 s; prints each run's
# p50/p99 and the mean p50. For A/B comparisons of small latency changes, run
# it against two builds: INFERMUX_BIN=/path/to/other/infermux bench/c1.sh.
#
# Uses the configs bench/overhead.sh writes to bench/out/ (run it once first).
# Usage: bench/c1.sh [runs, default 8]
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-8}
out=bench/out
for f in nginx-mock.conf infermux.yml; do
  [ -f "$out/$f" ] || { echo "$out/$f is missing: run bench/overhead.sh once first" >&2; exit 1; }
done
if [ -z "${INFERMUX_BIN:-}" ]; then
  cargo build --release --locked -q -p infermux-cli
  INFERMUX_BIN=target/release/infermux
fi
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT
taskset -c 0 nginx -p "$PWD/$out" -c "$PWD/$out/nginx-mock.conf" 2>/dev/null & pids+=($!)
taskset -c 0 "$INFERMUX_BIN" serve --addr 127.0.0.1:18803 --config "$out/infermux.yml" --log-level warn 2>"$out/infermux.log" & pids+=($!)
for port in 18801 18803; do
  for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null && break; sleep 0.05; done
done
for _ in $(seq "$runs"); do
  taskset -c 1 wrk -t1 -c1 -d4s --latency -s bench/chat.lua http://127.0.0.1:18803/v1/chat/completions |
    awk '$1=="50%" {p50=$2} $1=="99%" {p99=$2} END {print p50, p99}'
done | awk '{ v=$1; sub(/us$/,"",v); sum+=v; print "p50 " $1 "  p99 " $2 } END { printf "mean p50 %.1f us over %d runs\n", sum/NR, NR }'
