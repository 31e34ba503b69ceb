-- store.retention_days purges MO older than the retention (bridge/retention.py); this index finds
-- them without reading the whole inbox every minute.
CREATE INDEX mo_inbox_received ON mo_inbox(received_at);
