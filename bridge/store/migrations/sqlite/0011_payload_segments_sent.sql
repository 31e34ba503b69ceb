-- Releases before 122e780 counted segments_sent in PDUs; it counts segments on the air now. A
-- message sent as one message_payload PDU (split: payload) that the SMSC splits into several
-- segments, its receipt still owed at the upgrade, read 1 of N sent: refunded (N-1)/N of an
-- international charge at its receipt, and reported sent 1, delivered N. Only such a message
-- has one part row and more than one segment; final ones were settled under the old count.
UPDATE messages SET segments_sent = segments
WHERE segments_sent = 1 AND segments > 1 AND state IN ('queued', 'sent')
  AND (SELECT COUNT(*) FROM segments s WHERE s.message_id = messages.id) = 1;
