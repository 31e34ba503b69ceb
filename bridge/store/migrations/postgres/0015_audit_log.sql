-- Operators' actions, append-only: every admin API request that may change something (POST,
-- PATCH, PUT, DELETE; refused ones too) and every store command of the CLI that may. Kept like
-- the ledger: retention does not purge it. bridge/audit.py says what goes in.
CREATE TABLE audit_log (
    id         BIGSERIAL PRIMARY KEY,
    at         BIGINT NOT NULL,
    actor      TEXT NOT NULL,
    action     TEXT NOT NULL,
    target     TEXT NOT NULL,
    status     INTEGER NOT NULL,
    code       TEXT,
    request_id TEXT,
    remote     TEXT
);
CREATE INDEX audit_log_at ON audit_log(at);
