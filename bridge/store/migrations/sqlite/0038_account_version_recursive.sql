-- Migration 0037's update trigger updates the row it fires for, and ended only because SQLite's
-- recursive_triggers is off by default: a connection that turns it on (an operator's sqlite3
-- with PRAGMA recursive_triggers=ON in ~/.sqliterc, a build or future release defaulting it on)
-- fired it again for its own UPDATE until "too many levels of trigger recursion", failing every
-- write of an account there (the insert trigger's UPDATE fires the update trigger too). Now it
-- fires only while the statement left row_version as it was: its own UPDATE, which sets a new
-- one, ends it. A statement that sets row_version to another value keeps that value (nothing
-- of the bridge's does; it is a new version like any other). (session 55, review)
DROP TRIGGER IF EXISTS accounts_version_update;
CREATE TRIGGER accounts_version_update AFTER UPDATE ON accounts
WHEN NEW.row_version IS OLD.row_version BEGIN
    UPDATE accounts SET row_version = random() WHERE rowid = NEW.rowid;
END;
