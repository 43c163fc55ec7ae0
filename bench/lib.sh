# Shared by the scripts that reuse what bench/overhead.sh set up (sourced, not
# run): the configs it wrote, the infermux binary to measure, and stopping
# every server started here when the script ends.

out=bench/out

# Stops with a hint unless overhead.sh wrote each of these configs.
need_configs() {
  local f
  for f in "$@"; do
    [ -f "$out/$f" ] || { echo "$out/$f is missing: run bench/overhead.sh once first" >&2; exit 1; }
  done
}

# Sets imx_bin: $INFERMUX_BIN (made absolute: the scripts start servers in
# other directories), or a release build (with $INFERMUX_FEATURES).
infermux_bin() {
  if [ -n "${INFERMUX_BIN:-}" ]; then
    [ -x "$INFERMUX_BIN" ] || { echo "INFERMUX_BIN=$INFERMUX_BIN is not an executable" >&2; exit 1; }
    imx_bin=$(realpath "$INFERMUX_BIN")
  else
    cargo build --release --locked -q -p infermux-cli ${INFERMUX_FEATURES:+--features "infermux-cli/$INFERMUX_FEATURES"}
    imx_bin=$PWD/target/release/infermux
  fi
}

pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

# Starts the mock, the nginx hop and infermux, all on CPU 0 (the latency
# scripts' clients run on CPU 1), and waits until each listens.
start_pinned() {
  taskset -c 0 nginx -p "$PWD/$out" -c "$PWD/$out/nginx-mock.conf" 2>/dev/null & pids+=($!)
  taskset -c 0 nginx -p "$PWD/$out" -c "$PWD/$out/nginx-hop.conf" 2>/dev/null & pids+=($!)
  taskset -c 0 "$imx_bin" serve --addr 127.0.0.1:18803 --config "$out/infermux.yml" --log-level warn 2>"$out/infermux.log" & pids+=($!)
  local port
  for port in 18801 18802 18803; do
    for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null && break; sleep 0.05; done
  done
}
