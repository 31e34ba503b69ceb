-- A do-not-contact import writes its entries in chunks of their own transactions
-- (sqlite_dnc.py): each marked with the import's generation (its time), and the list's entries
-- of earlier imports removed after, by this index. Entries already here have none (NULL): older
-- than any import's.
ALTER TABLE dnc_entries ADD COLUMN gen INTEGER;
DROP INDEX dnc_entries_list;
CREATE INDEX dnc_entries_list ON dnc_entries(list_id, gen);
