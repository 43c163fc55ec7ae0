#!/usr/bin/env bash
# Instructions the ledger's writer spends per call row, counted by callgrind:
# the `rows` example writes N rows to a fresh SQLite ledger and closes it;
# the count at N = 20,000 less the count at N = 0, over 20,000. Then rows per
# second: 200,000 rows queued as fast as one thread can, until all are
# stored (batches of up to 4,096 rows, one transaction each).
# Needs valgrind (apt-get install -y valgrind).
# Usage: bench/ledger.sh [rows, default 20000]
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-20000}
command -v valgrind >/dev/null || { echo "valgrind is not installed: apt-get install -y valgrind" >&2; exit 1; }
cargo build --release --locked -q -p infermux-ledger --example rows
count() {
  valgrind --tool=callgrind --callgrind-out-file=/dev/null target/release/examples/rows "$1" 2>&1 |
    awk '/Collected/ {print $NF}'
}
base=$(count 0)
total=$(count "$n")
echo "$n rows: $(( (total - base) / n )) instructions per row"
start=$(date +%s.%N)
target/release/examples/rows 200000
end=$(date +%s.%N)
awk -v s="$start" -v e="$end" 'BEGIN { printf "200000 rows stored in %.2f s: %.0f rows/s\n", e - s, 200000 / (e - s) }'
