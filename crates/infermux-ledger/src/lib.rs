//! The embedded ledger (SPEC §13): a SQLite file, created and migrated on
//! first use, that keeps one row per routed call, the keys made through the
//! management API, and so the spend budgets are reloaded from at start.
//!
//! Rows reach the file off the request path: [`Ledger::record`] queues them
//! for a writer thread, which stores whatever has queued in one transaction
//! as soon as the previous one is done — so a busy server writes large
//! batches, a quiet one writes within milliseconds, and a crash loses at
//! most the rows of the batch in flight. [`Ledger::flush`] waits for them.
//!
//! The schema lives in `migrations/`, applied in order and recorded in
//! SQLite's `user_version`.

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, PoisonError};

use infermux::callers::{
    BudgetSpec, CallRow, GroupBy, KeySpec, Ledger, LedgerError, Owner, Period, SpendQuery,
    SpendRow, StoredKey, hex, parse_hex,
};
use infermux::ratelimit::RateLimits;
use rusqlite::{Connection, OptionalExtension as _, params};

/// The schema, by version: migration `n` (1-based) takes the file from
/// version `n - 1` to `n`.
const MIGRATIONS: &[&str] = &[include_str!("../migrations/0001_calls_and_keys.sql")];

/// The most rows one transaction stores.
const BATCH: usize = 4096;

/// How long the writer gathers rows after the first before it stores them
/// (unless a flush asks sooner): a commit costs about as much as a few
/// hundred rows, so a busy server commits ten times a second, not once per
/// call; what a SIGKILL can lose is this much, well within SPEC §13's second.
const GATHER: std::time::Duration = std::time::Duration::from_millis(100);

enum Msg {
    Row(Box<CallRow>),
    /// Answers once every row queued before it is stored.
    Flush(mpsc::SyncSender<Result<(), LedgerError>>),
    /// Store what is queued and end.
    Stop,
}

/// The SQLite ledger.
pub struct SqliteLedger {
    path: PathBuf,
    /// Shared by every serving thread without a lock (`Sender` is `Sync`).
    tx: mpsc::Sender<Msg>,
    closed: std::sync::atomic::AtomicBool,
    /// The writer thread, to wake it for a flush (it gathers rows asleep).
    writer_thread: std::thread::Thread,
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// Reads, keys and reports; the writer thread has its own connection.
    conn: Mutex<Connection>,
    failed: Arc<std::sync::atomic::AtomicU64>,
}

impl std::fmt::Debug for SqliteLedger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteLedger")
            .field("path", &self.path)
            .finish()
    }
}

fn err(what: &str, path: &Path) -> impl Fn(rusqlite::Error) -> LedgerError {
    let at = format!("{} ({what})", path.display());
    move |e| LedgerError(format!("{at}: {e}"))
}

fn open(path: &Path) -> Result<Connection, LedgerError> {
    let conn = Connection::open(path).map_err(err(
        "cannot open it; ledger.path in the config chooses another file",
        path,
    ))?;
    conn.busy_timeout(std::time::Duration::from_secs(5))
        .map_err(err("cannot configure", path))?;
    // The first read of the file: where a file that is not a ledger shows.
    let unreadable = "not a ledger infermux can read; move it aside to start a new one, or point ledger.path elsewhere";
    // WAL: readers never wait for the writer. NORMAL: a commit survives a
    // crash of the process (not of the machine, for the last transactions).
    conn.pragma_update(None, "journal_mode", "WAL")
        .map_err(err(unreadable, path))?;
    conn.pragma_update(None, "synchronous", "NORMAL")
        .map_err(err("cannot configure", path))?;
    Ok(conn)
}

/// Brings the file's schema to the newest version.
fn migrate(conn: &mut Connection, path: &Path) -> Result<(), LedgerError> {
    let version: usize = conn
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .map_err(err("cannot read the schema version", path))?;
    if version > MIGRATIONS.len() {
        return Err(LedgerError(format!(
            "{}: schema version {version} is newer than this infermux knows ({}); upgrade infermux",
            path.display(),
            MIGRATIONS.len()
        )));
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(version) {
        let tx = conn.transaction().map_err(err("cannot migrate", path))?;
        tx.execute_batch(sql).map_err(err("cannot migrate", path))?;
        tx.pragma_update(None, "user_version", i + 1)
            .map_err(err("cannot migrate", path))?;
        tx.commit().map_err(err("cannot migrate", path))?;
    }
    Ok(())
}

impl SqliteLedger {
    /// Opens (creating and migrating when needed) the ledger at `path`, and
    /// starts its writer thread.
    pub fn open(path: &Path) -> Result<Self, LedgerError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| {
                LedgerError(format!(
                    "{}: cannot create its folder: {e}; set ledger.path to a writable place",
                    path.display()
                ))
            })?;
        }
        let mut conn = open(path)?;
        migrate(&mut conn, path)?;
        let writer_conn = open(path)?;
        let (tx, rx) = mpsc::channel();
        let failed = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let writer = {
            let path = path.to_owned();
            let failed = failed.clone();
            std::thread::Builder::new()
                .name("infermux-ledger".into())
                .spawn(move || write_loop(writer_conn, &path, &rx, &failed))
                .map_err(|e| LedgerError(format!("cannot start the ledger writer: {e}")))?
        };
        Ok(SqliteLedger {
            path: path.to_owned(),
            tx,
            closed: std::sync::atomic::AtomicBool::new(false),
            writer_thread: writer.thread().clone(),
            writer: Mutex::new(Some(writer)),
            conn: Mutex::new(conn),
            failed,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Rows that could not be stored (each also logged).
    pub fn failed_rows(&self) -> u64 {
        self.failed.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Stores every queued row and stops the writer (on shutdown).
    pub fn close(&self) -> Result<(), LedgerError> {
        let flushed = self.flush();
        if !self.closed.swap(true, std::sync::atomic::Ordering::AcqRel) {
            let _ = self.tx.send(Msg::Stop);
            self.writer_thread.unpark();
        }
        if let Some(w) = self
            .writer
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
        {
            let _ = w.join();
        }
        flushed
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn send(&self, msg: Msg) -> bool {
        !self.closed.load(std::sync::atomic::Ordering::Acquire) && self.tx.send(msg).is_ok()
    }
}

/// The writer thread: blocks for the first message, then sleeps for
/// [`GATHER`] (a flush wakes it) while rows queue — asleep, not waiting on
/// the channel, so a sender never has a receiver to wake —, takes what
/// queued (up to [`BATCH`] rows) and stores it in one transaction, answers
/// the flushes among it; ends on `Stop`.
fn write_loop(
    mut conn: Connection,
    path: &Path,
    rx: &mpsc::Receiver<Msg>,
    failed: &std::sync::atomic::AtomicU64,
) {
    let mut rows: Vec<Box<CallRow>> = Vec::with_capacity(BATCH);
    let mut flushes = Vec::new();
    let mut stop = false;
    // The last batch was full: rows are queued, store them without a pause.
    let mut behind = false;
    while !stop {
        let Ok(first) = rx.recv() else { break };
        if matches!(first, Msg::Row(_)) && !behind {
            // A flush or a stop unparks the thread (spurious wake-ups only
            // make the batch smaller).
            std::thread::park_timeout(GATHER);
        }
        let mut next = Some(first);
        while let Some(msg) = next.take() {
            match msg {
                Msg::Row(r) => rows.push(r),
                Msg::Flush(done) => flushes.push(done),
                Msg::Stop => stop = true,
            }
            if rows.len() < BATCH {
                next = rx.try_recv().ok();
            }
        }
        behind = rows.len() >= BATCH;
        let stored = store(&mut conn, &rows).map_err(err("cannot store calls", path));
        if let Err(e) = &stored {
            failed.fetch_add(rows.len() as u64, std::sync::atomic::Ordering::Relaxed);
            tracing::error!(rows = rows.len(), error = %e, "ledger rows lost");
        }
        rows.clear();
        for done in flushes.drain(..) {
            let _ = done.send(stored.clone());
        }
    }
}

fn store(conn: &mut Connection, rows: &[Box<CallRow>]) -> rusqlite::Result<()> {
    if rows.is_empty() {
        return Ok(());
    }
    let tx = conn.transaction()?;
    {
        // One row per statement: 32 rows per statement measured 8 % more
        // instructions per row (bench/ledger.sh).
        let mut insert = tx.prepare_cached(
            "INSERT INTO calls (ts_ms, request_id, key_name, team, caller, dialect, provider,
                model, model_served, tokens_in, tokens_out, tokens_cached, tokens_cache_write,
                tokens_reasoning, cost_usd, status, latency_ms, usage_estimated)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18)",
        )?;
        let n = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        for r in rows {
            insert.execute(params![
                r.ts_ms,
                r.request_id,
                r.key.as_deref(),
                r.team.as_deref(),
                r.caller.as_deref(),
                r.dialect,
                &*r.provider,
                &*r.model,
                &*r.model_served,
                n(r.tokens_in),
                n(r.tokens_out),
                n(r.tokens_cached),
                n(r.tokens_cache_write),
                n(r.tokens_reasoning),
                r.cost_usd,
                r.status,
                n(r.latency_ms),
                r.usage_estimated,
            ])?;
        }
    }
    tx.commit()
}

impl Drop for SqliteLedger {
    fn drop(&mut self) {
        let _ = self.close();
    }
}

impl Ledger for SqliteLedger {
    fn lost_rows(&self) -> u64 {
        self.failed_rows()
    }

    fn record(&self, row: CallRow) {
        if !self.send(Msg::Row(Box::new(row))) {
            self.failed
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            tracing::error!("a ledger row arrived after the ledger closed; lost");
        }
    }

    fn flush(&self) -> Result<(), LedgerError> {
        let (done, wait) = mpsc::sync_channel(1);
        if !self.send(Msg::Flush(done)) {
            return Ok(());
        }
        self.writer_thread.unpark();
        wait.recv()
            .unwrap_or_else(|_| Err(LedgerError("the ledger writer stopped".into())))
    }

    fn spend_since(&self, owner: Owner<'_>, since_ms: i64) -> Result<f64, LedgerError> {
        let (sql, name) = match owner {
            Owner::Key(n) => (
                "SELECT COALESCE(SUM(cost_usd), 0) FROM calls WHERE key_name = ?1 AND ts_ms >= ?2",
                n,
            ),
            Owner::Team(n) => (
                "SELECT COALESCE(SUM(cost_usd), 0) FROM calls WHERE team = ?1 AND ts_ms >= ?2",
                n,
            ),
        };
        self.conn()
            .query_row(sql, params![name, since_ms], |r| r.get(0))
            .map_err(err("cannot read spend", &self.path))
    }

    fn report(&self, q: &SpendQuery) -> Result<Vec<SpendRow>, LedgerError> {
        let group = match q.group_by {
            GroupBy::Key => "COALESCE(key_name, '')",
            GroupBy::Team => "COALESCE(team, '')",
            GroupBy::Model => "model",
            GroupBy::Provider => "provider",
            GroupBy::Caller => "COALESCE(caller, '')",
            GroupBy::Day => "strftime('%Y-%m-%d', ts_ms / 1000, 'unixepoch')",
        };
        let sql = format!(
            "SELECT {group} AS g, COUNT(*), SUM(tokens_in), SUM(tokens_out), SUM(cost_usd)
             FROM calls WHERE ts_ms >= ?1 AND ts_ms < ?2 GROUP BY g ORDER BY g"
        );
        let conn = self.conn();
        let mut stmt = conn
            .prepare(&sql)
            .map_err(err("cannot report spend", &self.path))?;
        let from = q.from_ms.unwrap_or(i64::MIN);
        let to = q.to_ms.unwrap_or(i64::MAX);
        let rows = stmt
            .query_map(params![from, to], |r| {
                let n = |v: i64| u64::try_from(v).unwrap_or(0);
                Ok(SpendRow {
                    group: r.get(0)?,
                    requests: n(r.get(1)?),
                    tokens_in: n(r.get(2)?),
                    tokens_out: n(r.get(3)?),
                    cost_usd: r.get(4)?,
                })
            })
            .map_err(err("cannot report spend", &self.path))?;
        rows.collect::<Result<_, _>>()
            .map_err(err("cannot report spend", &self.path))
    }

    fn load_keys(&self) -> Result<Vec<StoredKey>, LedgerError> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare(
                "SELECT name, sha256, team, models, budget_usd, budget_period,
                        requests_per_minute, tokens_per_minute, expires_at, created_ms, revoked_ms
                 FROM keys ORDER BY created_ms, name",
            )
            .map_err(err("cannot read keys", &self.path))?;
        let rows = stmt
            .query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, Option<String>>(2)?,
                    r.get::<_, String>(3)?,
                    r.get::<_, Option<f64>>(4)?,
                    r.get::<_, Option<String>>(5)?,
                    r.get::<_, Option<i64>>(6)?,
                    r.get::<_, Option<i64>>(7)?,
                    r.get::<_, Option<i64>>(8)?,
                    r.get::<_, i64>(9)?,
                    r.get::<_, Option<i64>>(10)?,
                ))
            })
            .map_err(err("cannot read keys", &self.path))?;
        let mut keys = Vec::new();
        for row in rows {
            let (name, sha, team, models, usd, period, rpm, tpm, expires_at, created_ms, revoked) =
                row.map_err(err("cannot read keys", &self.path))?;
            let bad = |what: &str| {
                LedgerError(format!(
                    "{}: key \"{name}\" has a bad {what}",
                    self.path.display()
                ))
            };
            let sha256 = parse_hex(&sha).ok_or_else(|| bad("sha256"))?;
            let models: Vec<String> =
                serde_json::from_str(&models).map_err(|_| bad("models list"))?;
            let budget = match (usd, period) {
                (Some(usd), Some(p)) => Some(BudgetSpec {
                    usd,
                    period: Period::parse(&p).ok_or_else(|| bad("budget period"))?,
                }),
                _ => None,
            };
            keys.push(StoredKey {
                spec: KeySpec {
                    name,
                    sha256,
                    team,
                    models,
                    budget,
                    rate_limits: RateLimits {
                        requests_per_minute: rpm.and_then(|v| u32::try_from(v).ok()),
                        tokens_per_minute: tpm.and_then(|v| u64::try_from(v).ok()),
                    },
                    expires_at,
                },
                created_ms,
                revoked_ms: revoked,
            });
        }
        Ok(keys)
    }

    fn save_key(&self, stored: &StoredKey) -> Result<(), LedgerError> {
        let k = &stored.spec;
        let models = serde_json::to_string(&k.models).unwrap_or_else(|_| "[]".into());
        self.conn()
            .execute(
                "INSERT INTO keys (name, sha256, origin, team, models, budget_usd, budget_period,
                    requests_per_minute, tokens_per_minute, expires_at, created_ms, revoked_ms)
                 VALUES (?1, ?2, 'api', ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
                params![
                    k.name,
                    hex(&k.sha256),
                    k.team,
                    models,
                    k.budget.map(|b| b.usd),
                    k.budget.map(|b| b.period.as_str()),
                    k.rate_limits.requests_per_minute,
                    k.rate_limits
                        .tokens_per_minute
                        .map(|t| i64::try_from(t).unwrap_or(i64::MAX)),
                    k.expires_at,
                    stored.created_ms,
                    stored.revoked_ms,
                ],
            )
            .map(drop)
            .map_err(err("cannot store the key", &self.path))
    }

    fn revoke_key(&self, name: &str, sha256: &[u8; 32], at_ms: i64) -> Result<(), LedgerError> {
        let conn = self.conn();
        let sha = hex(sha256);
        let updated = conn
            .execute(
                "UPDATE keys SET revoked_ms = ?2 WHERE sha256 = ?1 AND revoked_ms IS NULL",
                params![sha, at_ms],
            )
            .map_err(err("cannot revoke the key", &self.path))?;
        let known: Option<i64> = conn
            .query_row("SELECT 1 FROM keys WHERE sha256 = ?1", params![sha], |r| {
                r.get(0)
            })
            .optional()
            .map_err(err("cannot revoke the key", &self.path))?;
        if updated == 0 && known.is_none() {
            // A key of the config file: its revocation is kept here.
            conn.execute(
                "INSERT INTO keys (name, sha256, origin, models, created_ms, revoked_ms)
                 VALUES (?1, ?2, 'config', '[]', ?3, ?3)",
                params![name, sha, at_ms],
            )
            .map_err(err("cannot revoke the key", &self.path))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(key: Option<&str>, cost: f64, ts_ms: i64) -> CallRow {
        CallRow {
            ts_ms,
            request_id: "0".repeat(32),
            key: key.map(Arc::from),
            team: key.map(|_| Arc::from("web")),
            caller: None,
            dialect: "openai",
            provider: Arc::from("openai"),
            model: Arc::from("gpt-4o"),
            model_served: Arc::from("gpt-4o-2024-08-06"),
            tokens_in: 10,
            tokens_out: 5,
            cost_usd: cost,
            status: 200,
            ..CallRow::default()
        }
    }

    fn temp(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "infermux-ledger-{}-{}-{name}",
            std::process::id(),
            infermux::callers::now_ms()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        dir.join("ledger.db")
    }

    #[test]
    fn rows_survive_a_reopen_and_add_up() {
        let path = temp("reopen");
        {
            let l = SqliteLedger::open(&path).unwrap();
            for i in 0..1000 {
                l.record(row(
                    Some(if i % 2 == 0 { "a" } else { "b" }),
                    0.001,
                    1_000 + i,
                ));
            }
            l.record(row(None, 0.5, 5_000));
            l.close().unwrap();
        }
        let l = SqliteLedger::open(&path).unwrap();
        let a = l.spend_since(Owner::Key("a"), 0).unwrap();
        assert!((a - 0.5).abs() < 1e-9, "{a}");
        assert!((l.spend_since(Owner::Team("web"), 1_500).unwrap() - 0.5).abs() < 1e-9);
        let by_key = l
            .report(&SpendQuery {
                group_by: GroupBy::Key,
                from_ms: None,
                to_ms: None,
            })
            .unwrap();
        let groups: Vec<(&str, u64)> = by_key.iter().map(|r| (&*r.group, r.requests)).collect();
        assert_eq!(groups, [("", 1), ("a", 500), ("b", 500)]);
        assert_eq!(by_key[1].tokens_in, 5000);
        let by_day = l
            .report(&SpendQuery {
                group_by: GroupBy::Day,
                from_ms: Some(1_000),
                to_ms: Some(5_000),
            })
            .unwrap();
        assert_eq!(by_day.len(), 1);
        assert_eq!(by_day[0].group, "1970-01-01");
        assert_eq!(by_day[0].requests, 1000, "`to` is exclusive");
    }

    #[test]
    fn keys_and_revocations_survive_a_reopen() {
        let path = temp("keys");
        let l = SqliteLedger::open(&path).unwrap();
        let key = StoredKey {
            spec: KeySpec {
                name: "ci".into(),
                sha256: infermux::callers::hash_secret("imx-secret"),
                team: Some("web".into()),
                models: vec!["gpt-*".into()],
                budget: Some(BudgetSpec {
                    usd: 5.0,
                    period: Period::Monthly,
                }),
                rate_limits: RateLimits {
                    requests_per_minute: Some(10),
                    tokens_per_minute: None,
                },
                expires_at: Some(2_000_000_000),
            },
            created_ms: 7,
            revoked_ms: None,
        };
        l.save_key(&key).unwrap();
        assert!(l.save_key(&key).is_err(), "names are unique");
        l.revoke_key("ci", &key.spec.sha256, 9).unwrap();
        l.revoke_key("from-config", &[7; 32], 11).unwrap();
        drop(l);
        let keys = SqliteLedger::open(&path).unwrap().load_keys().unwrap();
        assert_eq!(keys.len(), 2);
        assert_eq!(
            keys[0],
            StoredKey {
                revoked_ms: Some(9),
                ..key
            }
        );
        assert_eq!(keys[1].revoked_ms, Some(11));
    }

    #[test]
    fn writers_in_several_threads_and_ledgers_lose_nothing() {
        let path = temp("writers");
        let ledgers: Vec<Arc<SqliteLedger>> = (0..2)
            .map(|_| Arc::new(SqliteLedger::open(&path).unwrap()))
            .collect();
        std::thread::scope(|s| {
            for l in &ledgers {
                for t in 0..2 {
                    s.spawn(move || {
                        for i in 0..5000 {
                            l.record(row(Some(if t == 0 { "a" } else { "b" }), 0.001, i));
                        }
                    });
                }
            }
        });
        for l in &ledgers {
            l.close().unwrap();
        }
        let l = SqliteLedger::open(&path).unwrap();
        let rows = l
            .report(&SpendQuery {
                group_by: GroupBy::Key,
                from_ms: None,
                to_ms: None,
            })
            .unwrap();
        assert_eq!(rows.iter().map(|r| r.requests).sum::<u64>(), 20_000);
        assert!((rows.iter().map(|r| r.cost_usd).sum::<f64>() - 20.0).abs() < 1e-6);
        assert_eq!(l.failed_rows(), 0);
    }

    #[test]
    fn a_newer_schema_is_refused() {
        let path = temp("newer");
        drop(SqliteLedger::open(&path).unwrap());
        let conn = Connection::open(&path).unwrap();
        conn.pragma_update(None, "user_version", 99).unwrap();
        drop(conn);
        let e = SqliteLedger::open(&path).unwrap_err();
        assert!(e.0.contains("schema version 99"), "{e}");
    }
}
