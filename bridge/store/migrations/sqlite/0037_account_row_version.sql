-- Each account row carries a version that every write of the row changes (session 55): a
-- random 64-bit value set by these triggers after each insert and update, whoever writes (the
-- daemon, the CLI, an operator's sqlite3). An accept reads its key's account inside the store's
-- write lock; with the version it already holds the Account built from, the read answers NULL
-- instead of the row as JSON (sqlite._authorize), ~24 k instructions less of each accept's lock.
-- Random rather than counted: a restored copy of the store cannot bring back a version a
-- process has cached with other contents. No rewrite of the table: ADD COLUMN is a schema edit.
-- The update trigger fires only while the statement left row_version as it was: its own
-- UPDATE, which sets a new one, ends the chain, on a connection with PRAGMA
-- recursive_triggers=ON too (an operator's ~/.sqliterc, a build defaulting it on; without the
-- WHEN it fired again until "too many levels of trigger recursion", failing every write of an
-- account there: session 55's review). A statement that sets row_version itself keeps the
-- value it sets (nothing of the bridge's does). Trigger writes are not counted in a
-- statement's rowcount (sqlite3_changes leaves them out).
ALTER TABLE accounts ADD COLUMN row_version INTEGER;
UPDATE accounts SET row_version = random();
CREATE TRIGGER accounts_version_insert AFTER INSERT ON accounts BEGIN
    UPDATE accounts SET row_version = random() WHERE rowid = NEW.rowid;
END;
CREATE TRIGGER accounts_version_update AFTER UPDATE ON accounts
WHEN NEW.row_version IS OLD.row_version BEGIN
    UPDATE accounts SET row_version = random() WHERE rowid = NEW.rowid;
END;
