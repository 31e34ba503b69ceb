"""Simulated SMSC: a real SMPP 3.4 server with receipts, MO injection, faults and live counters.

Names are imported lazily so that importing the package does not pull in the server, the SMPP
stack and aiohttp. Reassembly lives in ``bridge.smpp.reassembly``: the daemon reads replies with it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from bridge.sim.control import apply_knobs
    from bridge.sim.server import SimError, SimSmsc, mo_command, run_sim
    from bridge.smpp.reassembly import Reassembler, SimMessage

_WHERE = {
    "apply_knobs": "bridge.sim.control",
    "mo_command": "bridge.sim.server",
    "Reassembler": "bridge.smpp.reassembly",
    "SimMessage": "bridge.smpp.reassembly",
    "SimError": "bridge.sim.server",
    "SimSmsc": "bridge.sim.server",
    "run_sim": "bridge.sim.server",
}

__all__ = [
    "Reassembler",
    "SimError",
    "SimMessage",
    "SimSmsc",
    "apply_knobs",
    "mo_command",
    "run_sim",
]


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'bridge.sim' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
