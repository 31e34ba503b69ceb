-- SQLite's 0036 keeps only the waiting and claimed messages in its queue index. PostgreSQL's
-- queue indexes are partial already (0001), so nothing is changed here; the file keeps both
-- engines' numbers the same.
SELECT 1;
