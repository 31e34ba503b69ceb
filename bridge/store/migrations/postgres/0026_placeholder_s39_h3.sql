-- Placeholder so that 0027 applies on this branch (s39-h3); drop at merge: another branch brings 0026.
SELECT 1;
