"""CAs (trust anchors), their CRLs, and certificates (end entity, optionally with a
private key)."""

from __future__ import annotations

from typing import Any

from cryptography import x509
from fastapi import APIRouter, status
from sqlalchemy import select
from sqlalchemy.orm import Session

from xfrmctl.store import pki, repo
from xfrmctl.store.models import (
    Certificate,
    CertificateAuthority,
    Connection,
    Crl,
    Secret,
    SecretKind,
)
from xfrmctl.store.secrets import SecretBox

from .. import crud
from ..deps import AdminDep, IdPath, PagingDep, ReadDep, ServicesDep
from ..schemas.config import (
    CaCreate,
    CaPublic,
    CasPublic,
    CaUpdate,
    CertificateCreate,
    CertificatePublic,
    CertificatesPublic,
    CertificateUpdate,
    CrlCreate,
    CrlPublic,
    CrlsPublic,
    CrlUpdate,
)

ca_router = APIRouter(prefix="/cas", tags=["cas"])
router = APIRouter(prefix="/certificates", tags=["certificates"])
crl_router = APIRouter(prefix="/crls", tags=["crls"])


def parse_pem(pem: str) -> x509.Certificate:
    """The first certificate (the schema's CertificatePem checked that all parse)."""
    return x509.load_pem_x509_certificate(pem.encode())


def _ca_fields(pem: str | None) -> dict[str, Any]:
    if pem is None:
        return {}
    cert = parse_pem(pem)
    try:
        constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        constraints = None
    if constraints is None or not constraints.ca:
        raise repo.InvalidField("pem", "certificate is not a CA (basicConstraints CA:TRUE)")
    return {"pem": pem, "subject": cert.subject.rfc4514_string(),
            "not_after": cert.not_valid_after_utc}


def _cert_fields(pem: str | None) -> dict[str, Any]:
    if pem is None:
        return {}
    cert = parse_pem(pem)
    return {"pem": pem, "subject": cert.subject.rfc4514_string(),
            "issuer": cert.issuer.rfc4514_string(),
            "not_before": cert.not_valid_before_utc, "not_after": cert.not_valid_after_utc}


def certificate_check(box: SecretBox) -> crud.Check:
    """The key secret, if given, is a private key matching the certificate."""

    def check(session: Session, v: dict[str, Any]) -> None:
        secret_id = v.get("key_secret_id")
        secret = session.get(Secret, secret_id) if secret_id is not None else None
        if secret is not None and secret.kind != SecretKind.PRIVATE_KEY:
            raise repo.InvalidField("key_secret_id",
                                    "key_secret_id must name a private_key secret")
        users = [] if v.get("id") is None else list(session.scalars(
            select(Secret).join(Connection, Connection.secret_id == Secret.id)
            .where(Connection.certificate_id == v["id"])))
        for key_secret in [s for s in (secret, *users) if s is not None]:
            key = pki.load_private_key(box.decrypt(key_secret.name, key_secret.ciphertext))
            if not pki.key_matches(key, v["pem"]):
                raise repo.InvalidField(
                    "key_secret_id" if key_secret is secret else "pem",
                    f"private key {key_secret.name!r} does not match this certificate")
    return check


@ca_router.get("", response_model=CasPublic)
async def list_cas(services: ServicesDep, _: ReadDep, paging: PagingDep) -> CasPublic:
    rows, count = await crud.page(services, CertificateAuthority, paging)
    return CasPublic(data=[CaPublic.model_validate(r) for r in rows], count=count)


@ca_router.post("", response_model=CaPublic, status_code=status.HTTP_201_CREATED)
async def create_ca(services: ServicesDep, who: AdminDep, body: CaCreate
                    ) -> CertificateAuthority:
    values = {"name": body.name, **_ca_fields(body.pem)}
    return await crud.create(services, who, CertificateAuthority, "ca", values)


@ca_router.get("/{ca_id}", response_model=CaPublic)
async def read_ca(services: ServicesDep, _: ReadDep, ca_id: IdPath) -> CertificateAuthority:
    return await crud.get(services, CertificateAuthority, ca_id)


@ca_router.patch("/{ca_id}", response_model=CaPublic)
async def update_ca(services: ServicesDep, who: AdminDep, ca_id: IdPath, body: CaUpdate
                    ) -> CertificateAuthority:
    patch = body.model_dump(exclude_unset=True)
    values = {**patch, **_ca_fields(patch.get("pem"))}
    return await crud.update(services, who, CertificateAuthority, "ca", ca_id, values)


@ca_router.delete("/{ca_id}", status_code=status.HTTP_204_NO_CONTENT)
async def delete_ca(services: ServicesDep, who: AdminDep, ca_id: IdPath) -> None:
    await crud.delete(services, who, CertificateAuthority, "ca", ca_id)


@router.get("", response_model=CertificatesPublic)
async def list_certificates(services: ServicesDep, _: ReadDep, paging: PagingDep
                            ) -> CertificatesPublic:
    rows, count = await crud.page(services, Certificate, paging)
    return CertificatesPublic(data=[CertificatePublic.model_validate(r) for r in rows],
                              count=count)


@router.post("", response_model=CertificatePublic, status_code=status.HTTP_201_CREATED)
async def create_certificate(services: ServicesDep, who: AdminDep, body: CertificateCreate
                             ) -> Certificate:
    values = {**body.model_dump(exclude={"pem"}), **_cert_fields(body.pem)}
    return await crud.create(services, who, Certificate, "certificate", values,
                             certificate_check(services.box))


@router.get("/{certificate_id}", response_model=CertificatePublic)
async def read_certificate(services: ServicesDep, _: ReadDep, certificate_id: IdPath
                           ) -> Certificate:
    return await crud.get(services, Certificate, certificate_id)


@router.patch("/{certificate_id}", response_model=CertificatePublic)
async def update_certificate(services: ServicesDep, who: AdminDep, certificate_id: IdPath,
                             body: CertificateUpdate) -> Certificate:
    patch = body.model_dump(exclude_unset=True)
    values = {**patch, **_cert_fields(patch.get("pem"))}
    return await crud.update(services, who, Certificate, "certificate", certificate_id, values,
                             certificate_check(services.box))


@router.delete("/{certificate_id}", status_code=status.HTTP_204_NO_CONTENT)
async def delete_certificate(services: ServicesDep, who: AdminDep, certificate_id: IdPath
                             ) -> None:
    await crud.delete(services, who, Certificate, "certificate", certificate_id)


def _crl_fields(pem: str | None) -> dict[str, Any]:
    if pem is None:
        return {}
    try:
        return pki.crl_fields(pki.load_crl(pem))
    except ValueError as exc:
        raise repo.InvalidField("pem", str(exc)) from None


def _crl_check(session: Session, v: dict[str, Any]) -> None:
    """The CRL is signed by its CA (so the daemon can use it)."""
    ca = session.get(CertificateAuthority, v["ca_id"])
    if ca is None:
        raise repo.InvalidField("ca_id", f"no CA with id {v['ca_id']}")
    if not pki.crl_signed_by(pki.load_crl(v["pem"]), ca.pem):
        raise repo.InvalidField("pem", f"the CRL of {v['issuer']} is not signed by CA "
                                       f"{ca.name!r}")


@crl_router.get("", response_model=CrlsPublic)
async def list_crls(services: ServicesDep, _: ReadDep, paging: PagingDep) -> CrlsPublic:
    rows, count = await crud.page(services, Crl, paging)
    return CrlsPublic(data=[CrlPublic.model_validate(r) for r in rows], count=count)


@crl_router.post("", response_model=CrlPublic, status_code=status.HTTP_201_CREATED)
async def create_crl(services: ServicesDep, who: AdminDep, body: CrlCreate) -> Crl:
    values = {"name": body.name, "ca_id": body.ca_id, **_crl_fields(body.pem)}
    return await crud.create(services, who, Crl, "crl", values, _crl_check)


@crl_router.get("/{crl_id}", response_model=CrlPublic)
async def read_crl(services: ServicesDep, _: ReadDep, crl_id: IdPath) -> Crl:
    return await crud.get(services, Crl, crl_id)


@crl_router.patch("/{crl_id}", response_model=CrlPublic)
async def update_crl(services: ServicesDep, who: AdminDep, crl_id: IdPath, body: CrlUpdate
                     ) -> Crl:
    patch = body.model_dump(exclude_unset=True)
    values = {**patch, **_crl_fields(patch.get("pem"))}
    return await crud.update(services, who, Crl, "crl", crl_id, values, _crl_check)


@crl_router.delete("/{crl_id}", status_code=status.HTTP_204_NO_CONTENT)
async def delete_crl(services: ServicesDep, who: AdminDep, crl_id: IdPath) -> None:
    await crud.delete(services, who, Crl, "crl", crl_id)
