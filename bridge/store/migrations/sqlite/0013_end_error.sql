-- Why a message on a bind was ended while it was there (an opt-out, a disabled account, a deleted
-- template or sign, an erasure): if it comes back to the queue (a throttle, a timeout), its next
-- claim or the sweep ends it unsent with this code instead of sending it (rules_rows.END_ERROR).
ALTER TABLE messages ADD COLUMN end_error TEXT;
