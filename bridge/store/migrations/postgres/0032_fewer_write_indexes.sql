-- Fewer index entries per message written (README, Architecture note 21). Every update of a
-- message row changes an indexed column (the queue's state, the state `messages_open` follows),
-- so each is a new row version with an entry in every index whose condition it meets; the
-- indexes on columns that never change are paid at the insert and at each of those updates.
--
-- One index by recipient, not two: (recipient, account_id, accepted_at) serves the reads by
-- (account, recipient) (frequency history, the `to` filter, an erasure's) as the account-first
-- index did, and a reply's attribution by recipient alone as `messages_recipient` did.
CREATE INDEX messages_recipient_account ON messages(recipient, account_id, accepted_at);
DROP INDEX messages_account_recipient;
DROP INDEX messages_recipient;

-- The ledger's key leads with the account: every read is an account's (its page by id, its
-- sums, a message's charges by ref), so (account_id, id) serves ledger_page's cursor as
-- `ledger_account_id` did, and an entry is written to two indexes instead of three.
CREATE UNIQUE INDEX ledger_account_pkey ON ledger(account_id, id);
ALTER TABLE ledger DROP CONSTRAINT ledger_pkey;
ALTER TABLE ledger ADD CONSTRAINT ledger_pkey PRIMARY KEY USING INDEX ledger_account_pkey;
DROP INDEX ledger_account_id;
