-- A template for international (and Hong Kong, Macao, Taiwan) messages: the Alibaba face's
-- TemplateType 3. Its kind stays a notification (the sending rules' type); the flag is what the
-- cloud service's calls read back (QuerySmsTemplate 3, the list calls 6 / OuterTemplateType 3).
ALTER TABLE templates ADD COLUMN international INTEGER NOT NULL DEFAULT 0;
