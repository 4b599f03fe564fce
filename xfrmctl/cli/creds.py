"""`xfrmctl secret`, `ca`, `cert`: credentials. Secret values are write-only: read from a
file, stdin or a hidden prompt, sent once, and never printed."""

from __future__ import annotations

import base64
import sys
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click

from . import State, json_flag, pass_state
from .client import EXIT_NOT_FOUND, ApiError
from .output import Column, ago, col, emit_fields, emit_json, emit_table

SECRET_KINDS = ("psk", "private_key", "eap")


def resolve(state: State, path: str, ref: str, what: str) -> dict[str, Any]:
    """An object of a collection by id or by name."""
    if ref.isdigit():
        found: dict[str, Any] = state.api.get(f"{path}/{ref}")
        return found
    for item in state.api.all(path):
        if item["name"] == ref:
            return item
    raise ApiError(f"no {what} named {ref!r}", EXIT_NOT_FOUND)


def read_value(from_file: Path | None, kind: str, *, confirm: bool = True) -> str:
    """The secret's value: from a file, from stdin when it is not a terminal, else a
    hidden prompt (asked twice for a PSK)."""
    if from_file is not None:
        try:
            text = from_file.read_text()
        except OSError as exc:
            raise click.BadParameter(f"cannot read {from_file}: {exc.strerror}",
                                     param_hint="--from-file") from None
    elif not sys.stdin.isatty():
        text = sys.stdin.read()
    else:
        text = click.prompt(f"{kind} value", hide_input=True,
                            confirmation_prompt=confirm and kind in ("psk", "eap"))
    value = text.strip() if kind in ("psk", "eap") else text
    if not value.strip():
        raise click.BadParameter("the secret is empty", param_hint="value")
    return value


def _done(state: State, data: dict[str, Any], text: str) -> None:
    emit_json(data) if state.json else click.echo(text)


# The commands every credential collection has: `list` (a table, or --json), `show REF`
# and `delete REF`, where REF is an id or a name; `what` names the object in messages.

def _add_list(group: click.Group, path: str, columns: Sequence[Column]) -> None:
    @group.command("list")
    @json_flag
    @pass_state
    def list_(state: State) -> None:
        rows = state.api.all(path)
        emit_json(rows) if state.json else emit_table(rows, columns)


def _add_show(group: click.Group, path: str, what: str) -> None:
    @group.command("show")
    @click.argument("ref")
    @json_flag
    @pass_state
    def show(state: State, ref: str) -> None:
        data = resolve(state, path, ref, what)
        emit_json(data) if state.json else emit_fields(data)


def _add_delete(group: click.Group, path: str, what: str) -> None:
    @group.command("delete")
    @click.argument("ref")
    @json_flag
    @pass_state
    def delete(state: State, ref: str) -> None:
        current = resolve(state, path, ref, what)
        state.api.request("DELETE", f"{path}/{current['id']}")
        _done(state, {"deleted": current["id"]}, f"deleted {what} {current['name']}")


# --------------------------------------------------------------------------- secrets

@click.group()
def secret() -> None:
    """Secrets (PSKs, private keys): write-only, never shown."""


@secret.command("list")
@click.option("--kind", type=click.Choice(SECRET_KINDS))
@json_flag
@pass_state
def secret_list(state: State, kind: str | None) -> None:
    rows = state.api.all("/secrets", kind=kind)
    if state.json:
        emit_json(rows)
        return
    emit_table(rows, [col("ID", "id"), col("NAME", "name"), col("KIND", "kind"),
                      col("VERSION", "version"),
                      ("CREATED", lambda r: ago(r.get("created_at"))),
                      ("UPDATED", lambda r: ago(r.get("updated_at")))])


_from_file = click.option("--from-file", type=click.Path(path_type=Path, dir_okay=False),
                          help="read the value from this file (else stdin, else a prompt)")
_version = click.option("--version", "version",
                        help="your label for this value (e.g. 2 or 2026-12), stored with it "
                             "and shown by `secret list`; Ansible compares it")


def _with_version(version: str | None) -> str:
    return f", version {version}" if version is not None else ""


@secret.command("create")
@click.argument("name")
@click.option("--kind", type=click.Choice(SECRET_KINDS), default="psk", show_default=True)
@_from_file
@_version
@json_flag
@pass_state
def secret_create(state: State, name: str, kind: str, from_file: Path | None,
                  version: str | None) -> None:
    """Store a secret; its value is never printed."""
    body = {"name": name, "kind": kind, "value": read_value(from_file, kind)}
    if version is not None:
        body["version"] = version
    created = state.api.request("POST", "/secrets", json=body)
    _done(state, created, f"created secret {name} (id {created['id']}"
                          f"{_with_version(version)})")


@secret.command("replace")
@click.argument("ref")
@_from_file
@_version
@json_flag
@pass_state
def secret_replace(state: State, ref: str, from_file: Path | None,
                   version: str | None) -> None:
    """Replace a secret's value and its version (without --version: none); connections
    using it pick it up."""
    current = resolve(state, "/secrets", ref, "secret")
    updated = state.api.request("PUT", f"/secrets/{current['id']}", json={
        "value": read_value(from_file, current["kind"]), "version": version})
    _done(state, updated, f"replaced the value of secret {current['name']}"
                          f"{_with_version(version)}")


_add_delete(secret, "/secrets", "secret")


# --------------------------------------------------------------------------- CAs

def _pem(path: Path) -> str:
    try:
        return path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise click.BadParameter(f"cannot read {path}: {exc}", param_hint="PEM") from None


_pem_arg = click.argument("pem_file", metavar="PEM", type=click.Path(
    path_type=Path, dir_okay=False, exists=True))


@click.group()
def ca() -> None:
    """Certificate authorities trusted to authenticate peers."""


_add_list(ca, "/cas", [col("ID", "id"), col("NAME", "name"), col("SUBJECT", "subject"),
                        col("NOT_AFTER", "not_after")])
_add_show(ca, "/cas", "CA")
_add_delete(ca, "/cas", "CA")


@ca.command("add")
@click.argument("name")
@_pem_arg
@json_flag
@pass_state
def ca_add(state: State, name: str, pem_file: Path) -> None:
    """Trust a CA certificate (PEM file)."""
    created = state.api.request("POST", "/cas", json={"name": name, "pem": _pem(pem_file)})
    _done(state, created, f"added CA {name} (id {created['id']}): {created['subject']}")


@ca.command("replace")
@click.argument("ref")
@_pem_arg
@json_flag
@pass_state
def ca_replace(state: State, ref: str, pem_file: Path) -> None:
    """Replace a CA's certificate (e.g. a renewed one)."""
    current = resolve(state, "/cas", ref, "CA")
    updated = state.api.request("PATCH", f"/cas/{current['id']}",
                                json={"pem": _pem(pem_file)})
    _done(state, updated, f"replaced CA {current['name']}: {updated['subject']}")


# --------------------------------------------------------------------------- CRLs

@click.group()
def crl() -> None:
    """Certificate revocation lists of our CAs (peers' certificates they list are refused)."""


_add_list(crl, "/crls", [col("ID", "id"), col("NAME", "name"), col("CA", "ca_id"),
                         col("ISSUER", "issuer"), col("REVOKED", "revoked"),
                         col("THIS_UPDATE", "this_update"),
                         col("NEXT_UPDATE", "next_update")])
_add_show(crl, "/crls", "CRL")
_add_delete(crl, "/crls", "CRL")

_crl_arg = click.argument("crl_file", metavar="CRL", type=click.Path(
    path_type=Path, dir_okay=False, exists=True))


def _crl_pem(path: Path) -> str:
    """The CRL file as PEM (DER files, as CAs publish them, are wrapped)."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise click.BadParameter(f"cannot read {path}: {exc}", param_hint="CRL") from None
    if data.lstrip().startswith(b"-----BEGIN"):
        return data.decode("ascii", errors="replace")
    body = textwrap.fill(base64.b64encode(data).decode(), 64)
    return f"-----BEGIN X509 CRL-----\n{body}\n-----END X509 CRL-----\n"


@crl.command("add")
@click.argument("name")
@click.argument("ca_ref", metavar="CA")
@_crl_arg
@json_flag
@pass_state
def crl_add(state: State, name: str, ca_ref: str, crl_file: Path) -> None:
    """Store a CRL (PEM or DER file) of a CA (id or name); it must be signed by it."""
    ca_id = resolve(state, "/cas", ca_ref, "CA")["id"]
    created = state.api.request("POST", "/crls", json={
        "name": name, "ca_id": ca_id, "pem": _crl_pem(crl_file)})
    _done(state, created, f"added CRL {name} (id {created['id']}): {created['revoked']} "
                          f"revoked, next update {created['next_update'] or '-'}")


@crl.command("replace")
@click.argument("ref")
@_crl_arg
@json_flag
@pass_state
def crl_replace(state: State, ref: str, crl_file: Path) -> None:
    """Replace a CRL with a newer one of the same CA."""
    current = resolve(state, "/crls", ref, "CRL")
    updated = state.api.request("PATCH", f"/crls/{current['id']}",
                                json={"pem": _crl_pem(crl_file)})
    _done(state, updated, f"replaced CRL {current['name']}: {updated['revoked']} revoked")


# --------------------------------------------------------------------------- certificates

@click.group()
def cert() -> None:
    """Our own certificates (with the private key as a secret)."""


_add_list(cert, "/certificates", [
    col("ID", "id"), col("NAME", "name"), col("SUBJECT", "subject"), col("ISSUER", "issuer"),
    col("NOT_AFTER", "not_after"), col("CA", "ca_id"), col("KEY_SECRET", "key_secret_id")])
_add_show(cert, "/certificates", "certificate")
_add_delete(cert, "/certificates", "certificate")


def _cert_refs(state: State, ca_ref: str | None, key_secret: str | None
               ) -> dict[str, Any]:
    body: dict[str, Any] = {}
    if ca_ref:
        body["ca_id"] = resolve(state, "/cas", ca_ref, "CA")["id"]
    if key_secret:
        body["key_secret_id"] = resolve(state, "/secrets", key_secret, "secret")["id"]
    return body


@cert.command("add")
@click.argument("name")
@_pem_arg
@click.option("--key-file", type=click.Path(path_type=Path, dir_okay=False, exists=True),
              help="its private key (PEM): stored as the secret '<name>-key'")
@click.option("--key-secret", help="or an existing private_key secret (name or id)")
@click.option("--ca", "ca_ref", help="the CA that issued it (name or id)")
@json_flag
@pass_state
def cert_add(state: State, name: str, pem_file: Path, key_file: Path | None,
             key_secret: str | None, ca_ref: str | None) -> None:
    """Add a certificate, optionally with its private key."""
    if key_file and key_secret:
        raise click.UsageError("give --key-file or --key-secret, not both")
    body = {"name": name, "pem": _pem(pem_file), **_cert_refs(state, ca_ref, key_secret)}
    key_id = None
    if key_file is not None:
        key_id = state.api.request("POST", "/secrets", json={
            "name": f"{name}-key", "kind": "private_key",
            "value": read_value(key_file, "private_key")})["id"]
        body["key_secret_id"] = key_id
    try:
        created = state.api.request("POST", "/certificates", json=body)
    except ApiError:
        if key_id is not None:  # no orphaned key when the certificate is refused
            state.api.request("DELETE", f"/secrets/{key_id}")
        raise
    _done(state, created, f"added certificate {name} (id {created['id']}): "
                          f"{created['subject']}")


@cert.command("replace")
@click.argument("ref")
@_pem_arg
@click.option("--key-secret", help="switch to this private_key secret (name or id)")
@click.option("--ca", "ca_ref", help="the CA that issued it (name or id)")
@json_flag
@pass_state
def cert_replace(state: State, ref: str, pem_file: Path, key_secret: str | None,
                 ca_ref: str | None) -> None:
    """Replace a certificate (e.g. renewed); connections using it pick it up."""
    current = resolve(state, "/certificates", ref, "certificate")
    body = {"pem": _pem(pem_file), **_cert_refs(state, ca_ref, key_secret)}
    updated = state.api.request("PATCH", f"/certificates/{current['id']}", json=body)
    _done(state, updated, f"replaced certificate {current['name']}: {updated['subject']}")
