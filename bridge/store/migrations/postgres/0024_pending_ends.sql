-- SQLite's 0024 adds the table of waiting messages still being ended in chunks. PostgreSQL ends
-- them in the one transaction that makes the change: it holds only the rows it ends (and the
-- account's), not every writer's lock, so nothing is added here; the file keeps both engines'
-- numbers the same.
SELECT 1;
