-- Each account row carries a version that every write of the row changes (session 55): a
-- random 64-bit value set by these triggers after each insert and update, whoever writes (the
-- daemon, the CLI, an operator's sqlite3). An accept reads its key's account inside the store's
-- write lock; with the version it already holds the Account built from, the read answers NULL
-- instead of the row as JSON (sqlite._authorize), ~24 k instructions less of each accept's lock.
-- Random rather than counted: a restored copy of the store cannot bring back a version a
-- process has cached with other contents. No rewrite of the table: ADD COLUMN is a schema edit.
-- The triggers' own UPDATE does not fire them again (recursive_triggers is off) and is not
-- counted in a statement's rowcount (sqlite3_changes leaves trigger writes out).
ALTER TABLE accounts ADD COLUMN row_version INTEGER;
UPDATE accounts SET row_version = random();
CREATE TRIGGER accounts_version_insert AFTER INSERT ON accounts BEGIN
    UPDATE accounts SET row_version = random() WHERE rowid = NEW.rowid;
END;
CREATE TRIGGER accounts_version_update AFTER UPDATE ON accounts BEGIN
    UPDATE accounts SET row_version = random() WHERE rowid = NEW.rowid;
END;
