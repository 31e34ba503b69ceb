-- A rotated webhook secret signs beside the new one until prev_webhook_secret_until, so a
-- customer's receiver keeps verifying while it is updated (`account rotate-webhook-secret
-- --overlap-hours`). Sealed like the current one (associated data: the account id).
ALTER TABLE accounts ADD COLUMN prev_webhook_secret_enc BYTEA;
ALTER TABLE accounts ADD COLUMN prev_webhook_secret_until BIGINT;
