-- A change of assigned senders ends the waiting messages it refuses in chunks of their own
-- transactions (sqlite_senders.py): in one, the scan alone held every writer's lock ~1.8 s per
-- million waiting messages. The row (at most one) is a walk still under way: while it exists
-- each claim checks the messages it takes against the assignments, and the sweep finishes one
-- whose process stopped. (`after_account`, `after_nb`, `after_rowid`) is how far it went in the
-- queue index; `moved`: a message may have moved behind it since (walk once more).
CREATE TABLE sender_walk (
    id            INTEGER PRIMARY KEY CHECK (id = 1),
    assigned_only INTEGER NOT NULL,
    after_account TEXT NOT NULL,
    after_nb      INTEGER NOT NULL,
    after_rowid   INTEGER NOT NULL,
    moved         INTEGER NOT NULL,
    worked_at     INTEGER NOT NULL
);
