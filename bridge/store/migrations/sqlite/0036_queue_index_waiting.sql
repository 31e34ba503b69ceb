-- The queue index holds only the messages still waiting or on a bind (Architecture note 22).
-- Every message ends 'done', and its entry stayed: moved by the roll-up's UPDATE into a 'done'
-- range no read uses (the reads by q_state ask for 'queued' or 'claimed'; retention keeps off the
-- index with `+q_state`), so each message paid an index insert in the owner's write lock, and the
-- index grew with the whole history. The reads name 'queued' or 'claimed' (or both as an OR),
-- which SQLite proves covered by this condition.
DROP INDEX messages_queue;
CREATE INDEX messages_queue ON messages(q_state, account_id, q_not_before)
    WHERE q_state = 'queued' OR q_state = 'claimed';
