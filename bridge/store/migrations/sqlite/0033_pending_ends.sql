-- PostgreSQL's 0033 adds pending_ends (and the messages' sequence numbers its ends are bounded
-- by) to end an account's waiting messages in pages of their own transactions, as SQLite's 0024
-- and 0030 did here; nothing is added to SQLite. The file keeps both engines' numbers the same.
SELECT 1;
