-- The sign name of the message an MO replies to, pushed with it (service rules: replies go to the
-- customer with the sign/extension they answer).
ALTER TABLE mo_inbox ADD COLUMN sign_name TEXT;
-- When a dead letter was last replayed: its retry window runs from then, not from its creation
-- (a report dead after a day-long outage got one attempt after a replay).
ALTER TABLE webhook_outbox ADD COLUMN retry_from BIGINT;
