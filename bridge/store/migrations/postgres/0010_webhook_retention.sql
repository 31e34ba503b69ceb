-- Delivered webhook reports are purged after a week (base.WEBHOOK_RETENTION_MS); the sweep finds
-- them by this partial index instead of scanning the whole outbox every few seconds.
CREATE INDEX webhook_delivered ON webhook_outbox(next_attempt_at) WHERE state = 'delivered';
