-- The latest import (or delete) of each do-not-contact list (sqlite_dnc.py): an import records
-- its generation here as it starts, and each of its chunks goes on only while it is still the
-- list's latest. Two imports of one list at once (two operators, a timed-out PUT retried while
-- the first still ran) interleaved their chunks and left the list blocking both lists' numbers.
CREATE TABLE dnc_imports (
    list_id TEXT PRIMARY KEY,
    gen     INTEGER NOT NULL
) WITHOUT ROWID;
