#!/usr/bin/env bash
# infermux next to an nginx proxy_pass hop on the traffic LLM apps send:
#   - small: a one-message chat completion (the overhead.sh request);
#   - stream: a streamed completion whose upstream sends 21 events (role,
#     18 content deltas, finish, usage) and [DONE];
#   - agent: a 67 KB request (system prompt, 12 tool schemas, a long history of
#     tool calls and results), answered by a small completion.
#   - messages, messages-stream: the same small request and 21-event stream
#     in the Anthropic Messages API (`/v1/messages`) to an Anthropic-dialect
#     mock (passed through);
#   - messages-openai, messages-openai-stream: `/v1/messages` to the OpenAI
#     mock (translated both ways; the hop forwards the OpenAI request).
# Each at c=8 and c=64 with wrk, direct to the mock, through the hop and
# through infermux, in one run; prints req/s and infermux / hop.
#
# Usage: [LEDGER=off] [AUTH=on] [TRAFFIC="small stream ..."] bench/traffic.sh [seconds per load run, default 10]
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
asse=$($bench sse-body --events 21 --anthropic)
message='{"id":"msg_mock","type":"message","role":"assistant","model":"bench-claude","content":[{"type":"text","text":"Hello from the mock upstream."}],"stop_reason":"end_turn","stop_sequence":null,"usage":{"input_tokens":9,"output_tokens":7,"cache_read_input_tokens":0,"cache_creation_input_tokens":0}}'
printf '%s' '{"model":"bench-model","messages":[{"role":"user","content":"Hello world"}]}' > "$out/small.json"
printf '%s' '{"model":"bench-sse","stream":true,"messages":[{"role":"user","content":"Hello world"}]}' > "$out/stream.json"
$bench agent-body --model bench-model --kb 67 > "$out/agent.json"
printf '%s' '{"model":"bench-claude","max_tokens":64,"messages":[{"role":"user","content":"Hello world"}]}' > "$out/messages.json"
printf '%s' '{"model":"bench-claude-sse","max_tokens":64,"stream":true,"messages":[{"role":"user","content":"Hello world"}]}' > "$out/messages-stream.json"
printf '%s' '{"model":"bench-model","max_tokens":64,"messages":[{"role":"user","content":"Hello world"}]}' > "$out/messages-openai.json"
printf '%s' '{"model":"bench-sse","max_tokens":64,"stream":true,"messages":[{"role":"user","content":"Hello world"}]}' > "$out/messages-openai-stream.json"

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
# nginx takes at most 4 KB in one parameter: a stream is set in pieces.
split() { # prefix text -> "set ... ;" and the variables, in $pieces and $vars
  pieces=""; vars=""; local i=0 rest=$2
  while [ -n "$rest" ]; do
    pieces+="set \$$1$i '${rest:0:3000}'; "; vars+="\$$1$i"; rest=${rest:3000}; i=$((i + 1))
  done
}
split sse "$sse"; sse_set=$pieces; sse_vars=$vars
split asse "$asse"; asse_set=$pieces; asse_vars=$vars
conf mock "
  server {
    listen 127.0.0.1:18811 reuseport;
    location = /v1/chat/completions { default_type application/json; return 200 '$completion'; }
    location = /sse/v1/chat/completions { default_type text/event-stream; $sse_set return 200 \"$sse_vars\"; }
    location = /anthropic/v1/messages { default_type application/json; return 200 '$message'; }
    location = /anthropic-sse/v1/messages { default_type text/event-stream; $asse_set return 200 \"$asse_vars\"; }
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
  - name: mock-claude
    type: anthropic
    api_key: ak-bench
    base_url: "http://127.0.0.1:18811/anthropic"
    models: [bench-claude]
    health_check: {disabled: true}
  - name: mock-claude-sse
    type: anthropic
    api_key: ak-bench
    base_url: "http://127.0.0.1:18811/anthropic-sse"
    models: [bench-claude-sse]
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
traffic=${TRAFFIC:-small stream agent messages messages-stream messages-openai messages-openai-stream}
# Where each case goes: infermux's route, and the mock's (direct and hop).
route() { case $1 in messages*) echo /v1/messages ;; *) echo /v1/chat/completions ;; esac; }
upstream_path() {
  case $1 in
    stream | messages-openai-stream) echo /sse/v1/chat/completions ;;
    messages) echo /anthropic/v1/messages ;;
    messages-stream) echo /anthropic-sse/v1/messages ;;
    *) echo /v1/chat/completions ;;
  esac
}
# The hop and the mock get the request in the upstream's own dialect.
upstream_body() {
  case $1 in messages-openai) echo small ;; messages-openai-stream) echo stream ;; *) echo "$1" ;; esac
}
for f in $traffic; do
  curl -sf -H 'content-type: application/json' ${KEY:+-H "authorization: Bearer $KEY"} --data-binary @"$out/$f.json" \
    "http://127.0.0.1:18813$(route "$f")" >/dev/null || { echo "infermux does not answer $f; see $out/traffic-infermux.log" >&2; exit 1; }
done

load() { # name url conns body -> req/s
  local file="$out/wrk-traffic-$1-c$3.txt"
  BODY="$4" wrk -t2 -c"$3" -d"${secs}s" -s bench/body.lua "$2" > "$file"
  if grep -q "Non-2xx" "$file"; then echo "$1 at c=$3: some answers were not 2xx" >&2; exit 1; fi
  awk '/Requests\/sec/ {print $2}' "$file"
}

echo "| traffic | concurrency | direct req/s | nginx hop req/s | infermux req/s | infermux / hop |"
echo "|---|---|---|---|---|---|"
for t in $traffic; do
  path=$(upstream_path "$t"); up="$out/$(upstream_body "$t").json"
  for c in 8 64; do
    d=$(load "direct-$t" "http://127.0.0.1:18811$path" $c "$up")
    n=$(load "nginx-$t" "http://127.0.0.1:18812$path" $c "$up")
    i=$(load "infermux-$t" "http://127.0.0.1:18813$(route "$t")" $c "$out/$t.json")
    echo "| $t | $c | $d | $n | $i | $(awk "BEGIN{printf \"%.2f\", $i/$n}") |"
  done
done
echo "infermux peak RSS: $(awk '/VmHWM/ {printf "%.1f MiB", $2/1024}' /proc/$imx/status)"
