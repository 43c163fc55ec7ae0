#!/usr/bin/env bash
# infermux next to an nginx proxy_pass hop on the traffic LLM apps send:
#   - small: a one-message chat completion (the overhead.sh request);
#   - stream: a streamed completion whose upstream sends 21 events (role,
#     18 content deltas, finish, usage) and [DONE];
#   - agent: a 67 KB request (system prompt, 12 tool schemas, a long history of
#     tool calls and results), answered by a small completion.
# Each at c=8 and c=64 with wrk, direct to the mock, through the hop and
# through infermux, in one run; prints req/s and infermux / hop.
#
# Usage: [LEDGER=off] [AUTH=on] bench/traffic.sh [seconds per load run, default 10]
# Needs: nginx, wrk and taskset (apt-get install -y nginx-light wrk util-linux).
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-10}
for tool in nginx wrk taskset; do
  command -v $tool >/dev/null || { echo "$tool is not installed: apt-get install -y nginx-light wrk" >&2; exit 1; }
done
ulimit -n 65536 2>/dev/null || true
source bench/lib.sh
mkdir -p "$out"
cargo build --release --locked -q -p infermux-bench
infermux_bin
bench=target/release/infermux-bench

completion='{"id":"chatcmpl-mock","object":"chat.completion","created":1,"model":"bench-model","system_fingerprint":"fp_mock","choices":[{"index":0,"message":{"role":"assistant","content":"Hello from the mock upstream."},"logprobs":null,"finish_reason":"stop"}],"usage":{"prompt_tokens":9,"completion_tokens":7,"total_tokens":16,"prompt_tokens_details":{"cached_tokens":0},"completion_tokens_details":{"reasoning_tokens":0}}}'
sse=$($bench sse-body --events 21)
printf '%s' '{"model":"bench-model","messages":[{"role":"user","content":"Hello world"}]}' > "$out/small.json"
printf '%s' '{"model":"bench-sse","stream":true,"messages":[{"role":"user","content":"Hello world"}]}' > "$out/stream.json"
$bench agent-body --model bench-model --kb 67 > "$out/agent.json"

conf() { # name, server block
  cat > "$out/traffic-$1.conf" <<NGINX
daemon off;
worker_processes auto;
error_log stderr warn;
pid $PWD/$out/traffic-$1.pid;
events { worker_connections 8192; }
http {
  access_log off;
  keepalive_requests 1000000;
  client_body_buffer_size 128k;
  $2
}
NGINX
}
# nginx takes at most 4 KB in one parameter: the stream is set in pieces.
pieces=""; vars=""; i=0; rest=$sse
while [ -n "$rest" ]; do
  pieces+="set \$sse$i '${rest:0:3000}'; "; vars+="\$sse$i"; rest=${rest:3000}; i=$((i + 1))
done
conf mock "
  server {
    listen 127.0.0.1:18811 reuseport;
    location = /v1/chat/completions { default_type application/json; return 200 '$completion'; }
    location = /sse/v1/chat/completions { default_type text/event-stream; $pieces return 200 \"$vars\"; }
  }"
conf hop "
  upstream mock { server 127.0.0.1:18811; keepalive 128; }
  server {
    listen 127.0.0.1:18812 reuseport;
    location / {
      proxy_pass http://mock;
      proxy_http_version 1.1;
      proxy_set_header Connection \"\";
      proxy_buffering off;
      proxy_request_buffering off;
    }
  }"
cat > "$out/traffic.yml" <<YAML
providers:
  - name: mock
    type: openai
    base_url: "http://127.0.0.1:18811/v1"
    models: [bench-model]
    health_check: {disabled: true}
  - name: mock-sse
    type: openai
    base_url: "http://127.0.0.1:18811/sse/v1"
    models: [bench-sse]
    health_check: {disabled: true}
YAML
# LEDGER=off: without the ledger (ledger.enabled: false), to show its cost.
[ "${LEDGER:-on}" = off ] && printf 'ledger: {enabled: false}\n' >> "$out/traffic.yml"
# AUTH=on: every request carries a key that auth.required checks, with a
# budget that each call reserves from and settles to (priced models).
if [ "${AUTH:-off}" = on ]; then
  cat >> "$out/traffic.yml" <<'AUTHYAML'
pricing:
  mock: {bench-model: {input_per_million: 1, output_per_million: 2}}
  mock-sse: {bench-sse: {input_per_million: 1, output_per_million: 2}}
auth:
  required: true
  keys:
    - {name: bench, key: imx-bench-key, budget: {usd: 1000000, period: total}}
AUTHYAML
  export KEY=imx-bench-key
fi

nginx -p "$PWD/$out" -c "$PWD/$out/traffic-mock.conf" & pids+=($!)
nginx -p "$PWD/$out" -c "$PWD/$out/traffic-hop.conf" & pids+=($!)
"$imx_bin" serve --addr 127.0.0.1:18813 --config "$out/traffic.yml" --log-level warn 2>"$out/traffic-infermux.log" & imx=$!; pids+=($imx)
for port in 18811 18812 18813; do
  for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null && break; sleep 0.05; done
done
for f in small stream agent; do
  curl -sf -H 'content-type: application/json' ${KEY:+-H "authorization: Bearer $KEY"} --data-binary @"$out/$f.json" \
    http://127.0.0.1:18813/v1/chat/completions >/dev/null || { echo "infermux does not answer $f; see $out/traffic-infermux.log" >&2; exit 1; }
done

load() { # name url conns body -> req/s
  local file="$out/wrk-traffic-$1-c$3.txt"
  BODY="$4" wrk -t2 -c"$3" -d"${secs}s" -s bench/body.lua "$2" > "$file"
  if grep -q "Non-2xx" "$file"; then echo "$1 at c=$3: some answers were not 2xx" >&2; exit 1; fi
  awk '/Requests\/sec/ {print $2}' "$file"
}

echo "| traffic | concurrency | direct req/s | nginx hop req/s | infermux req/s | infermux / hop |"
echo "|---|---|---|---|---|---|"
for traffic in small stream agent; do
  path=/v1/chat/completions; [ $traffic = stream ] && path=/sse/v1/chat/completions
  for c in 8 64; do
    d=$(load "direct-$traffic" "http://127.0.0.1:18811$path" $c "$out/$traffic.json")
    n=$(load "nginx-$traffic" "http://127.0.0.1:18812$path" $c "$out/$traffic.json")
    i=$(load "infermux-$traffic" "http://127.0.0.1:18813/v1/chat/completions" $c "$out/$traffic.json")
    echo "| $traffic | $c | $d | $n | $i | $(awk "BEGIN{printf \"%.2f\", $i/$n}") |"
  done
done
echo "infermux peak RSS: $(awk '/VmHWM/ {printf "%.1f MiB", $2/1024}' /proc/$imx/status)"
