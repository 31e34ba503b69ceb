-- A long MO whose other parts never arrive is no longer dropped in silence: after
-- pipeline.mo_reassembly_timeout_s the parts that did arrive are stored as one MO, flagged.
-- parts_total: how many parts it announced; parts_received: the seq numbers that arrived, a JSON
-- list ("[1,3]"). Both NULL for a complete MO. mo_parts keeps the source's TON so such an MO's
-- sender is read (E.164 or national) like a complete one's; NULL for parts kept before this.
ALTER TABLE mo_inbox ADD COLUMN parts_total INTEGER;
ALTER TABLE mo_inbox ADD COLUMN parts_received TEXT;
ALTER TABLE mo_parts ADD COLUMN source_ton INTEGER;
