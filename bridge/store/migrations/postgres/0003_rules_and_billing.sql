-- Sending rules and billing (service-rules.md), PostgreSQL flavour of migrations/sqlite/0003: the
-- same tables and columns. Times are BIGINT unix milliseconds, money BIGINT micro-units; ids and
-- keys compare bytewise (COLLATE "C") as in SQLite, so list orders and cursors agree.

ALTER TABLE accounts ADD COLUMN low_balance_threshold BIGINT NOT NULL DEFAULT 0;
ALTER TABLE accounts ADD COLUMN closed_at BIGINT;
-- How status reports and MO are pushed: native | aliyun (SmsReport / SmsUp arrays).
ALTER TABLE accounts ADD COLUMN report_format TEXT NOT NULL DEFAULT 'native';

-- verification | notification | marketing; NULL for free text. Frequency limits count by it.
ALTER TABLE messages ADD COLUMN kind TEXT COLLATE "C";
-- How the message is billed: 'D' domestic, else the international price prefix ('+44'); NULL when
-- billing is off. Settlement groups by it.
ALTER TABLE messages ADD COLUMN price_class TEXT COLLATE "C";

CREATE TABLE signs (
    account_id  TEXT COLLATE "C" NOT NULL,
    name        TEXT COLLATE "C" NOT NULL,
    canonical   TEXT COLLATE "C" NOT NULL,      -- the impersonation-comparison form
    source      TEXT NOT NULL,                  -- company | trademark | app | website | other
    remark      TEXT NOT NULL DEFAULT '',
    status      TEXT COLLATE "C" NOT NULL DEFAULT 'pending',   -- pending | approved | rejected
    reason      TEXT,
    flag        TEXT,                           -- advisory for the reviewer
    created_at  BIGINT NOT NULL,
    reviewed_at BIGINT,
    PRIMARY KEY (account_id, name)
);
CREATE INDEX signs_status ON signs(status, created_at);
CREATE INDEX signs_canonical ON signs(canonical);

-- Content is immutable once submitted (a change is a new template), so processes cache it.
CREATE TABLE templates (
    code        TEXT COLLATE "C" PRIMARY KEY,
    account_id  TEXT COLLATE "C" NOT NULL,
    kind        TEXT COLLATE "C" NOT NULL,      -- verification | notification | marketing
    name        TEXT NOT NULL,
    content     TEXT NOT NULL,
    remark      TEXT NOT NULL DEFAULT '',
    allow_urls  BOOLEAN NOT NULL DEFAULT FALSE,
    status      TEXT COLLATE "C" NOT NULL DEFAULT 'pending',   -- pending | approved | rejected
    reason      TEXT,
    created_at  BIGINT NOT NULL,
    reviewed_at BIGINT
);
CREATE INDEX templates_account ON templates(account_id, created_at);
CREATE INDEX templates_status ON templates(status, created_at);

CREATE TABLE optouts (
    account_id TEXT COLLATE "C" NOT NULL,
    recipient  TEXT COLLATE "C" NOT NULL,
    source     TEXT NOT NULL,                   -- mo | api
    created_at BIGINT NOT NULL,
    PRIMARY KEY (account_id, recipient)
);

CREATE TABLE dnc_lists (
    id          TEXT COLLATE "C" PRIMARY KEY,
    name        TEXT NOT NULL,
    country     TEXT,
    numbers     BIGINT NOT NULL,
    prefixes    BIGINT NOT NULL,
    imported_at BIGINT NOT NULL
);
-- An exact number is its own prefix: one lookup (prefix = ANY(...)) covers every prefix length.
CREATE TABLE dnc_entries (
    prefix  TEXT COLLATE "C" NOT NULL,
    list_id TEXT COLLATE "C" NOT NULL,
    PRIMARY KEY (prefix, list_id)
);
CREATE INDEX dnc_entries_list ON dnc_entries(list_id);

CREATE TABLE daily_counts (
    account_id TEXT COLLATE "C" NOT NULL,
    day        TEXT COLLATE "C" NOT NULL,       -- local date in rules.timezone
    messages   BIGINT NOT NULL,
    PRIMARY KEY (account_id, day)
);

-- The ledger: append-only; balances are derived from it. `pockets` is its running sum per pocket,
-- written in the same transaction as the entries (`smpp-bridge bill check` recomputes and compares).
CREATE TABLE ledger (
    id         BIGSERIAL PRIMARY KEY,
    account_id TEXT COLLATE "C" NOT NULL,
    kind       TEXT COLLATE "C" NOT NULL,
    amount     BIGINT NOT NULL,
    pocket     TEXT COLLATE "C" NOT NULL,
    at         BIGINT NOT NULL,
    ref        TEXT COLLATE "C",
    expires_at BIGINT
);
CREATE INDEX ledger_account_ref ON ledger(account_id, ref);
CREATE INDEX ledger_account_id ON ledger(account_id, id);   -- ledger_page's cursor

CREATE TABLE pockets (
    account_id TEXT COLLATE "C" NOT NULL,
    pocket     TEXT COLLATE "C" NOT NULL,
    amount     BIGINT NOT NULL,
    expires_at BIGINT,
    PRIMARY KEY (account_id, pocket)
);

-- Versions are never edited: a price change is a new row with a later effective time.
CREATE TABLE tariffs (
    version      TEXT COLLATE "C" PRIMARY KEY,
    effective_at BIGINT NOT NULL UNIQUE,
    body         TEXT NOT NULL,                 -- JSON (bridge.billing.tariff_json)
    created_at   BIGINT NOT NULL
);

CREATE TABLE bills (
    account_id TEXT COLLATE "C" NOT NULL,
    month      TEXT COLLATE "C" NOT NULL,       -- YYYY-MM
    body       TEXT NOT NULL,                   -- JSON of the settled bill
    settled_at BIGINT NOT NULL,
    PRIMARY KEY (account_id, month)
);
