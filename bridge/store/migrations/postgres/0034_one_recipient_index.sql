-- SQLite's 0034 makes its two recipient indexes one, as PostgreSQL's 0032 did. Nothing here;
-- the file keeps both engines' numbers the same.
SELECT 1;
