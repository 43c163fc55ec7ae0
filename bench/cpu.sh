#!/usr/bin/env bash
# CPU time per proxied request: infermux next to the nginx hop, user and
# system time apart, with the mock upstream's share; and the OpenAI edge alone
# (infermux on its echo provider, no upstream). Throughput on a shared 2-core
# box follows from these: every µs here is a µs wrk and the mock don't get.
#
# Also counts each proxy's context switches per request (voluntary and
# involuntary, all threads). At concurrency 1 the servers run on CPU 0 and wrk
# on CPU 1, as in overhead.sh's latency runs.
#
# Uses the configs bench/overhead.sh writes to bench/out/ (run it once first).
# Usage: bench/cpu.sh [concurrency, default 64] [seconds, default 5]
# INFERMUX_FEATURES=system-allocator builds infermux with the system allocator;
# INFERMUX_BIN=/path/to/infermux measures that binary instead of building one;
# INFERMUX_ARGS="--threads 1" adds arguments to both `infermux serve`s;
# HOP_WORKERS=4 runs the nginx hop with that many workers instead of `auto`.
set -euo pipefail
cd "$(dirname "$0")/.."
conns=${1:-64}
secs=${2:-5}
. bench/lib.sh
need_configs nginx-mock.conf nginx-hop.conf infermux.yml
infermux_bin
server_cpu=(); client_cpu=()
if [ "$conns" = 1 ]; then server_cpu=(taskset -c 0); client_cpu=(taskset -c 1); fi
empty=$(mktemp -d)
trap 'cleanup; rm -rf "$empty"' EXIT
"${server_cpu[@]}" nginx -p "$PWD/$out" -c "$PWD/$out/nginx-mock.conf" 2>/dev/null & pids+=($!)
hop=hop
if [ -n "${HOP_WORKERS:-}" ]; then
  hop=hop-$HOP_WORKERS
  sed "s/worker_processes auto;/worker_processes $HOP_WORKERS;/; s/nginx-hop.pid/nginx-$hop.pid/" "$out/nginx-hop.conf" >"$out/nginx-$hop.conf"
fi
"${server_cpu[@]}" nginx -p "$PWD/$out" -c "$PWD/$out/nginx-$hop.conf" 2>/dev/null & pids+=($!)
# shellcheck disable=SC2086
"${server_cpu[@]}" "$imx_bin" serve --addr 127.0.0.1:18803 --config "$out/infermux.yml" --log-level warn ${INFERMUX_ARGS:-} 2>"$out/infermux.log" & imx=$!; pids+=($imx)
# The echo registry: no --config, run in an empty directory (no infermux.yml).
# shellcheck disable=SC2086
env -C "$empty" "${server_cpu[@]}" "$imx_bin" serve --addr 127.0.0.1:18805 --log-level warn ${INFERMUX_ARGS:-} 2>"$out/infermux-echo.log" & echo_imx=$!; pids+=($echo_imx)
for port in 18801 18802 18803 18805; do
  for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null && break; sleep 0.05; done
done
for port in 18803 18805; do # both answer 200 before anything is measured
  model=bench-model; [ $port = 18805 ] && model=echo-v1
  curl -sf -o /dev/null -H 'content-type: application/json' -d "{\"model\":\"$model\",\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]}" \
    "http://127.0.0.1:$port/v1/chat/completions" || { echo "infermux on $port does not answer $model" >&2; exit 1; }
done
workers() { pgrep -P "$(pgrep -f "nginx-$1.conf" | head -1)"; }
ticks() { # user and system clock ticks of these processes
  local u=0 s=0 a b
  for p in "$@"; do read -r a b < <(awk '{print $14, $15}' "/proc/$p/stat"); u=$((u + a)); s=$((s + b)); done
  echo "$u $s"
}
switches() { # context switches of these processes' threads so far
  local n=0 t
  for p in "$@"; do
    for t in /proc/"$p"/task/*/status; do
      n=$((n + $(awk '/^(voluntary|nonvoluntary)_ctxt_switches/ {s += $2} END {print s + 0}' "$t")))
    done
  done
  echo "$n"
}
hz=$(getconf CLK_TCK)
threads=1; [ "$conns" -gt 1 ] && threads=2
echo "| path (c=$conns) | req/s | proxy user µs/req | proxy sys µs/req | proxy switches/req | mock user µs/req | mock sys µs/req |"
echo "|---|---|---|---|---|---|---|"
for path in nginx infermux "infermux, echo (no upstream)"; do
  script=bench/chat.lua
  case $path in
    nginx) proxy=$(workers "$hop"); port=18802 ;;
    infermux) proxy=$imx; port=18803 ;;
    *) proxy=$echo_imx; port=18805; script=bench/echo-chat.lua ;;
  esac
  # shellcheck disable=SC2086
  read -r pu0 ps0 < <(ticks $proxy); read -r mu0 ms0 < <(ticks $(workers mock)); sw0=$(switches $proxy)
  res=$("${client_cpu[@]}" wrk -t$threads -c"$conns" -d"${secs}s" -s $script "http://127.0.0.1:$port/v1/chat/completions")
  if grep -q "Non-2xx" <<<"$res"; then echo "$path: some answers were not 2xx" >&2; exit 1; fi
  n=$(awk '/requests in/ {print $1}' <<<"$res")
  # shellcheck disable=SC2086
  read -r pu1 ps1 < <(ticks $proxy); read -r mu1 ms1 < <(ticks $(workers mock)); sw1=$(switches $proxy)
  awk -v p="$path" -v n="$n" -v s="$secs" -v hz="$hz" -v pu=$((pu1 - pu0)) -v ps=$((ps1 - ps0)) -v mu=$((mu1 - mu0)) -v ms=$((ms1 - ms0)) -v sw=$((sw1 - sw0)) \
    'BEGIN { f = 1e6 / hz / n; printf "| %s | %d | %.1f | %.1f | %.2f | %.1f | %.1f |\n", p, n / s, pu * f, ps * f, sw / n, mu * f, ms * f }'
done
