#!/usr/bin/env bash
# CPU time per proxied request: infermux next to the nginx hop, user and
# system time apart, with the mock upstream's share. Throughput on a shared
# 2-core box follows from these: every µs here is a µs wrk and the mock don't
# get.
#
# Uses the configs bench/overhead.sh writes to bench/out/ (run it once first).
# Usage: bench/cpu.sh [concurrency, default 64] [seconds, default 5]
set -euo pipefail
cd "$(dirname "$0")/.."
conns=${1:-64}
secs=${2:-5}
out=bench/out
bin=target/release
for f in nginx-mock.conf nginx-hop.conf infermux.yml; do
  [ -f "$out/$f" ] || { echo "$out/$f is missing: run bench/overhead.sh once first" >&2; exit 1; }
done
cargo build --release --locked -q -p infermux-cli
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT
nginx -p "$PWD/$out" -c "$PWD/$out/nginx-mock.conf" 2>/dev/null & pids+=($!)
nginx -p "$PWD/$out" -c "$PWD/$out/nginx-hop.conf" 2>/dev/null & pids+=($!)
$bin/infermux serve --addr 127.0.0.1:18803 --config "$out/infermux.yml" --log-level warn 2>"$out/infermux.log" & imx=$!; pids+=($imx)
for port in 18801 18802 18803; do
  for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null && break; sleep 0.05; done
done
workers() { pgrep -P "$(pgrep -f "nginx-$1.conf" | head -1)"; }
ticks() { # user and system clock ticks of these processes
  local u=0 s=0 a b
  for p in "$@"; do read -r a b < <(awk '{print $14, $15}' "/proc/$p/stat"); u=$((u + a)); s=$((s + b)); done
  echo "$u $s"
}
hz=$(getconf CLK_TCK)
threads=1; [ "$conns" -gt 1 ] && threads=2
echo "| path (c=$conns) | req/s | proxy user µs/req | proxy sys µs/req | mock user µs/req | mock sys µs/req |"
echo "|---|---|---|---|---|---|"
for path in nginx infermux; do
  if [ $path = infermux ]; then proxy=$imx; port=18803; else proxy=$(workers hop); port=18802; fi
  # shellcheck disable=SC2086
  read -r pu0 ps0 < <(ticks $proxy); read -r mu0 ms0 < <(ticks $(workers mock))
  n=$(wrk -t$threads -c"$conns" -d"${secs}s" -s bench/chat.lua "http://127.0.0.1:$port/v1/chat/completions" | awk '/requests in/ {print $1}')
  # shellcheck disable=SC2086
  read -r pu1 ps1 < <(ticks $proxy); read -r mu1 ms1 < <(ticks $(workers mock))
  awk -v p=$path -v n="$n" -v s="$secs" -v hz="$hz" -v pu=$((pu1 - pu0)) -v ps=$((ps1 - ps0)) -v mu=$((mu1 - mu0)) -v ms=$((ms1 - ms0)) \
    'BEGIN { f = 1e6 / hz / n; printf "| %s | %d | %.1f | %.1f | %.1f | %.1f |\n", p, n / s, pu * f, ps * f, mu * f, ms * f }'
done
