-- Per-account token buckets, updated inside the accept transaction (row-locked), so every instance
-- shares one rate per account.
CREATE TABLE rate_buckets (
    account_id TEXT COLLATE "C" PRIMARY KEY,
    tokens     DOUBLE PRECISION NOT NULL,
    at         DOUBLE PRECISION NOT NULL
);

-- Live processes: each writes a heartbeat with its view of the SMSC binds, so any process can
-- answer /readyz and /admin/smscs, and claims of an instance gone silent can be taken back.
CREATE TABLE instances (
    instance     TEXT COLLATE "C" PRIMARY KEY,
    role         TEXT NOT NULL,
    heartbeat_at BIGINT NOT NULL,
    status       TEXT NOT NULL
);
