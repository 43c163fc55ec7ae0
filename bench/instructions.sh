#!/usr/bin/env bash
# Instructions per proxied request, counted by callgrind: unlike CPU time on
# this shared VM (±5 % from run to run), the count moves by well under 1 %
# between runs of one build, so it shows what a small change saves. Runs
# infermux under valgrind with the mock upstream, warms it up, then counts
# the instructions of all its threads while wrk sends POST
# /v1/chat/completions for 5 s at concurrency 4, and divides by the requests
# served. With `stream`, counts 2,000 sequential streaming requests instead
# (`infermux-bench ttfb`; the mock's stream has four events and [DONE]).
# The profile is kept for `callgrind_annotate --inclusive=yes FILE`.
#
# Uses the configs bench/overhead.sh writes to bench/out/ (run it once first).
# Needs valgrind (apt-get install -y valgrind).
# Usage: bench/instructions.sh [stream]
# INFERMUX_BIN=/path/to/infermux counts that binary instead of building one.
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
need_configs nginx-mock.conf infermux.yml
command -v valgrind >/dev/null || { echo "valgrind is not installed: apt-get install -y valgrind" >&2; exit 1; }
mode=${1:-unary}
case $mode in unary | stream) ;; *) echo "usage: bench/instructions.sh [stream]" >&2; exit 2 ;; esac
infermux_bin
cargo build --release --locked -q -p infermux-bench
client=$PWD/target/release/infermux-bench
profile=$PWD/$out/callgrind.out
rm -f "$profile"*
nginx -p "$PWD/$out" -c "$PWD/$out/nginx-mock.conf" 2>/dev/null & pids+=($!)
valgrind --tool=callgrind --callgrind-out-file="$profile" --instr-atstart=no \
  "$imx_bin" serve --addr 127.0.0.1:18809 --config "$out/infermux.yml" --log-level warn 2>"$out/valgrind.log" & vg=$!; pids+=($vg)
for _ in $(seq 300); do (exec 3<>/dev/tcp/127.0.0.1/18809) 2>/dev/null && break; sleep 0.1; done
load() { # unary: wrk for $1; stream: $1 sequential streams
  if [ "$mode" = stream ]; then
    "$client" ttfb http://127.0.0.1:18809/v1/chat/completions --model bench-sse --requests "$1" >/dev/null && echo "$1"
  else
    wrk -t1 -c4 -d"$1s" -s bench/chat.lua http://127.0.0.1:18809/v1/chat/completions |
      awk '/Non-2xx/ {bad = 1} /requests in/ {n = $1} END {if (bad) exit 1; print n}'
  fi
}
warm=2; count=5; [ "$mode" = stream ] && { warm=200; count=2000; }
load $warm >/dev/null || { echo "some answers were not 2xx" >&2; exit 1; }
callgrind_control -i on "$vg" >/dev/null 2>&1
n=$(load $count) || { echo "some answers were not 2xx" >&2; exit 1; }
callgrind_control -i off "$vg" >/dev/null 2>&1
callgrind_control -d "$vg" >/dev/null 2>&1
[ "$mode" = stream ] && n=$((n + 20)) # ttfb sends 20 warm-up requests first
dump=$(ls -S "$profile"* | head -1)
total=$(callgrind_annotate "$dump" 2>/dev/null | awk '/PROGRAM TOTALS/ && !t {gsub(",", "", $1); t = $1} END {print t}')
echo "$n ${mode} requests, $((total / n)) instructions per request (profile: $dump)"
