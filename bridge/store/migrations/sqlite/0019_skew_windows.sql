-- The allowed clock skew of each signed face ('native', 'aliyun') as last started, and the
-- transition after a raise (bridge/domain/skew_window.py): nonces spent under the old skew were
-- kept for twice it only, so requests older than it stay refused until since + prev + skew.
CREATE TABLE skew_windows (
    face     TEXT PRIMARY KEY,
    skew_s   INTEGER NOT NULL,
    prev_s   INTEGER NOT NULL,
    since_ms INTEGER NOT NULL
);
