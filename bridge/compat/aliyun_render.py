"""Response bodies in Alibaba Cloud's two formats: compact JSON (default) and XML (`Format=XML`).

The XML is what Dysmsapi returns: `<?xml version='1.0' encoding='UTF-8'?>`, a root element named
after the action plus `Response` (`<SendSmsResponse>`), one element per field in order, and a list
rendered as the repeated element of its key, so the JSON
`{"SmsSendDetailDTOs": {"SmsSendDetailDTO": [a, b]}}` becomes
`<SmsSendDetailDTOs><SmsSendDetailDTO>a</SmsSendDetailDTO><SmsSendDetailDTO>b</SmsSendDetailDTO>
</SmsSendDetailDTOs>`. Errors use the root `<Error>` in XML, as the real gateway does. Pure.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from typing import Any
from xml.sax.saxutils import escape

__all__ = [
    "JSON_CONTENT_TYPE",
    "XML_CONTENT_TYPE",
    "error_body",
    "render",
    "render_error",
]

JSON_CONTENT_TYPE = "application/json;charset=utf-8"
XML_CONTENT_TYPE = "text/xml;charset=utf-8"
_XML_DECLARATION = "<?xml version='1.0' encoding='UTF-8'?>"
_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]*", re.ASCII)
# Characters XML 1.0 cannot carry at all, not even as references (SMS text may hold them).
_NOT_XML_CHAR = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff\ud800-\udfff]")


def _is_xml(fmt: str | None) -> bool:
    return (fmt or "JSON").upper() == "XML"


def _text(value: Any) -> str:
    if isinstance(value, bool):
        text = "true" if value else "false"
    else:
        text = str(value)
    return escape(_NOT_XML_CHAR.sub("\ufffd", text))


def _element(name: str, value: Any, out: list[str]) -> None:
    if not _NAME_RE.fullmatch(name):
        raise ValueError(f"not an XML element name: {name!r}")
    if value is None:
        return
    if isinstance(value, Mapping):
        out.append(f"<{name}>")
        for key, child in value.items():
            _element(str(key), child, out)
        out.append(f"</{name}>")
    elif isinstance(value, Sequence) and not isinstance(value, (str, bytes)):
        for item in value:
            _element(name, item, out)
    else:
        out.append(f"<{name}>{_text(value)}</{name}>")


def _xml(root: str, body: Mapping[str, Any]) -> bytes:
    out = [_XML_DECLARATION]
    _element(root, body, out)
    return "".join(out).encode("utf-8")


def _json(body: Mapping[str, Any]) -> bytes:
    # "replace": a lone surrogate (never valid UTF-8) must not turn an answer into a 500.
    text = json.dumps(body, ensure_ascii=False, separators=(",", ":"))
    return text.encode("utf-8", "replace")


def render(body: Mapping[str, Any], fmt: str | None, action: str) -> tuple[bytes, str]:
    """(bytes, content type) of a success body; `fmt` is the call's Format (JSON unless "XML").

    `None` values are left out in XML and kept as `null` in JSON, as each format's SDK parser
    expects nothing else. Raises ValueError on a key that cannot be an XML element name.
    """
    if _is_xml(fmt):
        return _xml(f"{action}Response", body), XML_CONTENT_TYPE
    return _json(body), JSON_CONTENT_TYPE


def error_body(
    code: str,
    message: str,
    request_id: str,
    *,
    host_id: str | None = None,
    recommend: str | None = None,
) -> dict[str, str]:
    """The error envelope every answer carries: Code, Message, RequestId (+ HostId, Recommend)."""
    body = {"RequestId": request_id, "Code": code, "Message": message}
    if host_id:
        body["HostId"] = host_id
    if recommend:
        body["Recommend"] = recommend
    return body


def render_error(
    code: str,
    message: str,
    request_id: str,
    fmt: str | None = "JSON",
    *,
    host_id: str | None = None,
    recommend: str | None = None,
) -> tuple[bytes, str]:
    """(bytes, content type) of an error answer; XML under `<Error>` as Alibaba's gateway does."""
    body = error_body(code, message, request_id, host_id=host_id, recommend=recommend)
    if _is_xml(fmt):
        return _xml("Error", body), XML_CONTENT_TYPE
    return _json(body), JSON_CONTENT_TYPE
