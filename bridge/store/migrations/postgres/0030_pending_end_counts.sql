-- SQLite's 0030 counts what the claims end of a chunked end while it runs. PostgreSQL ends an
-- account's waiting messages in one transaction: nothing is added here; the file keeps both
-- engines' numbers the same.
SELECT 1;
