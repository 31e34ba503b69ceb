-- Idempotency records move to a rowid table with a unique index on (account_id, key). Keys are
-- random, so in the WITHOUT ROWID table every insert split a random page holding whole records
-- (response bodies included); now only the small key goes into the random index and the record is
-- appended. Measured: 33 -> 17 us per insert at 200k records, on every accepted request.
CREATE TABLE idempotency_new (
    id           INTEGER PRIMARY KEY,
    account_id   TEXT NOT NULL,
    key          TEXT NOT NULL,
    request_hash TEXT NOT NULL,
    status_code  INTEGER NOT NULL,
    response     BLOB NOT NULL,
    expires_at   INTEGER NOT NULL
);
INSERT INTO idempotency_new (account_id, key, request_hash, status_code, response, expires_at)
    SELECT account_id, key, request_hash, status_code, response, expires_at FROM idempotency;
DROP TABLE idempotency;
ALTER TABLE idempotency_new RENAME TO idempotency;
CREATE UNIQUE INDEX idempotency_key ON idempotency(account_id, key);
CREATE INDEX idempotency_expiry ON idempotency(expires_at);
