#!/usr/bin/env bash
# End-to-end gRPC load: unary Infer calls on the echo provider against
# `infermux serve-grpc`, from the client crate's load example in a separate
# process. Usage: bench/e2e-grpc.sh [seconds per run, default 10]
# Prints RPC/s and latency percentiles at concurrency 1 and 64, and the server's
# peak RSS (VmHWM). The server logs one line per RPC at info, as in production.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-10}
port=${PORT:-18601}
cargo build --release --locked -q -p infermux-cli -p infermux-client --example grpc_load
log=$(mktemp)
./target/release/infermux serve-grpc --addr "127.0.0.1:$port" 2>"$log" &
pid=$!
trap 'kill $pid 2>/dev/null; wait $pid 2>/dev/null || true; rm -f "$log"' EXIT
for _ in $(seq 50); do grep -q listening "$log" && break; sleep 0.1; done
for conns in 1 64; do
  ./target/release/examples/grpc_load "http://127.0.0.1:$port" "$conns" "$secs"
done
echo "per-RPC log lines written: $(grep -c 'infermux::rpc' "$log")"
echo "peak RSS (VmHWM): $(grep VmHWM /proc/$pid/status | awk '{print $2" "$3}')"
