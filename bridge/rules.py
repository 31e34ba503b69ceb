"""Sending rules at acceptance: what the API checks before asking the store to accept.

Stateless checks happen here (template rendering, sign-name format, marketing permission, content
filter, pricing); the checks that depend on other requests (approval status, opt-out, DNC,
frequency, quota, balance) are packed into `admission.Rules` and decided inside the accept
transaction. Templates are cached per process; the approval status is read in the transaction,
so a rejection applies to the very next send, and so is the revision of the contents: a template
corrected since this process cached it (a rejected one edited and approved again) is refused
TEMPLATE_CHANGED there, forgotten here, and the request rendered again with the new text.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from bridge.config import Config, LimitsConfig, VerificationLimitsConfig
from bridge.domain import admission as adm
from bridge.domain.content_filter import ContentFilter
from bridge.domain.frequency import Limits
from bridge.fastinit import maker
from bridge.store.models import Template

log = logging.getLogger("bridge.rules")
# Built on every send with a frequency limit, without entering the interpreter again
# (fastinit.maker).
_new_frequency_rule = maker(adm.FrequencyRule)

_CACHE_MAX = 10_000


def load_filter(path: Path | None) -> ContentFilter:
    if path is None:
        return ContentFilter()
    return ContentFilter.from_lines(path.read_text(encoding="utf-8"))


class SendRules:
    def __init__(self, config: Config, store: Any, content_filter: ContentFilter | None = None):
        self.config = config
        self.store = store
        self.filter = (
            content_filter
            if content_filter is not None
            else load_filter(config.rules.content_filter_file)
        )
        self._templates: dict[str, Template] = {}
        self._exempt = frozenset(config.rules.frequency.exempt)
        self._limits = self._limits_of(config)
        self._raw = self._raw_limits(self._limits)

    def reload(self, config: Config, content_filter: ContentFilter) -> None:
        """SIGHUP: new limits, exempt list, keywords and the content filter the caller loaded
        (before it changed anything else: loading it is what can fail)."""
        self.filter = content_filter
        self.config = config
        self._exempt = frozenset(config.rules.frequency.exempt)
        self._limits = self._limits_of(config)
        self._raw = self._raw_limits(self._limits)

    async def template(self, account_id: str, code: str) -> Template | None:
        """This account's template `code` (any status), or None."""
        t = self._templates.get(code)
        if t is None:
            t = await self.store.get_template(code)
            if t is None:
                return None
            if len(self._templates) >= _CACHE_MAX:
                self._templates.clear()
            self._templates[code] = t
        return t if t.account_id == account_id else None

    async def stored_template(self, account_id: str, code: str) -> Template | None:
        """The template as stored now (and cached so): for a request the cached copy refused
        (it may predate a correction) and for previews, which must show the text a send would
        carry."""
        self.forget(code)
        return await self.template(account_id, code)

    def forget(self, code: str) -> None:
        """Drop the cached copy of `code`: the accept transaction found it corrected since
        (TEMPLATE_CHANGED), and the next template() reads it again."""
        self._templates.pop(code, None)

    def limits(self, kind: str | None) -> Limits:
        return self._limits.get(kind or "", self._limits[""])

    def raw_frequency(self, sign: str | None, numbers: tuple[str, ...]) -> adm.FrequencyRule | None:
        """`frequency(None, sign, template, numbers)`: a free text's rule (no template, whatever
        `template` a request names), its limits found at load (`_raw`). Why: nearly every send
        is one, and `limits`' call, the kind's mode and the template's test were ~2 k
        instructions of each (session 63)."""
        limits = self._raw
        if limits is None:
            return None
        exempt = self._exempt
        subject = (
            numbers if exempt.isdisjoint(numbers) else tuple(n for n in numbers if n not in exempt)
        )
        if not subject:
            return None
        return _new_frequency_rule("raw", sign, None, limits, self.config.rules.timezone, subject)

    @staticmethod
    def _raw_limits(limits: dict[str, Limits]) -> Limits | None:
        """A free text's limits (`limits(None)`), or None when none of them limits."""
        raw = limits[""]
        return raw if raw.per_minute or raw.per_hour or raw.per_day else None

    @staticmethod
    def _limits_of(config: Config) -> dict[str, Limits]:
        f = config.rules.frequency
        by_kind: dict[str, LimitsConfig | VerificationLimitsConfig] = {
            "verification": f.verification,
            "notification": f.notification,
            "marketing": f.marketing,
            "": f.raw_text,
        }
        return {k: Limits(c.per_minute, c.per_hour, c.per_day) for k, c in by_kind.items()}

    def frequency(
        self, kind: str | None, sign: str | None, template: str | None, numbers: tuple[str, ...]
    ) -> adm.FrequencyRule | None:
        limits = self.limits(kind)
        if not (limits.per_minute or limits.per_hour or limits.per_day):
            return None
        # The numbers as given when none is exempt (nearly every send): one C call, not a
        # generator and the tuple it fills (~2,800 instructions a send, session 53).
        exempt = self._exempt
        subject = (
            numbers if exempt.isdisjoint(numbers) else tuple(n for n in numbers if n not in exempt)
        )
        if not subject:
            return None
        mode = "raw" if kind is None else ("verification" if kind == "verification" else "template")
        # By position (a class called with keywords gets a dict to unpack); the field order is
        # held by tests/unit/test_session52_positional_claim.py.
        return _new_frequency_rule(
            mode,  # kind
            sign,  # sign
            template if mode == "template" else None,  # template
            limits,  # limits
            self.config.rules.timezone,  # tz
            subject,  # numbers
        )
