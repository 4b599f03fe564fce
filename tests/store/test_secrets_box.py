"""Secrets at rest: the key file, AES-GCM round trip, binding to the secret's name."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from xfrmctl.store.secrets import SecretBox, SecretKeyError, load_or_create_key


def test_key_file_created_0400_and_reused(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "secret.key"
    key = load_or_create_key(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o400
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert len(key) == 32 and load_or_create_key(path) == key


def test_loose_permissions_refused(tmp_path: Path) -> None:
    path = tmp_path / "secret.key"
    path.write_bytes(b"k" * 32)
    path.chmod(0o644)
    with pytest.raises(SecretKeyError, match="group or others"):
        load_or_create_key(path)


def test_round_trip_and_binding() -> None:
    box = SecretBox(b"k" * 32)
    blob = box.encrypt("a", b"swordfish")
    assert b"swordfish" not in blob
    assert box.encrypt("a", b"swordfish") != blob  # fresh nonce
    assert box.decrypt("a", blob) == b"swordfish"
    with pytest.raises(SecretKeyError):
        box.decrypt("b", blob)  # copied to another row
    with pytest.raises(SecretKeyError):
        SecretBox(b"x" * 32).decrypt("a", blob)
    assert "k" * 8 not in repr(box)
