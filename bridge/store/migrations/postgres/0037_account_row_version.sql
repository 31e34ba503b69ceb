-- Each account row carries a version that every write of the row changes (session 56; SQLite's
-- 0037 since session 55): a random value a trigger sets before each insert and update, whoever
-- writes (the daemon, the CLI, an operator's psql). An accept under the sending rules reads its
-- key's account in its first statement; with the version it already holds the Account built
-- from, the statement answers NULL for the account's twenty columns instead of the row
-- (postgres._check_head): the server encodes, and asyncpg decodes, none of them, and the
-- process builds no Account. Random rather than counted: a restored dump cannot bring back a
-- version a process holds with other contents. A lock (FOR SHARE, FOR NO KEY UPDATE) fires no
-- trigger and keeps the version. An UPDATE that sets row_version itself keeps the value it sets
-- (nothing of the bridge's does). ADD COLUMN without a default rewrites nothing; the UPDATE
-- writes each account row once (accounts are few).
ALTER TABLE accounts ADD COLUMN row_version bigint;
UPDATE accounts SET row_version = floor(random() * 4611686018427387904)::bigint;
CREATE FUNCTION accounts_row_version() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' OR NEW.row_version IS NOT DISTINCT FROM OLD.row_version THEN
        NEW.row_version := floor(random() * 4611686018427387904)::bigint;
    END IF;
    RETURN NEW;
END
$$;
CREATE TRIGGER accounts_row_version BEFORE INSERT OR UPDATE ON accounts
FOR EACH ROW EXECUTE FUNCTION accounts_row_version();
