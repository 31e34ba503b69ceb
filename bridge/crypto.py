"""Secrets at rest: app secrets and webhook secrets are sealed with AES-256-GCM under a master key.

The row's own id is bound in as associated data, so a ciphertext copied onto another row does not
decrypt. The master key never touches the database.

Rotation: a sealed secret names the key it was sealed with (the first 4 bytes of the key's
SHA-256; format 2). A Sealer seals with its current key and opens with it or with the previous
one, so daemons given both keep working while `smpp-bridge secrets reseal` seals every secret
anew; format 1 (before key ids) is tried with each key.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import logging
import os
import secrets
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

log = logging.getLogger("bridge.crypto")

_V1 = b"\x01"  # 1 | nonce (12) | ciphertext+tag: no key id
_V2 = b"\x02"  # 2 | key id (4) | nonce (12) | ciphertext+tag
_TAG = 16


class MasterKeyError(Exception):
    pass


def key_id(key: bytes) -> bytes:
    """4 bytes naming a key without revealing it (a 32-bit prefix of its SHA-256)."""
    return hashlib.sha256(key).digest()[:4]


class Sealer:
    def __init__(self, key: bytes, previous: tuple[bytes, ...] = ()) -> None:
        for k in (key, *previous):
            if len(k) != 32:
                raise MasterKeyError("master key must be 32 bytes")
        if key in previous:
            raise MasterKeyError("the previous master key is the current one")
        self._id = key_id(key)
        self._keys = {key_id(k): AESGCM(k) for k in (*previous, key)}  # the current one wins
        # The current key first: format 1 blobs are tried in this order.
        self._order = [self._keys[self._id], *(a for i, a in self._keys.items() if i != self._id)]

    def seal(self, plaintext: str, aad: str) -> bytes:
        nonce = os.urandom(12)
        ct = self._keys[self._id].encrypt(nonce, plaintext.encode(), aad.encode())
        return _V2 + self._id + nonce + ct

    def is_current(self, blob: bytes) -> bool:
        """Sealed under the current key (nothing for `secrets reseal` to do)."""
        return blob[:1] == _V2 and blob[1:5] == self._id

    def open(self, blob: bytes, aad: str) -> str:
        if blob[:1] == _V2 and len(blob) >= 1 + 4 + 12 + _TAG:
            aead = self._keys.get(blob[1:5])
            if aead is None:
                raise MasterKeyError(
                    f"sealed secret is under master key {blob[1:5].hex()}, which this daemon "
                    "does not have (set it as the current or the previous master key)"
                )
            candidates = [aead]
            nonce, ct = blob[5:17], blob[17:]
        elif blob[:1] == _V1 and len(blob) >= 1 + 12 + _TAG:
            candidates = self._order
            nonce, ct = blob[1:13], blob[13:]
        else:
            raise MasterKeyError("sealed secret is malformed")
        for aead in candidates:
            try:
                return aead.decrypt(nonce, ct, aad.encode()).decode()
            except InvalidTag:
                continue
        raise MasterKeyError("sealed secret does not open with this master key (wrong key?)")

    @property
    def key_ids(self) -> tuple[str, list[str]]:
        """(current, [previous]) as the hex ids errors name: which keys a command really has,
        so an operator can tell a run that lacks the daemon's keys (see `secrets reseal`)."""
        return self._id.hex(), [i.hex() for i in self._keys if i != self._id]

    def __repr__(self) -> str:
        return "Sealer(<key hidden>)"


def decode_master_key(text: str) -> bytes:
    """Standard or URL-safe base64, as `config check` accepts it (a key it passed was refused
    here, so the daemon and every store command failed on a key the check called valid)."""
    normal = text.strip().replace("-", "+").replace("_", "/")
    try:
        key = base64.b64decode(normal.encode("ascii"), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise MasterKeyError("master key is not valid base64") from exc
    if len(key) != 32:
        raise MasterKeyError(f"master key must decode to 32 bytes, got {len(key)}")
    return key


def load_master_key(
    *, inline: str | None, key_file: str | Path | None, generate: bool = False
) -> bytes:
    """Master key from config/env, else the key file; `generate` (demo only) creates that file."""
    if inline:
        return decode_master_key(inline)
    if key_file is None:
        raise MasterKeyError(
            "no master key: set SMPP_BRIDGE_MASTER_KEY, security.master_key or "
            "security.master_key_file"
        )
    path = Path(key_file)
    if path.exists():
        return decode_master_key(path.read_text())
    if not generate:
        raise MasterKeyError(f"master key file {path} does not exist")
    path.parent.mkdir(parents=True, exist_ok=True)
    key = os.urandom(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(base64.b64encode(key).decode() + "\n")
    log.warning(
        "generated a demo master key at %s; production deployments must set "
        "SMPP_BRIDGE_MASTER_KEY or security.master_key_file to a key kept outside the data dir",
        path,
    )
    return key


def new_app_key() -> str:
    """Public key id: not a secret, but unguessable so key ids cannot be enumerated."""
    return "AK" + secrets.token_hex(12).upper()


def new_secret() -> str:
    """256 random bits, URL-safe."""
    return secrets.token_urlsafe(32)
