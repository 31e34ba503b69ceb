"""Identifiers (time-sortable, unguessable) and secrets at rest (AES-GCM under a master key)."""

from __future__ import annotations

import base64
import os
import re
import stat
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.crypto import (
    MasterKeyError,
    Sealer,
    decode_master_key,
    key_id,
    load_master_key,
    new_app_key,
    new_secret,
)
from bridge.ids import _b32, id_time_ms, new_id

BODY = re.compile(r"^[0-9A-HJKMNP-TV-Z]{26}$")  # Crockford base32: no I L O U
MAX_MS = 2**48 - 1

# ---------------------------------------------------------------- ids


def test_new_id_layout() -> None:
    ident = new_id("msg_", 1_700_000_000_000)
    assert ident.startswith("msg_") and len(ident) == 4 + 26
    assert BODY.match(ident[4:])
    assert id_time_ms(ident, "msg_") == 1_700_000_000_000


def test_new_id_uses_the_clock_by_default() -> None:
    before = int(time.time() * 1000)
    ident = new_id("b_")
    after = int(time.time() * 1000)
    ms = id_time_ms(ident, "b_")
    assert ms is not None and before <= ms <= after


@settings(max_examples=300, deadline=None)
@given(st.integers(0, MAX_MS))
def test_time_round_trip(ms: int) -> None:
    ident = new_id("m", ms)
    assert BODY.match(ident[1:])
    assert id_time_ms(ident, "m") == ms


@settings(max_examples=300, deadline=None)
@given(st.integers(0, MAX_MS - 1), st.integers(1, 10**9))
def test_ids_sort_by_time(ms: int, later_by: int) -> None:
    later = min(ms + later_by, MAX_MS)
    assert new_id("msg_", ms) < new_id("msg_", later)


@settings(max_examples=500, deadline=None)
@given(st.lists(st.integers(0, MAX_MS), min_size=1, max_size=8))
def test_the_time_part_is_the_base32_of_the_time_whatever_came_before(times: list[int]) -> None:
    # The time part keeps its high characters between calls: each id must still spell its own
    # millisecond in full, after any sequence of others (near or far, earlier or later).
    for ms in times:
        assert new_id("m", ms)[1:11] == _b32(ms, 10)
        assert id_time_ms(new_id("m", ms), "m") == ms


def test_ids_are_unique_within_one_millisecond() -> None:
    ids = {new_id("msg_", 1_700_000_000_000) for _ in range(20_000)}
    assert len(ids) == 20_000
    # 80 random bits: the random part differs beyond the time prefix.
    assert len({i[-16:] for i in ids}) == 20_000


def test_the_random_part_is_uniform_over_the_alphabet_across_draws() -> None:
    # Session 57: the characters come from a string of 4,096 mapped at once (256 ids a draw):
    # 20,000 ids cross ~80 draws, each id's 16 characters from the alphabet, each character
    # about as frequent as any other (320,000 characters, 10,000 expected of each).
    from collections import Counter

    from bridge.ids import _ALPHABET

    ids = [new_id("bat_", 1_700_000_000_000) for _ in range(20_000)]
    seen = Counter("".join(i[-16:] for i in ids))
    assert set(seen) == set(_ALPHABET)
    assert all(9_000 < n < 11_000 for n in seen.values()), seen


def test_a_forked_child_never_repeats_the_parents_ids() -> None:
    """The random pool is buffered: a child forked with a half-used buffer must draw fresh bytes,
    or parent and child would hand out the same ids (acceptor processes are started by fork)."""
    new_id("msg_", 1)  # the parent's pool now holds unused bytes
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: report its next ids and leave without running pytest's teardown
        os.close(read)
        os.write(write, ",".join(new_id("msg_", 1) for _ in range(50)).encode())
        os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as f:
        child = set(f.read().decode().split(","))
    os.waitpid(pid, 0)
    parent = {new_id("msg_", 1) for _ in range(50)}
    assert len(child) == 50
    assert not child & parent


@pytest.mark.parametrize(
    "ident",
    [
        "msg_",
        "msg_" + "0" * 25,
        "msg_" + "0" * 27,
        "msg_" + "0" * 25 + "I",  # not in the alphabet
        "msg_" + "0" * 25 + "u",
        "msg_01hzzzzzzzzzzzzzzzzzzzzzzz",  # lower case is not what new_id emits
    ],
)
def test_id_time_ms_rejects_malformed(ident: str) -> None:
    assert id_time_ms(ident, "msg_") is None


def test_id_time_ms_with_wrong_prefix_is_none() -> None:
    assert id_time_ms(new_id("msg_", 5), "m_") is None


# ---------------------------------------------------------------- sealing

KEY = bytes(range(32))
OTHER_KEY = bytes(range(1, 33))


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


@settings(max_examples=100, deadline=None)
@given(st.text(max_size=200), st.text(max_size=40))
def test_seal_open_round_trip(plaintext: str, aad: str) -> None:
    sealer = Sealer(KEY)
    blob = sealer.seal(plaintext, aad)
    assert blob[:1] == b"\x02" and blob[1:5] == key_id(KEY)
    assert len(blob) == 1 + 4 + 12 + len(plaintext.encode()) + 16
    assert sealer.open(blob, aad) == plaintext


def test_each_seal_uses_a_fresh_nonce() -> None:
    sealer = Sealer(KEY)
    assert sealer.seal("s3cret", "AK1") != sealer.seal("s3cret", "AK1")


def test_wrong_aad_does_not_open() -> None:
    blob = Sealer(KEY).seal("s3cret", "AK1")
    with pytest.raises(MasterKeyError):
        Sealer(KEY).open(blob, "AK2")  # a ciphertext copied onto another row


def test_wrong_key_does_not_open() -> None:
    blob = Sealer(KEY).seal("s3cret", "AK1")
    with pytest.raises(MasterKeyError, match=f"{key_id(KEY).hex()}, which this daemon does not"):
        Sealer(OTHER_KEY).open(blob, "AK1")
    legacy = _v1(KEY, "s3cret", "AK1")  # format 1 names no key: tried, and refused
    with pytest.raises(MasterKeyError, match="wrong key"):
        Sealer(OTHER_KEY).open(legacy, "AK1")


@pytest.mark.parametrize(
    "mangle",
    [
        lambda b: b[:32],  # too short to hold version + key id + nonce + tag
        lambda b: b"\x03" + b[1:],  # unknown version
        lambda b: b[:-1] + bytes([b[-1] ^ 1]),  # tampered tag
        lambda b: b[:14] + bytes([b[14] ^ 1]) + b[15:],  # tampered ciphertext
    ],
)
def test_damaged_blob_does_not_open(mangle: object) -> None:
    blob = Sealer(KEY).seal("s3cret", "AK1")
    with pytest.raises(MasterKeyError):
        Sealer(KEY).open(mangle(blob), "AK1")  # type: ignore[operator]


def _v1(key: bytes, plaintext: str, aad: str) -> bytes:
    """A secret as releases before key ids sealed it (format 1: no key id)."""
    nonce = os.urandom(12)
    return b"\x01" + nonce + AESGCM(key).encrypt(nonce, plaintext.encode(), aad.encode())


def test_format_1_secrets_still_open_with_the_current_or_the_previous_key() -> None:
    assert Sealer(KEY).open(_v1(KEY, "old", "AK1"), "AK1") == "old"
    assert Sealer(OTHER_KEY, (KEY,)).open(_v1(KEY, "old", "AK1"), "AK1") == "old"
    assert not Sealer(KEY).is_current(_v1(KEY, "old", "AK1"))  # resealed to name its key


def test_a_rotation_opens_both_keys_and_seals_with_the_new_one() -> None:
    old = Sealer(KEY).seal("s3cret", "AK1")
    rotating = Sealer(OTHER_KEY, (KEY,))
    assert rotating.open(old, "AK1") == "s3cret" and not rotating.is_current(old)
    new = rotating.seal("s3cret", "AK1")
    assert new[1:5] == key_id(OTHER_KEY) and rotating.is_current(new)
    assert Sealer(OTHER_KEY).open(new, "AK1") == "s3cret"  # the previous key can then go
    with pytest.raises(MasterKeyError, match="does not have"):
        Sealer(OTHER_KEY).open(old, "AK1")  # ...but not before every secret was resealed


def test_the_previous_key_must_differ_from_the_current_one() -> None:
    with pytest.raises(MasterKeyError, match="previous master key is the current one"):
        Sealer(KEY, (KEY,))
    with pytest.raises(MasterKeyError, match="32 bytes"):
        Sealer(KEY, (b"x" * 16,))


def test_reseal_plan_counts_what_it_does() -> None:
    from bridge.reseal import plan

    rotating = Sealer(OTHER_KEY, (KEY,))
    rows = [
        ("account", "acc1", Sealer(KEY).seal("w1", "acc1")),
        ("key", "AK1", _v1(KEY, "k1", "AK1")),
        ("key", "AK2", rotating.seal("k2", "AK2")),
        ("key", "AK3", Sealer(bytes(32)).seal("k3", "AK3")),  # neither key
        ("key", "AK4", Sealer(KEY).seal("k4", "AK-other")),  # sealed for another row
    ]
    writes, report = plan(rows, rotating)
    assert [(k, i) for k, i, _o, _n in writes] == [("account", "acc1"), ("key", "AK1")]
    assert [rotating.open(n, i) for _k, i, _o, n in writes] == ["w1", "k1"]
    assert all(rotating.is_current(n) for *_x, n in writes)
    assert (report.resealed, report.current) == (2, 1)
    assert [(k, i) for k, i, _w in report.unreadable] == [("key", "AK3"), ("key", "AK4")]


def test_sealer_needs_a_32_byte_key_and_hides_it() -> None:
    with pytest.raises(MasterKeyError, match="32 bytes"):
        Sealer(b"x" * 31)
    assert KEY.hex() not in repr(Sealer(KEY)) and "hidden" in repr(Sealer(KEY))


# ---------------------------------------------------------------- master key loading


def test_inline_key_wins_over_file(tmp_path: Path) -> None:
    path = tmp_path / "master.key"
    path.write_text(b64(OTHER_KEY))
    assert load_master_key(inline=b64(KEY), key_file=path) == KEY
    missing = tmp_path / "nope" / "master.key"
    assert load_master_key(inline=b64(KEY), key_file=missing, generate=True) == KEY
    assert not missing.exists()  # inline present: nothing generated


def test_key_file_is_read_with_surrounding_whitespace(tmp_path: Path) -> None:
    path = tmp_path / "master.key"
    path.write_text("  " + b64(KEY) + "\n\n")
    assert load_master_key(inline=None, key_file=path) == KEY
    assert load_master_key(inline="", key_file=path) == KEY  # empty env var = unset


def test_generate_creates_a_private_file_once(tmp_path: Path) -> None:
    path = tmp_path / "data" / "keys" / "master.key"
    old_umask = os.umask(0)  # the mode must not depend on a lenient umask
    try:
        key = load_master_key(inline=None, key_file=path, generate=True)
    finally:
        os.umask(old_umask)
    assert len(key) == 32
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    content = path.read_text()
    assert decode_master_key(content) == key
    assert load_master_key(inline=None, key_file=path, generate=True) == key  # re-read
    assert path.read_text() == content
    assert load_master_key(inline=None, key_file=path) == key


def test_two_generated_keys_differ(tmp_path: Path) -> None:
    a = load_master_key(inline=None, key_file=tmp_path / "a.key", generate=True)
    b = load_master_key(inline=None, key_file=tmp_path / "b.key", generate=True)
    assert a != b


def test_missing_file_without_generate(tmp_path: Path) -> None:
    path = tmp_path / "master.key"
    with pytest.raises(MasterKeyError, match=re.escape(str(path))):
        load_master_key(inline=None, key_file=path)
    assert not path.exists()


def test_no_key_configured_at_all() -> None:
    with pytest.raises(MasterKeyError, match="SMPP_BRIDGE_MASTER_KEY"):
        load_master_key(inline=None, key_file=None, generate=True)


def test_url_safe_master_key_is_the_same_key_config_check_accepts() -> None:
    """`config check` takes the URL-safe alphabet (- and _); the key loader refused it, so a key
    the check passed stopped the daemon and every store command."""
    key = bytes(range(200, 232))
    url_safe = base64.urlsafe_b64encode(key).decode()
    assert "-" in url_safe or "_" in url_safe
    assert decode_master_key(url_safe) == key


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("not base64!!", "not valid base64"),
        ("abc", "not valid base64"),  # bad padding
        (b64(KEY)[:-4] + "-_!=", "not valid base64"),
        (b64(b"k" * 16), "must decode to 32 bytes, got 16"),
        (b64(b"k" * 33), "must decode to 32 bytes, got 33"),
        ("", "must decode to 32 bytes, got 0"),
    ],
)
def test_bad_master_key_messages(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(MasterKeyError, match=re.escape(message)):
        decode_master_key(text)
    path = tmp_path / "master.key"
    path.write_text(text)
    with pytest.raises(MasterKeyError, match=re.escape(message)):
        load_master_key(inline=None, key_file=path)
    if text:
        with pytest.raises(MasterKeyError, match=re.escape(message)):
            load_master_key(inline=text, key_file=None)


def test_new_app_key_and_secret_shapes() -> None:
    keys = {new_app_key() for _ in range(1000)}
    assert len(keys) == 1000
    assert all(re.fullmatch(r"AK[0-9A-F]{24}", k) for k in keys)
    secret = new_secret()
    assert re.fullmatch(r"[A-Za-z0-9_-]{43}", secret)
    assert new_secret() != secret
