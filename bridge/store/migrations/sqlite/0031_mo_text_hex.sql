-- Whether an inbound message's text is the hex of its octets (a binary coding, or octets that are
-- not text in their coding) rather than text: the MO webhook says so (`text_hex`), so a receiver
-- can tell "48656c6c6f" sent as hex from the same digits sent as text.
ALTER TABLE mo_inbox ADD COLUMN text_hex INTEGER NOT NULL DEFAULT 0;
