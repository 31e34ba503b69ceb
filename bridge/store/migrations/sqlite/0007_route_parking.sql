-- A queued message whose route has no SMSC up is parked by the claim that finds it so (the route's
-- key here, q_not_before pushed out) instead of being claimed and released again and again ahead
-- of later messages for working routes; the dispatcher un-parks a key when its route comes back.
-- NULL: not parked. The partial index holds parked queued rows only, so un-parking a key (and
-- checking one with nothing parked) stays cheap however much the queue holds, and rows that left
-- the queue while parked (expired, erased) drop out of it.
ALTER TABLE messages ADD COLUMN q_park TEXT;
CREATE INDEX messages_parked ON messages(q_park) WHERE q_park IS NOT NULL AND q_state = 'queued';
