"""The deployment files say true things: the Grafana dashboard charts exactly the metrics the
daemon exports (both ways), the systemd unit stops later than the daemon's grace and reloads with
SIGHUP as a non-root, hardened service, and the Dockerfile's health check works without curl."""

from __future__ import annotations

import http.server
import json
import re
import shutil
import socket
import subprocess
import sys
import threading
import tomllib
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from bridge.config import ServerConfig, SmscConfig
from bridge.metrics import Metrics

REPO = Path(__file__).resolve().parents[2]
SUFFIXES = ("_total", "_bucket", "_count", "_sum")


def exported_families() -> set[str]:
    text = Metrics().exposition().decode()
    return {f.name for f in text_string_to_metric_families(text)}


def family_of(series: str) -> str:
    for suffix in SUFFIXES:
        if series.endswith(suffix):
            return series[: -len(suffix)]
    return series


def test_the_dashboard_charts_every_metric_and_only_real_ones() -> None:
    dash = json.loads((REPO / "config/grafana-dashboard.json").read_text(encoding="utf-8"))
    panels = [p for p in dash["panels"] if p["type"] != "row"]
    assert len({p["id"] for p in dash["panels"]}) == len(dash["panels"])
    charted: set[str] = set()
    for p in panels:
        assert p["targets"], p["title"]
        for t in p["targets"]:
            assert 'instance=~"$instance"' in t["expr"], (p["title"], t["expr"])
            assert t["expr"].count("(") == t["expr"].count(")"), t["expr"]
            charted |= {family_of(s) for s in re.findall(r"smpp_bridge_[a-z_]+", t["expr"])}
    exported = exported_families()
    assert charted - exported == set(), "charted but not exported"
    assert exported - charted == set(), "exported but not charted"
    # Panels do not overlap on the 24-column grid.
    cells: set[tuple[int, int]] = set()
    for p in dash["panels"]:
        g = p["gridPos"]
        assert g["x"] + g["w"] <= 24
        mine = {
            (x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])
        }
        assert not cells & mine, p["title"]
        cells |= mine


def _unit() -> dict[str, list[str]]:
    values: dict[str, list[str]] = {}
    for line in (REPO / "config/smpp-bridge.service").read_text().splitlines():
        if line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            values.setdefault(key, []).append(value)
    return values


def test_the_systemd_unit_stops_after_the_grace_and_reloads_with_sighup() -> None:
    u = _unit()
    assert u["User"] == ["smpp-bridge"] and u["Group"] == ["smpp-bridge"]
    assert u["ExecStart"][0].endswith("smpp-bridge run --config /etc/smpp-bridge/bridge.yaml")
    assert u["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert u["KillSignal"] == ["SIGTERM"] and u["Restart"] == ["on-failure"]
    stop_s = int(u["TimeoutStopSec"][0])
    default_grace = ServerConfig().shutdown_grace_s
    unbind = SmscConfig(name="x", system_id="x").unbind_timeout_s
    assert stop_s > default_grace + unbind + 5
    for key, value in {
        "NoNewPrivileges": "true",
        "ProtectSystem": "strict",
        "ProtectHome": "true",
        "PrivateTmp": "true",
        "CapabilityBoundingSet": "",
        "RestrictAddressFamilies": "AF_INET AF_INET6 AF_UNIX",
    }.items():
        assert u[key] == [value], key
    assert u["StateDirectory"] == ["smpp-bridge"]
    assert "SMPP_BRIDGE_MASTER_KEY" not in "".join(u.get("Environment", []))  # env file only


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze")
def test_systemd_analyze_accepts_the_unit(tmp_path: Path) -> None:
    text = (REPO / "config/smpp-bridge.service").read_text()
    exe = shutil.which("smpp-bridge") or sys.executable  # the unit names /opt/...: use a real one
    unit = tmp_path / "smpp-bridge.service"
    unit.write_text(text.replace("/opt/smpp-bridge/bin/smpp-bridge", exe))
    r = subprocess.run(
        ["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60
    )
    problems = [line for line in r.stderr.splitlines() if "smpp-bridge.service" in line]
    assert r.returncode == 0 and not problems, r.stderr


def _syscalls(names: str) -> set[str]:
    """System calls named by a SystemCallFilter= value: @groups expanded by systemd itself."""
    out: set[str] = set()
    for name in names.split():
        if not name.startswith("@"):
            out.add(name)
            continue
        r = subprocess.run(
            ["systemd-analyze", "syscall-filter", name], capture_output=True, text=True, timeout=60
        )
        assert r.returncode == 0, r.stderr
        for line in r.stdout.splitlines()[1:]:
            line = line.strip()
            if line.startswith("@"):
                out |= _syscalls(line)
            elif line and not line.startswith("#"):
                out.add(line)
    return out


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze")
def test_the_unit_lets_acceptors_lower_their_priority() -> None:
    """Acceptors (server.workers) call os.nice (setpriority). The unit filtered @resources, so
    systemd killed every acceptor at start (SIGSYS) and the supervisor restarted it for ever.
    Effective filter, by systemd's rules: the first line sets the mode (an allow-list here), a
    `~` line takes calls out of it, a plain line puts calls back."""
    lines = [
        line.split("=", 1)[1]
        for line in (REPO / "config/smpp-bridge.service").read_text().splitlines()
        if line.startswith("SystemCallFilter=")
    ]
    assert not lines[0].startswith("~")
    allowed = _syscalls(lines[0])
    for value in lines[1:]:
        if value.startswith("~"):
            allowed -= _syscalls(value[1:])
        else:
            allowed |= _syscalls(value)
    assert {"setpriority", "getpriority", "nice"} & allowed >= {"setpriority", "nice"}
    assert "reboot" not in allowed and "setrlimit" not in allowed  # still hardened


def _dockerfile_final_stage() -> list[str]:
    lines = (REPO / "Dockerfile").read_text().replace("\\\n", " ").splitlines()
    start = max(i for i, line in enumerate(lines) if line.startswith("FROM "))
    return [line for line in lines[start:] if line and not line.startswith("#")]


def test_the_image_runs_as_a_non_root_user_from_a_slim_base() -> None:
    final = _dockerfile_final_stage()
    assert final[0].startswith("FROM python:") and final[0].endswith("-slim")
    users = [line.split()[1] for line in final if line.startswith("USER ")]
    assert users and users[-1] not in ("root", "0")
    assert any(line.startswith("ENTRYPOINT") and "smpp-bridge" in line for line in final)


def test_the_image_and_the_unit_install_the_uvloop_extra_pyproject_defines() -> None:
    # The daemon takes uvloop when it is installed (server.event_loop: auto); the image built
    # its wheels from `.` alone, so it ran on asyncio's loop while the tests ran on uvloop.
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    extras = extras["optional-dependencies"]
    assert any(req.startswith("uvloop") for req in extras["uvloop"])
    text = (REPO / "Dockerfile").read_text().replace("\\\n", " ")
    builds = [line for line in text.splitlines() if line.startswith("RUN pip wheel")]
    assert builds and all("'.[uvloop]'" in line for line in builds), builds
    unit = (REPO / "config" / "smpp-bridge.service").read_text()
    assert "pip install 'smpp-bridge[uvloop]'" in unit


def _healthcheck_argv() -> list[str]:
    (line,) = [x for x in _dockerfile_final_stage() if x.startswith("HEALTHCHECK ")]
    return json.loads(line[line.index("CMD ") + 4 :])


def test_the_health_check_needs_no_curl_and_fails_when_nothing_answers() -> None:
    argv = _healthcheck_argv()
    assert argv[0] == "python" and "urllib" in argv[2]
    env_line = next(x for x in _dockerfile_final_stage() if "SMPP_BRIDGE_HEALTHCHECK_URL=" in x)
    assert env_line.endswith(":8080/healthz")

    class Ok(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200 if self.path == "/healthz" else 503)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Ok)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    cmd = [sys.executable, *argv[1:]]
    try:
        base = f"http://127.0.0.1:{server.server_address[1]}"
        for path, expected in (("/healthz", 0), ("/readyz", 1)):
            env = {"SMPP_BRIDGE_HEALTHCHECK_URL": base + path}
            assert subprocess.run(cmd, env=env, capture_output=True, timeout=30).returncode == (
                expected
            )
    finally:
        server.shutdown()
        server.server_close()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}/healthz"
    env = {"SMPP_BRIDGE_HEALTHCHECK_URL": dead}
    assert subprocess.run(cmd, env=env, capture_output=True, timeout=30).returncode == 1


def test_the_compose_file_runs_two_instances_on_one_postgres_with_a_valid_config() -> None:
    import yaml

    from bridge.config import parse_config

    compose = yaml.safe_load((REPO / "config/compose.yaml").read_text(encoding="utf-8"))
    services = compose["services"]
    bridges = [s for name, s in services.items() if name.startswith("bridge-")]
    assert len(bridges) == 2
    assert "postgres" in services and services["postgres"]["healthcheck"]
    published = {b["ports"][0].split(":")[0] for b in bridges}
    assert len(published) == 2  # each instance reachable on its own host port
    for b in bridges:
        env = b["environment"]
        assert env["SMPP_BRIDGE_STORE_DSN"].startswith("postgresql://")
        assert "@postgres:5432/" in env["SMPP_BRIDGE_STORE_DSN"]
        assert b["depends_on"]["postgres"]["condition"] == "service_healthy"
        mount = b["volumes"][0].split(":")
        assert mount[1] == "/etc/smpp-bridge/bridge.yaml"  # where the image's entrypoint reads
        cfg_file = REPO / "config" / Path(mount[0]).name
        grace = float(b["stop_grace_period"].rstrip("s"))
        # No secret sits in the compose file itself: all come from the environment.
        assert all(
            "${" in v
            for k, v in env.items()
            if k not in ("SMPP_BRIDGE_SMSC_SIM_PASSWORD", "SMPP_BRIDGE_INSTANCE")
        )
    # Each instance its own number of server.instances: disjoint concatenation references.
    assert sorted(b["environment"]["SMPP_BRIDGE_INSTANCE"] for b in bridges) == ["0", "1"]
    data = yaml.safe_load(cfg_file.read_text(encoding="utf-8"))
    cfg = parse_config(
        data,
        env={
            "SMPP_BRIDGE_MASTER_KEY": "A" * 43 + "=",
            "SMPP_BRIDGE_STORE_DSN": "postgresql://bridge:x@postgres:5432/bridge",
            "SMPP_BRIDGE_SMSC_SIM_PASSWORD": "bridge",
        },
        base_dir=REPO / "config",
    )
    assert cfg.store.engine == "postgres" and cfg.server.host == "0.0.0.0"
    assert cfg.server.instances == len(bridges)
    assert grace > cfg.server.shutdown_grace_s
    assert {s.host for s in cfg.smscs} <= set(services)  # SMSCs resolve to compose services


_SUBST = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)[^}]*\}")
DUMMY = "A" * 43 + "="  # one value that passes as master key, admin token and DSN password


def _as_argv(value: Any) -> list[str]:
    return value.split() if isinstance(value, str) else [str(a) for a in value or []]


def _service_argv(service: dict[str, Any]) -> list[str]:
    """What the container runs: its own entrypoint, else the image's (for services built here)."""
    entry = service.get("entrypoint")
    if entry is None and "build" in service:
        (line,) = [x for x in _dockerfile_final_stage() if x.startswith("ENTRYPOINT ")]
        entry = json.loads(line.split(None, 1)[1])
    return _as_argv(entry) + _as_argv(service.get("command"))


def _service_env(service: dict[str, Any]) -> dict[str, str]:
    """The container's environment, with every ${VAR...} from the host replaced by a dummy."""
    raw = service.get("environment") or {}
    if isinstance(raw, list):
        raw = dict(item.partition("=")[::2] for item in raw)
    assert isinstance(raw, dict)
    return {str(k): _SUBST.sub(DUMMY, str(v)) for k, v in raw.items()}


def test_every_compose_service_running_smpp_bridge_can_load_its_config() -> None:
    """Each service loads its config as its command does: `run` the whole file, `sim` its
    sim and logging sections (load_sim_config)."""
    import yaml

    from bridge.config import ConfigError, load_config, load_sim_config

    compose = yaml.safe_load((REPO / "config/compose.yaml").read_text(encoding="utf-8"))
    checked = []
    for name, service in compose["services"].items():
        argv = _service_argv(service)
        if not argv or argv[0] != "smpp-bridge" or "--config" not in argv:
            continue
        target = argv[argv.index("--config") + 1]
        mounts = [v.split(":") for v in service.get("volumes", [])]
        (source,) = [m[0] for m in mounts if m[1] == target]  # the config file is mounted
        try:
            load = load_sim_config if "sim" in argv[1:2] else load_config
            load(REPO / "config" / source, env=_service_env(service))
        except ConfigError as exc:
            pytest.fail(f"service {name!r} cannot load {source}: {exc}")
        checked.append(name)
    assert sorted(checked) == ["bridge-a", "bridge-b", "sim"]


def test_an_acceptor_refused_setpriority_runs_on_with_a_warning(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Under a sandbox answering EPERM (SystemCallErrorNumber=EPERM with the call filtered) the
    acceptor runs at normal priority instead of exiting at start."""
    from bridge import cli

    def refuse(increment: int) -> int:
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(cli.os, "nice", refuse)
    with caplog.at_level("WARNING", logger="bridge.cli"):
        cli._be_nicer(5)
    assert "os.nice(5) refused (Operation not permitted)" in caplog.text


def test_one_process_with_a_metrics_dir_set_starts_from_empty_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """PROMETHEUS_MULTIPROC_DIR set in the environment with `workers: 0`: the files an earlier
    run left there were merged into this run's counters; the start empties them."""
    from bridge import cli, metrics

    stale = tmp_path / "counter_4242.db"
    stale.write_bytes(b"an earlier run's values")
    keep = tmp_path / "notes.txt"
    keep.write_text("not a metrics file")
    monkeypatch.setenv(metrics.MULTIPROC_ENV, str(tmp_path))
    try:
        cli._fresh_metric_files()
        assert not stale.exists() and keep.exists()
    finally:
        metrics.disable_multiprocess(tmp_path, created=False)


def test_without_a_metrics_dir_nothing_is_switched(monkeypatch: pytest.MonkeyPatch) -> None:
    from bridge import cli, metrics

    monkeypatch.delenv(metrics.MULTIPROC_ENV, raising=False)
    cli._fresh_metric_files()
    assert metrics.multiprocess_dir() is None
