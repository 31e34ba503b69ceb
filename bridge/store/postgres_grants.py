"""The privileges a daemon's database role needs, checked when a store opens.

A role that does not own the schema (another role ran `db migrate`, README "Scale-out on
PostgreSQL") and lacked a grant started, answered /readyz 200 and accepted sends, and then failed
where it first touched what it may not: a top-up or an operator's audit entry on a sequence
(`permission denied for sequence ledger_id_seq`), a webhook, a table's DELETE in a sweep. Refused
at the start instead, naming each grant, the fix is made before any traffic depends on it.

USAGE on the schema is named too: without it the role does not see the schema's tables at all.
A store opened for reads only (the CLI's commands that change nothing) asks SELECT alone, so a
monitoring role may run them.
"""

from __future__ import annotations

import asyncpg

# schema_version as the search path finds it, whether or not the role may use its schema:
# without USAGE on the schema, to_regclass() does not see it, and the store took the schema for
# missing ("may not create the schema": the fix named was the wrong one).
_SCHEMA_VERSION = """
SELECT c.oid, n.nspname, has_schema_privilege(n.oid, 'USAGE') AS usable
FROM unnest(string_to_array(current_setting('search_path'), ',')) WITH ORDINALITY AS p(raw, ord)
JOIN pg_namespace n ON n.nspname = CASE WHEN trim(p.raw) IN ('"$user"', '$user')
                                        THEN current_user::text
                                        ELSE trim(both '"' FROM trim(p.raw)) END
JOIN pg_class c ON c.relnamespace = n.oid AND c.relname = 'schema_version'
ORDER BY p.ord LIMIT 1
"""

# The tables and sequences the migrations made: those owned by schema_version's owner in its
# schema (an operator's own tables beside them are not ours to demand). A sequence behind an
# identity column (deptype 'i') is used under the table's INSERT privilege and needs no grant;
# a serial's or messages_seq (deptype 'a', OWNED BY a column) is drawn from (nextval: USAGE or
# UPDATE) and messages_seq's last value read (pg_sequence_last_value: USAGE or SELECT). USAGE
# gives both, as UPDATE with SELECT does: what PostgreSQL's pg_read_all_data and
# pg_write_all_data give a role (asking USAGE alone refused such a role, which runs).
# $2 false: a store opened for reads only (PostgresStore.read_only) needs SELECT on the tables.
_MISSING = """
WITH ours AS (
    SELECT c.oid, c.relname, c.relkind
    FROM pg_class c, pg_class sv
    WHERE sv.oid = $1
      AND c.relnamespace = sv.relnamespace AND c.relowner = sv.relowner
      AND c.relkind IN ('r', 'p', 'S')
      AND NOT EXISTS (
          SELECT 1 FROM pg_depend d
          WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid AND d.deptype = 'i')
)
SELECT relname, relkind = 'S' AS is_seq FROM ours
WHERE CASE WHEN relkind = 'S' THEN $2 AND NOT (has_sequence_privilege(oid, 'USAGE')
                                              OR has_sequence_privilege(oid, 'UPDATE')
                                              AND has_sequence_privilege(oid, 'SELECT'))
      WHEN NOT $2 THEN NOT has_table_privilege(oid, 'SELECT')
      ELSE NOT (has_table_privilege(oid, 'SELECT') AND has_table_privilege(oid, 'INSERT')
                AND has_table_privilege(oid, 'UPDATE') AND has_table_privilege(oid, 'DELETE'))
      END
ORDER BY is_seq, relname
"""


async def missing_grants(conn: asyncpg.Connection, *, writes: bool = True) -> str | None:
    """What the connection's role lacks and the GRANTs that give it; None when nothing is
    missing, or no schema is there (yet) to grant. `writes` false: what reads alone need
    (a monitoring role's `account list`, `message show`, reports)."""
    found = await conn.fetchrow(_SCHEMA_VERSION)
    if found is None:
        return None
    sv, schema, usable = found
    rows = await conn.fetch(_MISSING, sv, writes)
    if usable and not rows:
        return None
    role = await conn.fetchval("SELECT current_user")
    to = f"{_ident(schema)} TO {_ident(role)};"
    tables = [r["relname"] for r in rows if not r["is_seq"]]
    seqs = [r["relname"] for r in rows if r["is_seq"]]
    lacks, grants = [], []
    if not usable:
        lacks.append(f"USAGE on the schema {schema}")
        grants.append(f"GRANT USAGE ON SCHEMA {to}")
    if tables:
        what = "SELECT, INSERT, UPDATE, DELETE" if writes else "SELECT"
        lacks.append(f"{what.replace(', DELETE', ' or DELETE')} on {_names(tables)}")
        grants.append(f"GRANT {what} ON ALL TABLES IN SCHEMA {to}")
    if seqs:
        lacks.append(f"USAGE on the sequences {_names(seqs)}")
        grants.append(f"GRANT USAGE ON ALL SEQUENCES IN SCHEMA {to}")
    return (
        f"the database role {role} lacks {' and '.join(lacks)}: as the schema's owner, run "
        + " ".join(grants)
    )


def _names(names: list[str]) -> str:
    shown = ", ".join(names[:6])
    return shown + (f" and {len(names) - 6} more" if len(names) > 6 else "")


def _ident(name: str) -> str:
    return name if name.isidentifier() and name.islower() else '"' + name.replace('"', '""') + '"'
