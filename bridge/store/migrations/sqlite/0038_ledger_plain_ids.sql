-- The ledger's ids without AUTOINCREMENT (session 59): with it SQLite reads and writes the
-- table's row of sqlite_sequence at every insert, ~5.5 k instructions of each charge's insert
-- inside the store's write lock (an accept's, a refund's). A plain INTEGER PRIMARY KEY gives
-- the largest id + 1 too; the two differ only after the top rows are deleted (AUTOINCREMENT
-- never gives their ids again), and nothing deletes ledger rows: it is append-only (balances
-- and the pockets' sums are derived from it; retention, erasure and closes keep it), so every
-- id stays as it would have been. SQLite cannot drop AUTOINCREMENT in place: the table is
-- rebuilt, every row with its id, in this migration's transaction (sqlite.py `_migrate`); its
-- one index is made again; no trigger or view names it. DROP TABLE takes the ledger's row out
-- of sqlite_sequence (the other AUTOINCREMENT tables keep theirs). PostgreSQL's 0038 is empty.
CREATE TABLE ledger_plain (
    id         INTEGER PRIMARY KEY,
    account_id TEXT NOT NULL,
    kind       TEXT NOT NULL,
    amount     INTEGER NOT NULL,
    pocket     TEXT NOT NULL,
    at         INTEGER NOT NULL,
    ref        TEXT,
    expires_at INTEGER
);
INSERT INTO ledger_plain (id, account_id, kind, amount, pocket, at, ref, expires_at)
    SELECT id, account_id, kind, amount, pocket, at, ref, expires_at FROM ledger ORDER BY id;
DROP TABLE ledger;
ALTER TABLE ledger_plain RENAME TO ledger;
CREATE INDEX ledger_account_ref ON ledger(account_id, ref);
