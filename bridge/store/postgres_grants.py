"""The privileges a daemon's database role needs, checked when a store opens.

A role that does not own the schema (another role ran `db migrate`, README "Scale-out on
PostgreSQL") and lacked a grant started, answered /readyz 200 and accepted sends, and then failed
where it first touched what it may not: a top-up or an operator's audit entry on a sequence
(`permission denied for sequence ledger_id_seq`), a webhook, a table's DELETE in a sweep. Refused
at the start instead, naming each grant, the fix is made before any traffic depends on it.
"""

from __future__ import annotations

import asyncpg

# The tables and sequences the migrations made: those owned by schema_version's owner in its
# schema (an operator's own tables beside them are not ours to demand). A sequence behind an
# identity column (deptype 'i') is used under the table's INSERT privilege and needs no grant;
# a serial's or messages_seq (deptype 'a', OWNED BY a column) is drawn from (nextval: USAGE or
# UPDATE) and messages_seq's last value read (pg_sequence_last_value: USAGE or SELECT). USAGE
# gives both, as UPDATE with SELECT does: what PostgreSQL's pg_read_all_data and
# pg_write_all_data give a role (asking USAGE alone refused such a role, which runs).
_MISSING = """
WITH ours AS (
    SELECT c.oid, c.relname, c.relkind
    FROM pg_class c, pg_class sv
    WHERE sv.oid = to_regclass('schema_version')
      AND c.relnamespace = sv.relnamespace AND c.relowner = sv.relowner
      AND c.relkind IN ('r', 'p', 'S')
      AND NOT EXISTS (
          SELECT 1 FROM pg_depend d
          WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid AND d.deptype = 'i')
)
SELECT relname, relkind = 'S' AS is_seq FROM ours
WHERE CASE WHEN relkind = 'S' THEN NOT (has_sequence_privilege(oid, 'USAGE')
                                       OR has_sequence_privilege(oid, 'UPDATE')
                                       AND has_sequence_privilege(oid, 'SELECT'))
      ELSE NOT (has_table_privilege(oid, 'SELECT') AND has_table_privilege(oid, 'INSERT')
                AND has_table_privilege(oid, 'UPDATE') AND has_table_privilege(oid, 'DELETE'))
      END
ORDER BY is_seq, relname
"""


async def missing_grants(conn: asyncpg.Connection) -> str | None:
    """What the connection's role lacks and the GRANTs that give it; None when nothing is
    missing."""
    rows = await conn.fetch(_MISSING)
    if not rows:
        return None
    role, schema = await conn.fetchrow(
        "SELECT current_user, n.nspname FROM pg_class c JOIN pg_namespace n "
        "ON n.oid = c.relnamespace WHERE c.oid = to_regclass('schema_version')"
    )
    tables = [r["relname"] for r in rows if not r["is_seq"]]
    seqs = [r["relname"] for r in rows if r["is_seq"]]
    lacks, grants = [], []
    if tables:
        lacks.append(f"SELECT, INSERT, UPDATE or DELETE on {_names(tables)}")
        grants.append(
            f"GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA {_ident(schema)} "
            f"TO {_ident(role)};"
        )
    if seqs:
        lacks.append(f"USAGE on the sequences {_names(seqs)}")
        grants.append(f"GRANT USAGE ON ALL SEQUENCES IN SCHEMA {_ident(schema)} TO {_ident(role)};")
    return (
        f"the database role {role} lacks {' and '.join(lacks)}: as the schema's owner, run "
        + " ".join(grants)
    )


def _names(names: list[str]) -> str:
    shown = ", ".join(names[:6])
    return shown + (f" and {len(names) - 6} more" if len(names) > 6 else "")


def _ident(name: str) -> str:
    return name if name.isidentifier() and name.islower() else '"' + name.replace('"', '""') + '"'
