"""A benchmark script ended from outside (SIGTERM: a test's or a CI job's time-out, `kill`;
SIGINT: Ctrl-C) ends its children, and theirs, before it exits (scripts/children.py).

Until session 51 SIGTERM killed the script alone: `bench_send_path.py --callgrind` left valgrind,
the copy of the script under it and that copy's simulator running; the others left their
simulator and daemons. Each case starts a script as a test's time-out would find it (its
children up), signals the script alone, and fails when anything it started is still alive."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.pg_cluster import ci, find_bindir

ROOT = Path(__file__).resolve().parents[2]


def _proc_stat(pid: int) -> tuple[int, int] | None:
    """(parent pid, start time in clock ticks) of a live process; None when gone or a zombie."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = raw[raw.rindex(")") + 2 :].split()
    if fields[0] == "Z":
        return None
    return int(fields[1]), int(fields[19])


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def _descendants(root: int) -> dict[tuple[int, int], str]:
    """Every live process under `root`: (pid, start time) -> its command line."""
    parents: dict[int, tuple[int, int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (st := _proc_stat(int(entry))) is not None:
            parents[int(entry)] = st
    out: dict[tuple[int, int], str] = {}
    frontier = {root}
    while frontier:
        kids = {pid for pid, (ppid, _t) in parents.items() if ppid in frontier}
        for pid in kids:
            out[(pid, parents[pid][1])] = _cmdline(pid)
        frontier = kids
    return out


def _alive(procs: dict[tuple[int, int], str]) -> dict[tuple[int, int], str]:
    left = {}
    for (pid, start), cmd in procs.items():
        st = _proc_stat(pid)
        if st is not None and st[1] == start:
            left[(pid, start)] = cmd
    return left


def _mentioning(text: str) -> dict[tuple[int, int], str]:
    """Every live process whose command line has `text` in it: a PostgreSQL cluster's
    postmaster (pg_ctl's daemon, no descendant of the script) by its data folder."""
    out: dict[tuple[int, int], str] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (st := _proc_stat(int(entry))) is not None:
            if text in (cmd := _cmdline(int(entry))):
                out[(int(entry), st[1])] = cmd
    return out


def _started(script: subprocess.Popen[bytes], scratch: Path) -> dict[tuple[int, int], str]:
    """What the script started: its descendants, and the clusters in its temporary folder."""
    return _descendants(script.pid) | _mentioning(f" -D {scratch}{os.sep}")


def _until_started(
    script: subprocess.Popen[bytes], want: list[str], limit_s: float, scratch: Path
) -> dict:
    """What the script started once each of `want` is in one of their command lines."""
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        assert script.poll() is None, "the script ended by itself"
        seen = _started(script, scratch)
        if all(any(w in cmd for cmd in seen.values()) for w in want):
            return seen
        time.sleep(0.2)
    raise AssertionError(f"not all of {want} started: {_started(script, scratch)}")


Cue = Callable[[dict[tuple[int, int], str]], bool]


def _signalled_at(
    argv: list[str],
    want: list[str],
    cues: list[Cue],
    limit_s: float,
    sig: int = signal.SIGTERM,
    settle: float = 0.0,
    **env: str,
) -> tuple[int, list[str], dict[tuple[int, int], str]]:
    """Run the script until each of `want` is in the command line of something it started
    (and `settle` seconds more, for what the children start right after), then, for each of
    `cues` in turn, until it (given those, polled every 5 ms) says the script
    is at the point to signal, and send it `sig` there: (its exit status, what its TMPDIR still
    held, the processes it had started). Nothing it started may be left, no cluster in its
    TMPDIR."""
    scratch = Path(tempfile.mkdtemp(prefix="bench-children-"))
    scratch.chmod(0o711)  # a cluster's folder in it: as root, initdb runs as `postgres`
    script = subprocess.Popen(
        [sys.executable, *argv],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "TMPDIR": str(scratch), **env},
    )
    seen: dict[tuple[int, int], str] = {}
    try:
        seen = _until_started(script, want, limit_s, scratch)
        if settle:
            time.sleep(settle)
            seen |= _started(script, scratch)
        for cue in cues:
            deadline = time.monotonic() + limit_s
            while not cue(seen):
                assert script.poll() is None, "the script ended before its cue"
                assert time.monotonic() < deadline, f"no cue in {limit_s} s: {seen}"
                time.sleep(0.005)
            script.send_signal(sig)
        code = script.wait(60)
        deadline = time.monotonic() + 5  # a SIGKILLed child's exit, seen a moment later
        while _alive(seen) and time.monotonic() < deadline:
            time.sleep(0.1)
        left = _alive(seen)
        assert left == {}, f"still running after the script ended: {left}"
        clusters = _mentioning(f" -D {scratch}{os.sep}")
        assert clusters == {}, f"a cluster left running: {clusters}"
        return code, [p.name for p in scratch.iterdir()], seen
    finally:  # whatever the test failed at: nothing of it left behind for the next tests
        if script.poll() is None:
            seen |= _started(script, scratch)
            script.kill()
            script.wait()
        seen |= _mentioning(f" -D {scratch}{os.sep}")
        for pid, _start in _alive(seen):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)  # a cluster's postmaster: its backends follow
        shutil.rmtree(scratch, ignore_errors=True)


def _now(_seen: dict[tuple[int, int], str]) -> bool:
    return True


def _signalled(
    argv: list[str], want: list[str], sig: int, start_s: float = 60
) -> dict[tuple[int, int], str]:
    """The processes the script had started when it was signalled (command lines), half a
    second after all of `want` were up. Its temporary files (TMPDIR) must be gone too: its
    `finally` blocks ran."""

    _code, left, seen = _signalled_at(argv, want, [_now], start_s, sig, settle=0.5)
    assert left == [], "its temporary files left"
    return seen


SIGNALS = pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["term", "int"])


# Until session 52 this one (and bench_smpp's, once on CI) now and then outlived the signal by
# 40 s, its children ended: the signal handler's exception, raised between two of a task's steps,
# left a task nothing would run, and asyncio.run's closing cancel waited for it (6 of 20 runs by
# hand). The scripts now run their loops through Children.asyncio_run (0 of 40).
@SIGNALS
def test_bench_send_path_ends_its_simulator(sig: int) -> None:
    _signalled(
        ["scripts/bench_send_path.py", "--messages", "100000000", "--receipt-delay-ms", "5000"],
        ["bridge.cli sim"],
        sig,
    )


@pytest.mark.skipif(shutil.which("valgrind") is None, reason="valgrind is not installed")
@SIGNALS
def test_bench_send_path_under_callgrind_ends_valgrind_and_the_copys_simulator(sig: int) -> None:
    seen = _signalled(
        ["scripts/bench_send_path.py", "--callgrind", "--messages", "100000000"],
        ["valgrind", "bridge.cli sim"],
        sig,
        start_s=120,
    )
    profiles = {m for cmd in seen.values() for m in re.findall(r"--callgrind-out-file=(\S+)", cmd)}
    assert profiles and not [p for p in profiles if Path(p).exists()], "a part run's profile left"


@SIGNALS
def test_send_path_wire_ends_its_simulator(sig: int) -> None:
    _signalled(["scripts/send_path_wire.py", "--messages", "300000"], ["bridge.cli sim"], sig)


@pytest.mark.skipif(shutil.which("valgrind") is None, reason="valgrind is not installed")
@SIGNALS
def test_bench_send_pieces_ends_valgrind(sig: int) -> None:
    seen = _signalled(
        ["scripts/bench_send_pieces.py", "--calls", "100000000", "build"], ["valgrind"], sig
    )
    profiles = {m for cmd in seen.values() for m in re.findall(r"--callgrind-out-file=(\S+)", cmd)}
    assert profiles and not [p for p in profiles if Path(p).exists()], "a part run's profile left"


@SIGNALS
def test_bench_smpp_ends_its_simulator(sig: int) -> None:
    _signalled(
        ["scripts/bench_smpp.py", "--messages", "100000000", "--skip-codec"],
        ["bridge.cli sim"],
        sig,
    )


@SIGNALS
def test_bench_ends_its_simulator_and_daemon(sig: int) -> None:
    _signalled(
        ["scripts/bench.py", "--messages", "100000000", "--timeout", "600"],
        ["bridge.cli sim", "bridge.cli run"],
        sig,
    )


@SIGNALS
def test_bench_backlog_ends_its_simulator_and_daemon(sig: int) -> None:
    _signalled(
        ["scripts/bench_backlog.py", "--messages", "100000000"],
        ["bridge.cli run"],  # the simulator comes once the backlog is queued
        sig,
    )


@pytest.mark.skipif(shutil.which("bearerbox") is None, reason="Kannel is not installed")
@SIGNALS
def test_bench_kannel_ends_its_simulator_and_kannel(sig: int) -> None:
    _signalled(
        ["scripts/bench_kannel.py", "--messages", "100000000", "--timeout", "600"],
        ["bridge.cli sim", "bearerbox", "smsbox"],
        sig,
    )


def test_a_child_past_its_time_out_is_ended_with_what_it_started(tmp_path: Path) -> None:
    """Children.run's own time-out (bench_send_path.py's valgrind run had none: a run that
    hung held the script, valgrind and the simulator until something killed the script)."""
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        from children import Children
    finally:
        sys.path.remove(str(ROOT / "scripts"))
    pids = tmp_path / "pids"
    child = (
        "import os, subprocess, sys, time; "
        "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)']); "
        f"open({str(pids)!r}, 'w').write(f'{{os.getpid()}} {{p.pid}}'); time.sleep(120)"
    )
    kids = Children()
    kids.own_groups = True  # as the outermost script's, whatever runs this test
    began = time.monotonic()
    with pytest.raises(SystemExit, match="did not finish in 2 s"):
        kids.run([sys.executable, "-c", child], 2)
    assert time.monotonic() - began < 20
    started = [int(x) for x in pids.read_text().split()]
    assert len(started) == 2
    time.sleep(0.2)
    assert [pid for pid in started if _proc_stat(pid) is not None] == []


@pytest.mark.skipif(shutil.which("valgrind") is None, reason="valgrind is not installed")
@SIGNALS
def test_bench_accept_inproc_under_callgrind_ends_valgrind(sig: int) -> None:
    seen = _signalled(
        ["scripts/bench_accept_inproc.py", "--callgrind", "--requests", "50000000"],
        ["valgrind"],
        sig,
    )
    profiles = {m for cmd in seen.values() for m in re.findall(r"--callgrind-out-file=(\S+)", cmd)}
    assert profiles and not [p for p in profiles if Path(p).exists()], "a part run's profile left"


@SIGNALS
def test_bench_ab_ends_the_script_it_measures_and_its_children(sig: int) -> None:
    other = os.path.join(os.path.dirname(sys.executable), ".", os.path.basename(sys.executable))
    _signalled(
        ["scripts/bench_ab.py", "--base-python", sys.executable, "--python", other,
         "--pairs", "1", "--script", "bench_smpp.py", "--",
         "--messages", "100000000", "--skip-codec"],
        ["bench_smpp.py", "bridge.cli sim"],
        sig,
    )  # fmt: skip


@pytest.mark.skipif(shutil.which("valgrind") is None, reason="valgrind is not installed")
@SIGNALS
def test_bench_owner_under_callgrind_ends_valgrind(sig: int) -> None:
    # Its --callgrind (session 51) ran valgrind by subprocess.run: a SIGTERM left valgrind and
    # the copy under it running, a SIGINT SIGKILLed them and left the copy's store behind.
    seen = _signalled(
        ["scripts/bench_owner.py", "--callgrind", "--messages", "100000000", "--history", "0"],
        ["valgrind"],
        sig,
    )
    profiles = {m for cmd in seen.values() for m in re.findall(r"--callgrind-out-file=(\S+)", cmd)}
    assert profiles and not [p for p in profiles if Path(p).exists()], "a part run's profile left"


# Until session 52 these four ran their children by subprocess.run and their event loops by
# asyncio.run, without Children: a SIGTERM killed the script alone and left its measuring child
# running and its PostgreSQL cluster (pg_ctl's daemon) up for good, with its temporary folder.
NEEDS_PG = pytest.mark.skipif(
    find_bindir() is None and not ci(), reason="no PostgreSQL server binaries"
)
POSTMASTER = "bin/postgres -D"


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["term", "int"])
@pytest.mark.parametrize(
    "argv",
    [
        ["scripts/bench_pg_ends.py", "--waiting", "2000", "--others", "200", "--runs", "100000"],
        ["scripts/bench_pg_dnc.py", "--waiting", "2000", "--runs", "100000"],
    ],
    ids=["pg_ends", "pg_dnc"],
)
@pytest.mark.postgres
@NEEDS_PG
def test_pg_bench_stops_its_cluster_and_ends_its_measuring_child(argv: list[str], sig: int) -> None:
    _signalled(argv, ["--measure", POSTMASTER], sig, start_s=120)


@pytest.mark.postgres
@NEEDS_PG
@SIGNALS
def test_bench_pg_owner_stops_its_cluster(sig: int) -> None:
    _signalled(["scripts/bench_pg_owner.py", "--runs", "100000"], [POSTMASTER], sig, start_s=120)


@pytest.mark.postgres
@NEEDS_PG
@SIGNALS
def test_bench_pg_mo_pages_stops_its_cluster(sig: int) -> None:
    # Until session 53 it had no Children: a signal killed it and left its cluster running.
    _signalled(["scripts/bench_pg_mo_pages.py", "--inbox", "100000000"], [POSTMASTER], sig, 120)


@pytest.mark.postgres
@NEEDS_PG
@SIGNALS
def test_bench_restore_on_postgres_stops_its_cluster_and_ends_the_command(sig: int) -> None:
    _signalled(
        ["scripts/bench_restore.py", "--engine", "postgres", "--messages", "1000",
         "--runs", "100000"],
        ["after-restore", POSTMASTER],
        sig,
        start_s=120,
    )  # fmt: skip


@SIGNALS
def test_bench_restore_ends_the_command(sig: int) -> None:
    _signalled(
        ["scripts/bench_restore.py", "--messages", "1000", "--runs", "100000"],
        ["after-restore"],
        sig,
    )


@SIGNALS
def test_bench_parts_compare_ends_its_measuring_run(sig: int) -> None:
    _signalled(
        ["scripts/bench_parts.py", "--compare", str(ROOT), "--pairs", "1",
         "--messages", "2000", "--rounds", "100000"],
        ["--json"],
        sig,
    )  # fmt: skip


def test_bench_ending_by_itself_finishes_its_clean_up_through_a_signal() -> None:
    """Signalled while its `finally` ends its children (the simulator gone, the daemon still
    draining), after the run finished by itself: the signal's cancel cut that finally at its
    next await (the report receiver's stop, with --webhooks) and the temporary directory after
    it stayed. Until session 53."""

    def ending(seen: dict[tuple[int, int], str]) -> bool:
        return _alive({k: cmd for k, cmd in seen.items() if "bridge.cli sim" in cmd}) == {}

    argv = ["scripts/bench.py", "--messages", "200", "--webhooks", "--timeout", "120"]
    code, left, _seen = _signalled_at(argv, ["bridge.cli sim", "bridge.cli run"], [ending], 120)
    assert (code, left) == (143, []), "its temporary files left"


@pytest.fixture
def slow_pg_ctl() -> Iterator[Path]:
    """A PG_BIN of the real server binaries whose `pg_ctl` waits 1 s before it runs: the time
    a test's signal is sent in, once it sees the wrapper running (its command line names the
    action: start or stop)."""
    real = find_bindir()
    if real is None:
        pytest.skip("no PostgreSQL server binaries")
    bindir = Path(tempfile.mkdtemp(prefix="slow-pg-bin-"))
    bindir.chmod(0o755)  # as root, the cluster's tools run as `postgres`
    for tool in real.iterdir():
        (bindir / tool.name).symlink_to(tool)
    (bindir / "pg_ctl").unlink()
    (bindir / "pg_ctl").write_text(f'#!/bin/sh\nsleep 1\nexec {real / "pg_ctl"} "$@"\n')
    (bindir / "pg_ctl").chmod(0o755)
    try:
        yield bindir
    finally:
        shutil.rmtree(bindir, ignore_errors=True)


def _pg_ctl_running(bindir: Path, action: str) -> Cue:
    def cue(_seen: dict[tuple[int, int], str]) -> bool:
        return any(
            cmd.rstrip().endswith(f" {action}") for cmd in _mentioning(f"{bindir}/pg_ctl").values()
        )

    return cue


@pytest.mark.postgres
@NEEDS_PG
@pytest.mark.parametrize(
    "argv",
    [
        ["scripts/bench_pg_owner.py", "--runs", "100000"],
        ["scripts/bench.py", "--store", "postgres", "--messages", "100000000", "--timeout", "600"],
    ],
    ids=["pg_owner", "bench"],
)
def test_a_script_signalled_while_its_cluster_starts_stops_it(
    slow_pg_ctl: Path, argv: list[str]
) -> None:
    """A SIGTERM during `pg_ctl start`: bench_pg_owner.py raised it in start_cluster (before
    its `try`), bench.py there too (the cancel's fallback, 2 s on) or at the database's
    creation after it (the cluster not yet known to its `finally`): `pg_ctl` ended in the
    middle, or the cluster was never stopped, and the server and its folder were left. Until
    session 53."""
    cue = _pg_ctl_running(slow_pg_ctl, "start")
    code, left, _seen = _signalled_at(argv, [], [cue], 120, PG_BIN=str(slow_pg_ctl))
    assert (code, left) == (143, []), "its temporary files left"


@pytest.mark.postgres
@NEEDS_PG
def test_bench_pg_owner_signalled_again_while_its_cluster_stops_stops_it(
    slow_pg_ctl: Path,
) -> None:
    """A second SIGTERM during the first one's `pg_ctl stop`: raised there, it ended `pg_ctl`
    in the middle and the cluster's folder was left. Until session 53."""
    argv = ["scripts/bench_pg_owner.py", "--runs", "100000"]
    # The first once the cluster is up (`pg_ctl start` returned: its server runs before that).
    started = _pg_ctl_running(slow_pg_ctl, "start")
    cues = [lambda seen: not started(seen), _pg_ctl_running(slow_pg_ctl, "stop")]
    code, left, _seen = _signalled_at(argv, [POSTMASTER], cues, 120, PG_BIN=str(slow_pg_ctl))
    assert (code, left) == (143, []), "its temporary files left"
