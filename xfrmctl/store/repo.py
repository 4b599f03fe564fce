"""Repository functions: synchronous `fn(session, ...)`, run via `Database.run`.

Every change made on behalf of someone (`actor`) writes an audit event in the same
transaction, with before/after snapshots in which secret material is redacted.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, TypeVar

from sqlalchemy import func, inspect, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session
from sqlalchemy.orm.exc import StaleDataError

from xfrmctl.ike.eap import mschapv2

from . import models as m
from . import pki
from .secrets import SecretBox, SecretKeyError
from .tokens import Scope, display_prefix, generate_token, hash_token

ModelT = TypeVar("ModelT", bound=m.Base)
REDACTED = "<redacted>"
NEW_EVENTS = "xfrmctl.new_events"  # session.info key: events added in this transaction
# Columns never copied into audit snapshots.
_SECRET_COLUMNS = {"ciphertext", "token_hash"}

# Foreign keys checked before writing, so a bad id is reported as bad input (422) naming
# the field rather than as a database error.
REFERENCES: dict[str, type[m.Base]] = {
    "peer_id": m.Peer,
    "secret_id": m.Secret,
    "key_secret_id": m.Secret,
    "certificate_id": m.Certificate,
    "ca_id": m.CertificateAuthority,
    "connection_id": m.Connection,
    "gateway_id": m.Gateway,
}


class NotFound(Exception):
    def __init__(self, resource: str, ident: object) -> None:
        super().__init__(f"{resource} {ident} not found")
        self.resource = resource
        self.ident = ident


class Conflict(Exception):
    """Uniqueness violated, or the object is still referenced."""


class InvalidField(Exception):
    """Bad input found only with the database at hand (e.g. a dangling reference)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


def resource_name(model: type[m.Base]) -> str:
    return str(model.__tablename__)


def snapshot(obj: m.Base) -> dict[str, Any]:
    """Column values as JSON-safe data, secret columns redacted."""
    out: dict[str, Any] = {}
    for attr in inspect(obj).mapper.column_attrs:
        value = getattr(obj, attr.key)
        if attr.key in _SECRET_COLUMNS:
            value = REDACTED
        elif isinstance(value, datetime):
            value = value.isoformat()
        elif isinstance(value, enum.Enum):
            value = value.value
        elif isinstance(value, bytes):
            value = REDACTED
        out[attr.key] = value
    return out


# --- generic CRUD -------------------------------------------------------------------

def get(session: Session, model: type[ModelT], ident: object) -> ModelT:
    obj = session.get(model, ident)
    if obj is None:
        raise NotFound(resource_name(model), ident)
    return obj


def list_page(session: Session, model: type[ModelT], *, offset: int = 0, limit: int = 100,
              filters: Mapping[str, object] | None = None,
              order: Any = None, where: Sequence[Any] = ()) -> tuple[list[ModelT], int]:
    """One page of rows (ordered by id unless `order` is given) and the total count;
    `filters` are equalities (None: any value), `where` further SQL conditions."""
    conditions = [getattr(model, k) == v for k, v in (filters or {}).items() if v is not None]
    conditions += where
    total = session.scalar(select(func.count()).select_from(model).where(*conditions)) or 0
    query = select(model).where(*conditions).order_by(
        order if order is not None else model.id)  # type: ignore[attr-defined]
    rows = session.scalars(query.offset(offset).limit(limit)).all()
    return list(rows), total


def check_references(session: Session, values: Mapping[str, object]) -> None:
    for field, target in REFERENCES.items():
        ref = values.get(field)
        if ref is not None and session.get(target, ref) is None:
            raise InvalidField(field, f"{resource_name(target)} {ref} does not exist")


def _flush(session: Session, what: str) -> None:
    try:
        session.flush()
    except IntegrityError as exc:
        raise Conflict(what) from exc
    except StaleDataError as exc:  # a versioned row another transaction just updated
        raise Conflict("it was changed by someone else meanwhile: read it again and "
                       "re-apply the change") from exc


def check_version(obj: m.Base, expected: int | None) -> None:
    """Conflict unless the row is still at the version the client read (If-Match)."""
    current = getattr(obj, "version", None)
    if expected is not None and current != expected:
        raise Conflict(f"{resource_name(type(obj))} {getattr(obj, 'id', '')} changed since "
                       f"version {expected} (now {current}): read it again and re-apply "
                       "the change")


def create(session: Session, model: type[ModelT], values: Mapping[str, Any], *,
           actor: str | None) -> ModelT:
    check_references(session, values)
    obj = model(**values)
    session.add(obj)
    _flush(session, f"{resource_name(model)} conflicts with an existing one (name in use?)")
    audit(session, actor, "create", obj, before=None, after=snapshot(obj))
    return obj


def update(session: Session, model: type[ModelT], ident: object, values: Mapping[str, Any],
           *, actor: str | None) -> ModelT:
    obj = get(session, model, ident)
    check_references(session, values)
    before = snapshot(obj)
    for key, value in values.items():
        setattr(obj, key, value)
    _flush(session, f"{resource_name(model)} conflicts with an existing one (name in use?)")
    after = snapshot(obj)
    if _changed(before, after):
        audit(session, actor, "update", obj, before=before, after=after)
    return obj


def take_over(session: Session, ident: int, *, actor: str) -> m.Connection:
    """The connection is managed by the database from now on (its file no longer
    changes or removes it)."""
    return update(session, m.Connection, ident, {"managed_by": None}, actor=actor)

def delete(session: Session, model: type[ModelT], ident: object, *,
           actor: str | None) -> dict[str, Any]:
    """Delete; returns the snapshot of what was deleted. Conflict if still referenced."""
    obj = get(session, model, ident)
    before = snapshot(obj)
    session.delete(obj)
    _flush(session, f"{resource_name(model)} {ident} is still in use")
    audit(session, actor, "delete", obj, before=before, after=None)
    return before


def _changed(before: dict[str, Any], after: dict[str, Any]) -> bool:
    return {k: v for k, v in before.items() if k != "updated_at"} != {
        k: v for k, v in after.items() if k != "updated_at"}


# --- events ---------------------------------------------------------------------------

def audit(session: Session, actor: str | None, action: str, obj: m.Base, *,
          before: dict[str, Any] | None, after: dict[str, Any] | None) -> m.Event:
    resource = resource_name(type(obj))
    ident = (after or before or {}).get("id")
    conn_id = _connection_of(obj)
    return record_event(
        session, m.EventKind.AUDIT, f"{resource}.{action}", actor=actor, resource=resource,
        resource_id=None if ident is None else str(ident), connection_id=conn_id,
        message=f"{actor or 'system'} {action}d {resource} {ident}", before=before,
        after=after)


def _connection_of(obj: m.Base) -> int | None:
    if isinstance(obj, m.Connection):
        return obj.id
    if isinstance(obj, m.Child):
        return obj.connection_id
    return None


def record_event(session: Session, kind: m.EventKind, type_: str, *, message: str = "",
                 connection_id: int | None = None, actor: str | None = None,
                 resource: str | None = None, resource_id: str | None = None,
                 before: dict[str, Any] | None = None, after: dict[str, Any] | None = None,
                 data: dict[str, Any] | None = None) -> m.Event:
    event = m.Event(kind=kind, type=type_, message=message, connection_id=connection_id,
                    actor=actor, resource=resource, resource_id=resource_id, before=before,
                    after=after, data=data, ts=m.utcnow())
    session.add(event)
    session.flush()
    session.info.setdefault(NEW_EVENTS, []).append(event)
    return event


def event_dict(event: m.Event) -> dict[str, Any]:
    """An event as JSON-safe data (the shape of the API's EventPublic)."""
    return snapshot(event)


def list_events(session: Session, *, offset: int = 0, limit: int = 100,
                kind: m.EventKind | None = None, type_: str | None = None,
                connection_id: int | None = None, since: datetime | None = None,
                after_id: int | None = None) -> tuple[list[m.Event], int]:
    """Events newest first, filtered."""
    conditions: list[Any] = []
    if kind is not None:
        conditions.append(m.Event.kind == kind)
    if type_ is not None:
        conditions.append(m.Event.type == type_)
    if connection_id is not None:
        conditions.append(m.Event.connection_id == connection_id)
    if since is not None:
        conditions.append(m.Event.ts >= since)
    if after_id is not None:
        conditions.append(m.Event.id > after_id)
    total = session.scalar(select(func.count()).select_from(m.Event).where(*conditions)) or 0
    rows = session.scalars(select(m.Event).where(*conditions).order_by(m.Event.id.desc())
                           .offset(offset).limit(limit)).all()
    return list(rows), total


# --- secrets --------------------------------------------------------------------------

def check_secret_value(kind: m.SecretKind, value: bytes) -> None:
    """InvalidField("value") unless the daemon can use it: a PSK is UTF-8 text, a
    private key an unencrypted PEM key that can sign."""
    if kind == m.SecretKind.PRIVATE_KEY:
        try:
            pki.load_private_key(value)
        except ValueError as exc:
            raise InvalidField("value", str(exc)) from None
        return
    try:
        text = value.decode()
    except UnicodeDecodeError:
        raise InvalidField("value", "a PSK must be UTF-8 text") from None
    if not text:
        raise InvalidField("value", "a PSK must not be empty")


def _check_key_users(session: Session, secret_id: int, value: bytes) -> None:
    """A replaced private key must still match every certificate that uses it."""
    key = pki.load_private_key(value)
    pems = [c.pem for c in session.scalars(select(m.Certificate).where(
        m.Certificate.key_secret_id == secret_id))]
    pems += [c.pem for c in session.scalars(
        select(m.Certificate).join(m.Connection, m.Connection.certificate_id == m.Certificate.id)
        .where(m.Connection.secret_id == secret_id))]
    if any(not pki.key_matches(key, pem) for pem in pems):
        raise InvalidField("value", "this key does not match the certificate that uses it")


def create_secret(session: Session, box: SecretBox, *, name: str, kind: m.SecretKind,
                  value: bytes, actor: str | None, version: str | None = None) -> m.Secret:
    check_secret_value(kind, value)
    return create(session, m.Secret,
                  {"name": name, "kind": kind, "ciphertext": box.encrypt(name, value),
                   "version": version},
                  actor=actor)


def replace_secret_value(session: Session, box: SecretBox, ident: int, value: bytes, *,
                         actor: str | None, version: str | None = None) -> m.Secret:
    """A new value and its version (None: the new value has none; the old one's version
    no longer describes it)."""
    secret = get(session, m.Secret, ident)
    check_secret_value(secret.kind, value)
    if secret.kind == m.SecretKind.PRIVATE_KEY:
        _check_key_users(session, ident, value)
    return update(session, m.Secret, ident,
                  {"ciphertext": box.encrypt(secret.name, value), "version": version},
                  actor=actor)


def reveal_secret(session: Session, box: SecretBox, ident: int) -> bytes:
    """The plaintext, for the daemon only; never returned by the API."""
    secret = get(session, m.Secret, ident)
    return box.decrypt(secret.name, secret.ciphertext)


# --- tokens ---------------------------------------------------------------------------

def create_token(session: Session, *, name: str, scopes: Sequence[Scope],
                 expires_at: datetime | None = None,
                 actor: str | None) -> tuple[m.ApiToken, str]:
    """Create a token; the plaintext is returned once and never stored."""
    plaintext = generate_token()
    token = create(session, m.ApiToken, {
        "name": name, "prefix": display_prefix(plaintext), "token_hash": hash_token(plaintext),
        "scopes": [Scope(s).value for s in scopes], "expires_at": expires_at}, actor=actor)
    return token, plaintext


def authenticate(session: Session, plaintext: str) -> m.ApiToken | None:
    """The live token matching `plaintext`, or None (unknown, revoked or expired)."""
    token = session.scalar(select(m.ApiToken).where(
        m.ApiToken.token_hash == hash_token(plaintext)))
    now = datetime.now(UTC)
    if token is None or token.revoked_at is not None:
        return None
    if token.expires_at is not None and token.expires_at <= now:
        return None
    return token


def revoke_token(session: Session, ident: int, *, actor: str | None) -> m.ApiToken:
    token = get(session, m.ApiToken, ident)
    if token.revoked_at is not None:
        raise Conflict(f"token {ident} is already revoked")
    return update(session, m.ApiToken, ident, {"revoked_at": datetime.now(UTC)}, actor=actor)


# --- negotiated SAs (written by the daemon, batched) ----------------------------------

def upsert_ike_sa(session: Session, values: Mapping[str, Any]) -> m.IkeSaRecord:
    return session.merge(m.IkeSaRecord(**values))


def upsert_child_sa(session: Session, values: Mapping[str, Any]) -> m.ChildSaRecord:
    return session.merge(m.ChildSaRecord(**values))


def update_child_counters(session: Session,
                          counters: Mapping[str, tuple[int, int, int, int]]) -> int:
    """Set (bytes_in, bytes_out, packets_in, packets_out) per CHILD_SA id; returns rows hit."""
    hit = 0
    for ident, (b_in, b_out, p_in, p_out) in counters.items():
        row = session.get(m.ChildSaRecord, ident)
        if row is not None:
            row.bytes_in, row.bytes_out, row.packets_in, row.packets_out = b_in, b_out, p_in, p_out
            hit += 1
    return hit


def delete_ike_sa(session: Session, ident: str) -> bool:
    """Delete an IKE_SA record and (by cascade) its CHILD_SA records."""
    row = session.get(m.IkeSaRecord, ident)
    if row is None:
        return False
    for child in session.scalars(select(m.ChildSaRecord).where(
            m.ChildSaRecord.ike_sa_id == ident)):
        session.delete(child)
    session.delete(row)
    return True


# --- EAP users (NT hashes only, write-only) ---------------------------------------------

def _nt_hash_of(password: str | None, nt_hash: str | None) -> bytes:
    """The 16-octet NT hash from a password (hashed here, then forgotten) or given as hex."""
    if (password is None) == (nt_hash is None):
        raise InvalidField("password", "give a password or an nt_hash, not both")
    if password is not None:
        if not password:
            raise InvalidField("password", "the password must not be empty")
        return mschapv2.nt_hash(password)
    assert nt_hash is not None
    try:
        value = bytes.fromhex(nt_hash)
    except ValueError:
        value = b""
    if len(value) != 16:
        raise InvalidField("nt_hash", "an NT hash is 32 hexadecimal digits")
    return value


def _user_box_name(name: str) -> str:
    return f"eap-user:{name}"


def create_eap_user(session: Session, box: SecretBox, *, name: str, password: str | None = None,
                    nt_hash: str | None = None, enabled: bool = True, version: str | None = None,
                    actor: str | None) -> m.EapUser:
    value = _nt_hash_of(password, nt_hash)
    return create(session, m.EapUser, {
        "name": name, "nt_hash": box.encrypt(_user_box_name(name), value),
        "enabled": enabled, "version": version}, actor=actor)


def update_eap_user(session: Session, box: SecretBox, ident: int, *,
                    password: str | None = None, nt_hash: str | None = None,
                    enabled: bool | None = None, version: str | None = None,
                    actor: str | None) -> m.EapUser:
    """A new password (with its version; none given: none), and/or enabled or not."""
    user = get(session, m.EapUser, ident)
    values: dict[str, Any] = {}
    if password is not None or nt_hash is not None:
        values["nt_hash"] = box.encrypt(_user_box_name(user.name),
                                        _nt_hash_of(password, nt_hash))
        values["version"] = version
    if enabled is not None:
        values["enabled"] = enabled
    return update(session, m.EapUser, ident, values, actor=actor)


def eap_user_hashes(session: Session, box: SecretBox) -> dict[str, bytes]:
    """The enabled users' NT hashes, for the daemon only (one that does not decrypt is
    left out, and so cannot log in)."""
    out = {}
    for user in session.scalars(select(m.EapUser).where(m.EapUser.enabled)):
        try:
            out[user.name] = box.decrypt(_user_box_name(user.name), user.nt_hash)
        except SecretKeyError:
            continue
    return out
