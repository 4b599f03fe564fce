"""API token schemas: the plaintext appears once, in TokenCreated."""

from __future__ import annotations

from datetime import datetime

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from xfrmctl.store.tokens import Scope

from .common import Name, Page


class TokenBase(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: Name
    scopes: list[Scope] = Field(min_length=1, max_length=3)
    expires_at: AwareDatetime | None = None


class TokenCreate(TokenBase):
    pass


class TokenPublic(TokenBase):
    model_config = ConfigDict(from_attributes=True)
    id: int
    prefix: str
    created_at: datetime
    revoked_at: datetime | None


class TokenCreated(TokenPublic):
    token: str = Field(description="the bearer token; shown only in this response")


class TokensPublic(Page[TokenPublic]):
    pass
