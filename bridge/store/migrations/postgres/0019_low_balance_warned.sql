-- The low-balance mark: when the account was warned of the dip its balance is in (NULL: not
-- warned since its balance was last at or above its threshold, or since the threshold changed).
-- A warning fired only on the step across the threshold, so an account that was never above it
-- was never warned; with the mark, the first charge or expiry that leaves the balance below
-- warns once (ledger.warns_low_balance).
ALTER TABLE accounts ADD COLUMN low_warned_at BIGINT;
-- An account whose last warning (an event still in the outbox) came after its last money in
-- was warned for the dip it is in: marked, so the upgrade does not warn it a second time. Any
-- other account below its threshold is warned once at its next charge (a credit in the same
-- millisecond as the warning counts as before it).
UPDATE accounts SET low_warned_at = (
    SELECT MAX(w.created_at) FROM webhook_outbox w
    WHERE w.account_id = accounts.id AND w.kind = 'event'
      AND w.payload LIKE '{"event":"balance.low"%'
) WHERE low_balance_threshold > 0;
UPDATE accounts SET low_warned_at = NULL
WHERE low_warned_at IS NOT NULL AND low_warned_at < (
    SELECT MAX(l.at) FROM ledger l
    WHERE l.account_id = accounts.id AND l.amount > 0
      AND (l.pocket = 'cash' OR l.pocket LIKE 'voucher:%')
);
