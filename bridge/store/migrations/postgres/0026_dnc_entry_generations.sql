-- SQLite's 0026 marks do-not-contact entries with their import's generation, so that an import
-- can go in chunks there. PostgreSQL imports a list in one transaction: it holds the rows it
-- writes, not every writer's lock, so nothing is added here; the file keeps both engines'
-- numbers the same.
SELECT 1;
