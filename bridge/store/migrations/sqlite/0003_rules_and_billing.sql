-- Sending rules and billing (service-rules.md). Money is integer micro-units.

ALTER TABLE accounts ADD COLUMN low_balance_threshold INTEGER NOT NULL DEFAULT 0;
ALTER TABLE accounts ADD COLUMN closed_at INTEGER;
-- How status reports and MO are pushed: native | aliyun (SmsReport / SmsUp arrays).
ALTER TABLE accounts ADD COLUMN report_format TEXT NOT NULL DEFAULT 'native';

-- verification | notification | marketing; NULL for free text. Frequency limits count by it.
ALTER TABLE messages ADD COLUMN kind TEXT;
-- How the message is billed: 'D' domestic, else the international price prefix ('+44'); NULL when
-- billing is off. Settlement groups by it.
ALTER TABLE messages ADD COLUMN price_class TEXT;

CREATE TABLE signs (
    account_id  TEXT NOT NULL,
    name        TEXT NOT NULL,
    canonical   TEXT NOT NULL,          -- the impersonation-comparison form (signs.canonical)
    source      TEXT NOT NULL,          -- company | trademark | app | website | other
    remark      TEXT NOT NULL DEFAULT '',
    status      TEXT NOT NULL DEFAULT 'pending',   -- pending | approved | rejected
    reason      TEXT,
    flag        TEXT,                   -- advisory for the reviewer (possible impersonation)
    created_at  INTEGER NOT NULL,
    reviewed_at INTEGER,
    PRIMARY KEY (account_id, name)
) WITHOUT ROWID;
CREATE INDEX signs_status ON signs(status, created_at);
CREATE INDEX signs_canonical ON signs(canonical);

-- Content is immutable once submitted (a change is a new template), so processes cache it.
CREATE TABLE templates (
    code        TEXT PRIMARY KEY,
    account_id  TEXT NOT NULL,
    kind        TEXT NOT NULL,          -- verification | notification | marketing
    name        TEXT NOT NULL,
    content     TEXT NOT NULL,
    remark      TEXT NOT NULL DEFAULT '',
    allow_urls  INTEGER NOT NULL DEFAULT 0,
    status      TEXT NOT NULL DEFAULT 'pending',   -- pending | approved | rejected
    reason      TEXT,
    created_at  INTEGER NOT NULL,
    reviewed_at INTEGER
) WITHOUT ROWID;
CREATE INDEX templates_account ON templates(account_id, created_at);
CREATE INDEX templates_status ON templates(status, created_at);

CREATE TABLE optouts (
    account_id TEXT NOT NULL,
    recipient  TEXT NOT NULL,
    source     TEXT NOT NULL,           -- mo | api
    created_at INTEGER NOT NULL,
    PRIMARY KEY (account_id, recipient)
) WITHOUT ROWID;

CREATE TABLE dnc_lists (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL,
    country     TEXT,
    numbers     INTEGER NOT NULL,
    prefixes    INTEGER NOT NULL,
    imported_at INTEGER NOT NULL
) WITHOUT ROWID;
-- An exact number is its own prefix: one lookup per prefix length of the recipient.
CREATE TABLE dnc_entries (
    prefix  TEXT NOT NULL,
    list_id TEXT NOT NULL,
    PRIMARY KEY (prefix, list_id)
) WITHOUT ROWID;
CREATE INDEX dnc_entries_list ON dnc_entries(list_id);

CREATE TABLE daily_counts (
    account_id TEXT NOT NULL,
    day        TEXT NOT NULL,           -- local date in rules.timezone
    messages   INTEGER NOT NULL,
    PRIMARY KEY (account_id, day)
) WITHOUT ROWID;

-- The ledger: append-only; balances are derived from it. `pockets` is its running sum per pocket,
-- written in the same transaction as the entries (`smpp-bridge bill check` recomputes and compares).
CREATE TABLE ledger (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    account_id TEXT NOT NULL,
    kind       TEXT NOT NULL,
    amount     INTEGER NOT NULL,
    pocket     TEXT NOT NULL,
    at         INTEGER NOT NULL,
    ref        TEXT,
    expires_at INTEGER
);
CREATE INDEX ledger_account_ref ON ledger(account_id, ref);

CREATE TABLE pockets (
    account_id TEXT NOT NULL,
    pocket     TEXT NOT NULL,
    amount     INTEGER NOT NULL,
    expires_at INTEGER,
    PRIMARY KEY (account_id, pocket)
) WITHOUT ROWID;

-- Versions are never edited: a price change is a new row with a later effective time.
CREATE TABLE tariffs (
    version      TEXT PRIMARY KEY,
    effective_at INTEGER NOT NULL UNIQUE,
    body         TEXT NOT NULL,         -- JSON (bridge.billing.tariff_json)
    created_at   INTEGER NOT NULL
) WITHOUT ROWID;

CREATE TABLE bills (
    account_id TEXT NOT NULL,
    month      TEXT NOT NULL,           -- YYYY-MM
    body       TEXT NOT NULL,           -- JSON of the settled bill
    settled_at INTEGER NOT NULL,
    PRIMARY KEY (account_id, month)
) WITHOUT ROWID;
