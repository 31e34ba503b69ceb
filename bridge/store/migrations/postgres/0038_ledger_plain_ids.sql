-- SQLite's 0038 rebuilds its ledger without AUTOINCREMENT (a read and a write of
-- sqlite_sequence at every insert). PostgreSQL's ids come from a sequence, unchanged. Nothing
-- here; the file keeps both engines' numbers the same.
SELECT 1;
