-- One index by recipient, not two (as PostgreSQL's 0032; README, Architecture note 21):
-- (recipient, account_id, accepted_at) serves the reads by (account, recipient) (frequency
-- history, the `to` filter, an erasure's) as the account-first index did, and a reply's
-- attribution by recipient alone as `messages_recipient` did. Each message's insert wrote an
-- entry into both; with real traffic's recipients each lands on a page of its own.
CREATE INDEX messages_recipient_account ON messages(recipient, account_id, accepted_at);
DROP INDEX messages_account_recipient;
DROP INDEX messages_recipient;
