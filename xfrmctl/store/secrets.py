"""Secrets at rest: AES-256-GCM with a key file kept outside the database (mode 0400).

The stored blob is nonce (12 bytes) || ciphertext+tag; the secret's name is bound as
associated data so a blob copied to another row does not decrypt.
"""

from __future__ import annotations

import os
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

KEY_BYTES = 32
NONCE_BYTES = 12


class SecretKeyError(Exception):
    """The key file is missing, unreadable, has the wrong size or wrong permissions."""


def load_or_create_key(path: Path) -> bytes:
    """Read the key file, creating it (mode 0400, parent 0700) if it does not exist."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        key = AESGCM.generate_key(bit_length=KEY_BYTES * 8)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o400)
        try:
            os.write(fd, key)
        finally:
            os.close(fd)
        return key
    if path.stat().st_mode & 0o077:
        raise SecretKeyError(f"{path}: key file must not be accessible by group or others")
    key = path.read_bytes()
    if len(key) != KEY_BYTES:
        raise SecretKeyError(f"{path}: expected {KEY_BYTES} bytes, found {len(key)}")
    return key


class SecretBox:
    """Encrypts and decrypts secret values with one AES-GCM key."""

    def __init__(self, key: bytes) -> None:
        self._aead = AESGCM(key)

    @classmethod
    def from_file(cls, path: Path) -> SecretBox:
        return cls(load_or_create_key(path))

    def encrypt(self, name: str, value: bytes) -> bytes:
        nonce = os.urandom(NONCE_BYTES)
        return nonce + self._aead.encrypt(nonce, value, name.encode())

    def decrypt(self, name: str, blob: bytes) -> bytes:
        try:
            return self._aead.decrypt(blob[:NONCE_BYTES], blob[NONCE_BYTES:], name.encode())
        except InvalidTag as exc:
            raise SecretKeyError(f"secret {name!r} does not decrypt with this key") from exc

    def __repr__(self) -> str:
        return "SecretBox(<key hidden>)"
