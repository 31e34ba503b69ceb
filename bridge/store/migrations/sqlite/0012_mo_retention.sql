-- store.retention_days purges MO older than the retention (bridge/retention.py); this index finds
-- them without reading the whole inbox every minute.
CREATE INDEX mo_inbox_received ON mo_inbox(received_at);
-- A dead letter goes with the message or MO it reports on (replayed after that, it would be
-- booked delivered with nothing sent): found by its reference among the few dead rows.
CREATE INDEX webhook_dead_ref ON webhook_outbox(ref_id) WHERE state = 'dead';
