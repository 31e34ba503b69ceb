-- Per-account token buckets, updated inside the accept transaction so every worker process (and,
-- on PostgreSQL, every instance) shares one rate per account.
CREATE TABLE rate_buckets (
    account_id TEXT PRIMARY KEY,
    tokens     REAL NOT NULL,
    at         REAL NOT NULL
) WITHOUT ROWID;

-- Live processes: each writes a heartbeat with its view of the SMSC binds, so any process can
-- answer /readyz and /admin/smscs.
CREATE TABLE instances (
    instance     TEXT PRIMARY KEY,
    role         TEXT NOT NULL,
    heartbeat_at INTEGER NOT NULL,
    status       TEXT NOT NULL
) WITHOUT ROWID;
