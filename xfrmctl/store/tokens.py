"""API bearer tokens: random, shown once, stored as SHA-256; scopes are hierarchical."""

from __future__ import annotations

import hashlib
import secrets
from enum import StrEnum

TOKEN_PREFIX = "xfc_"


class Scope(StrEnum):
    READ = "read"
    OPERATE = "operate"
    ADMIN = "admin"


_RANK = {Scope.READ: 0, Scope.OPERATE: 1, Scope.ADMIN: 2}


def generate_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def display_prefix(token: str) -> str:
    """The part of a token safe to show in listings."""
    return token[: len(TOKEN_PREFIX) + 6]


def allows(granted: list[str], required: Scope) -> bool:
    """admin implies operate implies read."""
    ranks = [_RANK[Scope(s)] for s in granted if s in _RANK]
    return bool(ranks) and max(ranks) >= _RANK[required]
