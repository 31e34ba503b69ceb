-- A rejected template or sign name can be corrected and sent for review again under the same code
-- or name (PATCH /v1/templates/{code}, /v1/signs/{name}; the Alibaba face's Modify*/Update*).
-- `revision` counts a template's contents: acceptor processes cache template contents, and the
-- accept transaction compares the revision it rendered with the stored one (a template approved,
-- rejected, corrected and approved again is never sent with its old text). `updated_at`: the
-- last correction, NULL while the submission is the original.
ALTER TABLE templates ADD COLUMN revision INTEGER NOT NULL DEFAULT 1;
ALTER TABLE templates ADD COLUMN updated_at BIGINT;
ALTER TABLE signs ADD COLUMN updated_at BIGINT;
