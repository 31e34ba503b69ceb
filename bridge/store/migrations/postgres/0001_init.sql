-- smpp-bridge schema v1 (PostgreSQL). The same tables and meaning as migrations/sqlite/0001: times
-- are BIGINT unix milliseconds (UTC), money integer micro-units, blobs BYTEA. Identifiers compare
-- and sort bytewise (COLLATE "C") whatever the database's locale, as they do in SQLite: cursors
-- (`id < $1`) and claim order depend on it.

CREATE TABLE accounts (
    id                  TEXT COLLATE "C" PRIMARY KEY,
    name                TEXT COLLATE "C" NOT NULL UNIQUE,
    kind                TEXT NOT NULL DEFAULT 'prepaid',      -- prepaid | postpaid
    raw_text            BOOLEAN NOT NULL DEFAULT FALSE,
    marketing           BOOLEAN NOT NULL DEFAULT FALSE,
    default_country     TEXT,                                 -- ISO 3166 alpha-2, or NULL
    tps                 INTEGER NOT NULL DEFAULT 0,           -- 0 = unlimited
    daily_quota         INTEGER NOT NULL DEFAULT 0,           -- 0 = unlimited
    status_callback_url TEXT,
    mo_callback_url     TEXT,
    webhook_secret_enc  BYTEA NOT NULL,
    status              TEXT NOT NULL DEFAULT 'active',       -- active | disabled
    created_at          BIGINT NOT NULL,
    updated_at          BIGINT NOT NULL
);

CREATE TABLE app_keys (
    key_id       TEXT COLLATE "C" PRIMARY KEY,
    account_id   TEXT COLLATE "C" NOT NULL REFERENCES accounts(id),
    secret_enc   BYTEA NOT NULL,
    status       TEXT NOT NULL DEFAULT 'active',              -- active | revoked
    created_at   BIGINT NOT NULL,
    revoked_at   BIGINT
);
CREATE INDEX app_keys_account ON app_keys(account_id);

CREATE TABLE nonces (
    key_id     TEXT COLLATE "C" NOT NULL,
    nonce      TEXT COLLATE "C" NOT NULL,
    expires_at BIGINT NOT NULL,
    PRIMARY KEY (key_id, nonce)
);
CREATE INDEX nonces_expiry ON nonces(expires_at);

CREATE TABLE idempotency (
    account_id   TEXT COLLATE "C" NOT NULL,
    key          TEXT COLLATE "C" NOT NULL,
    request_hash TEXT NOT NULL,
    status_code  INTEGER NOT NULL,
    response     BYTEA NOT NULL,
    expires_at   BIGINT NOT NULL,
    PRIMARY KEY (account_id, key)
);
CREATE INDEX idempotency_expiry ON idempotency(expires_at);

-- One row per recipient. q_* columns are the dispatch queue: a message is claimed whole so its
-- segments go out in order on one bind. Rows are updated a few times each (claim, results,
-- receipts): free space per page lets those be HOT updates.
CREATE TABLE messages (
    id                 TEXT COLLATE "C" PRIMARY KEY,
    account_id         TEXT COLLATE "C" NOT NULL,
    batch_id           TEXT COLLATE "C" NOT NULL,
    client_ref         TEXT,
    recipient          TEXT COLLATE "C" NOT NULL,
    sender             TEXT COLLATE "C",
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
    state              TEXT COLLATE "C" NOT NULL DEFAULT 'queued',
    error_code         TEXT,
    error_text         TEXT,
    smsc               TEXT COLLATE "C",
    accepted_at        BIGINT NOT NULL,
    scheduled_at       BIGINT,
    expires_at         BIGINT,
    sent_at            BIGINT,
    done_at            BIGINT,
    q_state            TEXT COLLATE "C" NOT NULL DEFAULT 'queued',  -- queued | claimed | done
    q_not_before       BIGINT NOT NULL,
    q_claimed_by       TEXT COLLATE "C",
    q_lease_until      BIGINT,
    q_attempts         INTEGER NOT NULL DEFAULT 0
) WITH (fillfactor = 80);
-- The queue: only unsent rows are indexed, so the index stays as small as the backlog.
CREATE INDEX messages_queue ON messages(account_id, q_not_before, id) WHERE q_state = 'queued';
CREATE INDEX messages_queue_age ON messages(q_not_before, id) WHERE q_state = 'queued';
CREATE INDEX messages_claimed ON messages(q_claimed_by, q_lease_until) WHERE q_state = 'claimed';
CREATE INDEX messages_expiring ON messages(expires_at)
    WHERE q_state = 'queued' AND expires_at IS NOT NULL;
CREATE INDEX messages_account_time ON messages(account_id, accepted_at);
CREATE INDEX messages_account_recipient ON messages(account_id, recipient, accepted_at);
CREATE INDEX messages_recipient ON messages(recipient, accepted_at);
CREATE INDEX messages_open ON messages(sent_at) WHERE state = 'sent';

CREATE TABLE segments (
    message_id    TEXT COLLATE "C" NOT NULL,
    seq           INTEGER NOT NULL,
    total         INTEGER NOT NULL,
    state         TEXT COLLATE "C" NOT NULL DEFAULT 'queued',
    esm_class     INTEGER NOT NULL,
    short_message BYTEA NOT NULL,
    tlvs          BYTEA NOT NULL,                  -- concatenated raw TLVs (tag, length, value)
    smsc          TEXT COLLATE "C",
    smsc_msg_id   TEXT COLLATE "C",                -- normalised per SMSC, the receipt key
    smsc_msg_id_raw TEXT,
    attempts      INTEGER NOT NULL DEFAULT 0,
    submitted_at  BIGINT,
    done_at       BIGINT,
    error_code    TEXT,
    PRIMARY KEY (message_id, seq)
) WITH (fillfactor = 80);
CREATE INDEX segments_smsc_id ON segments(smsc, smsc_msg_id) WHERE smsc_msg_id IS NOT NULL;

-- Receipts that matched no segment yet (often because the submit_sm_resp is still in flight).
CREATE TABLE pending_receipts (
    id          BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    smsc        TEXT COLLATE "C" NOT NULL,
    smsc_msg_id TEXT COLLATE "C" NOT NULL,
    state       TEXT NOT NULL,
    stat        TEXT,
    err         TEXT,
    done_at     BIGINT,
    received_at BIGINT NOT NULL,
    raw         TEXT
);
CREATE INDEX pending_receipts_key ON pending_receipts(smsc, smsc_msg_id);
CREATE INDEX pending_receipts_age ON pending_receipts(received_at);

CREATE TABLE webhook_outbox (
    id              BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    webhook_id      TEXT COLLATE "C" NOT NULL UNIQUE,
    account_id      TEXT COLLATE "C" NOT NULL,
    kind            TEXT NOT NULL,                 -- status | mo | event
    ref_id          TEXT,                          -- message id (status) or MO id (mo)
    payload         TEXT,                          -- JSON object for events; status/mo render at send
    state           TEXT NOT NULL DEFAULT 'pending',  -- pending | delivered | dead
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at BIGINT NOT NULL,
    last_error      TEXT,
    created_at      BIGINT NOT NULL,
    delivered_at    BIGINT
);
CREATE INDEX webhook_due ON webhook_outbox(next_attempt_at, id) WHERE state = 'pending';
CREATE INDEX webhook_dead ON webhook_outbox(account_id, id) WHERE state = 'dead';

CREATE TABLE mo_parts (
    smsc        TEXT COLLATE "C" NOT NULL,
    source      TEXT COLLATE "C" NOT NULL,
    destination TEXT COLLATE "C" NOT NULL,
    ref         INTEGER NOT NULL,
    total       INTEGER NOT NULL,
    seq         INTEGER NOT NULL,
    data_coding INTEGER NOT NULL,
    payload     BYTEA NOT NULL,
    received_at BIGINT NOT NULL,
    PRIMARY KEY (smsc, source, destination, ref, seq)
);

CREATE TABLE mo_inbox (
    id          TEXT COLLATE "C" PRIMARY KEY,
    account_id  TEXT COLLATE "C",
    smsc        TEXT NOT NULL,
    source      TEXT COLLATE "C" NOT NULL,
    destination TEXT COLLATE "C" NOT NULL,
    text        TEXT,
    received_at BIGINT NOT NULL
);
CREATE INDEX mo_inbox_account ON mo_inbox(account_id, received_at);
