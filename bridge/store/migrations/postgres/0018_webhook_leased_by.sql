-- The sender (instance id) holding a report's lease while its POST is in flight; NULL when no
-- sender holds it. The leases of an instance that is gone (the test of abandoned message
-- claims) are given back at once, instead of each waiting out its lease
-- (3 x webhooks.timeout_s + 10 s), and a retry's back-off is told apart from a lease.
ALTER TABLE webhook_outbox ADD COLUMN leased_by TEXT;
CREATE INDEX webhook_leased ON webhook_outbox(leased_by) WHERE leased_by IS NOT NULL;
