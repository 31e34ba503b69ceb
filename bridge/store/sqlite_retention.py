"""The SQLite engine's side of retention (bridge/retention.py decides the cut-offs)."""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping
from functools import partial

from bridge.domain.lifecycle import MSG_FINAL
from bridge.ids import id_floor, id_time_ms
from bridge.store.base import PURGE_CHUNK, RETENTION_CHUNK
from bridge.store.purge import purge, window_bounds

_FINAL = ", ".join(f"'{s}'" for s in sorted(MSG_FINAL))

# Finished messages in id order (ids sort by acceptance time: a primary-key range scan), after
# the previous chunk's last id so rows kept (not final yet) are not looked at again. The unary
# `+` keeps SQLite off the messages_queue index (q_state first): by it, each chunk read and
# sorted every finished message in the store, on the event loop, even with nothing due.
_FINISHED = (
    "SELECT id FROM messages WHERE id>?1 AND id<?2 AND +accepted_at<=?3 AND +done_at<=?5 "
    f"AND +q_state='done' AND +state IN ({_FINAL}) ORDER BY id LIMIT ?4"
)
# One account's finished messages accepted in [?2, ?3), by its (account_id, accepted_at) index:
# the purge around the months other accounts have no bill for (purge.purge's `window`). Rows
# purged are gone, so each chunk starts over at ?2 and reads only what it keeps besides.
_WINDOW = (
    "SELECT id FROM messages INDEXED BY messages_account_time WHERE account_id=?1 "
    "AND accepted_at>=?2 AND accepted_at<?3 AND +done_at<=?4 AND +q_state='done' "
    f"AND +state IN ({_FINAL}) LIMIT ?5"
)
_OLD_MO = "SELECT id FROM mo_inbox INDEXED BY mo_inbox_received WHERE received_at<=? LIMIT ?"
# A dead letter goes with what it reports on: replayed after, it would be booked delivered
# with nothing sent (the sender finds no message to render).
_DEAD_OF = "DELETE FROM webhook_outbox WHERE state='dead' AND ref_id=?"
# A dead letter's next_attempt_at is when it was given up (the webhook_due index).
_PURGE_DEAD_WEBHOOKS = (
    "DELETE FROM webhook_outbox WHERE id IN (SELECT id FROM webhook_outbox "
    "WHERE state='dead' AND next_attempt_at<=? LIMIT ?)"
)


def _purge_messages(
    after: str, below: str, cutoff: int, done_by: int, c: sqlite3.Connection
) -> tuple[list[str], int]:
    ids = [(r[0],) for r in c.execute(_FINISHED, (after, below, cutoff, RETENTION_CHUNK, done_by))]
    return _delete_messages(ids, c)


def _purge_window(
    lo: int, bounds: dict[str, int], done_by: int, account: str, c: sqlite3.Connection
) -> tuple[list[str], int]:
    args = (account, lo, bounds[account], done_by, RETENTION_CHUNK)
    return _delete_messages([(r[0],) for r in c.execute(_WINDOW, args)], c)


def _delete_messages(ids: list[tuple[str]], c: sqlite3.Connection) -> tuple[list[str], int]:
    if not ids:
        return [], 0
    c.executemany("DELETE FROM segments WHERE message_id=?", ids)
    c.executemany("DELETE FROM messages WHERE id=?", ids)
    dead = c.executemany(_DEAD_OF, ids).rowcount
    return [i[0] for i in ids], dead


def _purge_mo(before: int, c: sqlite3.Connection) -> tuple[int, int]:
    ids = [(r[0],) for r in c.execute(_OLD_MO, (before, PURGE_CHUNK))]
    if not ids:
        return 0, 0
    c.executemany("DELETE FROM mo_inbox WHERE id=?", ids)
    return len(ids), c.executemany(_DEAD_OF, ids).rowcount


def _rowcount(sql: str, args: tuple[object, ...], c: sqlite3.Connection) -> int:
    return c.execute(sql, args).rowcount


class RetentionMixin:
    """Chunked purges, one write each, so the event loop serves requests in between."""

    _runner: object

    async def oldest_message_at(self) -> int | None:
        def job(c: sqlite3.Connection) -> int | None:
            row = c.execute("SELECT MIN(id) FROM messages").fetchone()
            return None if row[0] is None else id_time_ms(row[0], "msg_")

        return await self._runner.read(job)  # type: ignore[attr-defined]

    async def unbilled_accounts(self, month: str, end: int) -> list[str]:
        def job(c: sqlite3.Connection) -> list[str]:
            return [
                r[0]
                for r in c.execute(
                    "SELECT a.id FROM accounts a WHERE a.created_at<? AND NOT EXISTS "
                    "(SELECT 1 FROM bills b WHERE b.account_id=a.id AND b.month=?) ORDER BY a.id",
                    (end, month),
                )
            ]

        return await self._runner.read(job)  # type: ignore[attr-defined]

    async def purge_history(
        self,
        messages_before: int,
        before: int,
        day: str,
        held: Mapping[str, int] | None = None,
    ) -> dict[str, int]:
        write = self._runner.write  # type: ignore[attr-defined]
        below = id_floor("msg_", messages_before)
        bounds: dict[str, int] = {}
        if held:
            accounts = await self._runner.read(  # type: ignore[attr-defined]
                lambda c: [r[0] for r in c.execute("SELECT id FROM accounts ORDER BY id")]
            )
            bounds = window_bounds(accounts, held, messages_before, before)
        return await purge(
            lambda after: write(
                partial(_purge_messages, after, below, messages_before, before), durable=False
            ),
            lambda: write(partial(_purge_mo, before), durable=False),
            lambda: write(
                partial(_rowcount, _PURGE_DEAD_WEBHOOKS, (before, PURGE_CHUNK)),
                single=True,
                durable=False,
            ),
            lambda: write(
                partial(_rowcount, "DELETE FROM daily_counts WHERE day<?", (day,)),
                single=True,
                durable=False,
            ),
            message_chunk=RETENTION_CHUNK,
            chunk=PURGE_CHUNK,
            window=lambda account: write(
                partial(_purge_window, messages_before, bounds, before, account), durable=False
            ),
            accounts=list(bounds),
        )
