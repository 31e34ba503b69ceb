-- SQLite's 0028 records the latest import of each do-not-contact list, so that an import in
-- chunks superseded by a later one stops. PostgreSQL imports a list in one transaction that
-- locks the list's row before it empties the list's entries, so a later import waits for an
-- earlier one and replaces it whole: nothing is added here; the file keeps both engines'
-- numbers the same.
SELECT 1;
