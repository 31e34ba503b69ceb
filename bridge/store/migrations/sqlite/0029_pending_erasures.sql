-- An erasure's masking of the account's stored idempotent answers, under way in chunks
-- (sqlite_erase.py). It read every idempotency record of the account in the erasure's one
-- transaction, holding every writer of every process (~1.2 µs a record: ~10 s for an account
-- keeping 8.6 million). The masking covers the ids up to `hi` (the highest at the erasure:
-- records written after it are new data), in the order of the account's keys (its index, so
-- an erasure reads the account's records, not the whole table's); `after_key` is how far it
-- went (NULL: not started). Reads of a record with id <= hi and a key after it answer it
-- masked meanwhile. A row without a number is a close's deletion of the
-- account's records (in its one transaction, 1,000,000 held every writer 2.8-4.0 s). Deleted
-- when done; worked_at as pending_ends'.
CREATE TABLE pending_erasures (
    id         INTEGER PRIMARY KEY,
    account_id TEXT NOT NULL,
    number     TEXT,
    masked     TEXT,
    hi         INTEGER NOT NULL,
    after_key  TEXT,
    worked_at  INTEGER NOT NULL
);
