-- When each app key last signed a request that passed its signature check, in ms; NULL: not
-- since this upgrade. Written by each process's flush of the times its authenticator noted
-- (bridge/api/key_use.py, every 60 s and at a clean stop), never per request; advisory, for
-- an operator deciding whether a key is still used before revoking it.
ALTER TABLE app_keys ADD COLUMN last_used_at INTEGER;
