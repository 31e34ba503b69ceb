-- Whether an inbound message's text is the hex of its octets (see SQLite's 0031).
ALTER TABLE mo_inbox ADD COLUMN text_hex BOOLEAN NOT NULL DEFAULT false;
