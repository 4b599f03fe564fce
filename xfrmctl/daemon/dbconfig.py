"""The database as the daemon's source of truth (database mode), and the file as an
import format.

`read_conf` turns the enabled connections, their children and credentials (secrets
decrypted with the store's key) into the same `conf.DaemonConf` a file gives, with the
same validation. A connection that does not validate is left out and reported (by name
and reason, never with its values); the others still load. `DbSource.load` runs it off
the event loop (`Database.run`).

`import_conf` / `import_file` write a daemon file's connections into the database in
one transaction, creating secrets (encrypted), certificates and CAs, with audit records.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util import CommandError
from cryptography import x509
from pydantic import ValidationError
from sqlalchemy import make_url, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from xfrmctl.config import Settings
from xfrmctl.ike.proposals import DEFAULT_ESP, DEFAULT_IKE, ProposalSpec
from xfrmctl.store import models as m
from xfrmctl.store import repo
from xfrmctl.store.db import Database, make_engine
from xfrmctl.store.migrate import alembic_config, upgrade
from xfrmctl.store.secrets import SecretBox, SecretKeyError

from . import conf as cf

log = logging.getLogger("xfrmctl.daemon")
DYNAMIC = "dynamic"  # the API's traffic selector for "our/the peer's own address"
_LOAD_ERRORS = (ValueError, ValidationError, SecretKeyError, repo.NotFound)


# --------------------------------------------------------------------------- reading


Problems = dict[int, tuple[str, str]]  # connection id -> (name, why it is left out)


def read_conf(session: Session, box: SecretBox, base: cf.DaemonConf | None = None
              ) -> tuple[cf.DaemonConf, Problems]:
    """The enabled connections as a DaemonConf (daemon-level settings from `base`), and
    for each connection left out, why."""
    rows = session.scalars(select(m.Connection).where(m.Connection.enabled)
                           .order_by(m.Connection.id)).all()
    children: dict[int, list[m.Child]] = {}
    for child in session.scalars(select(m.Child).order_by(m.Child.id)):
        children.setdefault(child.connection_id, []).append(child)
    loaded: dict[str, cf.ConnectionConf] = {}
    problems: Problems = {}
    for row in rows:
        try:
            loaded[row.name] = connection_conf(session, box, row, children.get(row.id, []))
        except _LOAD_ERRORS as exc:
            problems[row.id] = (row.name, describe(exc))
    settings = (base or cf.DaemonConf()).model_dump(exclude={"connections"})
    return cf.DaemonConf(**settings, connections=loaded), problems


def describe(exc: Exception) -> str:
    """An error without the input values (they may hold secrets)."""
    if isinstance(exc, ValidationError):
        return "; ".join(f"{'.'.join(map(str, e['loc'])) or 'connection'}: {e['msg']}"
                         for e in exc.errors(include_input=False))
    return str(exc)


def connection_conf(session: Session, box: SecretBox, row: m.Connection,
                    children: list[m.Child]) -> cf.ConnectionConf:
    remote = row.remote_addrs
    if not remote and row.peer_id is not None:
        remote = repo.get(session, m.Peer, row.peer_id).addresses
    values: dict[str, Any] = {
        "id": row.id, "local_addrs": row.local_addrs, "remote_addrs": remote,
        "local_port": row.local_port, "remote_port": row.remote_port,
        "local_id": row.local_id, "remote_id": row.remote_id, "auth": row.auth.value,
        "ike_proposals": row.ike_proposals, "start_action": row.start_action.value,
        "dpd_delay": row.dpd_delay, "dpd_action": row.dpd_action.value,
        "rekey_time": row.rekey_time, "reauth_time": row.reauth_time,
        "over_time": row.over_time,
        "fragmentation": "force" if row.fragmentation is m.Fragmentation.FORCE
        else row.fragmentation is not m.Fragmentation.NO, "encap": row.encap,
        "children": {c.name: child_values(c) for c in children},
        **_credentials(session, box, row),
    }
    return cf.ConnectionConf.model_validate(values)


def child_values(row: m.Child) -> dict[str, Any]:
    return {
        "id": row.id, "local_ts": _selectors(row.local_ts),
        "remote_ts": _selectors(row.remote_ts), "mode": row.mode.value,
        "esp_proposals": row.esp_proposals, "ah_proposals": row.ah_proposals,
        "start_action": None if row.start_action is m.StartAction.NONE
        else row.start_action.value,
        "interface_kind": row.interface_kind.value if row.interface_kind else None,
        "interface_name": row.interface_name, "if_id": row.if_id,
        "interface_addresses": row.interface_addresses, "routes": row.routes, "mtu": row.mtu,
        "mark_in": row.mark_in, "mark_out": row.mark_out,
        "mark_in_mask": row.mark_in_mask, "mark_out_mask": row.mark_out_mask,
        "replay_window": row.replay_window, "esn": row.esn, "rekey_time": row.rekey_time,
        "life_time": row.life_time, "rekey_bytes": row.rekey_bytes,
        "life_bytes": row.life_bytes, "rekey_packets": row.rekey_packets,
        "life_packets": row.life_packets, "tfc_padding": row.tfc_padding,
    }


def _selectors(values: list[str]) -> list[str]:
    return [v for v in values if v != DYNAMIC]  # conf: empty = own address


def _credentials(session: Session, box: SecretBox, row: m.Connection) -> dict[str, Any]:
    if row.auth is m.AuthMethod.PSK:
        if row.secret_id is None:
            return {}  # validation says "auth psk needs psk"
        return {"psk": _text(repo.reveal_secret(session, box, row.secret_id), row.secret_id)}
    out: dict[str, Any] = {}
    cert = session.get(m.Certificate, row.certificate_id) if row.certificate_id else None
    key_id = row.secret_id or (cert.key_secret_id if cert else None)
    ca_id = row.ca_id or (cert.ca_id if cert else None)
    if cert is not None:
        out["certificate_pem"] = cert.pem
    if key_id is not None:
        out["private_key_pem"] = _text(repo.reveal_secret(session, box, key_id), key_id)
    if ca_id is not None:
        out["ca_pem"] = [repo.get(session, m.CertificateAuthority, ca_id).pem]
    return out


def _text(value: bytes, secret_id: int) -> str:
    try:
        return value.decode()
    except UnicodeDecodeError:
        raise ValueError(f"secret {secret_id} is not UTF-8 text") from None


@dataclass
class DbSource:
    """Reads the desired state for the controller (its `config_source`)."""

    db: Database
    box: SecretBox
    base: cf.DaemonConf = field(default_factory=cf.DaemonConf)
    problems: Problems = field(default_factory=dict)

    async def load(self) -> cf.DaemonConf:
        """Read the configuration; a newly found problem is logged and recorded as an
        event (so the API shows why a connection is not loaded)."""
        conf, problems = await self.db.run(read_conf, self.box, self.base)
        for ident, (name, why) in problems.items():
            if self.problems.get(ident) != (name, why):
                log.error("connection %s not loaded: %s", name, why)
                await self.db.run(repo.record_event, m.EventKind.PROTOCOL,
                                  "ConnectionNotLoaded", connection_id=ident,
                                  message=f"connection {name} not loaded: {why}")
        self.problems = problems
        return conf

    def not_loaded(self) -> dict[str, str]:
        """Connections left out of the last load: name -> why."""
        return dict(self.problems.values())


# --------------------------------------------------------------------------- importing


def _proposal_text(specs: tuple[ProposalSpec, ...]) -> str:
    return ", ".join(p.text for p in specs)


def import_conf(session: Session, box: SecretBox, conf: cf.DaemonConf, *,
                actor: str = "import") -> list[str]:
    """Create every connection of `conf` (names must be new); returns their names."""
    for name, conn in conf.connections.items():
        if conn.pool or conn.request_virtual_ip:
            raise ValueError(f"connection {name}: pool and request_virtual_ip are not "
                             "stored in the database yet; keep it in a file")
        values = _connection_values(session, box, name, conn, actor)
        row = repo.create(session, m.Connection, values, actor=actor)
        for child_name, child in conn.children.items():
            repo.create(session, m.Child, _child_row(row.id, child_name, child), actor=actor)
    return list(conf.connections)


def _connection_values(session: Session, box: SecretBox, name: str,
                       conn: cf.ConnectionConf, actor: str) -> dict[str, Any]:
    values: dict[str, Any] = {
        "name": name, "local_addrs": conn.local_addrs, "remote_addrs": conn.remote_addrs,
        "local_port": conn.local_port, "remote_port": conn.remote_port,
        "local_id": conn.local_id, "remote_id": conn.remote_id,
        "auth": m.AuthMethod(conn.auth.value),
        "ike_proposals": conn.ike_proposals or _proposal_text(DEFAULT_IKE),
        "start_action": m.StartAction(conn.start_action.value), "dpd_delay": conn.dpd_delay,
        "dpd_action": m.DpdAction(conn.dpd_action.value), "rekey_time": conn.rekey_time,
        "fragmentation": m.Fragmentation.FORCE if conn.fragmentation == "force"
        else m.Fragmentation.YES if conn.fragmentation else m.Fragmentation.NO,
        "reauth_time": conn.reauth_time, "over_time": conn.over_time,
        "encap": conn.encap,
    }
    if conn.auth.value == m.AuthMethod.PSK:
        values["secret_id"] = _secret(session, box, f"{name}-psk", m.SecretKind.PSK,
                                      cf._psk(conn), actor)
    else:
        values.update(_pubkey_rows(session, box, name, conn, actor))
    return values


def _secret(session: Session, box: SecretBox, name: str, kind: m.SecretKind, value: bytes,
            actor: str) -> int:
    return repo.create_secret(session, box, name=name, kind=kind, value=value, actor=actor).id


def _pubkey_rows(session: Session, box: SecretBox, name: str, conn: cf.ConnectionConf,
                 actor: str) -> dict[str, Any]:
    key = conn.private_key_pem.get_secret_value().encode() if conn.private_key_pem else (
        conn.private_key.read_bytes() if conn.private_key else b"")
    cert_pem = conn.certificate_pem or (conn.certificate.read_text() if conn.certificate
                                        else "")
    ca_pem = "".join([*conn.ca_pem, *(p.read_text() for p in conn.ca)])
    ca_id = _ca(session, f"{name}-ca", ca_pem, actor)
    key_id = _secret(session, box, f"{name}-key", m.SecretKind.PRIVATE_KEY, key, actor)
    cert = x509.load_pem_x509_certificate(cert_pem.encode())
    cert_row = repo.create(session, m.Certificate, {
        "name": f"{name}-cert", "pem": cert_pem, "subject": cert.subject.rfc4514_string(),
        "issuer": cert.issuer.rfc4514_string(), "not_before": cert.not_valid_before_utc,
        "not_after": cert.not_valid_after_utc, "ca_id": ca_id, "key_secret_id": key_id},
        actor=actor)
    return {"secret_id": key_id, "certificate_id": cert_row.id, "ca_id": ca_id}


def _ca(session: Session, name: str, pem: str, actor: str) -> int:
    """A CA row for this PEM bundle, reused when the same bundle is already stored."""
    existing = session.scalar(select(m.CertificateAuthority)
                              .where(m.CertificateAuthority.pem == pem))
    if existing is not None:
        return existing.id
    first = x509.load_pem_x509_certificates(pem.encode())[0]
    return repo.create(session, m.CertificateAuthority, {
        "name": name, "pem": pem, "subject": first.subject.rfc4514_string(),
        "not_after": first.not_valid_after_utc}, actor=actor).id


def _child_row(connection_id: int, name: str, child: cf.ChildConf) -> Mapping[str, Any]:
    esp = child.esp_proposals
    if esp is None and child.ah_proposals is None:
        esp = _proposal_text(DEFAULT_ESP)
    return {
        "connection_id": connection_id, "name": name,
        "local_ts": child.local_ts or [DYNAMIC], "remote_ts": child.remote_ts or [DYNAMIC],
        "mode": m.Mode(child.mode.value), "esp_proposals": esp,
        "ah_proposals": child.ah_proposals,
        "start_action": m.StartAction(child.start_action.value) if child.start_action
        else m.StartAction.NONE,
        "interface_kind": m.InterfaceKind(child.interface_kind) if child.interface_kind
        else None,
        "interface_name": child.interface_name, "if_id": child.if_id,
        "interface_addresses": child.interface_addresses, "routes": child.routes,
        "mtu": child.mtu, "mark_in": child.mark_in, "mark_out": child.mark_out,
        "mark_in_mask": child.mark_in_mask, "mark_out_mask": child.mark_out_mask,
        "replay_window": child.replay_window, "esn": child.esn,
        "rekey_time": child.rekey_time, "life_time": child.life_time,
        "rekey_bytes": child.rekey_bytes, "life_bytes": child.life_bytes,
        "rekey_packets": child.rekey_packets, "life_packets": child.life_packets,
        "tfc_padding": child.tfc_padding,
    }


def import_file(db: Database, box: SecretBox, path: Path) -> list[str]:
    """Validate a daemon file and create its connections in one transaction."""
    conf = cf.load(path)
    return db.call(import_conf, box, conf, actor=f"import:{path.name}")


# --------------------------------------------------------------------------- opening


class DatabaseUnavailable(Exception):
    """The database cannot serve as the daemon's configuration (message says why)."""


def prepare_database(url: str) -> None:
    """Bring the schema to the newest migration (a new database is created)."""
    engine = make_engine(url)
    try:
        with engine.connect() as connection:
            current = MigrationContext.configure(connection).get_current_revision()
    finally:
        engine.dispose()
    head = ScriptDirectory.from_config(alembic_config(url)).get_current_head()
    if current != head:
        log.info("migrating the database from %s to %s", current or "empty", head)
        upgrade(url)


async def open_source(settings: Settings, base: cf.DaemonConf) -> DbSource:
    """The database named by the settings, migrated, with the secrets key loaded."""
    try:
        await asyncio.to_thread(prepare_database, settings.database_url)
        box = SecretBox.from_file(settings.secret_key_file)
    except (SQLAlchemyError, CommandError, SecretKeyError, OSError) as exc:
        raise DatabaseUnavailable(f"database {_redact(settings.database_url)}: {exc}") from exc
    return DbSource(Database(settings.database_url), box, base)


def _redact(url: str) -> str:
    """The URL without a password."""
    return make_url(url).render_as_string(hide_password=True)
