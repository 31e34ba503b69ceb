-- smpp-bridge schema v1 (SQLite). Times are integer unix milliseconds (UTC); money is integer
-- micro-units. The PostgreSQL engine carries the same tables with its own types.

CREATE TABLE accounts (
    id                  TEXT PRIMARY KEY,
    name                TEXT NOT NULL UNIQUE,
    kind                TEXT NOT NULL DEFAULT 'prepaid',      -- prepaid | postpaid
    raw_text            INTEGER NOT NULL DEFAULT 0,
    marketing           INTEGER NOT NULL DEFAULT 0,
    default_country     TEXT,                                 -- ISO 3166 alpha-2, or NULL
    tps                 INTEGER NOT NULL DEFAULT 0,           -- 0 = unlimited
    daily_quota         INTEGER NOT NULL DEFAULT 0,           -- 0 = unlimited
    status_callback_url TEXT,
    mo_callback_url     TEXT,
    webhook_secret_enc  BLOB NOT NULL,
    status              TEXT NOT NULL DEFAULT 'active',       -- active | disabled
    created_at          INTEGER NOT NULL,
    updated_at          INTEGER NOT NULL
);

CREATE TABLE app_keys (
    key_id       TEXT PRIMARY KEY,
    account_id   TEXT NOT NULL REFERENCES accounts(id),
    secret_enc   BLOB NOT NULL,
    status       TEXT NOT NULL DEFAULT 'active',              -- active | revoked
    created_at   INTEGER NOT NULL,
    revoked_at   INTEGER
);
CREATE INDEX app_keys_account ON app_keys(account_id);

CREATE TABLE nonces (
    key_id     TEXT NOT NULL,
    nonce      TEXT NOT NULL,
    expires_at INTEGER NOT NULL,
    PRIMARY KEY (key_id, nonce)
) WITHOUT ROWID;
CREATE INDEX nonces_expiry ON nonces(expires_at);

CREATE TABLE idempotency (
    account_id   TEXT NOT NULL,
    key          TEXT NOT NULL,
    request_hash TEXT NOT NULL,
    status_code  INTEGER NOT NULL,
    response     BLOB NOT NULL,
    expires_at   INTEGER NOT NULL,
    PRIMARY KEY (account_id, key)
) WITHOUT ROWID;
CREATE INDEX idempotency_expiry ON idempotency(expires_at);

-- One row per recipient. q_* columns are the dispatch queue: a message is claimed whole so its
-- segments go out in order on one bind.
CREATE TABLE messages (
    id                 TEXT PRIMARY KEY,
    account_id         TEXT NOT NULL,
    batch_id           TEXT NOT NULL,
    client_ref         TEXT,
    recipient          TEXT NOT NULL,
    sender             TEXT,
    sign_name          TEXT,
    template           TEXT,
    text               TEXT,
    encoding           TEXT NOT NULL,
    data_coding        INTEGER NOT NULL,
    segments           INTEGER NOT NULL,
    billable_units     INTEGER NOT NULL,
    segments_sent      INTEGER NOT NULL DEFAULT 0,
    segments_delivered INTEGER NOT NULL DEFAULT 0,
    segments_failed    INTEGER NOT NULL DEFAULT 0,
    state              TEXT NOT NULL DEFAULT 'queued',
    error_code         TEXT,
    error_text         TEXT,
    smsc               TEXT,
    accepted_at        INTEGER NOT NULL,
    scheduled_at       INTEGER,
    expires_at         INTEGER,
    sent_at            INTEGER,
    done_at            INTEGER,
    q_state            TEXT NOT NULL DEFAULT 'queued',        -- queued | claimed | done
    q_not_before       INTEGER NOT NULL,
    q_claimed_by       TEXT,
    q_lease_until      INTEGER,
    q_attempts         INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX messages_queue ON messages(q_state, account_id, q_not_before);
CREATE INDEX messages_account_time ON messages(account_id, accepted_at);
CREATE INDEX messages_account_recipient ON messages(account_id, recipient, accepted_at);
CREATE INDEX messages_recipient ON messages(recipient, accepted_at);
CREATE INDEX messages_open ON messages(state, sent_at) WHERE state = 'sent';

CREATE TABLE segments (
    message_id    TEXT NOT NULL,
    seq           INTEGER NOT NULL,
    total         INTEGER NOT NULL,
    state         TEXT NOT NULL DEFAULT 'queued',  -- queued|sent|delivered|undeliverable|expired|rejected|unknown|failed
    esm_class     INTEGER NOT NULL,
    short_message BLOB NOT NULL,
    tlvs          BLOB NOT NULL,                   -- concatenated raw TLVs (tag, length, value)
    smsc          TEXT,
    smsc_msg_id   TEXT,                            -- normalised per SMSC, the receipt key
    smsc_msg_id_raw TEXT,
    attempts      INTEGER NOT NULL DEFAULT 0,
    submitted_at  INTEGER,
    done_at       INTEGER,
    error_code    TEXT,
    PRIMARY KEY (message_id, seq)
) WITHOUT ROWID;
CREATE INDEX segments_smsc_id ON segments(smsc, smsc_msg_id) WHERE smsc_msg_id IS NOT NULL;

-- Receipts that matched no segment yet (often because the submit_sm_resp is still in flight).
CREATE TABLE pending_receipts (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    smsc        TEXT NOT NULL,
    smsc_msg_id TEXT NOT NULL,
    state       TEXT NOT NULL,
    stat        TEXT,
    err         TEXT,
    done_at     INTEGER,
    received_at INTEGER NOT NULL,
    raw         TEXT
);
CREATE INDEX pending_receipts_key ON pending_receipts(smsc, smsc_msg_id);
CREATE INDEX pending_receipts_age ON pending_receipts(received_at);

CREATE TABLE webhook_outbox (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    webhook_id      TEXT NOT NULL UNIQUE,
    account_id      TEXT NOT NULL,
    kind            TEXT NOT NULL,                 -- status | mo | event
    ref_id          TEXT,                          -- message id (status) or MO id (mo)
    payload         TEXT,                          -- JSON object for events; status/mo render at send
    state           TEXT NOT NULL DEFAULT 'pending',  -- pending | delivered | dead
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at INTEGER NOT NULL,
    last_error      TEXT,
    created_at      INTEGER NOT NULL,
    delivered_at    INTEGER
);
CREATE INDEX webhook_due ON webhook_outbox(state, next_attempt_at);

CREATE TABLE mo_parts (
    smsc        TEXT NOT NULL,
    source      TEXT NOT NULL,
    destination TEXT NOT NULL,
    ref         INTEGER NOT NULL,
    total       INTEGER NOT NULL,
    seq         INTEGER NOT NULL,
    data_coding INTEGER NOT NULL,
    payload     BLOB NOT NULL,
    received_at INTEGER NOT NULL,
    PRIMARY KEY (smsc, source, destination, ref, seq)
) WITHOUT ROWID;

CREATE TABLE mo_inbox (
    id          TEXT PRIMARY KEY,
    account_id  TEXT,
    smsc        TEXT NOT NULL,
    source      TEXT NOT NULL,
    destination TEXT NOT NULL,
    text        TEXT,
    received_at INTEGER NOT NULL
);
CREATE INDEX mo_inbox_account ON mo_inbox(account_id, received_at);
