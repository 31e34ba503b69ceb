-- SQLite's 0023 adds the partial index of queued messages by validity that PostgreSQL has had
-- from 0001 (messages_expiring); kept here so both engines' numbers stay the same.
CREATE INDEX IF NOT EXISTS messages_expiring ON messages(expires_at)
    WHERE q_state = 'queued' AND expires_at IS NOT NULL;
