"""Secrets at rest: app secrets and webhook secrets are sealed with AES-256-GCM under a master key.

The row's own id is bound in as associated data, so a ciphertext copied onto another row does not
decrypt. The master key never touches the database.
"""

from __future__ import annotations

import base64
import binascii
import logging
import os
import secrets
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

log = logging.getLogger("bridge.crypto")

_VERSION = b"\x01"


class MasterKeyError(Exception):
    pass


class Sealer:
    def __init__(self, key: bytes) -> None:
        if len(key) != 32:
            raise MasterKeyError("master key must be 32 bytes")
        self._aead = AESGCM(key)

    def seal(self, plaintext: str, aad: str) -> bytes:
        nonce = os.urandom(12)
        return _VERSION + nonce + self._aead.encrypt(nonce, plaintext.encode(), aad.encode())

    def open(self, blob: bytes, aad: str) -> str:
        if len(blob) < 29 or blob[:1] != _VERSION:
            raise MasterKeyError("sealed secret is malformed")
        try:
            return self._aead.decrypt(blob[1:13], blob[13:], aad.encode()).decode()
        except InvalidTag as exc:
            raise MasterKeyError(
                "sealed secret does not open with this master key (wrong key?)"
            ) from exc

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
