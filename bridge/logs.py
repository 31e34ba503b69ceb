"""Logging set-up: text or JSON lines, a level per component, UTC timestamps."""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

from bridge.config import LoggingConfig


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    converter = time.gmtime

    def __init__(self) -> None:
        super().__init__(
            "%(asctime)s.%(msecs)03dZ %(levelname)s %(name)s %(message)s", "%Y-%m-%dT%H:%M:%S"
        )


def configure(cfg: LoggingConfig | None, level_override: str | None = None) -> None:
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if cfg and cfg.format == "json" else TextFormatter())
    root.addHandler(handler)
    root.setLevel(level_override or (cfg.level if cfg else "INFO"))
    if cfg:
        for name, level in cfg.components.items():
            logging.getLogger(name if name.startswith("bridge") else f"bridge.{name}").setLevel(
                level
            )
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
