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
from bridge.billing import Tariffs
from bridge.config import Config
from bridge.metrics import Metrics
from bridge.rules import SendRules
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
    rules: SendRules | None = None  # built from config and store when not given
    tariffs: Tariffs | None = None

    def __post_init__(self) -> None:
        if self.rules is None:
            self.rules = SendRules(self.config, self.store)
        if self.tariffs is None:
            self.tariffs = Tariffs(self.store, self.config.billing)
        self.submitter.content_filter = self.rules.filter

    @property
    def send_rules(self) -> SendRules:
        assert self.rules is not None
        return self.rules

    @property
    def tariff_book(self) -> Tariffs:
        assert self.tariffs is not None
        return self.tariffs

    def now_ms(self) -> int:
        return int(self.clock() * 1000)


CTX: web.AppKey[ApiContext] = web.AppKey("ctx", ApiContext)
REQUEST_ID: web.RequestKey[str] = web.RequestKey("request_id", str)
BODY: web.RequestKey[bytes] = web.RequestKey("body", bytes)
PRINCIPAL: web.RequestKey[Principal] = web.RequestKey("principal", Principal)
