"""Configuration loader: exact error lines, env overrides, masking, the shipped YAML files."""

import base64
import dataclasses
import pickle
import ssl
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bridge import config as C
from bridge.config import (
    DEFAULT_YAML,
    SECRET_ENV,
    SECRET_PATHS,
    Config,
    ConfigError,
    FrozenMap,
    SmscConfig,
    check_main,
    effective_config_dict,
    load_config,
    parse_config,
)

REPO = Path(__file__).resolve().parents[2]
KEY = base64.b64encode(bytes(range(32))).decode()
BASE = Path("/srv/bridge")


def minimal(**sections: Any) -> dict[str, Any]:
    """The smallest valid config, plus overrides."""
    data: dict[str, Any] = {
        "security": {"generate_master_key": True},
        "smscs": [{"name": "a", "system_id": "sys"}],
    }
    data.update(sections)
    return data


def errors_of(data: Any, env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as exc:
        parse_config(data, env=env or {}, base_dir=BASE)
    return exc.value.errors


def parse(data: Any, env: dict[str, str] | None = None) -> Config:
    return parse_config(data, env=env or {}, base_dir=BASE)


# ------------------------------------------------------------------------------------------
# Defaults and types
# ------------------------------------------------------------------------------------------


def test_minimal_config_gets_documented_defaults() -> None:
    cfg = parse(minimal())
    assert cfg.server.host == "127.0.0.1"
    assert cfg.server.port == 8080
    assert cfg.server.max_line_size == 16384
    assert cfg.store.engine == "sqlite"
    assert cfg.store.path == BASE / "data/bridge.db"
    assert cfg.store.max_queued_segments == 1_000_000
    assert cfg.text.sign_format == "【{sign}】"
    assert cfg.webhooks.retry_schedule_s == (60, 300, 600, 1800, 3600)
    assert cfg.sim.outcomes == {"DELIVRD": 1.0}
    s = cfg.smsc("a")
    assert (s.window, s.binds, s.bind_mode, s.interface_version) == (50, 1, "transceiver", 0x34)
    assert (s.source_ton, s.source_npi, s.dest_ton, s.dest_npi) == (5, 0, 1, 1)
    assert s.password is None
    assert cfg.default_route == ("a",)
    assert cfg.routes == ()


def test_every_default_is_valid_under_its_own_rules() -> None:
    # A default that breaks its own rule would be refused when written out explicitly.
    cfg = parse(minimal())
    again = parse_config(effective_config_dict(cfg, mask_secrets=False), env={}, base_dir=BASE)
    assert again == cfg


def test_effective_config_round_trips_for_the_example() -> None:
    cfg = load_config(REPO / "config/bridge.example.yaml", env={"SMPP_BRIDGE_MASTER_KEY": KEY})
    again = parse_config(effective_config_dict(cfg, mask_secrets=False), env={}, base_dir=BASE)
    assert again == cfg


def test_float_field_accepts_int_and_stores_float() -> None:
    cfg = parse(minimal(server={"shutdown_grace_s": 3}))
    assert cfg.server.shutdown_grace_s == 3.0
    assert isinstance(cfg.server.shutdown_grace_s, float)


def test_bool_refuses_int() -> None:
    assert errors_of(minimal(logging={"mask_bodies": 1})) == [
        "logging.mask_bodies: expected a boolean (true or false), got 1"
    ]


def test_int_refuses_bool_and_float() -> None:
    assert errors_of(minimal(server={"port": True, "max_recipients": 5.0})) == [
        "server.port: expected an integer, got true",
        "server.max_recipients: expected an integer, got 5",
    ]


def test_int_refuses_string() -> None:
    assert errors_of(minimal(server={"port": "abc"})) == [
        "server.port: expected an integer, got 'abc'"
    ]


def test_float_refuses_infinity() -> None:
    assert errors_of(minimal(webhooks={"timeout_s": float("inf")})) == [
        "webhooks.timeout_s: expected a finite number, got inf"
    ]


def test_string_refuses_number_with_hint() -> None:
    data = minimal()
    data["smscs"][0]["system_id"] = 12345
    assert errors_of(data) == [
        "smscs[0].system_id: expected a string, got 12345 (put it in quotes)"
    ]


def test_optional_accepts_null_and_names_it_in_errors() -> None:
    data = minimal()
    data["smscs"][0]["validity_minutes"] = None
    assert parse(data).smscs[0].validity_minutes is None
    data["smscs"][0]["validity_minutes"] = "x"
    assert errors_of(data) == ["smscs[0].validity_minutes: expected an integer or null, got 'x'"]


def test_list_item_type_and_range_errors_name_the_index() -> None:
    errs = errors_of(minimal(webhooks={"retry_schedule_s": [60, "x", 0]}))
    assert errs == [
        "webhooks.retry_schedule_s[1]: expected an integer, got 'x'",
        "webhooks.retry_schedule_s[2]: must be between 1 and 86400, got 0",
    ]


def test_section_must_be_a_mapping_but_null_means_defaults() -> None:
    assert errors_of(minimal(server=[1])) == ["server: expected a mapping, got a list"]
    assert parse(minimal(server=None)).server.port == 8080


def test_top_level_must_be_a_mapping() -> None:
    assert errors_of(["a"]) == ["config: expected a mapping, got a list"]


def test_non_string_key() -> None:
    assert errors_of(minimal(server={1: 2})) == ["server: keys must be strings, got 1"]


# ------------------------------------------------------------------------------------------
# Rules
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("window", "ok"), [(0, False), (1, True), (1000, True), (1001, False)])
def test_window_range_boundaries(window: int, ok: bool) -> None:
    data = minimal()
    data["smscs"].append({"name": "b", "system_id": "s", "window": window})
    if ok:
        assert parse(data).smscs[1].window == window
    else:
        assert errors_of(data) == [f"smscs[1].window: must be between 1 and 1000, got {window}"]


@pytest.mark.parametrize(("port", "ok"), [(0, False), (1, True), (65535, True), (65536, False)])
def test_port_range_boundaries(port: int, ok: bool) -> None:
    if ok:
        assert parse(minimal(server={"port": port})).server.port == port
    else:
        assert errors_of(minimal(server={"port": port})) == [
            f"server.port: must be between 1 and 65535, got {port}"
        ]


@settings(max_examples=200, deadline=None)
@given(st.integers(-(2**40), 2**40))
def test_window_accepted_exactly_inside_its_range(n: int) -> None:
    data = minimal()
    data["smscs"][0]["window"] = n
    if 1 <= n <= 1000:
        assert parse(data).smscs[0].window == n
    else:
        assert errors_of(data) == [f"smscs[0].window: must be between 1 and 1000, got {n}"]


def test_float_range_shows_number_as_written() -> None:
    assert errors_of(minimal(sim={"throttle_ratio": 1.5})) == [
        "sim.throttle_ratio: must be between 0 and 1, got 1.5"
    ]


def test_unknown_key_suggests_the_close_one() -> None:
    data = minimal()
    data["smscs"][0]["bindmode"] = "transceiver"
    assert errors_of(data) == ["smscs[0].bindmode: unknown key (did you mean bind_mode?)"]


def test_unknown_key_without_suggestion() -> None:
    assert errors_of(minimal(colour="blue")) == ["colour: unknown key"]
    assert errors_of(minimal(server={"zzz": 1})) == ["server.zzz: unknown key"]


def test_unknown_section_suggestion() -> None:
    assert errors_of(minimal(webhook={})) == ["webhook: unknown key (did you mean webhooks?)"]


def test_choices() -> None:
    data = minimal()
    data["smscs"][0]["bind_mode"] = "trx"
    assert errors_of(data) == [
        "smscs[0].bind_mode: must be one of 'transceiver', 'transmitter_receiver', "
        "'transmitter', 'receiver'; got 'trx'"
    ]


def test_int_choices() -> None:
    data = minimal()
    data["smscs"][0]["gsm_data_coding"] = 3
    assert errors_of(data) == ["smscs[0].gsm_data_coding: must be one of 0, 1; got 3"]


def test_log_level_is_case_insensitive_and_normalised() -> None:
    cfg = parse(minimal(logging={"level": "debug", "components": {"smpp": "warning"}}))
    assert cfg.logging.level == "DEBUG"
    assert cfg.logging.components == {"smpp": "WARNING"}
    assert errors_of(minimal(logging={"components": {"smpp": "loud"}})) == [
        "logging.components.smpp: must be one of 'DEBUG', 'INFO', 'WARNING', 'ERROR', "
        "'CRITICAL'; got 'LOUD'"
    ]


def test_log_components_must_name_a_logger_the_daemon_has() -> None:
    cfg = parse(minimal(logging={"components": {"bridge.smpp": "DEBUG", "api.reports": "INFO"}}))
    assert set(cfg.logging.components) == {"bridge.smpp", "api.reports"}
    (err,) = errors_of(minimal(logging={"components": {"smtp": "DEBUG"}}))
    assert err.startswith("logging.components.smtp: unknown log component 'smtp'; known: aliyun,")


def test_the_log_component_list_matches_the_code() -> None:
    import re

    root = Path(C.__file__).parent
    used = {
        m.group(1).split(".")[0]
        for path in root.rglob("*.py")
        for m in re.finditer(r'getLogger\("bridge\.([\w.]+)"\)', path.read_text())
    }
    assert used == set(C.LOG_COMPONENTS)


def test_required_key_missing() -> None:
    assert errors_of(minimal(smscs=[{"name": "a"}])) == ["smscs[0].system_id: required key missing"]


def test_smsc_name_pattern_and_length() -> None:
    assert errors_of(minimal(smscs=[{"name": "Carrier A", "system_id": "s"}])) == [
        "smscs[0].name: must be made of a-z 0-9 _ -, got 'Carrier A'"
    ]
    assert errors_of(minimal(smscs=[{"name": "", "system_id": "s"}])) == [
        "smscs[0].name: must have 1 to 32 characters, got 0"
    ]


def test_system_id_length_limit_of_smpp() -> None:
    assert parse(minimal(smscs=[{"name": "a", "system_id": "x" * 15}]))
    assert errors_of(minimal(smscs=[{"name": "a", "system_id": "x" * 16}])) == [
        "smscs[0].system_id: must have 1 to 15 characters, got 16"
    ]


def test_duplicate_smsc_names() -> None:
    data = minimal(
        smscs=[
            {"name": "a", "system_id": "s1"},
            {"name": "b", "system_id": "s2"},
            {"name": "a", "system_id": "s3"},
        ]
    )
    assert errors_of(data) == ["smscs[2].name: duplicate SMSC name 'a' (first at smscs[0])"]


def test_route_to_unknown_smsc() -> None:
    data = minimal(routes=[{"prefix": "+86", "smscs": ["a", "foo"]}])
    assert errors_of(data) == ["routes[0].smscs[1]: unknown SMSC 'foo'"]


def test_default_route_to_unknown_smsc() -> None:
    assert errors_of(minimal(default_route=["a", "zz"])) == ["default_route[1]: unknown SMSC 'zz'"]


def test_an_smsc_twice_in_the_default_route_is_refused_as_in_a_route() -> None:
    assert errors_of(minimal(default_route=["a", "a"])) == [
        "default_route[1]: duplicate SMSC 'a' (first at [0])"
    ]


def test_a_route_of_receivers_only_is_refused() -> None:
    """Its messages would wait in the queue for a bind that never sends."""
    smscs = [
        {"name": "a", "system_id": "s1"},
        {"name": "rx", "system_id": "s", "bind_mode": "receiver"},
    ]
    errors = errors_of(minimal(smscs=smscs, routes=[{"prefix": "+86", "smscs": ["rx"]}]))
    assert len(errors) == 1 and errors[0].startswith("routes[0].smscs: every SMSC of it binds")
    errors = errors_of(minimal(smscs=smscs, default_route=["rx"]))
    assert len(errors) == 1 and errors[0].startswith("default_route: every SMSC of it binds")
    # A receiver beside a transmitter is fine, whatever it encodes (it sends nothing).
    smscs[1]["split"] = "sar"
    assert parse(minimal(smscs=smscs, routes=[{"prefix": "+86", "smscs": ["rx", "a"]}]))
    # Receivers only and no route written: a daemon that takes MO alone.
    assert parse(minimal(smscs=[smscs[1]]))


def test_a_yaml_boolean_where_text_goes_gets_the_quoting_hint() -> None:
    """An unquoted opt-out keyword NO arrives as false."""
    errors = errors_of(minimal(rules={"optout_keywords": ["STOP", False]}))
    assert errors == [
        "rules.optout_keywords[1]: expected a string, got false (YAML reads unquoted yes, no, "
        "on, off, true, false as booleans: put it in quotes)"
    ]


def test_route_prefix_rules() -> None:
    data = minimal(
        routes=[
            {"prefix": "86", "smscs": ["a"]},
            {"prefix": "+1", "smscs": ["a"]},
            {"prefix": "+1", "smscs": ["a"]},
            {"prefix": "+", "smscs": ["a", "a"]},
            {"prefix": "+44", "smscs": []},
        ]
    )
    assert errors_of(data) == [
        "routes[0].prefix: must be '+' followed by digits, got '86'",
        "routes[3].prefix: must be '+' followed by digits, got '+'",
        "routes[4].smscs: must not be empty",
        "routes[2].prefix: duplicate prefix '+1' (first at routes[1])",
    ]


def test_route_listing_an_smsc_twice() -> None:
    data = minimal(routes=[{"prefix": "+1", "smscs": ["a", "a"]}])
    assert errors_of(data) == ["routes[0].smscs[1]: SMSC 'a' listed twice"]


def test_default_route_absent_means_all_in_order_and_empty_means_none() -> None:
    two = [{"name": "b", "system_id": "s1"}, {"name": "a", "system_id": "s2"}]
    assert parse(minimal(smscs=two)).default_route == ("b", "a")
    assert parse(minimal(smscs=two, default_route=None)).default_route == ("b", "a")
    routed = minimal(smscs=two, routes=[{"prefix": "+1", "smscs": ["a"]}], default_route=[])
    assert parse(routed).default_route == ()
    assert errors_of(minimal(default_route=[])) == [
        "default_route: is empty and there are no routes: nothing could be sent"
    ]


def test_receive_port_only_with_separate_receiver_binds() -> None:
    """A receive_port beside binds that would never use it (a transceiver, say) is a
    misunderstanding of the carrier's set-up: refused, naming the mode that uses it."""
    base = {"name": "a", "system_id": "s", "receive_port": 2777}
    assert errors_of(minimal(smscs=[base])) == [
        "smscs[0].receive_port: only with bind_mode transmitter_receiver (its receiver binds "
        "connect there, its transmitters to port), got bind_mode 'transceiver'"
    ]
    ok = parse(minimal(smscs=[{**base, "bind_mode": "transmitter_receiver"}]))
    assert ok.smscs[0].receive_port == 2777
    assert errors_of(minimal(smscs=[{**base, "receive_port": 0}])) == [
        "smscs[0].receive_port: must be between 1 and 65535, got 0"
    ]


def test_cross_field_reconnect_and_throttle_bounds() -> None:
    data = minimal(
        smscs=[
            {
                "name": "a",
                "system_id": "s",
                "reconnect_min_s": 10,
                "reconnect_max_s": 5,
                "throttle_pause_min_s": 2,
                "throttle_pause_max_s": 1.5,
            }
        ]
    )
    assert errors_of(data) == [
        "smscs[0].reconnect_max_s: must be at least reconnect_min_s (10), got 5",
        "smscs[0].throttle_pause_max_s: must be at least throttle_pause_min_s (2), got 1.5",
    ]


def test_sign_format_needs_sign_placeholder() -> None:
    assert errors_of(minimal(text={"sign_format": "[name]"})) == [
        "text.sign_format: must contain {sign}, got '[name]'"
    ]
    assert errors_of(minimal(text={"sign_format": "[{sign}] {x}"})) == [
        "text.sign_format: must contain {sign} and no other {...} placeholder, got '[{sign}] {x}'"
    ]
    assert parse(minimal(text={"sign_format": "[{sign}] "})).text.sign_format == "[{sign}] "


def test_postgres_needs_dsn() -> None:
    assert errors_of(minimal(store={"engine": "postgres"})) == [
        "store.dsn: required when engine is postgres (set it or env SMPP_BRIDGE_STORE_DSN)"
    ]
    cfg = parse(
        minimal(store={"engine": "postgres"}), env={"SMPP_BRIDGE_STORE_DSN": "postgresql://x"}
    )
    assert cfg.store.dsn == "postgresql://x"


def test_security_needs_one_key_source() -> None:
    data = minimal()
    data["security"] = {}
    assert errors_of(data) == [
        "security: a master key is required: set master_key (or env SMPP_BRIDGE_MASTER_KEY), "
        "master_key_file, or generate_master_key: true"
    ]


def test_master_key_must_be_base64_of_32_bytes_and_is_never_echoed() -> None:
    short = base64.b64encode(b"x" * 31).decode()
    errs = errors_of(minimal(security={"master_key": short}))
    assert errs == ["security.master_key: must be base64 of exactly 32 bytes, got 31 bytes"]
    errs = errors_of(minimal(security={"master_key": "not base64!!"}))
    assert errs == [
        "security.master_key: must be base64 of exactly 32 bytes, got text that is not valid base64"
    ]
    errs = errors_of(minimal(security={"master_key": 12345}))
    assert errs == [
        "security.master_key: expected a string or null, got an integer (put it in quotes)"
    ]
    assert not any("12345" in e for e in errs)


def test_master_key_standard_and_urlsafe_base64() -> None:
    raw = bytes([0xFB, 0xFF] * 16)
    for text in (base64.b64encode(raw).decode(), base64.urlsafe_b64encode(raw).decode()):
        cfg = parse(minimal(security={"master_key": text}))
        assert cfg.security.key_bytes() == raw


def test_generate_master_key_without_file_lives_next_to_the_database() -> None:
    cfg = parse(minimal(store={"path": "/var/lib/b/bridge.db"}))
    assert cfg.security.master_key_file == Path("/var/lib/b/master.key")
    cfg = parse(minimal(security={"generate_master_key": True, "master_key_file": "k/m.key"}))
    assert cfg.security.master_key_file == BASE / "k/m.key"


def test_sim_checks() -> None:
    assert errors_of(minimal(sim={"outcomes": {"DELIVRD": 1, "LOST": 1}})) == [
        "sim.outcomes.LOST: must be one of 'DELIVRD', 'UNDELIV', 'REJECTD', 'EXPIRED', "
        "'DELETED', 'UNKNOWN'; got 'LOST'"
    ]
    assert errors_of(minimal(sim={"enabled": True, "port": 8080, "control_port": 8080})) == [
        "sim.control_port: must differ from sim.port (8080)",
    ]
    assert errors_of(minimal(sim={"enabled": True, "port": 8080})) == [
        "sim.port: must differ from server.port (8080)",
    ]
    # Ports only clash when the simulator actually runs.
    assert parse(minimal(sim={"port": 8080})).sim.port == 8080
    assert errors_of(minimal(sim={"enabled": True, "control_port": 2775})) == [
        "sim.control_port: must differ from sim.port (2775)"
    ]
    assert errors_of(minimal(sim={"outcomes": {"DELIVRD": 0}})) == [
        "sim.outcomes: weights must add up to more than 0"
    ]
    assert errors_of(minimal(sim={"throttle_ratio": 0.6, "syserr_ratio": 0.5})) == [
        "sim.syserr_ratio: throttle_ratio + syserr_ratio must be at most 1, got 1.1"
    ]


def _system_ca_file() -> str:
    """The system's CA bundle: tls_ca_file must name certificates that load."""
    found = ssl.get_default_verify_paths().cafile
    if not found or not Path(found).is_file():
        pytest.skip("no system CA bundle")
    return found


def test_relative_paths_resolve_against_base_dir_absolute_kept(tmp_path: Path) -> None:
    data = minimal(store={"path": "db/x.db"}, sim={"record_file": "/tmp/rec.log"})
    cfg = parse(data)
    assert cfg.store.path == BASE / "db/x.db"
    assert cfg.sim.record_file == Path("/tmp/rec.log")
    # The CA file is loaded at parse time: a real one, beside the base directory.
    (tmp_path / "ca.pem").write_bytes(Path(_system_ca_file()).read_bytes())
    (tmp_path / "etc").mkdir()
    data["smscs"][0]["tls"] = True
    data["smscs"][0]["tls_ca_file"] = "../ca.pem"
    cfg = parse_config(data, env={}, base_dir=tmp_path / "etc")
    assert cfg.smscs[0].tls_ca_file == tmp_path / "etc" / "../ca.pem"
    assert errors_of(minimal(server={"host": ""})) == ["server.host: must not be empty"]
    assert errors_of(minimal(store={"path": ""})) == [
        "store.path: expected a path (a non-empty string), got ''"
    ]


# ------------------------------------------------------------------------------------------
# All errors at once
# ------------------------------------------------------------------------------------------


def test_all_errors_are_collected_in_document_order() -> None:
    data = {
        "server": {"port": "abc", "max_recipients": 0},
        "security": {},
        "smscs": [
            {"name": "a", "system_id": "s", "window": 0},
            {"name": "b", "bindmode": "transceiver"},
        ],
        "routes": [{"prefix": "+86", "smscs": ["a", "foo"]}],
    }
    with pytest.raises(ConfigError) as exc:
        parse_config(data, env={}, base_dir=BASE)
    expected = [
        "server.port: expected an integer, got 'abc'",
        "server.max_recipients: must be between 1 and 10000, got 0",
        "security: a master key is required: set master_key (or env SMPP_BRIDGE_MASTER_KEY), "
        "master_key_file, or generate_master_key: true",
        "smscs[0].window: must be between 1 and 1000, got 0",
        "smscs[1].bindmode: unknown key (did you mean bind_mode?)",
        "smscs[1].system_id: required key missing",
        "routes[0].smscs[1]: unknown SMSC 'foo'",
    ]
    assert exc.value.errors == expected
    assert str(exc.value) == "\n".join(expected)
    assert exc.value.code == "CONFIG_INVALID"


# ------------------------------------------------------------------------------------------
# Environment overrides
# ------------------------------------------------------------------------------------------


def test_env_overrides_win_over_yaml() -> None:
    data = minimal(
        server={"admin_token": "y" * 16},
        security={"master_key": base64.b64encode(b"y" * 32).decode()},
        sim={"password": "yamlpass"},
    )
    data["smscs"] = [{"name": "carrier-a", "system_id": "s", "password": "yamlpass"}]
    env = {
        "SMPP_BRIDGE_ADMIN_TOKEN": "t" * 20,
        "SMPP_BRIDGE_MASTER_KEY": KEY,
        "SMPP_BRIDGE_SMSC_CARRIER_A_PASSWORD": "pw-env",
        "SMPP_BRIDGE_SIM_PASSWORD": "sim-env",
    }
    cfg = parse(data, env)
    assert cfg.server.admin_token == "t" * 20
    assert cfg.security.key_bytes() == bytes(range(32))
    assert cfg.smsc("carrier-a").password == "pw-env"
    assert cfg.sim.password == "sim-env"


def test_env_fills_a_secret_absent_from_yaml_and_empty_env_is_unset() -> None:
    data = minimal()
    data["smscs"][0]["password"] = "yaml"
    cfg = parse(data, {"SMPP_BRIDGE_SMSC_A_PASSWORD": ""})
    assert cfg.smscs[0].password == "yaml"
    cfg = parse(minimal(), {"SMPP_BRIDGE_ADMIN_TOKEN": "z" * 16})
    assert cfg.server.admin_token == "z" * 16


def test_env_overrides_only_the_settings_that_name_a_variable() -> None:
    assert parse(minimal(), {"SMPP_BRIDGE_SERVER_PORT": "1"}).server.port == 8080
    assert parse(minimal(), {"SMPP_BRIDGE_MAX_BODY_BYTES": "2048"}).server.max_body_bytes > 2048


def test_the_listening_ports_come_from_the_environment() -> None:
    """Two instances on one host run one file: each its own ports."""
    data = minimal(server={"port": 8080, "admin_port": 9090}, aliyun={"enabled": True})
    env = {
        "SMPP_BRIDGE_PORT": "8180",
        "SMPP_BRIDGE_ADMIN_PORT": "9190",
        "SMPP_BRIDGE_ALIYUN_PORT": "8181",
    }
    cfg = parse(data, env)
    assert (cfg.server.port, cfg.server.admin_port, cfg.aliyun.port) == (8180, 9190, 8181)
    # The admin listener is off by default: the variable alone turns it on.
    assert parse(minimal(), {"SMPP_BRIDGE_ADMIN_PORT": "9190"}).server.admin_port == 9190
    assert parse(data, {"SMPP_BRIDGE_PORT": ""}).server.port == 8080  # empty is unset
    assert errors_of(minimal(), {"SMPP_BRIDGE_PORT": "80x", "SMPP_BRIDGE_ADMIN_PORT": "0"}) == [
        "server.port: expected an integer, got '80x' (from env SMPP_BRIDGE_PORT)",
        "server.admin_port: must be between 1 and 65535, got 0 (from env SMPP_BRIDGE_ADMIN_PORT)",
    ]


def test_bad_env_value_names_the_variable_but_not_the_value() -> None:
    errs = errors_of(minimal(), {"SMPP_BRIDGE_ADMIN_TOKEN": "short"})
    assert errs == [
        "server.admin_token: must have at least 16 characters, got 5 "
        "(from env SMPP_BRIDGE_ADMIN_TOKEN)"
    ]


def test_parse_config_reads_os_environ_when_env_is_none(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SMPP_BRIDGE_SIM_PASSWORD", "from-os")
    assert parse_config(minimal(), base_dir=BASE).sim.password == "from-os"


def test_secret_paths_and_env_names() -> None:
    assert SECRET_PATHS == {
        "server.admin_token",
        "store.dsn",
        "security.master_key",
        "security.previous_master_key",
        "smscs[].password",
        "sim.password",
        "admin.operators[].token",
    }
    assert SECRET_ENV == {
        "server.admin_token": "SMPP_BRIDGE_ADMIN_TOKEN",
        "store.dsn": "SMPP_BRIDGE_STORE_DSN",
        "security.master_key": "SMPP_BRIDGE_MASTER_KEY",
        "security.previous_master_key": "SMPP_BRIDGE_PREVIOUS_MASTER_KEY",
        "admin.operators[].token": "SMPP_BRIDGE_OPERATOR_{NAME}_TOKEN",
        "smscs[].password": "SMPP_BRIDGE_SMSC_{NAME}_PASSWORD",
        "sim.password": "SMPP_BRIDGE_SIM_PASSWORD",
    }


# ------------------------------------------------------------------------------------------
# Masking
# ------------------------------------------------------------------------------------------

SECRETS = {
    "SMPP_BRIDGE_ADMIN_TOKEN": "admin-token-0123456789",
    "SMPP_BRIDGE_MASTER_KEY": KEY,
    "SMPP_BRIDGE_STORE_DSN": "postgresql://u:dbpass@h/db",
    "SMPP_BRIDGE_SMSC_A_PASSWORD": "smscpw",
    "SMPP_BRIDGE_SIM_PASSWORD": "simpw",
}


def test_effective_config_masks_set_secrets_and_shows_unset_as_null() -> None:
    cfg = parse(minimal(store={"engine": "postgres"}), SECRETS)  # the DSN is PostgreSQL's
    d = effective_config_dict(cfg)
    assert d["server"]["admin_token"] == "***"
    assert d["security"]["master_key"] == "***"
    assert d["store"]["dsn"] == "***"
    assert d["smscs"][0]["password"] == "***"
    assert d["sim"]["password"] == "***"
    dumped = yaml.safe_dump(d)
    for secret in SECRETS.values():
        assert secret not in dumped
    unset = effective_config_dict(parse(minimal()))
    assert unset["server"]["admin_token"] is None
    assert unset["smscs"][0]["password"] is None


def test_effective_config_unmasked_and_plain_types() -> None:
    cfg = parse(minimal(store={"engine": "postgres"}), SECRETS)  # the DSN is PostgreSQL's
    d = effective_config_dict(cfg, mask_secrets=False)
    assert d["smscs"][0]["password"] == "smscpw"
    assert d["store"]["path"] == str(BASE / "data/bridge.db")
    assert d["webhooks"]["retry_schedule_s"] == [60, 300, 600, 1800, 3600]
    assert type(d["sim"]["outcomes"]) is dict
    yaml.safe_dump(d)  # only plain types: safe_dump refuses anything else


def test_repr_never_shows_secrets() -> None:
    cfg = parse(minimal(store={"engine": "postgres"}), SECRETS)  # the DSN is PostgreSQL's
    text = repr(cfg) + str(cfg.smscs[0]) + repr(cfg.security) + repr(cfg.sim)
    for secret in SECRETS.values():
        assert secret not in text


# ------------------------------------------------------------------------------------------
# Implicit sim SMSC, helpers, immutability
# ------------------------------------------------------------------------------------------


def test_implicit_sim_smsc_when_sim_enabled_and_no_smscs() -> None:
    for smscs in ({}, {"smscs": []}, {"smscs": None}):
        data = {
            "security": {"generate_master_key": True},
            "sim": {"enabled": True, "host": "0.0.0.0", "port": 3775, "password": "p"},
            **smscs,
        }
        cfg = parse(data)
        assert [s.name for s in cfg.smscs] == ["sim"]
        sim = cfg.smsc("sim")
        assert (sim.host, sim.port, sim.system_id, sim.password) == (
            "127.0.0.1",
            3775,
            "bridge",
            "p",
        )
        assert cfg.default_route == ("sim",)


def test_routes_may_name_the_implicit_sim_smsc() -> None:
    data = {
        "security": {"generate_master_key": True},
        "sim": {"enabled": True},
        "routes": [{"prefix": "+86", "smscs": ["sim"]}],
    }
    assert parse(data).routes[0].smscs == ("sim",)


def test_no_implicit_smsc_when_smscs_are_listed() -> None:
    cfg = parse(minimal(sim={"enabled": True}))
    assert [s.name for s in cfg.smscs] == ["a"]


def test_no_smscs_and_no_sim_is_refused() -> None:
    assert errors_of({"security": {"generate_master_key": True}}) == [
        "smscs: at least one SMSC is required (or set sim.enabled: true)"
    ]


def test_smscs_not_a_list() -> None:
    assert errors_of(minimal(smscs={"name": "a"})) == ["smscs: expected a list, got a mapping"]


def test_smsc_lookup() -> None:
    cfg = parse(minimal())
    assert isinstance(cfg.smsc("a"), SmscConfig)
    with pytest.raises(KeyError):
        cfg.smsc("nope")


def test_config_is_frozen_hashable_and_picklable() -> None:
    cfg = parse(minimal(logging={"components": {"smpp": "DEBUG"}}))
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.server.port = 1  # type: ignore[misc]
    with pytest.raises(TypeError):
        cfg.logging.components["smpp"] = "INFO"  # type: ignore[index]
    assert isinstance(cfg.logging.components, FrozenMap)
    assert hash(cfg) == hash(parse(minimal(logging={"components": {"smpp": "DEBUG"}})))
    assert pickle.loads(pickle.dumps(cfg)) == cfg


# ------------------------------------------------------------------------------------------
# Files, YAML and the shipped configs
# ------------------------------------------------------------------------------------------


def test_default_yaml_file_is_identical_to_the_builtin() -> None:
    assert (REPO / "config/default.yaml").read_text(encoding="utf-8") == DEFAULT_YAML


def test_builtin_default_config(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    cfg = load_config(None, env={})
    assert cfg.sim.enabled
    assert [s.name for s in cfg.smscs] == ["sim"]
    assert cfg.smsc("sim").password == "bridge"
    assert (cfg.smsc("sim").host, cfg.smsc("sim").port) == ("127.0.0.1", 2775)
    assert cfg.store.engine == "sqlite"
    assert cfg.store.path == tmp_path.resolve() / "data/bridge.db"
    assert cfg.security.generate_master_key
    assert cfg.security.master_key_file == tmp_path.resolve() / "data/master.key"
    assert cfg.server.admin_token is None
    assert cfg.server.host == "127.0.0.1"
    with_token = load_config(None, env={"SMPP_BRIDGE_ADMIN_TOKEN": "a" * 32})
    assert with_token.server.admin_token == "a" * 32


def test_default_yaml_file_resolves_paths_next_to_itself() -> None:
    cfg = load_config(REPO / "config/default.yaml", env={})
    assert cfg.store.path == REPO / "config/data/bridge.db"


def _example() -> dict[str, Any]:
    return yaml.safe_load((REPO / "config/bridge.example.yaml").read_text(encoding="utf-8"))


def test_example_parses() -> None:
    cfg = load_config(REPO / "config/bridge.example.yaml", env={})
    assert [s.name for s in cfg.smscs] == ["carrier-a", "carrier-b"]
    assert cfg.smsc("carrier-a").interface_version == 0x34
    assert cfg.default_route == ("carrier-b", "carrier-a")


def _field_names(cls: type) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


def test_example_documents_every_field() -> None:
    raw = _example()
    assert list(raw) == _field_names(Config)
    for name, f in ((f.name, f) for f in dataclasses.fields(Config)):
        if dataclasses.is_dataclass(f.default_factory):
            assert list(raw[name]) == _field_names(f.default_factory), name
    assert list(raw["smscs"][0]) == _field_names(C.SmscConfig)
    assert list(raw["routes"][0]) == _field_names(C.RouteConfig)


def test_example_comments_every_key() -> None:
    text = (REPO / "config/bridge.example.yaml").read_text(encoding="utf-8")
    headers = {f"{name}:" for name in _field_names(Config)}
    second_smsc = {"host: smsc.carrier-b.example", "system_id: bridge02"}
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#") or stripped in headers | second_smsc:
            continue
        assert " # " in line, f"no comment on: {line!r}"


def test_example_values_are_the_defaults_except_where_it_illustrates() -> None:
    example = effective_config_dict(parse_config(_example(), env={}, base_dir=BASE))
    defaults = effective_config_dict(parse(minimal()))
    illustrated = {("security", "master_key_file"), ("security", "generate_master_key")}
    for section in (
        "server",
        "store",
        "security",
        "logging",
        "text",
        "pipeline",
        "webhooks",
        "sim",
    ):
        for key, value in defaults[section].items():
            if (section, key) not in illustrated:
                assert example[section][key] == value, f"{section}.{key}"
    smsc_defaults = effective_config_dict(parse(minimal()))["smscs"][0]
    for key, value in example["smscs"][0].items():
        if key not in ("name", "host", "system_id"):
            assert value == smsc_defaults[key], f"smscs[0].{key}"


def test_yaml_syntax_error_has_line_and_column(tmp_path: Path) -> None:
    p = tmp_path / "bad.yaml"
    p.write_text("server:\n  port: 8080\n  host: [unclosed\n", encoding="utf-8")
    with pytest.raises(ConfigError) as exc:
        load_config(p, env={})
    (line,) = exc.value.errors
    assert line.startswith(f"{p}: line ")
    assert "column" in line and "invalid YAML" in line


def test_yaml_syntax_error_exact_position(tmp_path: Path) -> None:
    p = tmp_path / "bad.yaml"
    p.write_text("server:\n  port: 80\n bad: 1\n", encoding="utf-8")
    with pytest.raises(ConfigError) as exc:
        load_config(p, env={})
    assert exc.value.errors[0].startswith(f"{p}: line 3, column 2: invalid YAML:")


def test_duplicate_yaml_key_is_refused(tmp_path: Path) -> None:
    p = tmp_path / "dup.yaml"
    p.write_text("server:\n  port: 1\n  port: 2\n", encoding="utf-8")
    with pytest.raises(ConfigError) as exc:
        load_config(p, env={})
    assert exc.value.errors == [f"{p}: line 3, column 3: invalid YAML: duplicate key 'port'"]


def test_unbuildable_yaml_scalar_is_a_marked_error(tmp_path: Path) -> None:
    p = tmp_path / "date.yaml"
    p.write_text("smscs:\n  - name: 2024-02-30\n", encoding="utf-8")
    with pytest.raises(ConfigError) as exc:
        load_config(p, env={})
    assert exc.value.errors == [
        f"{p}: line 2, column 11: invalid YAML: cannot read value '2024-02-30': "
        "day is out of range for month"
    ]
    p.write_text("server:\n  port: " + "9" * 5000 + "\n", encoding="utf-8")
    with pytest.raises(ConfigError) as exc:
        load_config(p, env={})
    assert exc.value.errors[0].startswith(f"{p}: line 2, column 9: invalid YAML: cannot read value")


def test_huge_numbers_are_refused_not_crashed_on() -> None:
    assert errors_of(minimal(server={"port": 2**1100, "shutdown_grace_s": 2**1100})) == [
        "server.port: must be between 1 and 65535, got a huge integer",
        "server.shutdown_grace_s: expected a finite number, got a huge integer",
    ]


def test_home_directory_paths(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", "/home/op")
    assert parse(minimal(store={"path": "~/b.db"})).store.path == Path("/home/op/b.db")
    assert errors_of(minimal(store={"path": "~no-such-user-x/b.db"})) == [
        "store.path: cannot expand '~no-such-user-x/b.db': no such user or home directory"
    ]


def test_missing_and_non_utf8_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as exc:
        load_config(tmp_path / "nope.yaml", env={})
    assert exc.value.errors == [
        f"{tmp_path / 'nope.yaml'}: cannot read config file: No such file or directory"
    ]
    p = tmp_path / "latin.yaml"
    p.write_bytes(b"server:\n  host: \xff\n")
    with pytest.raises(ConfigError) as exc:
        load_config(p, env={})
    assert exc.value.errors == [f"{p}: not UTF-8 text (byte 16)"]


def test_empty_file_reports_what_is_missing(tmp_path: Path) -> None:
    p = tmp_path / "empty.yaml"
    p.write_text("# nothing\n", encoding="utf-8")
    with pytest.raises(ConfigError) as exc:
        load_config(p, env={})
    assert exc.value.errors == [
        "security: a master key is required: set master_key (or env SMPP_BRIDGE_MASTER_KEY), "
        "master_key_file, or generate_master_key: true",
        "smscs: at least one SMSC is required (or set sim.enabled: true)",
    ]


def test_file_paths_resolve_against_the_file_directory(tmp_path: Path) -> None:
    p = tmp_path / "etc" / "b.yaml"
    p.parent.mkdir()
    p.write_text(yaml.safe_dump(minimal(store={"path": "db/b.db"})), encoding="utf-8")
    assert load_config(p, env={}).store.path == tmp_path.resolve() / "etc/db/b.db"


# ------------------------------------------------------------------------------------------
# check_main (the `config check` command)
# ------------------------------------------------------------------------------------------


def test_check_main_prints_masked_effective_config(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SMPP_BRIDGE_SMSC_A_PASSWORD", "hunter22")
    p = tmp_path / "ok.yaml"
    p.write_text(yaml.safe_dump(minimal()), encoding="utf-8")
    assert check_main(str(p)) == 0
    out, err = capsys.readouterr()
    assert err == ""
    assert "hunter22" not in out
    shown = yaml.safe_load(out)
    assert shown["smscs"][0]["password"] == "***"
    assert shown["server"]["port"] == 8080


def test_check_main_reports_every_error_and_fails(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    p = tmp_path / "bad.yaml"
    p.write_text(yaml.safe_dump(minimal(server={"port": 0, "hots": "x"})), encoding="utf-8")
    assert check_main(str(p)) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err.splitlines() == [
        f"{p}: invalid configuration (2 errors):",
        "  server.hots: unknown key (did you mean host?)",
        "  server.port: must be between 1 and 65535, got 0",
    ]


def test_check_main_refuses_a_master_key_file_run_could_not_read(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`config check` (the unit's ExecStartPre) passed a master_key_file that did not exist, and
    `run` then failed: the file is read now, and each fault named by its path, never printed."""
    key = base64.b64encode(bytes(range(32))).decode()

    def check(security: dict[str, Any]) -> tuple[int, str, str]:
        p = tmp_path / "bridge.yaml"
        p.write_text(yaml.safe_dump(minimal(security=security)), encoding="utf-8")
        code = check_main(str(p))
        out, err = capsys.readouterr()
        return code, out, err

    missing = tmp_path / "missing.key"
    code, out, err = check({"master_key_file": str(missing)})
    assert (code, out) == (1, "")
    assert f"  security.master_key_file: {missing} does not exist (make one, once: " in err
    assert "base64 of 32 random bytes" in err and "README, 'Under systemd'" in err

    short = tmp_path / "short.key"
    short.write_text(base64.b64encode(b"x" * 31).decode() + "\n")
    code, _out, err = check({"master_key_file": str(short)})
    assert code == 1 and f"security.master_key_file: {short}: " in err and "got 31" in err
    assert short.read_text().strip() not in err

    directory = tmp_path / "adir"
    directory.mkdir()
    code, _out, err = check({"master_key_file": str(directory)})
    assert code == 1 and f"security.master_key_file: cannot read {directory}: " in err

    code, _out, err = check({"master_key": key, "previous_master_key_file": str(missing)})
    assert code == 1 and f"security.previous_master_key_file: {missing} does not exist" in err

    good = tmp_path / "master.key"
    good.write_text(key + "\n")
    assert check({"master_key_file": str(good)})[0] == 0
    assert check({"master_key": key, "master_key_file": str(missing)})[0] == 0  # inline wins
    # generate_master_key creates a missing file at the first start
    assert check({"master_key_file": str(missing), "generate_master_key": True})[0] == 0
    assert not missing.exists()  # the check itself writes nothing
    # run refuses a previous key that is the current one; so does the check, files or not
    for security, name in (
        ({"master_key_file": str(good), "previous_master_key_file": str(good)}, "_file"),
        ({"master_key": key, "previous_master_key_file": str(good)}, "_file"),
        ({"master_key_file": str(good), "previous_master_key": key}, ""),
    ):
        code, _out, err = check(security)
        assert code == 1 and f"previous_master_key{name}: is the master key itself" in err, err
        assert key not in err


def test_check_main_default(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    for name in SECRET_ENV.values():
        monkeypatch.delenv(name, raising=False)
    assert check_main(None) == 0
    shown = yaml.safe_load(capsys.readouterr().out)
    assert shown["sim"]["password"] == "***"
    assert shown["smscs"][0]["name"] == "sim"


# ------------------------------------------------------------------------------------------
# Never a traceback: junk in, ConfigError out
# ------------------------------------------------------------------------------------------

_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**40), 2**40),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
)
_junk = st.recursive(
    _scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.dictionaries(st.one_of(st.text(max_size=12), st.integers()), inner, max_size=3),
    ),
    max_leaves=12,
)
_section_keys = st.sampled_from(
    ["server", "store", "security", "logging", "text", "pipeline", "webhooks", "sim"]
)


def _field_junk() -> st.SearchStrategy[Any]:
    def section(cls: type) -> st.SearchStrategy[dict[str, Any]]:
        return st.dictionaries(st.sampled_from(_field_names(cls)), _junk, max_size=6)

    smsc = st.fixed_dictionaries(
        {"name": st.sampled_from(["a", "b", "A B", 3])},
        optional={k: _junk for k in _field_names(C.SmscConfig) if k != "name"},
    )
    return st.fixed_dictionaries(
        {},
        optional={
            "server": section(C.ServerConfig),
            "store": section(C.StoreConfig),
            "security": section(C.SecurityConfig),
            "logging": section(C.LoggingConfig),
            "sim": section(C.SimConfig),
            "smscs": st.one_of(st.lists(smsc, max_size=3), _junk),
            "routes": st.one_of(
                st.lists(
                    st.fixed_dictionaries(
                        {"prefix": st.sampled_from(["+1", "1", 5]), "smscs": _junk}
                    ),
                    max_size=2,
                ),
                _junk,
            ),
            "default_route": _junk,
        },
    )


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(_junk, _field_junk()))
def test_junk_never_raises_anything_but_config_error(data: Any) -> None:
    try:
        cfg = parse_config(data, env={}, base_dir=BASE)
    except ConfigError as e:
        assert e.errors
        assert all(isinstance(line, str) and ": " in line for line in e.errors)
    else:
        assert isinstance(cfg, Config)


@settings(max_examples=100, deadline=None)
@given(st.text(max_size=200))
def test_any_text_file_gives_config_or_config_error(text: str) -> None:
    try:
        C.parse_config(C._load_yaml(text, "t.yaml"), env={}, base_dir=BASE)
    except ConfigError:
        pass


@pytest.mark.parametrize("days", [1, 7, 30])
def test_a_retention_shorter_than_the_reply_window_is_refused(days: int) -> None:
    (err,) = errors_of(minimal(store={"retention_days": days}))
    assert err.startswith("store.retention_days: must be 0 (keep for ever) or at least 31")


@pytest.mark.parametrize("days", [0, 31, 400])
def test_no_retention_or_at_least_31_days_loads(days: int) -> None:
    assert parse(minimal(store={"retention_days": days})).store.retention_days == days


def test_a_tls_ca_file_that_does_not_load_is_refused(tmp_path: Path) -> None:
    """Checked at load (config check, a SIGHUP), not when the connector is built: a typo once
    failed a reload after the running bind was stopped."""
    data = minimal()
    data["smscs"][0]["tls"] = True
    data["smscs"][0]["tls_ca_file"] = str(tmp_path / "carrier-ca.pem")
    [error] = errors_of(data)
    assert error.startswith("smscs[0].tls_ca_file: cannot read") and "No such file" in error
    (tmp_path / "carrier-ca.pem").write_text("not a certificate")
    [error] = errors_of(data)
    assert error.startswith("smscs[0].tls_ca_file: ") and "not PEM CA certificates" in error
    data["smscs"][0]["tls_ca_file"] = _system_ca_file()
    assert parse(data).smscs[0].tls_ca_file == Path(_system_ca_file())
