-- One row per routed call (SPEC §13).
CREATE TABLE calls (
    id                 INTEGER PRIMARY KEY,
    ts_ms              INTEGER NOT NULL,
    request_id         TEXT    NOT NULL,
    key_name           TEXT,
    team               TEXT,
    caller             TEXT,
    dialect            TEXT    NOT NULL,
    provider           TEXT    NOT NULL,
    model              TEXT    NOT NULL,
    model_served       TEXT    NOT NULL,
    tokens_in          INTEGER NOT NULL,
    tokens_out         INTEGER NOT NULL,
    tokens_cached      INTEGER NOT NULL,
    tokens_cache_write INTEGER NOT NULL,
    tokens_reasoning   INTEGER NOT NULL,
    cost_usd           REAL    NOT NULL,
    status             INTEGER NOT NULL,
    latency_ms         INTEGER NOT NULL,
    usage_estimated    INTEGER NOT NULL
);
-- No index: rows arrive in time order (rowid order), reports and the
-- budget reload at start scan, and an index would cost every insert a
-- fifth more (bench/ledger.sh).

-- Keys made through the management API (secrets only as SHA-256), and
-- revocations of keys from the config file (origin 'config').
CREATE TABLE keys (
    name                TEXT    PRIMARY KEY,
    sha256              TEXT    NOT NULL UNIQUE,
    origin              TEXT    NOT NULL,
    team                TEXT,
    models              TEXT    NOT NULL,
    budget_usd          REAL,
    budget_period       TEXT,
    requests_per_minute INTEGER,
    tokens_per_minute   INTEGER,
    expires_at          INTEGER,
    created_ms          INTEGER NOT NULL,
    revoked_ms          INTEGER
);
