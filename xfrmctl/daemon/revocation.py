"""Revocation information for the IKE core: configured CRLs, and the HTTP fetches it asks
for (RevocationFetch) done off the IKE path.

Each fetch runs in its own task with a time limit, so a slow or dead URL delays only the
IKE_SA that needs it; when the fetches end (or the limit passes) that IKE_SA resumes and
decides with what arrived. CRLs stay in the store until replaced (the core fetches again
only when the one held is past its nextUpdate); OCSP answers until their nextUpdate. A URL
that just failed is not asked again for FAILED_RETRY seconds. The URLs come from
certificates that chained to a trusted CA and whose holder's AUTH signature verified.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Final

import httpx
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509 import ocsp

from xfrmctl.ike.config import IkeConfig
from xfrmctl.ike.events import RevocationFetch
from xfrmctl.ike.revocation import (
    CrlQuery,
    OcspQuery,
    RevocationStore,
    crl_issued_by,
    parse_crl,
)

log = logging.getLogger(__name__)

FETCH_TIMEOUT: Final = 10.0  # seconds for all the fetches of one IKE_SA
MAX_RESPONSE: Final = 4 << 20  # bytes: a CRL or OCSP response larger than this is refused
FAILED_RETRY: Final = 30.0  # seconds before a URL that failed is tried again
NONCE_SIZE: Final = 16  # RFC 8954: 1..32 octets


def configured_crls(pems: Sequence[str], paths: Sequence[Path]
                    ) -> list[x509.CertificateRevocationList]:
    """The CRLs a connection names (PEM text or DER/PEM files); ValueError/OSError if bad."""
    datas = [p.encode() for p in pems] + [path.read_bytes() for path in paths]
    return [parse_crl(data) for data in datas]


def add_configured(store: RevocationStore, name: str, ike: IkeConfig,
                   crls: Sequence[x509.CertificateRevocationList]) -> None:
    """A connection's CRLs into the shared store (replacing its earlier ones), each
    verified against one of its CAs; ValueError naming the CRL when none signed it (and
    the earlier ones stay)."""
    cas = ike.remote_auth.trust.cas if ike.remote_auth.trust is not None else ()
    signed = []
    for crl in crls:
        ca = next((ca for ca in cas if crl_issued_by(crl, ca)), None)
        if ca is None:
            raise ValueError(f"CRL of {crl.issuer.rfc4514_string()} is not signed by any "
                             "CA of the connection")
        signed.append((crl, ca))
    source = f"connection {name}"
    store.remove_crls(source)
    for crl, ca in signed:
        store.add_crl(crl, ca, source=source)


class RevocationFetcher:
    """Does what RevocationFetch events ask, then resumes the IKE_SA (`resume(sa_id)`)."""

    def __init__(self, store: RevocationStore, resume: Callable[[int], None], *,
                 timeout: float = FETCH_TIMEOUT,
                 wall_clock: Callable[[], float] = time.time,
                 client: Callable[[], httpx.AsyncClient] | None = None) -> None:
        self.store = store
        self.resume = resume
        self.timeout = timeout
        self.wall_clock = wall_clock
        # direct (no proxy from the environment), no redirects: the URL is the CA's
        self._client_factory = client or (
            lambda: httpx.AsyncClient(follow_redirects=False, trust_env=False))
        self._client: httpx.AsyncClient | None = None
        self._crl_fetches: dict[str, asyncio.Task[None]] = {}  # by URL: shared while running
        self._failed: dict[str, float] = {}  # URL -> when it last failed (monotonic)
        self._tasks: set[asyncio.Task[None]] = set()
        self.counters = {"fetches": 0, "failures": 0}

    def on_fetch(self, event: RevocationFetch) -> None:
        task = asyncio.get_running_loop().create_task(self._serve(event),
                                                      name=f"revocation-{event.ike_sa}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        for task in list(self._tasks) + list(self._crl_fetches.values()):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def _serve(self, event: RevocationFetch) -> None:
        jobs: list[Awaitable[None]] = [self._crl(q) for q in event.crls]
        jobs += [self._ocsp(q) for q in event.ocsp]
        try:
            async with asyncio.timeout(self.timeout):
                await asyncio.gather(*jobs, return_exceptions=True)
        except TimeoutError:
            log.warning("revocation fetch for %s: no answer within %.0f s (%s)",
                        event.connection, self.timeout,
                        ", ".join(str(q) for q in (*event.crls, *event.ocsp)))
        finally:
            self.resume(event.ike_sa)

    def _recently_failed(self, url: str) -> bool:
        failed = self._failed.get(url)
        return failed is not None and time.monotonic() - failed < FAILED_RETRY

    async def _crl(self, query: CrlQuery) -> None:
        running = self._crl_fetches.get(query.url)
        if running is None:
            if self._recently_failed(query.url):
                return
            running = asyncio.get_running_loop().create_task(self._fetch_crl(query))
            self._crl_fetches[query.url] = running
            running.add_done_callback(lambda _: self._crl_fetches.pop(query.url, None))
        await asyncio.shield(running)  # a timed-out waiter leaves the fetch to the others

    async def _fetch_crl(self, query: CrlQuery) -> None:
        try:
            data = await self._request("GET", query.url)
            self.store.add_crl(parse_crl(data), query.issuer, source=query.url)
            log.info("CRL fetched from %s", query.url)
        except (httpx.HTTPError, ValueError) as exc:
            self._note_failure(query.url, "CRL", exc)

    async def _ocsp(self, query: OcspQuery) -> None:
        if self._recently_failed(query.url):
            return
        nonce = os.urandom(NONCE_SIZE)
        request = (ocsp.OCSPRequestBuilder()
                   .add_certificate(query.cert, query.issuer, hashes.SHA1())
                   .add_extension(x509.OCSPNonce(nonce), critical=False).build())
        body = request.public_bytes(serialization.Encoding.DER)
        try:
            data = await self._request("POST", query.url, body)
            now = datetime.fromtimestamp(self.wall_clock(), UTC)
            status = self.store.add_ocsp_response(data, query.cert, query.issuer, nonce, now)
            log.info("OCSP %s: %s", query, status)
        except (httpx.HTTPError, ValueError) as exc:
            self._note_failure(query.url, "OCSP", exc)

    async def _request(self, method: str, url: str, body: bytes | None = None) -> bytes:
        if self._client is None:
            self._client = self._client_factory()
        self.counters["fetches"] += 1
        # one request a connection: simple responders (`openssl ocsp`) serve one at a time
        headers = {"Connection": "close"}
        if body is not None:
            headers["Content-Type"] = "application/ocsp-request"
        async with self._client.stream(method, url, content=body, headers=headers,
                                       timeout=self.timeout) as response:
            response.raise_for_status()
            chunks, size = [], 0
            async for chunk in response.aiter_bytes():
                size += len(chunk)
                if size > MAX_RESPONSE:
                    raise ValueError(f"answer larger than {MAX_RESPONSE} bytes")
                chunks.append(chunk)
        return b"".join(chunks)

    def _note_failure(self, url: str, what: str, exc: Exception) -> None:
        self.counters["failures"] += 1
        self._failed[url] = time.monotonic()
        log.warning("%s from %s failed: %s", what, url, exc or type(exc).__name__)
