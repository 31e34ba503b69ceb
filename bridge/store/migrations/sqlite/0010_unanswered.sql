-- Claims whose submit went unanswered (a timeout, a lost connection), apart from q_attempts (all
-- claims): three unanswered resends at most, whatever transient errors came before them. On the
-- claim count, two ESME_RSYSERR tries and then one timeout wrote a message off as unknown.
ALTER TABLE messages ADD COLUMN q_unanswered INTEGER NOT NULL DEFAULT 0;
