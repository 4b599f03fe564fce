"""The database as the daemon's one source of truth, and files applied into it.

`read_conf` turns the enabled connections, their children and credentials (secrets
decrypted with the store's key) into the same `conf.DaemonConf` a file gives, with the
same validation, and tries each one as the IKE core would take it (keys and
certificates parsed). A connection that does not validate or load is left out and
reported (by name and reason, never with its values); the others still load.
`DbSource.load` runs it off the event loop (`Database.run`).

`apply_file` (daemon `--config FILE`, at start and on SIGHUP) makes the connections
managed by that file (`managed_by = "file:<path>"`) exactly those of the file, in one
transaction: created, updated in place (ids kept) or removed; connections created
through the API, or taken over from the file, are never touched by it.
`import_conf` / `import_file` (`xfrmctl db import`) create a file's connections once,
managed by the database from then on. Both create secrets (encrypted), certificates
and CAs, with audit records.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography import x509
from pydantic import ValidationError
from sqlalchemy import func, inspect, make_url, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from xfrmctl.config import Settings
from xfrmctl.ike.proposals import DEFAULT_ESP, DEFAULT_IKE, ProposalSpec
from xfrmctl.store import fleet, pki, repo
from xfrmctl.store import models as m
from xfrmctl.store.db import Database, make_engine
from xfrmctl.store.migrate import (
    HEAD_REVISION,
    MigrationError,
    schema_revision,
    stamp_head,
    upgrade,
)
from xfrmctl.store.secrets import SecretBox, SecretKeyError

from . import conf as cf
from . import swanctl
from .eapusers import EAP_USERS
from .fleet import Membership

log = logging.getLogger("xfrmctl.daemon")
DYNAMIC = "dynamic"  # the API's traffic selector for "our/the peer's own address"
_LOAD_ERRORS = (ValueError, TypeError, ValidationError, SecretKeyError, repo.NotFound,
                OSError)


# --------------------------------------------------------------------------- reading


Problems = dict[int, tuple[str, str]]  # connection id -> (name, why it is left out)


def read_conf(session: Session, box: SecretBox, base: cf.DaemonConf | None = None,
              usable: dict[str, cf.ConnectionConf] | None = None,
              gateway: int | None = None) -> tuple[cf.DaemonConf, Problems]:
    """The enabled connections as a DaemonConf (daemon-level settings from `base`), and
    for each connection left out, why. `usable` caches the connections already tried
    (by name), so an unchanged one is not parsed again on every change. A fleet
    `gateway` runs the connections assigned to it and the unassigned ones."""
    rows = session.scalars(select(m.Connection).where(m.Connection.enabled,
                                                      fleet.runs_here(gateway))
                           .order_by(m.Connection.id)).all()
    children: dict[int, list[m.Child]] = {}
    for child in session.scalars(select(m.Child).join(m.Connection).where(
            m.Connection.enabled, fleet.runs_here(gateway)).order_by(m.Child.id)):
        children.setdefault(child.connection_id, []).append(child)
    loaded: dict[str, cf.ConnectionConf] = {}
    problems: Problems = {}
    tried = usable if usable is not None else {}
    EAP_USERS.replace(repo.eap_user_hashes(session, box))
    for row in rows:
        try:
            conn = connection_conf(session, box, row, children.get(row.id, []))
            if tried.get(row.name) != conn:
                cf.ike_config(row.name, conn)  # keys, certificates: as the daemon takes them
                tried[row.name] = conn
            loaded[row.name] = conn
        except _LOAD_ERRORS as exc:
            tried.pop(row.name, None)
            problems[row.id] = (row.name, describe(exc))
    for name in set(tried) - set(loaded):
        del tried[name]
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
        "over_time": row.over_time, "close_action": row.close_action.value,
        "fragmentation": "force" if row.fragmentation is m.Fragmentation.FORCE
        else row.fragmentation is not m.Fragmentation.NO, "encap": row.encap,
        "mobike": row.mobike, "pool": row.pool, "request_virtual_ip": row.request_virtual_ip,
        "local_auth": row.local_auth.value if row.local_auth else None,
        "remote_auth": row.remote_auth.value if row.remote_auth else None,
        "eap_id": row.eap_id, "dns": row.dns or [],
        "revocation": row.revocation.value,
        "ppk_id": row.ppk_id, "ppk_required": row.ppk_required,
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
        "mss": int(row.mss) if row.mss.isdigit() else row.mss,
    }


def _selectors(values: list[str]) -> list[str]:
    return [v for v in values if v != DYNAMIC]  # conf: empty = own address


def _credentials(session: Session, box: SecretBox, row: m.Connection) -> dict[str, Any]:
    ppk: dict[str, Any] = {} if row.ppk_secret_id is None else {
        "ppk": _text(repo.reveal_secret(session, box, row.ppk_secret_id), row.ppk_secret_id)}
    return ppk | _auth_credentials(session, box, row)


def _auth_credentials(session: Session, box: SecretBox, row: m.Connection
                      ) -> dict[str, Any]:
    if row.local_auth is m.EapMethod.MSCHAPV2:  # an EAP client: the gateway's CA, password
        out: dict[str, Any] = {}
        if row.eap_secret_id is not None:
            out["eap_password"] = _text(repo.reveal_secret(session, box, row.eap_secret_id),
                                        row.eap_secret_id)
        if row.ca_id is not None:
            out["ca_pem"] = [repo.get(session, m.CertificateAuthority, row.ca_id).pem]
        return out
    if row.auth is m.AuthMethod.PSK:
        if row.secret_id is None:
            return {}  # validation says "auth psk needs psk"
        return {"psk": _text(repo.reveal_secret(session, box, row.secret_id), row.secret_id)}
    out = {}
    cert = session.get(m.Certificate, row.certificate_id) if row.certificate_id else None
    key_id = row.secret_id or (cert.key_secret_id if cert else None)
    ca_id = row.ca_id or (cert.ca_id if cert else None)
    if cert is not None:
        out["certificate_pem"] = cert.pem
    if key_id is not None:
        out["private_key_pem"] = _text(repo.reveal_secret(session, box, key_id), key_id)
    if ca_id is not None:
        out["ca_pem"] = [repo.get(session, m.CertificateAuthority, ca_id).pem]
        out["crl_pem"] = list(session.scalars(select(m.Crl.pem).where(m.Crl.ca_id == ca_id)
                                              .order_by(m.Crl.id)))
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
    usable: dict[str, cf.ConnectionConf] = field(default_factory=dict)
    member: Membership | None = None  # this daemon as a gateway of the fleet
    applied: int | None = None  # last_change as the last load read it

    async def load(self) -> cf.DaemonConf:
        """Read the configuration; a newly found problem is logged and recorded as an
        event (so the API shows why a connection is not loaded)."""
        conf, problems, self.applied = await self.db.run(
            _read_versioned, self.box, self.base, self.usable,
            self.member.id if self.member else None)
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


# --------------------------------------------------------------------------- writing


class FileRefused(ValueError):
    """A configuration file that cannot be applied; the message names the file, the
    connection and the field. Nothing was written."""


@dataclass
class Applied:
    """What applying a file did, by connection name."""

    created: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    # in the file, but the database has it as not managed by this file (created through
    # the API, or taken over): left alone
    ignored: list[str] = field(default_factory=list)

    def summary(self) -> str:
        parts = [f"{what} {', '.join(names)}" for what, names in (
            ("created", self.created), ("updated", self.updated),
            ("removed", self.removed), ("not managed by the file, left alone", self.ignored))
            if names]
        return "; ".join(parts) or "nothing changed"


def file_origin(path: Path) -> str:
    """The `managed_by` value of connections that come from this file."""
    return f"file:{path.resolve()}"


def _proposal_text(specs: tuple[ProposalSpec, ...]) -> str:
    return ", ".join(p.text for p in specs)


def apply_conf(session: Session, box: SecretBox, conf: cf.DaemonConf, origin: str, *,
               actor: str) -> Applied:
    """Make the connections managed by `origin` exactly those of `conf` (ids kept for
    those that stay); connections managed otherwise are never changed."""
    rows = {r.name: r for r in session.scalars(select(m.Connection))}
    applied = Applied()
    for name, conn in conf.connections.items():
        row = rows.get(name)
        if row is not None and row.managed_by != origin:
            applied.ignored.append(name)
            continue
        values = _connection_values(session, box, name, conn, actor, row)
        if row is None:
            row = repo.create(session, m.Connection, {**values, "managed_by": origin},
                              actor=actor)
            applied.created.append(name)
        else:
            before, old_ppk = repo.snapshot(row), row.ppk_secret_id
            repo.update(session, m.Connection, row.id, values, actor=actor)
            if old_ppk is not None and values["ppk_secret_id"] is None:
                _drop_ppk(session, old_ppk, actor=actor)
            changed = _sync_children(session, row.id, conn, actor)
            after = repo.snapshot(row)
            (applied.updated if changed or _differs(before, after)
             else applied.unchanged).append(name)
            continue
        _sync_children(session, row.id, conn, actor)
    for name, row in rows.items():
        if row.managed_by == origin and name not in conf.connections:
            owned = (row.secret_id, row.certificate_id)
            eap_secret, ppk = row.eap_secret_id, row.ppk_secret_id
            repo.delete(session, m.Connection, row.id, actor=actor)
            _drop_unreferenced(session, *owned, actor=actor)
            if eap_secret is not None and session.scalar(select(m.Connection.id).where(
                    m.Connection.eap_secret_id == eap_secret)) is None:
                repo.delete(session, m.Secret, eap_secret, actor=actor)
            if ppk is not None:
                _drop_ppk(session, ppk, actor=actor)
            applied.removed.append(name)
    return applied


def _differs(before: dict[str, Any], after: dict[str, Any]) -> bool:
    return {k: v for k, v in before.items() if k != "updated_at"} != {
        k: v for k, v in after.items() if k != "updated_at"}


def _sync_children(session: Session, connection_id: int, conn: cf.ConnectionConf,
                   actor: str) -> bool:
    """The connection's children become those of `conf`; True if anything changed."""
    rows = {c.name: c for c in session.scalars(
        select(m.Child).where(m.Child.connection_id == connection_id))}
    changed = False
    for name, child in conn.children.items():
        values = _child_row(connection_id, name, child)
        row = rows.get(name)
        if row is None:
            repo.create(session, m.Child, values, actor=actor)
            changed = True
        else:
            before = repo.snapshot(row)
            repo.update(session, m.Child, row.id, values, actor=actor)
            changed |= _differs(before, repo.snapshot(row))
    for name, row in rows.items():
        if name not in conn.children:
            repo.delete(session, m.Child, row.id, actor=actor)
            changed = True
    return changed


def _drop_unreferenced(session: Session, secret_id: int | None, certificate_id: int | None,
                       *, actor: str) -> None:
    """Remove a removed file connection's certificate and secret unless still used."""
    session.flush()
    if certificate_id is not None and session.scalar(select(m.Connection.id).where(
            m.Connection.certificate_id == certificate_id)) is None:
        repo.delete(session, m.Certificate, certificate_id, actor=actor)
        session.flush()
    if secret_id is not None and session.scalar(select(m.Connection.id).where(
            m.Connection.secret_id == secret_id)) is None and session.scalar(
            select(m.Certificate.id).where(m.Certificate.key_secret_id == secret_id)) is None:
        repo.delete(session, m.Secret, secret_id, actor=actor)


def _drop_ppk(session: Session, secret_id: int, *, actor: str) -> None:
    """Remove a file connection's former PPK secret unless another connection uses it."""
    session.flush()
    if session.scalar(select(m.Connection.id).where(
            m.Connection.ppk_secret_id == secret_id)) is None:
        repo.delete(session, m.Secret, secret_id, actor=actor)


def import_conf(session: Session, box: SecretBox, conf: cf.DaemonConf, *,
                actor: str = "import") -> list[str]:
    """Create every connection of `conf` (names must be new), managed by the database
    from then on; returns their names."""
    for name, conn in conf.connections.items():
        values = _connection_values(session, box, name, conn, actor, None)
        row = repo.create(session, m.Connection, values, actor=actor)
        for child_name, child in conn.children.items():
            repo.create(session, m.Child, _child_row(row.id, child_name, child), actor=actor)
    return list(conf.connections)


def _connection_values(session: Session, box: SecretBox, name: str,
                       conn: cf.ConnectionConf, actor: str,
                       row: m.Connection | None) -> dict[str, Any]:
    values: dict[str, Any] = {
        "name": name, "local_addrs": conn.local_addrs, "remote_addrs": conn.remote_addrs,
        "local_port": conn.local_port, "remote_port": conn.remote_port,
        "local_id": conn.local_id, "remote_id": conn.remote_id,
        "auth": m.AuthMethod(conn.auth.value),
        "ike_proposals": conn.ike_proposals or _proposal_text(DEFAULT_IKE),
        "start_action": m.StartAction(conn.start_action.value), "dpd_delay": conn.dpd_delay,
        "dpd_action": m.DpdAction(conn.dpd_action.value), "rekey_time": conn.rekey_time,
        "close_action": m.CloseAction(conn.close_action.value),
        "fragmentation": m.Fragmentation.FORCE if conn.fragmentation == "force"
        else m.Fragmentation.YES if conn.fragmentation else m.Fragmentation.NO,
        "reauth_time": conn.reauth_time, "over_time": conn.over_time,
        "encap": conn.encap, "mobike": conn.mobike, "pool": conn.pool,
        "request_virtual_ip": conn.request_virtual_ip,
        "local_auth": m.EapMethod(conn.local_auth.value) if conn.local_auth else None,
        "remote_auth": m.EapMethod(conn.remote_auth.value) if conn.remote_auth else None,
        "eap_id": conn.eap_id, "dns": conn.dns,
        "revocation": m.Revocation(conn.revocation.value),
        "ppk_id": conn.ppk_id, "ppk_required": conn.ppk_required,
        "ppk_secret_id": None if conn.ppk is None else _put_secret(
            session, box, row.ppk_secret_id if row else None, f"{name}-ppk", m.SecretKind.PPK,
            conn.ppk.get_secret_value().encode(), actor),
    }
    if conn.local_auth is cf.EapMethodName.MSCHAPV2:  # the gateway's CA, our password
        password = _field(name, "eap_password_file", lambda: cf.eap_password(conn)).encode()
        ca_pem = "".join([*conn.ca_pem, *(_field(name, "ca", p.read_text) for p in conn.ca)])
        values |= {"certificate_id": None, "secret_id": None,
                   "ca_id": _ca(session, f"{name}-ca", ca_pem, actor),
                   "eap_secret_id": _put_secret(
                       session, box, row.eap_secret_id if row else None, f"{name}-eap",
                       m.SecretKind.EAP, password, actor)}
    elif conn.auth.value == m.AuthMethod.PSK:
        psk = _field(name, "psk_file", lambda: cf._psk(conn))
        values |= {"certificate_id": None, "ca_id": None,
                   "secret_id": _put_secret(session, box, row.secret_id if row else None,
                                            f"{name}-psk", m.SecretKind.PSK, psk, actor)}
    else:
        values.update(_pubkey_rows(session, box, name, conn, actor, row))
    return values


def _field(connection: str, name: str, read: Any) -> Any:
    """Read a file a connection names; the error says which connection and field."""
    try:
        return read()
    except OSError as exc:
        raise FileRefused(f"connection {connection}: {name}: cannot read "
                          f"{exc.filename or ''}: {exc.strerror or exc}") from exc


def _free_name(session: Session, model: Any, base: str) -> str:
    name, n = base, 1
    while session.scalar(select(model.id).where(model.name == name)) is not None:
        n += 1
        name = f"{base}-{n}"
    return name


def _put_secret(session: Session, box: SecretBox, current: int | None, name: str,
                kind: m.SecretKind, value: bytes, actor: str) -> int:
    """The id of a secret holding `value`: the current one (rewritten if the value
    changed), or a new one."""
    secret = session.get(m.Secret, current) if current is not None else None
    if secret is not None and secret.kind is kind:
        try:
            same = box.decrypt(secret.name, secret.ciphertext) == value
        except SecretKeyError:
            same = False
        if not same:
            repo.replace_secret_value(session, box, secret.id, value, actor=actor)
        return secret.id
    return repo.create_secret(session, box, name=_free_name(session, m.Secret, name),
                              kind=kind, value=value, actor=actor).id


def _pubkey_rows(session: Session, box: SecretBox, name: str, conn: cf.ConnectionConf,
                 actor: str, row: m.Connection | None) -> dict[str, Any]:
    key = conn.private_key_pem.get_secret_value().encode() if conn.private_key_pem else (
        _field(name, "private_key", conn.private_key.read_bytes) if conn.private_key
        else b"")
    cert_pem = conn.certificate_pem or (
        _field(name, "certificate", conn.certificate.read_text) if conn.certificate else "")
    ca_pem = "".join([*conn.ca_pem, *(_field(name, "ca", p.read_text) for p in conn.ca)])
    # an EAP-MSCHAPv2 gateway verifies no peer certificate: no CA needed
    ca_id = _ca(session, f"{name}-ca", ca_pem, actor) if ca_pem else None
    key_id = _put_secret(session, box, row.secret_id if row else None, f"{name}-key",
                         m.SecretKind.PRIVATE_KEY, key, actor)
    cert = x509.load_pem_x509_certificate(cert_pem.encode())
    cert_values = {
        "pem": cert_pem, "subject": cert.subject.rfc4514_string(),
        "issuer": cert.issuer.rfc4514_string(), "not_before": cert.not_valid_before_utc,
        "not_after": cert.not_valid_after_utc, "ca_id": ca_id, "key_secret_id": key_id}
    current = session.get(m.Certificate, row.certificate_id) \
        if row is not None and row.certificate_id is not None else None
    if current is not None:
        repo.update(session, m.Certificate, current.id, cert_values, actor=actor)
        cert_id = current.id
    else:
        cert_id = repo.create(session, m.Certificate, {
            "name": _free_name(session, m.Certificate, f"{name}-cert"), **cert_values},
            actor=actor).id
    if ca_id is not None:
        _import_crls(session, name, conn, ca_id, actor)
    elif conn.crl or conn.crl_pem:
        raise FileRefused(f"connection {name}: crl: a CRL needs the connection's ca")
    return {"secret_id": key_id, "certificate_id": cert_id, "ca_id": ca_id}


def _import_crls(session: Session, name: str, conn: cf.ConnectionConf, ca_id: int,
                 actor: str) -> None:
    """The connection's CRLs (files or PEM) as rows of its CA named `<name>-crl...`; those
    rows that the file no longer gives (an older CRL) are removed."""
    datas = [*(p.encode() for p in conn.crl_pem),
             *(_field(name, "crl", p.read_bytes) for p in conn.crl)]
    ca_pem = repo.get(session, m.CertificateAuthority, ca_id).pem
    wanted: dict[str, dict[str, Any]] = {}
    for data in datas:
        try:
            crl = pki.load_crl(data)
        except ValueError as exc:
            raise FileRefused(f"connection {name}: crl: {exc}") from None
        if not pki.crl_signed_by(crl, ca_pem):
            raise FileRefused(f"connection {name}: crl: not signed by the connection's CA")
        fields = pki.crl_fields(crl)
        wanted[fields["pem"]] = fields
    ours = session.scalars(select(m.Crl).where(m.Crl.ca_id == ca_id,
                                               m.Crl.name.startswith(f"{name}-crl")))
    for row in list(ours):
        if wanted.pop(row.pem, None) is None:
            repo.delete(session, m.Crl, row.id, actor=actor)
    for fields in wanted.values():
        if session.scalar(select(m.Crl.id).where(m.Crl.pem == fields["pem"])) is None:
            repo.create(session, m.Crl, {"name": _free_name(session, m.Crl, f"{name}-crl"),
                                         "ca_id": ca_id, **fields}, actor=actor)


def _ca(session: Session, name: str, pem: str, actor: str) -> int:
    """A CA row for this PEM bundle, reused when the same bundle is already stored."""
    existing = session.scalar(select(m.CertificateAuthority)
                              .where(m.CertificateAuthority.pem == pem))
    if existing is not None:
        return existing.id
    first = x509.load_pem_x509_certificates(pem.encode())[0]
    return repo.create(session, m.CertificateAuthority, {
        "name": _free_name(session, m.CertificateAuthority, name), "pem": pem,
        "subject": first.subject.rfc4514_string(),
        "not_after": first.not_valid_after_utc}, actor=actor).id


def _child_row(connection_id: int, name: str, child: cf.ChildConf) -> dict[str, Any]:
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
        "tfc_padding": child.tfc_padding, "mss": str(child.mss),
    }


def load_file(path: Path) -> cf.DaemonConf:
    """Read and validate a daemon file, and try every connection as the daemon would
    take it (keys and certificates parsed); FileRefused names file, connection, field."""
    try:
        conf = cf.load(path)
    except ValidationError as exc:
        raise FileRefused(f"{path}: {describe(exc)}") from exc
    except (OSError, ValueError) as exc:  # unreadable, or not YAML/TOML
        raise FileRefused(f"{path}: {exc}") from exc
    for name, conn in conf.connections.items():
        try:
            cf.ike_config(name, conn)
        except OSError as exc:
            raise FileRefused(f"{path}: connection {name}: {_file_field(conn, exc)}: "
                              f"cannot read {exc.filename or ''}: {exc.strerror or exc}"
                              ) from exc
        except (ValueError, TypeError) as exc:
            raise FileRefused(f"{path}: connection {name}: {exc}") from exc
    return conf


def _file_field(conn: cf.ConnectionConf, exc: OSError) -> str:
    """Which field named the file that could not be read."""
    for name, value in (("psk_file", conn.psk_file), ("certificate", conn.certificate),
                        ("private_key", conn.private_key)):
        if value is not None and str(value) == str(exc.filename):
            return name
    return "ca"


def apply_file(db: Database, box: SecretBox, path: Path) -> tuple[cf.DaemonConf, Applied]:
    """Validate a daemon file and apply its connections in one transaction (nothing is
    written when it is refused)."""
    conf = load_file(path)
    try:
        applied = db.call(apply_conf, box, conf, file_origin(path), actor=f"file:{path.name}")
    except FileRefused as exc:
        raise FileRefused(f"{path}: {exc}") from exc
    except repo.Conflict as exc:
        raise FileRefused(f"{path}: {exc}") from exc
    return conf, applied


def read_import(path: Path, fmt: str = "auto") -> tuple[cf.DaemonConf, list[str]]:
    """A daemon file (YAML/TOML) or a swanctl.conf (`fmt` auto, xfrmctl or swanctl) as a
    configuration, with the swanctl settings that could not be mapped. Raises
    ValidationError, or ValueError / OSError saying what is wrong with the file."""
    if fmt == "swanctl" or (fmt == "auto" and swanctl.looks_like_swanctl(path)):
        return swanctl.load(path)
    try:
        return load_file(path), []
    except FileRefused as exc:
        raise ValueError(str(exc)) from exc


def import_file(db: Database, box: SecretBox, path: Path) -> list[str]:
    """Validate a daemon file and create its connections in one transaction."""
    conf = load_file(path)
    return db.call(import_conf, box, conf, actor=f"import:{path.name}")


def _read_versioned(session: Session, box: SecretBox, base: cf.DaemonConf,
                    usable: dict[str, cf.ConnectionConf], member: int | None
                    ) -> tuple[cf.DaemonConf, Problems, int | None]:
    """read_conf and the last_change it includes (one transaction: one snapshot)."""
    version = last_change(session)
    return (*read_conf(session, box, base, usable, member), version)


def last_change(session: Session) -> int | None:
    """The newest audit record's id: it moves whenever the configuration is written."""
    return session.scalar(select(func.max(m.Event.id))
                          .where(m.Event.kind == m.EventKind.AUDIT))


# --------------------------------------------------------------------------- opening


class DatabaseUnavailable(Exception):
    """The database cannot serve as the daemon's configuration (message says why)."""


def prepare_database(url: str) -> None:
    """Bring the schema to the newest migration. A new (empty) database gets the models'
    tables and the head revision at once, as Alembic advises: the same schema
    (tests/store/test_migrations.py) without replaying every migration, which is slow
    in a VM without KVM."""
    engine = make_engine(url)
    try:
        with engine.begin() as connection:
            current = schema_revision(connection)
            if current == HEAD_REVISION:
                return
            if current is None and not inspect(connection).get_table_names():
                log.info("creating the database schema at %s", HEAD_REVISION)
                m.Base.metadata.create_all(connection)
                stamp_head(connection, url)
                return
    finally:
        engine.dispose()
    log.info("migrating the database from %s to %s", current or "empty", HEAD_REVISION)
    upgrade(url)


async def open_source(settings: Settings, base: cf.DaemonConf) -> DbSource:
    """The database named by the settings, migrated, with the secrets key loaded."""
    try:
        await asyncio.to_thread(prepare_database, settings.database_url)
        box = SecretBox.from_file(settings.secret_key_file)
    except (SQLAlchemyError, MigrationError, SecretKeyError, OSError) as exc:
        raise DatabaseUnavailable(f"database {_redact(settings.database_url)}: {exc}") from exc
    return DbSource(Database(settings.database_url), box, base)


def _redact(url: str) -> str:
    """The URL without a password."""
    return make_url(url).render_as_string(hide_password=True)
