-- Source addresses an operator assigned to the account (bridge/domain/senders.py): a JSON list of
-- numbers, alphanumeric ids and extension ranges ("106900*"). NULL: not restricted.
ALTER TABLE accounts ADD COLUMN senders TEXT;
