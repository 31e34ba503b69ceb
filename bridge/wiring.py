"""Opening the store and the master key from a config: what every command needs, kept free of
the HTTP and SMPP stacks so operator commands start fast."""

from __future__ import annotations

import logging
from pathlib import Path

from bridge.config import Config
from bridge.crypto import Sealer, load_master_key
from bridge.store import account_rows
from bridge.store.base import Store


def open_store(config: Config, *, read_only: bool = False) -> Store:
    """The configured store, with the zone of the daily quota's days (rules.timezone): every
    command that may end messages unsent (a cancel, an opt-out, an account change) gives their
    places back to the day they were counted in. `read_only`: a command that changes nothing,
    which a PostgreSQL role with SELECT alone may run (PostgresStore.read_only)."""
    store: Store
    if config.store.engine == "sqlite":
        from bridge.store.sqlite import SqliteStore

        store = SqliteStore(
            config.store.path,
            linger_ms=config.store.group_commit_ms,
            max_batch=config.store.group_commit_max,
        )
    else:
        from bridge.store.postgres import PostgresStore

        assert config.store.dsn is not None  # the config refuses postgres without a DSN
        store = PostgresStore(config.store.dsn, read_only=read_only)
    configure_store(store, config)
    return store


def warn_open_modes(config: Config, log: logging.Logger) -> None:
    """A SQLite store other users may read: one WARNING saying so (bridge/store/sqlite_modes.py).
    Called by the daemon's owner at start (its acceptors open the same files: one line is
    enough) and by the `db` commands."""
    if config.store.engine != "sqlite":
        return
    from bridge.store.sqlite_modes import warning

    if (line := warning(Path(config.store.path))) is not None:
        log.warning(line)


def configure_store(store: Store, config: Config) -> None:
    """The store's settings taken from the configuration, at its opening and at each reload
    (they apply to writes from then on): the zone of the daily quota's days, whether the
    roll-up reports "sent" (webhooks.send_intermediate), and the SMSCs whose one receipt
    settles a whole long message (smscs[].receipts); and how many accounts' rows the process
    keeps built (server.account_cache: account_rows)."""
    account_rows.set_account_cache(config.server.account_cache)
    store.quota_tz = config.rules.timezone
    if hasattr(store, "send_intermediate"):
        store.send_intermediate = config.webhooks.send_intermediate
    if hasattr(store, "one_receipt_smscs"):
        store.one_receipt_smscs = frozenset(
            s.name for s in config.smscs if s.receipts == "one_per_message"
        )


def make_sealer(config: Config) -> Sealer:
    sec = config.security
    current = load_master_key(
        inline=sec.master_key, key_file=sec.master_key_file, generate=sec.generate_master_key
    )
    previous: tuple[bytes, ...] = ()
    if sec.previous_master_key or sec.previous_master_key_file:
        previous = (
            load_master_key(inline=sec.previous_master_key, key_file=sec.previous_master_key_file),
        )
    return Sealer(current, previous)
