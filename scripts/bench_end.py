#!/usr/bin/env python3
"""Time an account's disable with N messages waiting: how long it holds the store's write lock.

Usage: python scripts/bench_end.py [--messages 100000] [--parts 1]
                                   [--dnc NUMBERS | --close [--waiting] [--inbox N] | --senders]

Why: disabling an account (and deleting a sign or template, importing a do-not-contact list, an
erasure, a `senders` change, `marketing` or `raw_text` turned off) ends the account's waiting
messages in the transaction that makes the change, and every process of the store waits for
its write lock meanwhile: each accept of every account. Session 37 measured 14.8 s for 100,000
waiting messages (SQLite's in-memory statement journal made the parts' updates quadratic).
This queues `--messages` one-recipient messages for one account, with another account's message
beside them, straight into a real `SqliteStore`, disables the account and prints the wall time,
the write lock's time held, the time per ended message, and how long another writer (an empty
write every 2 ms, standing in for the accepts and receipts of other accounts) waited for the
lock meanwhile: since session 39 the end goes in chunks (bridge/store/sqlite_ends.py), so that
wait is one chunk's, not the whole end's. `--dnc N` imports a do-not-contact list of N numbers
instead (in chunks too since session 39: bridge/store/sqlite_dnc.py); `--close` closes the
account once its messages have ended (a history of --messages to mask, in chunks since then);
`--close --waiting` closes it with them still waiting (since session 40 the close ends them in
chunks first, as a disable does, then closes the account in a transaction of its own);
`--senders` takes one of the account's two assigned senders from it instead, which refuses half
its waiting messages (sent from it alternately; walked in chunks since session 40:
bridge/store/sqlite_senders.py). `--close --inbox N` gives the account N replies (MOs) first,
which the close masks too: in one statement until session 48, in chunks since (sqlite_ends).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bridge.store.models import AcceptBatch, Account, DncInfo, NewMessage, NewSegment
from bridge.store.sqlite import SqliteStore

NOW = 1_700_000_000_000


def _account(aid: str) -> Account:
    return Account(id=aid, name=aid, webhook_secret_enc=b"sealed", created_at=NOW, updated_at=NOW)


SENDERS = ("10690077", "10690099")  # --senders: the first is taken from the account


def _message(
    mid: str, account_id: str, number: str, parts: int, sender: str | None = None
) -> NewMessage:
    return NewMessage(
        id=mid,
        account_id=account_id,
        batch_id="b_" + mid,
        recipient=number,
        encoding="gsm7",
        data_coding=0,
        billable_units=parts,
        segments=tuple(
            NewSegment(i, parts, 0x40 if parts > 1 else 0, f"{mid}/{i}".encode(), b"")
            for i in range(1, parts + 1)
        ),
        accepted_at=NOW,
        text=f"text of {mid}",
        sender=sender,
    )


def _held(store: SqliteStore) -> float:
    stats = store.write_lock_stats()
    return stats.held_s if stats is not None else 0.0


async def run(args: argparse.Namespace, path: Path) -> dict[str, float]:
    store = SqliteStore(path)
    await store.open()
    try:
        for aid in ("acc_big", "acc_other"):
            await store.create_account(_account(aid))
        if args.senders:
            await store.update_account("acc_big", {"senders": SENDERS}, NOW)
        began = time.perf_counter()
        for i in range(0, args.messages, 1000):
            msgs = tuple(
                _message(
                    f"m{k:08d}",
                    "acc_big",
                    f"+86138{k:08d}",
                    args.parts,
                    SENDERS[k % 2] if args.senders else None,
                )
                for k in range(i, min(i + 1000, args.messages))
            )
            await store.accept(AcceptBatch("acc_big", msgs, None, None), NOW)
        other = (_message("other", "acc_other", "+8613900000000", 1),)
        await store.accept(AcceptBatch("acc_other", other, None, None), NOW)
        for i in range(0, args.inbox, 10_000):  # the replies, straight into the table
            rows = [
                (
                    f"mo{k:09d}",
                    "acc_big",
                    "smscA",
                    f"+86137{k:08d}",
                    "1069",
                    f"reply {k}",
                    NOW - 86_400_000 + k // 10,
                )
                for k in range(i, min(i + 10_000, args.inbox))
            ]
            await store._runner.write(lambda c, rows=rows: c.executemany(_MO_INSERT, rows))
        queued = time.perf_counter() - began
        held_before = _held(store)
        waits: list[float] = []
        done = asyncio.Event()

        async def probe() -> None:
            # Another writer (an accept, a receipt) every 2 ms: how long it waits for the lock.
            while not done.is_set():
                t = time.perf_counter()
                await store._runner.write(_nothing)
                waits.append(time.perf_counter() - t)
                await asyncio.sleep(0.002)

        if args.close and not args.waiting:  # a history, not a queue: ended first, untimed
            await store.update_account("acc_big", {"status": "disabled"}, NOW + 1)
            held_before = _held(store)
        # The longest batch the writer held the lock for: the close's own transaction or one of
        # its chunks. (The writes run on the event loop: the prober, a task of the same loop,
        # cannot even start a write while one runs, so its wait understates a long one.)
        batches: list[float] = []
        run_batch = store._runner._run_batch

        def timed(batch: list) -> None:
            t = time.perf_counter()
            try:
                run_batch(batch)
            finally:
                batches.append(time.perf_counter() - t)

        store._runner._run_batch = timed
        prober = asyncio.create_task(probe())
        began = time.perf_counter()
        if args.close:
            await store.close_account("acc_big", NOW + 2)
        elif args.senders:  # half the waiting messages refused
            await store.update_account("acc_big", {"senders": SENDERS[1:]}, NOW + 1)
        elif args.dnc:
            # A registry of --dnc numbers nobody writes to, and one in a hundred waiting ones.
            numbers = sorted(
                [f"+86137{k:08d}" for k in range(args.dnc)]
                + [f"+86138{k:08d}" for k in range(0, args.messages, 100)]
            )
            info = DncInfo("registry", "registry", "CN", len(numbers), 0, NOW + 1)
            await store.import_dnc(info, numbers, [])
        else:
            await store.update_account("acc_big", {"status": "disabled"}, NOW + 1)
        wall = time.perf_counter() - began
        held = _held(store) - held_before
        done.set()
        await prober
    finally:
        await store.close()
    waits.sort()
    return {
        "queued_s": queued,
        "disable_s": wall,
        "lock_s": held,
        "wait_max_s": waits[-1] if waits else 0.0,
        "wait_p99_s": waits[int(len(waits) * 0.99)] if waits else 0.0,
        "writes": len(waits),
        "batch_max_s": max(batches, default=0.0),
        "batch_p50_s": sorted(batches)[len(batches) // 2] if batches else 0.0,
        "batches": len(batches),
    }


_MO_INSERT = (
    "INSERT INTO mo_inbox (id, account_id, smsc, source, destination, text, received_at) "
    "VALUES (?,?,?,?,?,?,?)"
)


def _nothing(_c: object) -> None:
    return None


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--messages", type=int, default=100_000)
    p.add_argument("--parts", type=int, default=1)
    p.add_argument(
        "--waiting",
        action="store_true",
        help="with --close: close the account with its messages still waiting (the close ends "
        "them, in chunks since session 40), instead of after a disable ended them",
    )
    p.add_argument(
        "--close",
        action="store_true",
        help="instead of the disable, close the account once its messages have ended (its "
        "history masked)",
    )
    p.add_argument(
        "--inbox",
        type=int,
        default=0,
        help="with --close: the account's replies (MOs, ten to a millisecond), masked by the "
        "close too",
    )
    p.add_argument(
        "--dnc",
        type=int,
        default=0,
        help="instead of the disable, import a do-not-contact list of this many numbers "
        "(and one in a hundred of the waiting ones)",
    )
    p.add_argument(
        "--senders",
        action="store_true",
        help="instead of the disable, take one of the account's two assigned senders from it "
        "(half its waiting messages are from it)",
    )
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="bridge-bench-end-") as tmp:
        out = asyncio.run(run(args, Path(tmp) / "bench.db"))
    n = args.messages
    print(
        f"options: messages {n}, parts {args.parts}, dnc {args.dnc}, close {args.close}, "
        f"waiting {args.waiting}, inbox {args.inbox}, senders {args.senders}"
    )
    print(f"queued in                                 {out['queued_s']:.1f} s")
    what = (
        "close"
        if args.close
        else "import"
        if args.dnc
        else "senders change"
        if args.senders
        else "disable"
    )
    print(f"{what}: wall / write lock held (s)  {out['disable_s']:.2f} / {out['lock_s']:.2f}")
    if not args.dnc and not args.close and not args.senders:
        print(f"write lock per ended message (us)         {out['lock_s'] / n * 1e6:.1f}")
    print(
        f"write transactions: longest / p50 (ms)    {out['batch_max_s'] * 1e3:.1f} / "
        f"{out['batch_p50_s'] * 1e3:.1f}  ({out['batches']} batches)"
    )
    print(
        f"another writer's wait: longest / p99 (ms)  {out['wait_max_s'] * 1e3:.1f} / "
        f"{out['wait_p99_s'] * 1e3:.1f}  ({out['writes']} writes meanwhile)"
    )


if __name__ == "__main__":
    main()
