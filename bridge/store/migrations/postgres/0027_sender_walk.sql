-- SQLite's 0027 records a change of assigned senders whose waiting messages are still being
-- walked in chunks. PostgreSQL ends them in the change's one transaction: it holds the rows it
-- ends, not every writer's lock, so nothing is added here; the file keeps both engines' numbers
-- the same.
SELECT 1;
