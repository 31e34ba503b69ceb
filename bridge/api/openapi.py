"""The OpenAPI 3 document served at /openapi.json (filled in by the API documentation work)."""

from __future__ import annotations

from typing import Any

from bridge import __version__


def openapi_document() -> dict[str, Any]:
    return {
        "openapi": "3.0.3",
        "info": {"title": "smpp-bridge", "version": __version__},
        "paths": {},
    }
