"""What the HTTP handlers need, gathered in one object the composition root (app.py) builds."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from bridge.accounts import AccountService
from bridge.api.auth import Authenticator, Principal
from bridge.api.ratelimit import RateLimiter
from bridge.api.submit import Submitter
from bridge.config import Config
from bridge.metrics import Metrics
from bridge.store.base import Store


@dataclass
class ApiContext:
    config: Config
    store: Store
    auth: Authenticator
    submitter: Submitter
    accounts: AccountService
    limiter: RateLimiter = field(default_factory=RateLimiter)
    clock: Callable[[], float] = time.time
    # Hooks the pipeline fills in; the API works without them (tests, `run` before binds are up).
    on_accepted: Callable[[int], None] = lambda n: None
    smsc_status: Callable[[], dict[str, Any]] = dict
    on_webhooks_replayed: Callable[[], None] = lambda: None  # wake the webhook sender
    queue_depth: int = 0  # refreshed by the app's background task
    accepting: bool = True
    metrics: Metrics = field(default_factory=Metrics)  # the Daemon passes its own

    def now_ms(self) -> int:
        return int(self.clock() * 1000)


CTX: web.AppKey[ApiContext] = web.AppKey("ctx", ApiContext)
REQUEST_ID: web.RequestKey[str] = web.RequestKey("request_id", str)
BODY: web.RequestKey[bytes] = web.RequestKey("body", bytes)
PRINCIPAL: web.RequestKey[Principal] = web.RequestKey("principal", Principal)
