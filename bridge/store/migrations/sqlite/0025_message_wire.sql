-- The wire options each message's parts were encoded for (bridge/text/split.py wire_code: split,
-- packing, Latin-1, GSM data_coding), written at acceptance and by every re-encoding. The
-- dispatcher compares it with its route's options as it claims: a message accepted by a process
-- still on the configuration before a reload (an acceptor that had not reloaded yet, or a send
-- encoded just before the reload and committed after the re-encoding pass) is encoded again
-- before it leaves. NULL: accepted before this column (the route table's pass covers those).
ALTER TABLE messages ADD COLUMN wire INTEGER;
