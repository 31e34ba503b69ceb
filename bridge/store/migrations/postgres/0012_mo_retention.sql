-- store.retention_days purges MO and dead-lettered webhook reports older than the retention
-- (bridge/retention.py); these indexes find them without reading the whole inbox or outbox every
-- minute.
CREATE INDEX mo_inbox_received ON mo_inbox(received_at);
CREATE INDEX webhook_dead_age ON webhook_outbox(next_attempt_at) WHERE state = 'dead';
-- A dead letter goes with the message or MO it reports on (replayed after that, it would be
-- booked delivered with nothing sent): found by its reference among the few dead rows.
CREATE INDEX webhook_dead_ref ON webhook_outbox(ref_id) WHERE state = 'dead';
