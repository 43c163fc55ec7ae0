//! What the ledger stores and the trait its backends implement (SQLite
//! embedded, PostgreSQL shared: `infermux-ledger`). The core writes rows
//! through [`Ledger::record`], which never blocks a request.

use std::sync::Arc;

use super::KeySpec;

/// One routed call, as attributed and priced (SPEC §13).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CallRow {
    /// When the call began, Unix milliseconds.
    pub ts_ms: i64,
    /// The call's span id (32 hex digits): the id its trace span carries.
    pub request_id: String,
    pub key: Option<Arc<str>>,
    pub team: Option<Arc<str>>,
    pub caller: Option<Arc<str>>,
    /// The ingress dialect (`openai`, `mist`, `grpc`, ...).
    pub dialect: &'static str,
    pub provider: Arc<str>,
    /// The model the caller asked for.
    pub model: Arc<str>,
    /// The model the provider served.
    pub model_served: Arc<str>,
    pub tokens_in: u64,
    pub tokens_out: u64,
    pub tokens_cached: u64,
    pub tokens_cache_write: u64,
    pub tokens_reasoning: u64,
    pub cost_usd: f64,
    /// The HTTP status the call answered with (499: the caller went away).
    pub status: u16,
    pub latency_ms: u64,
    pub usage_estimated: bool,
}

/// A key created through the management API, as the ledger keeps it (the
/// secret only as its SHA-256, in `spec`).
#[derive(Debug, Clone, PartialEq)]
pub struct StoredKey {
    pub spec: KeySpec,
    /// Unix milliseconds.
    pub created_ms: i64,
    /// Unix milliseconds; `Some` once revoked.
    pub revoked_ms: Option<i64>,
}

/// What a spend report groups by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupBy {
    Key,
    Team,
    Model,
    Provider,
    Caller,
    /// The UTC calendar day, `YYYY-MM-DD`.
    Day,
}

impl GroupBy {
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "key" => GroupBy::Key,
            "team" => GroupBy::Team,
            "model" => GroupBy::Model,
            "provider" => GroupBy::Provider,
            "caller" => GroupBy::Caller,
            "day" => GroupBy::Day,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            GroupBy::Key => "key",
            GroupBy::Team => "team",
            GroupBy::Model => "model",
            GroupBy::Provider => "provider",
            GroupBy::Caller => "caller",
            GroupBy::Day => "day",
        }
    }
}

/// A spend report's question: rows in `[from_ms, to_ms)`, grouped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpendQuery {
    pub group_by: GroupBy,
    pub from_ms: Option<i64>,
    pub to_ms: Option<i64>,
}

/// One group of a spend report. Calls without a key, team or caller fall in
/// the group `""`.
#[derive(Debug, Clone, PartialEq)]
pub struct SpendRow {
    pub group: String,
    pub requests: u64,
    pub tokens_in: u64,
    pub tokens_out: u64,
    pub cost_usd: f64,
}

/// Whose spend a budget counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Owner<'a> {
    Key(&'a str),
    Team(&'a str),
}

/// A ledger backend failed (the message names what it was doing).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("ledger: {0}")]
pub struct LedgerError(pub String);

/// Where calls, keys and spend are kept. `record` is called on the request
/// path and must not block; everything else runs at start, from the
/// management API or the CLI, and may (call it off the async threads).
pub trait Ledger: Send + Sync + std::fmt::Debug {
    /// Queues a row; rows are written in batches off the request path.
    fn record(&self, row: CallRow);
    /// Blocks until every row recorded so far is stored.
    fn flush(&self) -> Result<(), LedgerError>;
    /// Settled spend of `owner` since `since_ms` (to reload budgets).
    fn spend_since(&self, owner: Owner<'_>, since_ms: i64) -> Result<f64, LedgerError>;
    /// Spend grouped, over every stored row (flush first to include all).
    fn report(&self, query: &SpendQuery) -> Result<Vec<SpendRow>, LedgerError>;
    /// Every key created through the API, revoked ones included.
    fn load_keys(&self) -> Result<Vec<StoredKey>, LedgerError>;
    /// Stores a new key (its name must be new).
    fn save_key(&self, key: &StoredKey) -> Result<(), LedgerError>;
    /// Marks the key named `name` (hashed `sha256`) revoked at `at_ms`.
    fn revoke_key(&self, name: &str, sha256: &[u8; 32], at_ms: i64) -> Result<(), LedgerError>;
    /// Rows that could not be stored since start (each also logged).
    fn lost_rows(&self) -> u64 {
        0
    }
}
