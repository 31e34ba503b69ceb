-- An account's waiting messages ended in pages of their own transactions (postgres_pending_ends):
-- in one transaction a disable with a million waiting took minutes and 2 GB of WAL, and every
-- claim of every account skipped the million rows it held, 3-5 s each. A row of pending_ends is
-- an end still under way: the claims end the messages it covers instead of claiming them, and
-- the sweep finishes one whose process stopped. `scope` names the filter
-- (postgres_pending_ends.SCOPES) and `value` its argument; (`after_nb`, `after_id`) is how far
-- it went in the queue index messages_queue (account_id, q_not_before, id).
--
-- An end covers the messages that existed when it started: `max_seq`, the last value of
-- messages_seq then. Text ids and several hosts' clocks cannot tell which came after. The
-- default is set after the column is added, so the table is not rewritten: rows from before
-- stay NULL, older than any end (covered).
CREATE SEQUENCE messages_seq;
ALTER TABLE messages ADD COLUMN seq BIGINT;
ALTER TABLE messages ALTER COLUMN seq SET DEFAULT nextval('messages_seq');
ALTER SEQUENCE messages_seq OWNED BY messages.seq;
CREATE TABLE pending_ends (
    id          BIGSERIAL PRIMARY KEY,
    account_id  TEXT NOT NULL,
    scope       TEXT NOT NULL,
    value       TEXT,
    error       TEXT NOT NULL,
    ended_at    BIGINT NOT NULL,
    max_seq     BIGINT NOT NULL,
    after_nb    BIGINT NOT NULL,
    after_id    TEXT COLLATE "C" NOT NULL,
    worked_at   BIGINT NOT NULL
);
-- What the claims' guard ended of an end while it ran, counted in its request's answer. A row
-- per claim, not a counter in pending_ends: a page holds its end's row locked while it waits
-- for the claims' message rows, and a claim updating that row with its candidates locked would
-- wait for the page in turn (a deadlock).
CREATE TABLE pending_end_guards (
    end_id      BIGINT NOT NULL,
    n           INTEGER NOT NULL
);
