-- An account's waiting messages ended in chunks of their own transactions (sqlite_ends.py): a
-- disable with a million messages waiting held every writer's lock ~20 s in one transaction. A
-- row here is an end still under way: the claim ends the messages it finds of it instead of
-- sending them, and the sweep finishes one whose process stopped. `scope` names the filter
-- (sqlite_ends.SCOPES) and `value` its argument; `max_rowid` bounds it to the messages that
-- existed when it started; (`after_nb`, `after_rowid`) is how far it went in the queue index.
CREATE TABLE pending_ends (
    id          INTEGER PRIMARY KEY,
    account_id  TEXT NOT NULL,
    scope       TEXT NOT NULL,
    value       TEXT,
    error       TEXT NOT NULL,
    ended_at    INTEGER NOT NULL,
    max_rowid   INTEGER NOT NULL,
    after_nb    INTEGER NOT NULL,
    after_rowid INTEGER NOT NULL,
    worked_at   INTEGER NOT NULL
);
