-- What the claims' guard ended of a chunked end (sqlite_ends.guard) while the end ran: its
-- request answers once all are ended, and its count (messages_ended) left them out, though
-- the README promised they were in it; with a due backlog (the dispatcher claiming all the
-- time) a sign's delete answered a third of what it ended.
ALTER TABLE pending_ends ADD COLUMN guarded INTEGER NOT NULL DEFAULT 0;
