"""Desired and recorded state: SQLAlchemy models, repository, secrets at rest."""

from .db import Database, make_engine
from .repo import Conflict, InvalidField, NotFound
from .secrets import SecretBox

__all__ = ["Conflict", "Database", "InvalidField", "NotFound", "SecretBox", "make_engine"]
