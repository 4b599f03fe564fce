"""EAP inside IKE_AUTH (RFC 7296 2.16, RFC 3748): packets, and what an EAP method offers
the IKE core.

The core runs the EAP conversation; a method does the authentication:
- on the gateway an `EapServer` (one per IKE SA, made by `RemoteAuth.eap_server`) takes the
  peer's EAP responses and answers with an `EapStep`: the next request, or the outcome
  (Success with the MSK, Failure with the reason). It may answer later: `None` means
  "pending" (a RADIUS pass-through sends the packet to its server), and the daemon hands
  the step to the IKE SA when it arrives (`IkeManager.eap_answer`). The peer's
  retransmissions meanwhile go unanswered, as RFC 7296 2.3 allows.
- on the client an `EapClient` answers the gateway's requests.
The core itself answers and asks the EAP Identity (type 1), as strongSwan's eap-identity.
Packets may carry credentials: they are never logged, and neither is the MSK.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum, IntEnum
from typing import TYPE_CHECKING, Protocol

from ..errors import ProtocolError

if TYPE_CHECKING:
    from cryptography import x509

_HEAD = struct.Struct("!BBH")


class EapCode(IntEnum):
    REQUEST = 1
    RESPONSE = 2
    SUCCESS = 3
    FAILURE = 4


class EapType(IntEnum):
    IDENTITY = 1
    NAK = 3
    TLS = 13
    MSCHAPV2 = 26


@dataclass(frozen=True, slots=True)
class EapPacket:
    """One EAP packet (RFC 3748 4): Request/Response carry a type and its data."""

    code: int
    identifier: int
    type: int | None = None
    data: bytes = field(default=b"", repr=False)

    @classmethod
    def parse(cls, raw: bytes) -> EapPacket:
        if len(raw) < _HEAD.size:
            raise ProtocolError("EAP packet shorter than its header")
        code, identifier, length = _HEAD.unpack_from(raw)
        if length != len(raw):
            raise ProtocolError(f"EAP length {length} in {len(raw)} octets")
        if code in (EapCode.REQUEST, EapCode.RESPONSE):
            if length < 5:
                raise ProtocolError("EAP request/response without a type")
            return cls(code, identifier, raw[4], raw[5:])
        if code in (EapCode.SUCCESS, EapCode.FAILURE):
            return cls(code, identifier)
        raise ProtocolError(f"unknown EAP code {code}")

    def encode(self) -> bytes:
        body = b"" if self.type is None else bytes((self.type,)) + self.data
        return _HEAD.pack(self.code, self.identifier, _HEAD.size + len(body)) + body


class Outcome(Enum):
    CONTINUE = "continue"  # `packet` is the next request
    SUCCESS = "success"  # `packet` is EAP-Success (or the method's last request)
    FAILURE = "failure"  # `packet` is EAP-Failure; `reason` says why


@dataclass(frozen=True, slots=True)
class EapStep:
    """An EAP server's answer to one response of the peer."""

    outcome: Outcome
    packet: bytes = field(default=b"", repr=False)
    msk: bytes = field(default=b"", repr=False)
    identity: str = ""  # the identity the method authenticated
    reason: str = ""  # why it failed: for events and logs, never a secret
    # the peer's certificate chain (EAP-TLS), end entity first: the IKE core verifies it
    # against the connection's CAs before it sends this step
    peer_chain: tuple[x509.Certificate, ...] = ()

    @classmethod
    def failure(cls, identifier: int, reason: str, identity: str = "") -> EapStep:
        packet = EapPacket(EapCode.FAILURE, identifier).encode()
        return cls(Outcome.FAILURE, packet, identity=identity, reason=reason)


class EapServer(Protocol):
    """The gateway's side of one EAP method for one IKE SA."""

    method_name: str

    def begin(self, identity: str, identifier: int) -> EapStep | None:
        """The first request of the method for this EAP identity (None: pending)."""

    def process(self, packet: EapPacket) -> EapStep | None:
        """The peer's response; the next step (None: pending)."""


# Makes the server of one IKE SA; gets the IKE SA's id (an asynchronous backend hands
# its answers back with it).
EapServerFactory = Callable[[int], EapServer]


class EapClient(Protocol):
    """The road warrior's side of one EAP method for one IKE SA."""

    identity: str

    @property
    def method_type(self) -> int:
        """The EAP type of the method (we Nak others with it)."""

    def process(self, packet: EapPacket) -> bytes:
        """Answer a request of our method; raise EapError when it fails."""

    @property
    def msk(self) -> bytes:
        """The MSK once the method completed (b"" before)."""

    @property
    def peer_chain(self) -> tuple[x509.Certificate, ...]:
        """The gateway's certificate chain the method saw (EAP-TLS), for the IKE core to
        verify; () for methods without one."""


class EapError(Exception):
    """An EAP method failed (wrong credentials, malformed packet); the text is safe to log."""
