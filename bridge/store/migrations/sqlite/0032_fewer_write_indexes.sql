-- PostgreSQL's 0032 writes fewer index entries per message (one index by recipient, the
-- ledger's key by account). Nothing here; the file keeps both engines' numbers the same.
SELECT 1;
