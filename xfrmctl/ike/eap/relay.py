"""EAP pass-through (RFC 3579's "EAP over RADIUS" from the IKE side): the gateway's EAP
server relays the client's EAP packets to a backend (the daemon's RADIUS client) and
answers when the backend does. Sans-I/O: `submit` only hands the packet over; the
daemon gives the backend's EapStep to the IKE SA later (`ike_eap.eap_answer`).

The IKE core asked the EAP Identity itself; the backend gets it as the first packet (an
EAP-Response/Identity, as a RADIUS server expects it) and chooses the method.
"""

from __future__ import annotations

from typing import Protocol

from . import EapCode, EapPacket, EapType


class EapBackend(Protocol):
    """Where relayed EAP packets go (the daemon's RADIUS client)."""

    def submit(self, sa_id: int, identity: str, packet: bytes) -> None:
        """Send the client's EAP packet on; the answer comes back for IKE SA `sa_id`."""


class EapRelay:
    """The gateway's EAP server for one IKE SA when a backend authenticates."""

    method_name = "EAP-RADIUS"
    __slots__ = ("_backend", "_identity", "_sa_id")

    def __init__(self, sa_id: int, backend: EapBackend) -> None:
        self._sa_id, self._backend, self._identity = sa_id, backend, ""

    def begin(self, identity: str, identifier: int) -> None:
        self._identity = identity
        response = EapPacket(EapCode.RESPONSE, (identifier - 1) % 256, EapType.IDENTITY,
                             identity.encode())
        self._backend.submit(self._sa_id, identity, response.encode())

    def process(self, packet: EapPacket) -> None:
        self._backend.submit(self._sa_id, self._identity, packet.encode())
