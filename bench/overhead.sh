#!/usr/bin/env bash
# What infermux adds to a call, next to what one nginx proxy_pass hop adds.
#
# Starts, all on loopback:
#   - a fast mock upstream: nginx answering a fixed chat.completion body and a
#     fixed SSE body (port 18801);
#   - the reference hop: nginx proxy_pass to the mock, upstream keepalive
#     (18802), an nginx instance of its own;
#   - infermux serve with the mock as an `openai` provider (18803);
#   - a slow SSE upstream (infermux-bench) for the open-streams test (18804).
# Then measures, in one run: the same POST /v1/chat/completions sent directly,
# through the nginx hop and through infermux, at concurrency 1, 8 and 64 (wrk);
# streaming time to first byte (infermux-bench ttfb); infermux's peak RSS under
# c=64 and while holding 1,000 open streams.
#
# Usage: bench/overhead.sh [seconds per load run, default 10]
# Needs: nginx, wrk and taskset (apt-get install -y nginx-light wrk util-linux).
# Writes bench/out/. INFERMUX_FEATURES=system-allocator builds infermux with the
# system allocator instead of mimalloc.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-10}
for tool in nginx wrk taskset; do
  command -v $tool >/dev/null || { echo "$tool is not installed: apt-get install -y nginx-light wrk" >&2; exit 1; }
done
ulimit -n 65536 2>/dev/null || ulimit -n 8192 2>/dev/null || true
out=bench/out
mkdir -p "$out"
cargo build --release --locked -q -p infermux-cli -p infermux-bench ${INFERMUX_FEATURES:+--features "infermux-cli/$INFERMUX_FEATURES"}
bin=target/release

completion='{"id":"chatcmpl-mock","object":"chat.completion","created":1,"model":"bench-model","choices":[{"index":0,"message":{"role":"assistant","content":"Hello from the mock upstream."},"finish_reason":"stop"}],"usage":{"prompt_tokens":9,"completion_tokens":7,"total_tokens":16}}'
chunk() { printf 'data: {\\"id\\":\\"c\\",\\"object\\":\\"chat.completion.chunk\\",\\"created\\":1,\\"model\\":\\"bench-model\\",\\"choices\\":[{\\"index\\":0,\\"delta\\":{\\"content\\":\\"%s\\"},\\"finish_reason\\":%s}]}\\n\\n' "$1" "$2"; }
sse="$(chunk 'Hello ' null)$(chunk 'from ' null)$(chunk 'the mock.' '\"stop\"')data: {\\\"id\\\":\\\"c\\\",\\\"object\\\":\\\"chat.completion.chunk\\\",\\\"created\\\":1,\\\"model\\\":\\\"bench-model\\\",\\\"choices\\\":[],\\\"usage\\\":{\\\"prompt_tokens\\\":9,\\\"completion_tokens\\\":3,\\\"total_tokens\\\":12}}\\n\\ndata: [DONE]\\n\\n"

# The mock and the hop are separate nginx instances, so the hop, like
# infermux, is a process of its own: with one instance, a hop worker often
# proxied to its own mock listener and skipped the cross-process wake-up that
# every infermux call pays.
nginx_conf() { # name, server block
  cat > "$out/nginx-$1.conf" <<NGINX
daemon off;
worker_processes auto;
error_log stderr warn;
pid $PWD/$out/nginx-$1.pid;
events { worker_connections 8192; }
http {
  access_log off;
  keepalive_requests 1000000;
  $2
}
NGINX
}
nginx_conf mock "
  server {
    listen 127.0.0.1:18801 reuseport;
    location = /v1/chat/completions { default_type application/json; return 200 '$completion'; }
    location = /sse/v1/chat/completions { default_type text/event-stream; return 200 \"$sse\"; }
  }"
nginx_conf hop "
  upstream mock { server 127.0.0.1:18801; keepalive 128; }
  server {
    listen 127.0.0.1:18802 reuseport;
    location / {
      proxy_pass http://mock;
      proxy_http_version 1.1;
      proxy_set_header Connection \"\";
      proxy_buffering off;
    }
  }"

cat > "$out/infermux.yml" <<YAML
providers:
  - name: mock
    type: openai
    base_url: "http://127.0.0.1:18801/v1"
    models: [bench-model]
    health_check: {disabled: true}
  - name: mock-sse
    type: openai
    base_url: "http://127.0.0.1:18801/sse/v1"
    models: [bench-sse]
    health_check: {disabled: true}
  - name: slow
    type: openai
    base_url: "http://127.0.0.1:18804/v1"
    timeout: 120s
    models: [bench-slow]
    health_check: {disabled: true}
YAML

pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT
nginx -p "$PWD/$out" -c "$PWD/$out/nginx-mock.conf" & pids+=($!)
nginx -p "$PWD/$out" -c "$PWD/$out/nginx-hop.conf" & pids+=($!)
$bin/infermux-bench slow-upstream --addr 127.0.0.1:18804 & pids+=($!)
$bin/infermux serve --addr 127.0.0.1:18803 --config "$out/infermux.yml" --log-level warn 2>"$out/infermux.log" & imx=$!; pids+=($imx)
for port in 18801 18802 18803 18804; do
  for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null && break; sleep 0.05; done
done
curl -sf -H 'content-type: application/json' -d '{"model":"bench-model","messages":[{"role":"user","content":"x"}]}' \
  http://127.0.0.1:18803/v1/chat/completions >/dev/null || { echo "infermux does not answer; see $out/infermux.log" >&2; exit 1; }

to_us() { awk '{v=$1; if (v ~ /us$/) {sub(/us$/,"",v); print v} else if (v ~ /ms$/) {sub(/ms$/,"",v); print v*1000} else if (v ~ /s$/) {sub(/s$/,"",v); print v*1000000} else print v}'; }
# At c=1 the figure is latency, and where the scheduler happens to put wrk and
# the servers moves it by tens of µs from run to run. So for c=1 every server
# (mock, hop, infermux) runs on CPU 0 and wrk on CPU 1: each path's work is
# done on one core, as a sidecar's would be. c=8 and c=64 use both cores.
servers() { pgrep -f "nginx-(mock|hop).conf"; pgrep -P "$(pgrep -d, -f 'nginx-(mock|hop).conf')"; echo "$imx"; }
all_cpus=0-$(($(nproc) - 1))
pin() { for p in $(servers); do taskset -a -pc "$1" "$p" >/dev/null; done; }
load() { # name url conns -> "rps p50_us p99_us"
  local threads=1 cpu=$all_cpus; [ "$3" -gt 1 ] && threads=2
  [ "$3" = 1 ] && cpu=1
  taskset -c $cpu wrk -t$threads -c"$3" -d"${secs}s" --latency -s bench/chat.lua "$2" > "$out/wrk-$1-c$3.txt"
  if grep -q "Non-2xx" "$out/wrk-$1-c$3.txt"; then echo "$1 at c=$3: some answers were not 2xx" >&2; exit 1; fi
  local rps p50 p99
  rps=$(awk '/Requests\/sec/ {print $2}' "$out/wrk-$1-c$3.txt")
  p50=$(awk '$1=="50%" {print $2}' "$out/wrk-$1-c$3.txt" | to_us)
  p99=$(awk '$1=="99%" {print $2}' "$out/wrk-$1-c$3.txt" | to_us)
  echo "$rps $p50 $p99"
}

echo "| concurrency | path | req/s | p50 µs | p99 µs | p50 added µs | p99 added µs |"
echo "|---|---|---|---|---|---|---|"
for c in 1 8 64; do
  if [ "$c" = 1 ]; then pin 0; else pin "$all_cpus"; fi
  read -r d_rps d_p50 d_p99 <<<"$(load direct http://127.0.0.1:18801/v1/chat/completions $c)"
  read -r n_rps n_p50 n_p99 <<<"$(load nginx http://127.0.0.1:18802/v1/chat/completions $c)"
  read -r i_rps i_p50 i_p99 <<<"$(load infermux http://127.0.0.1:18803/v1/chat/completions $c)"
  echo "| $c | direct | $d_rps | $d_p50 | $d_p99 | | |"
  echo "| $c | nginx hop | $n_rps | $n_p50 | $n_p99 | $(awk "BEGIN{print $n_p50-$d_p50}") | $(awk "BEGIN{print $n_p99-$d_p99}") |"
  echo "| $c | infermux | $i_rps | $i_p50 | $i_p99 | $(awk "BEGIN{print $i_p50-$d_p50}") | $(awk "BEGIN{print $i_p99-$d_p99}") |"
  if [ "$c" = 64 ]; then
    echo
    echo "c=64 throughput, infermux / nginx hop: $(awk "BEGIN{printf \"%.2f\", $i_rps/$n_rps}")"
  fi
done
echo "infermux peak RSS after the c=64 runs: $(awk '/VmHWM/ {printf "%.1f MiB", $2/1024}' /proc/$imx/status)"

echo
echo "Streaming time to first byte (sequential, 1,000 requests; servers on CPU 0, client on CPU 1):"
pin 0
ttfb() { taskset -c 1 $bin/infermux-bench ttfb "$1" --model bench-sse --requests 1000; }
ttfb http://127.0.0.1:18801/sse/v1/chat/completions | sed 's/^/  direct:    /'
ttfb http://127.0.0.1:18802/sse/v1/chat/completions | sed 's/^/  nginx hop: /'
ttfb http://127.0.0.1:18803/v1/chat/completions | sed 's/^/  infermux:  /'
pin "$all_cpus"

echo
echo "1,000 concurrent open streams through infermux:"
$bin/infermux-bench hold-streams http://127.0.0.1:18803/v1/chat/completions --streams 1000 --hold 3 > "$out/hold.txt" &
holder=$!
for _ in $(seq 600); do grep -q holding "$out/hold.txt" 2>/dev/null && break; sleep 0.1; done
sleep 1
echo "  $(head -1 "$out/hold.txt")"
echo "  infermux RSS while holding: $(awk '/VmRSS/ {printf "%.1f MiB", $2/1024}' /proc/$imx/status); peak (VmHWM): $(awk '/VmHWM/ {printf "%.1f MiB", $2/1024}' /proc/$imx/status)"
wait $holder
