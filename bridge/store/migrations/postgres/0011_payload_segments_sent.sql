-- segments_sent of payload messages awaiting their receipt, from PDUs to segments on the air
-- (see SQLite's 0011).
UPDATE messages SET segments_sent = segments
WHERE segments_sent = 1 AND segments > 1 AND state IN ('queued', 'sent')
  AND (SELECT COUNT(*) FROM segments s WHERE s.message_id = messages.id) = 1;
