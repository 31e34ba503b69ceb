-- Reserved (session 59): the number of another change's migration, merged beside this one.
-- Nothing here; a migration that takes the number replaces this file.
SELECT 1;
