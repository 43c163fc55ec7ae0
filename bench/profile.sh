#!/usr/bin/env bash
# Where infermux's own CPU goes on the proxy path: `perf record` of infermux's
# user-space samples while wrk sends POST /v1/chat/completions at c=64 through
# it to the nginx mock, then self time grouped by crate.
#
# Uses the configs bench/overhead.sh writes to bench/out/ (run it once first).
# Needs perf (apt-get install -y linux-perf). Usage: bench/profile.sh [seconds, default 5]
# INFERMUX_BIN=/path/to/infermux profiles that binary instead of building one.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-5}
. bench/lib.sh
need_configs nginx-mock.conf infermux.yml
command -v perf >/dev/null || { echo "perf is not installed: apt-get install -y linux-perf" >&2; exit 1; }
infermux_bin
nginx -p "$PWD/$out" -c "$PWD/$out/nginx-mock.conf" 2>/dev/null & pids+=($!)
"$imx_bin" serve --addr 127.0.0.1:18803 --config "$out/infermux.yml" --log-level warn 2>"$out/infermux.log" & imx=$!; pids+=($imx)
for port in 18801 18803; do
  for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null && break; sleep 0.05; done
done
wrk -t2 -c64 -d"$((secs + 3))s" -s bench/chat.lua http://127.0.0.1:18803/v1/chat/completions > "$out/wrk-profile.txt" &
sleep 1
perf record -q -F 2999 --all-user -g -p "$imx" -o "$out/perf.data" -- sleep "$secs" 2>/dev/null
wait %3 2>/dev/null || wait
echo "infermux user-space self time by crate (c=64, $(awk '/Requests\/sec/ {print $2}' "$out/wrk-profile.txt") req/s):"
perf report -i "$out/perf.data" --no-children --sort symbol -g none 2>/dev/null | grep -v '^#' | grep -v '^$' |
  awk '{pct=$1; sub(/%/,"",pct); $1=""; $2=""; n=$0; c="other";
    if (n ~ /mi_|_mi_|malloc|free/) c="allocator";
    else if (n ~ /serde_json|serde_path|serde_core/) c="serde";
    else if (n ~ /hyper_util/) c="hyper-util";
    else if (n ~ /httparse/) c="httparse";
    else if (n ~ /hyper::/) c="hyper";
    else if (n ~ /axum|tower/) c="axum and tower";
    else if (n ~ /tokio|mio/) c="tokio";
    else if (n ~ /infermux/) c="infermux";
    else if (n ~ /http::/) c="http (header maps, URIs)";
    else if (n ~ /memmove|memcpy|memset|memcmp/) c="mem* (moves and copies)";
    else if (n ~ /bytes::/) c="bytes";
    else if (n ~ /prometheus/) c="prometheus-client";
    else if (n ~ /core::fmt|alloc::fmt/) c="formatting";
    s[c]+=pct} END {for (c in s) printf "  %5.1f %%  %s\n", s[c], c}' | sort -rn
