-- The routes and each SMSC's wire options the dispatcher last encoded waiting messages for
-- (bridge/smpp/router.py Router.to_json). A start compares it with the configuration it runs,
-- as a reload compares the old router with the new one: the routes that encode otherwise since
-- have their waiting messages encoded again (bridge/pipeline/reencode.py). One row.
CREATE TABLE route_table (
    id      INTEGER PRIMARY KEY CHECK (id = 1),
    router  TEXT NOT NULL,
    kept_at INTEGER NOT NULL
);
