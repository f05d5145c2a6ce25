-- The embedded store's schema: the same tables as PostgreSQL; the logic of the
-- PostgreSQL functions lives in pdp/ledger/sqlite.py under BEGIN IMMEDIATE.

CREATE TABLE aam_reservations (
    decision_id    TEXT PRIMARY KEY,
    workload       TEXT NOT NULL,
    route          TEXT NOT NULL DEFAULT '',
    day_key        TEXT NOT NULL,
    month_key      TEXT NOT NULL,
    reserved_micro INTEGER NOT NULL CHECK (reserved_micro >= 0),
    tokens         INTEGER NOT NULL DEFAULT 0,
    cost_micro     INTEGER,
    state          TEXT NOT NULL CHECK (state IN ('reserved', 'settled', 'released', 'expired')),
    created_at     REAL NOT NULL,  -- unix seconds
    rate_second    INTEGER NOT NULL,
    expires_at     REAL NOT NULL,
    settled_at     REAL
);
CREATE INDEX aam_reservations_open ON aam_reservations (workload, state, expires_at);

CREATE TABLE aam_budget_windows (
    workload       TEXT NOT NULL,
    window_key     TEXT NOT NULL,
    spent_micro    INTEGER NOT NULL DEFAULT 0,
    reserved_micro INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (workload, window_key)
);

CREATE TABLE aam_rate_buckets (
    scope    TEXT NOT NULL,
    sec      INTEGER NOT NULL,
    requests INTEGER NOT NULL DEFAULT 0,
    tokens   INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (scope, sec)
);

CREATE TABLE aam_audit (
    seq         INTEGER PRIMARY KEY,
    ts          TEXT NOT NULL,
    decision_id TEXT NOT NULL UNIQUE,
    workload    TEXT NOT NULL,
    outcome     TEXT NOT NULL,
    body        TEXT NOT NULL,
    prev_hash   TEXT NOT NULL,
    hash        TEXT NOT NULL
);
CREATE INDEX aam_audit_workload_ts ON aam_audit (workload, ts);
CREATE INDEX aam_audit_ts ON aam_audit (ts);

CREATE TRIGGER aam_audit_no_update BEFORE UPDATE ON aam_audit
BEGIN SELECT RAISE(ABORT, 'aam_audit is append-only'); END;
CREATE TRIGGER aam_audit_no_delete BEFORE DELETE ON aam_audit
BEGIN SELECT RAISE(ABORT, 'aam_audit is append-only'); END;
