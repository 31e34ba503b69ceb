-- Claims whose submit went unanswered, apart from q_attempts (see SQLite's 0010).
ALTER TABLE messages ADD COLUMN q_unanswered INTEGER NOT NULL DEFAULT 0;
