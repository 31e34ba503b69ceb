-- The sender (instance id) holding a report's lease while its POST is in flight; NULL when no
-- sender holds it. A restarted daemon gives back the leases of the one that died at once,
-- instead of waiting out each lease (3 x webhooks.timeout_s + 10 s), and a retry's back-off
-- is told apart from a lease.
ALTER TABLE webhook_outbox ADD COLUMN leased_by TEXT;
