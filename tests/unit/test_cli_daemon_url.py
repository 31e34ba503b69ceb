"""`send` and `status` find a daemon run with SMPP_BRIDGE_PORT (server.port from the
environment, how two instances on one host share a file) without --url: they went to 8080."""

from __future__ import annotations

import pytest

from bridge.cli import build_parser


@pytest.mark.parametrize(
    ("env", "url"),
    [
        ({}, "http://127.0.0.1:8080"),
        ({"SMPP_BRIDGE_PORT": "8180"}, "http://127.0.0.1:8180"),
        ({"SMPP_BRIDGE_PORT": ""}, "http://127.0.0.1:8080"),  # empty is unset, as in the config
        ({"SMPP_BRIDGE_PORT": "80x"}, "http://127.0.0.1:8080"),  # the daemon refuses it anyway
        ({"SMPP_BRIDGE_URL": "http://gw:9000", "SMPP_BRIDGE_PORT": "8180"}, "http://gw:9000"),
    ],
)
def test_the_daemon_url_follows_the_environment(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], url: str
) -> None:
    monkeypatch.delenv("SMPP_BRIDGE_URL", raising=False)
    monkeypatch.delenv("SMPP_BRIDGE_PORT", raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    parser = build_parser()
    assert parser.parse_args(["status"]).url == url
    assert parser.parse_args(["send", "--status", "msg_x"]).url == url
    assert parser.parse_args(["status", "--url", "http://other:1"]).url == "http://other:1"
