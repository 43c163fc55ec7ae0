#!/usr/bin/env bash
# End-to-end load on `POST /infer` (echo provider) with wrk in a separate process.
# Usage: bench/e2e-infer.sh [seconds per run, default 10]
# Needs wrk (apt-get install wrk). Prints req/s and latency percentiles at
# concurrency 1 and 64, and the server's peak RSS (VmHWM).
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-10}
port=${PORT:-18600}
command -v wrk >/dev/null || { echo "wrk is not installed: apt-get install -y wrk" >&2; exit 1; }
cargo build --release --locked -q -p infermux-cli
./target/release/infermux serve --addr "127.0.0.1:$port" --log-level warn ${TOKENTRACE:+--tokentrace "$TOKENTRACE"} &
pid=$!
trap 'kill $pid 2>/dev/null; wait $pid 2>/dev/null || true' EXIT
for _ in $(seq 50); do curl -sf "http://127.0.0.1:$port/_infermux/health" >/dev/null && break; sleep 0.1; done
body='{"model":"echo-v1","messages":[{"role":"user","content":"Hello world"}]}'
curl -sf -H 'content-type: application/json' -d "$body" "http://127.0.0.1:$port/infer" >/dev/null
echo "RSS after start: $(grep VmRSS /proc/$pid/status | awk '{print $2" "$3}')"
for conns in 1 64; do
  threads=1; [ "$conns" -gt 1 ] && threads=2
  echo "== c=$conns (wrk -t$threads -c$conns -d${secs}s)"
  wrk -t"$threads" -c"$conns" -d"${secs}s" --latency -s bench/infer.lua "http://127.0.0.1:$port/infer" \
    | grep -E "Requests/sec|^\s+(50|90|99)%|Non-2xx|Socket errors"
done
echo "peak RSS (VmHWM): $(grep VmHWM /proc/$pid/status | awk '{print $2" "$3}')"
