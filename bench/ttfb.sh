#!/usr/bin/env bash
# Streaming time to first byte, repeated: the mock upstream, the nginx hop and
# infermux pinned to CPU 0, the client (`infermux-bench ttfb`, 1,000
# sequential streaming requests per run) on CPU 1. Each round measures the
# mock directly, through the nginx hop and through infermux, one after the
# other; prints each run's p50/p99, then the mean of each path and what each
# hop adds. A single run's p99 moves by more than what either hop adds, so
# only figures over rounds say anything about the difference: the mean, and
# the median of the rounds' p99s (which one stalled run does not carry).
#
# Uses the configs bench/overhead.sh writes to bench/out/ (run it once first).
# Usage: bench/ttfb.sh [rounds, default 6]
# INFERMUX_BIN=/path/to/infermux measures that binary instead of building one.
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-6}
. bench/lib.sh
need_configs nginx-mock.conf nginx-hop.conf infermux.yml
infermux_bin
cargo build --release --locked -q -p infermux-bench
client=$PWD/target/release/infermux-bench
start_pinned
run() { # p50 and p99 in µs of 1,000 first bytes from $1
  taskset -c 1 "$client" ttfb "$1" --model bench-sse --requests 1000 |
    sed -n 's/.*p50_us=\([0-9]*\) p99_us=\([0-9]*\).*/\1 \2/p'
}
for _ in $(seq "$rounds"); do
  for path in direct:18801/sse/v1 "nginx hop:18802/sse/v1" infermux:18803/v1; do
    read -r p50 p99 < <(run "http://127.0.0.1:${path#*:}/chat/completions")
    echo "${path%%:*}|$p50|$p99"
  done
done | awk -F'|' '
  function median(list, n,   i, j, t, v) { # of the n numbers in list (space-separated)
    split(list, v, " ")
    for (i = 2; i <= n; i++) for (j = i; j > 1 && v[j - 1] > v[j]; j--) { t = v[j]; v[j] = v[j - 1]; v[j - 1] = t }
    return n % 2 ? v[(n + 1) / 2] : (v[n / 2] + v[n / 2 + 1]) / 2
  }
  { printf "%-9s p50 %5.0f µs  p99 %6.0f µs\n", $1, $2, $3; sum[$1] += $2; tail[$1] += $3; tails[$1] = tails[$1] " " $3; n[$1]++ }
  END {
    d = sum["direct"] / n["direct"]; h = sum["nginx hop"] / n["nginx hop"]; i = sum["infermux"] / n["infermux"]
    printf "mean first-byte p50 over %d rounds: direct %.1f µs, nginx hop %.1f µs (%+.1f), infermux %.1f µs (%+.1f)\n", n["direct"], d, h, h - d, i, i - d
    d = tail["direct"] / n["direct"]; h = tail["nginx hop"] / n["nginx hop"]; i = tail["infermux"] / n["infermux"]
    printf "mean first-byte p99: direct %.0f µs, nginx hop %.0f µs (%+.0f), infermux %.0f µs (%+.0f)\n", d, h, h - d, i, i - d
    d = median(tails["direct"], n["direct"]); h = median(tails["nginx hop"], n["nginx hop"]); i = median(tails["infermux"], n["infermux"])
    printf "median of the rounds'"'"' first-byte p99: direct %.0f µs, nginx hop %.0f µs (%+.0f), infermux %.0f µs (%+.0f)\n", d, h, h - d, i, i - d
  }'
