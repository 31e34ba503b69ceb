-- The low-balance mark: when the account was warned of the dip its balance is in (NULL: not
-- warned since its balance was last at or above its threshold, or since the threshold changed).
-- A warning fired only on the step across the threshold, so an account that was never above it
-- was never warned; with the mark, the first charge or expiry that leaves the balance below
-- warns once (ledger.warns_low_balance).
ALTER TABLE accounts ADD COLUMN low_warned_at INTEGER;
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

-- Accounts closed before this release kept the money their pockets held, with no ledger entry
-- saying where it went, though a closed account can take and spend nothing. Written off as a
-- close now does (admission.close_plan), dated at the close: cash as `closed` (owed back to
-- the customer), a voucher's or card's remainder as void (`voucher_void`, `card_void`), or as
-- expired at its expiry when it had expired by the close. A negative cash sum (a debt) stays.
INSERT INTO ledger (account_id, kind, amount, pocket, at, ref, expires_at)
SELECT p.account_id,
    CASE WHEN p.pocket = 'cash' THEN 'closed'
         WHEN p.expires_at IS NOT NULL AND p.expires_at <= COALESCE(a.closed_at, a.updated_at)
             THEN CASE WHEN p.pocket LIKE 'voucher:%' THEN 'voucher_expire' ELSE 'card_expire' END
         WHEN p.pocket LIKE 'voucher:%' THEN 'voucher_void'
         ELSE 'card_void' END,
    -p.amount,
    p.pocket,
    CASE WHEN p.pocket <> 'cash' AND p.expires_at IS NOT NULL
              AND p.expires_at <= COALESCE(a.closed_at, a.updated_at) THEN p.expires_at
         ELSE COALESCE(a.closed_at, a.updated_at) END,
    CASE WHEN p.pocket = 'cash' THEN NULL
         WHEN p.pocket LIKE 'voucher:%' THEN substr(p.pocket, 9)
         ELSE substr(p.pocket, 6) END,
    CASE WHEN p.pocket = 'cash' THEN NULL ELSE p.expires_at END
FROM pockets p JOIN accounts a ON a.id = p.account_id
WHERE a.status = 'closed' AND p.amount > 0
  AND (p.pocket = 'cash' OR p.pocket LIKE 'voucher:%' OR p.pocket LIKE 'card:%')
ORDER BY p.account_id, p.pocket;
UPDATE pockets SET amount = 0
WHERE amount > 0 AND (pocket = 'cash' OR pocket LIKE 'voucher:%' OR pocket LIKE 'card:%')
  AND account_id IN (SELECT id FROM accounts WHERE status = 'closed');
