"""Desired and recorded state: SQLAlchemy models, repository, secrets at rest."""

from .db import Database, make_engine
from .repo import Conflict, InvalidReference, NotFound
from .secrets import SecretBox

__all__ = ["Conflict", "Database", "InvalidReference", "NotFound", "SecretBox", "make_engine"]
