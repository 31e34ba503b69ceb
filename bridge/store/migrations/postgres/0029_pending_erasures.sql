-- SQLite's 0029 records an erasure's masking of stored idempotent answers going on in chunks.
-- PostgreSQL masks them in the erasure's one transaction, which holds the rows it writes, not
-- every writer: nothing is added here; the file keeps both engines' numbers the same.
SELECT 1;
