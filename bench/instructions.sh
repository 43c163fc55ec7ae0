#!/usr/bin/env bash
# Instructions per proxied request, counted by callgrind: unlike CPU time on
# this shared VM (±5 % from run to run), the count moves by well under 1 %
# between runs of one build, so it shows what a small change saves. Runs
# infermux under valgrind with the mock upstream, warms it up, then counts
# the instructions of all its threads while wrk sends POST
# /v1/chat/completions for 5 s at concurrency 4, and divides by the requests
# served. The profile is kept for `callgrind_annotate --inclusive=yes FILE`.
#
# Uses the configs bench/overhead.sh writes to bench/out/ (run it once first).
# Needs valgrind (apt-get install -y valgrind). Usage: bench/instructions.sh
# INFERMUX_BIN=/path/to/infermux counts that binary instead of building one.
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
need_configs nginx-mock.conf infermux.yml
command -v valgrind >/dev/null || { echo "valgrind is not installed: apt-get install -y valgrind" >&2; exit 1; }
infermux_bin
profile=$PWD/$out/callgrind.out
rm -f "$profile"*
nginx -p "$PWD/$out" -c "$PWD/$out/nginx-mock.conf" 2>/dev/null & pids+=($!)
valgrind --tool=callgrind --callgrind-out-file="$profile" --instr-atstart=no \
  "$imx_bin" serve --addr 127.0.0.1:18809 --config "$out/infermux.yml" --log-level warn 2>"$out/valgrind.log" & vg=$!; pids+=($vg)
for _ in $(seq 300); do (exec 3<>/dev/tcp/127.0.0.1/18809) 2>/dev/null && break; sleep 0.1; done
load() { wrk -t1 -c4 -d"$1" -s bench/chat.lua http://127.0.0.1:18809/v1/chat/completions; }
load 2s >/dev/null
callgrind_control -i on "$vg" >/dev/null 2>&1
res=$(load 5s)
callgrind_control -i off "$vg" >/dev/null 2>&1
callgrind_control -d "$vg" >/dev/null 2>&1
if grep -q "Non-2xx" <<<"$res"; then echo "some answers were not 2xx" >&2; exit 1; fi
n=$(awk '/requests in/ {print $1}' <<<"$res")
dump=$(ls -S "$profile"* | head -1)
total=$(callgrind_annotate "$dump" 2>/dev/null | awk '/PROGRAM TOTALS/ && !t {gsub(",", "", $1); t = $1} END {print t}')
echo "$n requests, $((total / n)) instructions per request (profile: $dump)"
