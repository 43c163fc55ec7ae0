#!/usr/bin/env bash
# Latency at concurrency 1, repeated: the mock upstream, the nginx hop and
# infermux pinned to CPU 0, wrk to CPU 1. Each round runs wrk for 4 s against
# the mock directly, through the nginx hop and through infermux, one after the
# other; prints each run's p50/p99, then the mean p50 of each path and what
# each hop adds to it. Alternating the paths within a round keeps slow drifts
# of the machine out of the comparison (a single run's p99 at c=1 moves by
# hundreds of µs on this VM, even direct).
#
# For A/B comparisons of two infermux builds, run it once with each:
# INFERMUX_BIN=/path/to/other/infermux bench/c1.sh.
#
# Uses the configs bench/overhead.sh writes to bench/out/ (run it once first).
# Usage: bench/c1.sh [rounds, default 6]
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-6}
. bench/lib.sh
need_configs nginx-mock.conf nginx-hop.conf infermux.yml
infermux_bin
start_pinned
run() { # p50 and p99 in µs of one 4 s run against port $1
  local res
  res=$(taskset -c 1 wrk -t1 -c1 -d4s --latency -s bench/chat.lua "http://127.0.0.1:$1/v1/chat/completions")
  if grep -q "Non-2xx" <<<"$res"; then echo "port $1: some answers were not 2xx" >&2; exit 1; fi
  awk 'function us(v) { if (v ~ /ms$/) return v * 1000; if (v ~ /us$/) return v + 0; return v * 1e6 }
       $1=="50%" {p50=us($2)} $1=="99%" {p99=us($2)} END {print p50, p99}' <<<"$res"
}
for _ in $(seq "$rounds"); do
  for path in direct:18801 "nginx hop:18802" infermux:18803; do
    read -r p50 p99 < <(run "${path##*:}")
    echo "${path%%:*}|$p50|$p99"
  done
done | awk -F'|' '
  { printf "%-9s p50 %5.0f µs  p99 %6.0f µs\n", $1, $2, $3; sum[$1] += $2; tail[$1] += $3; n[$1]++ }
  END {
    d = sum["direct"] / n["direct"]; h = sum["nginx hop"] / n["nginx hop"]; i = sum["infermux"] / n["infermux"]
    printf "mean p50 over %d rounds: direct %.1f µs, nginx hop %.1f µs (+%.1f), infermux %.1f µs (+%.1f; %.2f× the hop'"'"'s)\n", n["direct"], d, h, h - d, i, i - d, (i - d) / (h - d)
    d = tail["direct"] / n["direct"]; h = tail["nginx hop"] / n["nginx hop"]; i = tail["infermux"] / n["infermux"]
    printf "mean p99: direct %.0f µs, nginx hop %.0f µs (%+.0f), infermux %.0f µs (%+.0f)\n", d, h, h - d, i, i - d
  }'
