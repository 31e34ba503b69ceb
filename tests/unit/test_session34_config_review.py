"""Session 34's configuration review: what an operator configuring from the documentation alone
relies on. The example file's comments must state each option's real default, range and choices
(read from the schema's own metadata, not retyped here); environment overrides win over the file;
`config check` refuses what `run` would.

Found and fixed in session 34 (each test failed before): an Alibaba port on the server's or the
simulator's port under another spelling of the host (`localhost`, `0.0.0.0`) passed the check
and failed `run`; a malformed DSN from SMPP_BRIDGE_STORE_DSN was reported as the file's."""

from __future__ import annotations

import base64
import dataclasses
import os
import re
import typing
from pathlib import Path
from typing import Any

import pytest
import yaml

from bridge import config as C
from bridge.config import ConfigError, FrozenMap, check_main, parse_config

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "config/bridge.example.yaml"
KEY = base64.b64encode(bytes(range(32))).decode()
OTHER_KEY = base64.b64encode(b"o" * 32).decode()


# ------------------------------------------------------------------------------------------
# The example file against the schema, field by field
# ------------------------------------------------------------------------------------------


def _leaf_fields(cls: type, prefix: str = "") -> list[tuple[str, dataclasses.Field[Any]]]:
    """(path, field) of every non-section field; list entries as `smscs[]`."""
    out: list[tuple[str, dataclasses.Field[Any]]] = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        tp = hints[f.name]
        path = f"{prefix}.{f.name}" if prefix else f.name
        if dataclasses.is_dataclass(tp):
            out += _leaf_fields(tp, path)  # type: ignore[arg-type]
        elif typing.get_origin(tp) is tuple and dataclasses.is_dataclass(
            item := typing.get_args(tp)[0]
        ):
            out += _leaf_fields(item, path + "[]")  # type: ignore[arg-type]
        else:
            out.append((path, f))
    return out


def _key_lines(text: str) -> dict[str, int]:
    """The line (0-based) of each key of the example, by path; a list's first entry as `[]`."""
    out: dict[str, int] = {}

    def walk(node: yaml.Node, path: str) -> None:
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                sub = f"{path}.{k.value}" if path else k.value
                out[sub] = k.start_mark.line
                walk(v, sub)
        elif isinstance(node, yaml.SequenceNode) and node.value:
            if isinstance(node.value[0], yaml.MappingNode):
                walk(node.value[0], path + "[]")

    walk(yaml.compose(text), "")
    return out


def _comment(lines: list[str], at: int) -> str:
    """The comment on line `at` and its continuation lines: the comment-only lines below it in
    the example's comment column (a continuation's `#` is indented past any key's)."""
    line = lines[at]
    col = line.find(" # ")
    if col < 0:
        return ""
    parts = [line[col + 3 :].strip()]
    for nxt in lines[at + 1 :]:
        stripped = nxt.lstrip()
        if stripped.startswith("#") and len(nxt) - len(stripped) >= 26:
            parts.append(stripped[1:].strip())
        else:
            break
    return " ".join(parts)


def _rule_args(rule: Any) -> tuple[str, dict[str, Any]]:
    cells = dict(zip(rule.__code__.co_freevars, rule.__closure__ or (), strict=True))
    return rule.__qualname__.split(".")[0], {k: c.cell_contents for k, c in cells.items()}


def _plain(v: Any) -> Any:
    if isinstance(v, FrozenMap):
        return {k: _plain(x) for k, x in v.items()}
    if isinstance(v, tuple):
        return [_plain(x) for x in v]
    if isinstance(v, Path):
        return os.path.normpath(str(v))
    return v


def _num(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else str(v)


# Forms the example writes a default in that are not one YAML value.
_DEFAULT_IN_WORDS = {
    "rules.optout_keywords": "as shown",  # the value on the line is the default
    "default_route": ": every SMSC",
    "billing.tariff.tiers": ": the table below",
}
# The fields a comment needs no default for: required ones, and list entries' own keys shown
# in a one-line example.
_NO_DEFAULT = {"smscs[].name", "smscs[].system_id", "routes[].prefix", "routes[].smscs"}


def _example_problems() -> list[str]:
    text = EXAMPLE.read_text(encoding="utf-8")
    lines = text.splitlines()
    at = _key_lines(text)
    example = yaml.safe_load(text)
    problems: list[str] = []
    for path, f in _leaf_fields(C.Config):
        if path.startswith(("admin.operators[]", "billing.tariff.tiers[]")):
            continue  # no entry in the example to comment on (operators: []), or a table
        if path not in at:
            problems.append(f"{path}: not in the example")
            continue
        note = _comment(lines, at[path])
        # The default, as the comment states it.
        if path in _DEFAULT_IN_WORDS:
            if f"(default {_DEFAULT_IN_WORDS[path]}".replace("default :", "default:") not in note:
                problems.append(f"{path}: comment lost its default {_DEFAULT_IN_WORDS[path]!r}")
            if path == "rules.optout_keywords":
                assert f.default_factory is dataclasses.MISSING
                if example["rules"]["optout_keywords"] != list(f.default):
                    problems.append(f"{path}: the value shown is not the default")
        elif path not in _NO_DEFAULT:
            m = re.search(r"\(default ([^)]*)\)?", note)
            if m is None:
                problems.append(f"{path}: no (default ...) in {note!r}")
            else:
                stated = m.group(1).split(";")[0].split(" = ")[0].strip()
                real = (
                    f.default_factory()  # type: ignore[misc]
                    if f.default_factory is not dataclasses.MISSING
                    else f.default
                )
                got = yaml.safe_load(stated)
                if isinstance(real, Path):
                    got = os.path.normpath(str(got))
                if _plain(got) != _plain(real):
                    problems.append(f"{path}: comment says default {stated!r}, it is {real!r}")
        # The range and choices, as the rules check them.
        for rule in f.metadata.get("rules", ()) + f.metadata.get("item", ()):
            if rule in f.metadata.get("item", ()) and path == "logging.components":
                continue  # a level per component: the comment's example names two levels
            name, args = _rule_args(rule)
            if name == "between":
                lo, hi = _num(args["lo"]), _num(args["hi"])
                ok = f"{lo}..{hi}" in note
                if path == "store.retention_days":  # 0, or 31..3650
                    ok = "0 keeps them for ever" in note and f"31..{hi}" in note
                if not ok:
                    problems.append(f"{path}: comment does not state the range {lo}..{hi}")
            elif name == "one_of":
                for choice in args["choices"]:
                    if not re.search(rf"(?<![\w.]){re.escape(str(choice))}(?![\w.])", note):
                        problems.append(f"{path}: comment does not list the choice {choice!r}")
    return problems


def test_the_example_states_every_fields_real_default_range_and_choices() -> None:
    """The example's promise (line 1: "every option, with its default"), checked against the
    schema's metadata: the `(default X)` of each comment is the field's default, each
    `between` rule's bounds are written `lo..hi`, and each `one_of` choice is named. The
    existing tests compare the example's values with the defaults for some sections only,
    and none reads the comments."""
    assert _example_problems() == []


def test_the_example_check_catches_a_wrong_default_in_a_comment(tmp_path: Path) -> None:
    """The walker above really reads the comments: a doctored copy is caught."""
    global EXAMPLE
    text = EXAMPLE.read_text(encoding="utf-8")
    doctored = text.replace(
        "window: 50                # submit_sm in flight per bind, 1..1000 (default 50)",
        "window: 50                # submit_sm in flight per bind, 1..100 (default 10)",
    )
    assert doctored != text
    (tmp_path / "x.yaml").write_text(doctored, encoding="utf-8")
    saved, EXAMPLE = EXAMPLE, tmp_path / "x.yaml"
    try:
        problems = _example_problems()
    finally:
        EXAMPLE = saved
    assert "smscs[].window: comment says default '10', it is 50" in problems
    assert "smscs[].window: comment does not state the range 1..1000" in problems


# ------------------------------------------------------------------------------------------
# Environment overrides the README's table lists and the existing tests leave out
# ------------------------------------------------------------------------------------------


def _minimal(**sections: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "security": {"master_key": KEY},
        "smscs": [{"name": "a", "system_id": "sys"}],
    }
    data.update(sections)
    return data


def test_dsn_previous_key_and_operator_token_from_env_win_over_the_file() -> None:
    data = _minimal(
        store={"engine": "postgres", "dsn": "postgresql://file:filepw@filehost/db"},
        security={"master_key": KEY, "previous_master_key": base64.b64encode(b"f" * 32).decode()},
        admin={"operators": [{"name": "ops-alice", "token": "file-token-0123456789"}]},
    )
    env = {
        "SMPP_BRIDGE_STORE_DSN": "postgresql://env:envpw@envhost/db",
        "SMPP_BRIDGE_PREVIOUS_MASTER_KEY": OTHER_KEY,
        "SMPP_BRIDGE_OPERATOR_OPS_ALICE_TOKEN": "env-token-0123456789",
    }
    cfg = parse_config(data, env=env, base_dir=Path("/srv"))
    assert cfg.store.dsn == "postgresql://env:envpw@envhost/db"
    assert cfg.security.previous_master_key == OTHER_KEY
    assert cfg.admin.operators[0].token == "env-token-0123456789"


@pytest.mark.parametrize(
    ("env", "where"),
    [
        ({"SMPP_BRIDGE_MASTER_KEY": "c2VjcmV0LWJ1dC10b28tc2hvcnQ="}, "security.master_key"),
        (
            {"SMPP_BRIDGE_PREVIOUS_MASTER_KEY": "!!not-base64-secret!!"},
            "security.previous_master_key",
        ),
        ({"SMPP_BRIDGE_OPERATOR_ALICE_TOKEN": "short-secret"}, "admin.operators[0].token"),
    ],
)
def test_a_malformed_secret_from_env_is_named_never_shown(
    env: dict[str, str], where: str, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    data = _minimal(
        store={"engine": "postgres", "dsn": "postgresql://u:p@h/db"},
        admin={"operators": [{"name": "alice", "token": "file-token-0123456789"}]},
    )
    path = tmp_path / "bridge.yaml"
    path.write_text(yaml.safe_dump(data))
    secret = next(iter(env.values()))
    with pytest.MonkeyPatch.context() as mp:
        for k, v in env.items():
            mp.setenv(k, v)
        assert check_main(str(path)) == 1
    out = capsys.readouterr()
    assert f"{where}: " in out.err and f"(from env {next(iter(env))})" in out.err
    assert secret not in out.err + out.out
    assert "Traceback" not in out.err


def test_a_malformed_dsn_from_env_says_it_came_from_env(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """The file holds a good DSN, the environment a bad one: an operator told only
    `store.dsn: must be a postgresql:// URL` reads the file, finds a postgresql:// URL, and
    cannot see the variable's value (it is rightly never shown). Every other secret refused
    from env names its variable."""
    path = tmp_path / "bridge.yaml"
    path.write_text(
        yaml.safe_dump(_minimal(store={"engine": "postgres", "dsn": "postgresql://u:p@h/db"}))
    )
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SMPP_BRIDGE_STORE_DSN", "mysql://root:hunter2secret@db/x")
        assert check_main(str(path)) == 1
    err = capsys.readouterr().err
    assert "hunter2secret" not in err
    assert "store.dsn: must be a postgresql:// URL (from env SMPP_BRIDGE_STORE_DSN)" in err


# ------------------------------------------------------------------------------------------
# `config check` against what `run` refuses
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("server_host", "aliyun_host"),
    [("127.0.0.1", "localhost"), ("127.0.0.1", "0.0.0.0"), ("0.0.0.0", "127.0.0.1")],
)
def test_the_alibaba_port_on_another_spelling_of_the_servers_address_is_refused(
    server_host: str, aliyun_host: str
) -> None:
    data = _minimal(
        server={"host": server_host, "port": 18080},
        aliyun={"enabled": True, "host": aliyun_host, "port": 18080},
    )
    with pytest.raises(ConfigError) as exc:
        parse_config(data, env={}, base_dir=Path("/srv"))
    assert any(e.startswith("aliyun.port: must differ from server.port") for e in exc.value.errors)


def test_the_alibaba_port_on_the_simulators_port_is_refused_whatever_the_host_spelling() -> None:
    data = _minimal(
        server={"host": "127.0.0.1", "port": 18080},
        sim={"enabled": True, "port": 18075, "control_port": 18076},
        aliyun={"enabled": True, "host": "localhost", "port": 18075},
    )
    with pytest.raises(ConfigError) as exc:
        parse_config(data, env={}, base_dir=Path("/srv"))
    assert "aliyun.port: must differ from sim.port (18075)" in exc.value.errors


def test_config_check_output_for_a_good_and_a_bad_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Exit 0 and the effective configuration (secrets masked) on stdout; exit 1 and every
    problem, one per line with its path, on stderr and nothing on stdout."""
    good = tmp_path / "good.yaml"
    good.write_text(yaml.safe_dump(_minimal(server={"admin_token": "a-secret-token-0123"})))
    assert check_main(str(good)) == 0
    out = capsys.readouterr()
    assert out.err == ""
    shown = yaml.safe_load(out.out)
    assert shown["server"]["admin_token"] == "***" and shown["security"]["master_key"] == "***"
    assert "a-secret-token-0123" not in out.out and KEY not in out.out
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        yaml.safe_dump(
            _minimal(
                server={"port": "8080", "admin_token": "tiny-secret"},
                smscs=[
                    {"name": "a", "system_id": "s", "window": 0, "reconnect_min_s": 9,
                     "reconnect_max_s": 3},
                    {"name": "a", "system_id": "s"},
                ],
                routes=[{"prefix": "+86", "smscs": ["nope"]}],
            )
        )
    )  # fmt: skip
    assert check_main(str(bad)) == 1
    out = capsys.readouterr()
    assert out.out == ""
    assert out.err.splitlines() == [
        f"{bad}: invalid configuration (5 errors):",
        "  server.port: expected an integer, got '8080'",
        "  server.admin_token: must have at least 16 characters, got 11",
        "  smscs[0].window: must be between 1 and 1000, got 0",
        "  smscs[1].name: duplicate SMSC name 'a' (first at smscs[0])",
        "  routes[0].smscs[0]: unknown SMSC 'nope'",
    ]
    assert "tiny-secret" not in out.err
