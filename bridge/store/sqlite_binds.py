"""Adapters that let the sqlite3 module bind None, bool and bytes without its slow path.

Why: the module binds an exact int, float, str or bytearray directly, but sends any other value
(None, a bool, bytes) through its adaptation protocol first, which, with no adapter registered
for the type, asks the protocol class for `__adapt__` and raises and formats an AttributeError
("type object ... has no attribute ...") to learn that it has none: ~3,300 instructions a value
(a 10-value SELECT, timed per value: None 406, bool 480, bytes 636 ns, an int 139). An accept
binds 17 of them (the message row's empty columns, the facts statement's, the segment's and the
idempotency record's bytes). An adapter registered for the type is found by one dict lookup and
called instead, and each of these returns what the module then binds exactly as before (NULL,
the integer, the blob): 1,134 k -> 1,101 k instructions per accepted request (session 50,
`scripts/bench_accept_inproc.py --callgrind`).

Registered once per process, at the import of the store's runner (the registry is the sqlite3
module's own, global: every connection of the process, the tools' included, binds the same).
"""

from __future__ import annotations

import sqlite3

# C callables, no Python frame per value: dict.get of an empty dict answers None for any key.
_EMPTY: dict[object, None] = {}
_NONE = _EMPTY.get


def register() -> None:
    """Idempotent: registering again replaces the same adapters."""
    sqlite3.register_adapter(type(None), _NONE)
    sqlite3.register_adapter(bool, int)
    sqlite3.register_adapter(bytes, bytes)


register()
