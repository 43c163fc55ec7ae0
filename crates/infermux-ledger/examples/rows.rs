//! Writes N call rows to a fresh ledger and closes it: the writer's cost per
//! row, counted with `valgrind --tool=callgrind` at two values of N
//! (bench/ledger.sh).
#![allow(clippy::unwrap_used, reason = "a benchmark driver")]

use std::sync::Arc;

use infermux::callers::{CallRow, Ledger};

fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .map_or(10_000, |a| a.parse().unwrap());
    let path = std::env::temp_dir().join(format!("infermux-rows-{}.db", std::process::id()));
    let ledger = infermux_ledger::SqliteLedger::open(&path).unwrap();
    let (provider, model): (Arc<str>, Arc<str>) = (Arc::from("openai"), Arc::from("gpt-4o"));
    for i in 0..n {
        ledger.record(CallRow {
            ts_ms: 1_796_212_800_000 + i as i64,
            request_id: String::from("4bf92f3577b34da6a3ce929d0e0e4736"),
            key: Some(Arc::from("app")),
            dialect: "openai",
            provider: provider.clone(),
            model: model.clone(),
            model_served: model.clone(),
            tokens_in: 9,
            tokens_out: 7,
            cost_usd: 0.000_092_5,
            status: 200,
            latency_ms: 1,
            ..CallRow::default()
        });
    }
    ledger.close().unwrap();
    drop(ledger);
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
}
