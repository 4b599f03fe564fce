"""EAP-MSCHAPv2 (draft-kamath-pppext-eap-mschapv2, RFC 2759; MSK per RFC 3079), as
strongSwan frames it: after the EAP type, OpCode, MS-CHAPv2-ID and MS-Length (the EAP
length minus 5); the peer's Success/Failure responses carry the OpCode only.

Gateway: Challenge -> the peer's Response is checked against the user's NT hash (the
only form a password is stored in) -> Success request with the authenticator response
("S=...") -> the peer's Success response -> EAP-Success and the MSK. A wrong password
or an unknown user ends in EAP-Failure at once (strongSwan's server with no retries).
Client: the mirror image; the gateway's authenticator response is verified before we
answer its Success.

MSK (64 octets) = MasterReceiveKey | MasterSendKey | 32 zero octets, both keys from the
server's point of view (RFC 3079 3.3), the same on both ends, as strongSwan computes it.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable
from enum import Enum, IntEnum

from cryptography import x509
from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
from cryptography.hazmat.primitives import constant_time, hashes
from cryptography.hazmat.primitives.ciphers import Cipher, modes

from . import EapCode, EapError, EapPacket, EapStep, EapType, Outcome
from .md4 import md4

CHALLENGE_LEN = 16
RESPONSE_LEN = 49
SERVER_NAME = b"xfrmctl"
_MS_HEAD = struct.Struct("!BBH")  # OpCode, MS-CHAPv2-ID, MS-Length

_MAGIC1 = b"Magic server to client signing constant"
_MAGIC2 = b"Pad to make it do more than one iteration"
_MPPE_MASTER = b"This is the MPPE Master Key"
_MPPE_CLIENT_SEND = (b"On the client side, this is the send key; "
                     b"on the server side, it is the receive key.")
_MPPE_CLIENT_RECEIVE = (b"On the client side, this is the receive key; "
                        b"on the server side, it is the send key.")
_SHS_PAD1 = b"\0" * 40
_SHS_PAD2 = b"\xf2" * 40


class OpCode(IntEnum):
    CHALLENGE = 1
    RESPONSE = 2
    SUCCESS = 3
    FAILURE = 4


# --- RFC 2759 section 8 and RFC 3079 section 3 ------------------------------------------


def _sha1(*parts: bytes) -> bytes:
    digest = hashes.Hash(hashes.SHA1())
    for part in parts:
        digest.update(part)
    return digest.finalize()


def nt_hash(password: str) -> bytes:
    """NtPasswordHash: MD4 of the password in UTF-16LE."""
    return md4(password.encode("utf-16-le"))


def user_part(name: bytes) -> bytes:
    """The user name without a "DOMAIN\\" prefix (RFC 2759 4)."""
    return name.rpartition(b"\\")[2]


def challenge_hash(peer_challenge: bytes, auth_challenge: bytes, username: bytes) -> bytes:
    return _sha1(peer_challenge, auth_challenge, user_part(username))[:8]


def _des_key(seven: bytes) -> bytes:
    """Spread 56 key bits over 8 octets (the low bit of each, DES's parity, set odd)."""
    bits = int.from_bytes(seven, "big")
    key = bytearray(((bits >> (49 - 7 * i)) & 0x7F) << 1 for i in range(8))
    for i, octet in enumerate(key):
        key[i] = octet | (bin(octet).count("1") + 1) % 2
    return bytes(key)


def _des(key7: bytes, block: bytes) -> bytes:
    encryptor = Cipher(TripleDES(_des_key(key7) * 3), modes.ECB()).encryptor()
    return encryptor.update(block) + encryptor.finalize()


def challenge_response(challenge: bytes, password_hash: bytes) -> bytes:
    """The 24-octet response: the 8-octet challenge under three DES keys cut from the hash."""
    z = password_hash + b"\0" * 5
    return b"".join(_des(z[i:i + 7], challenge) for i in (0, 7, 14))


def nt_response(auth_challenge: bytes, peer_challenge: bytes, username: bytes,
                password_hash: bytes) -> bytes:
    return challenge_response(challenge_hash(peer_challenge, auth_challenge, username),
                              password_hash)


def authenticator_response(password_hash: bytes, response: bytes, peer_challenge: bytes,
                           auth_challenge: bytes, username: bytes) -> bytes:
    """The 20 octets of "S=<hex>" (GenerateAuthenticatorResponse)."""
    digest = _sha1(md4(password_hash), response, _MAGIC1)
    return _sha1(digest, challenge_hash(peer_challenge, auth_challenge, username), _MAGIC2)


def msk(password_hash: bytes, response: bytes) -> bytes:
    master = _sha1(md4(password_hash), response, _MPPE_MASTER)[:16]
    receive = _sha1(master, _SHS_PAD1, _MPPE_CLIENT_SEND, _SHS_PAD2)[:16]
    send = _sha1(master, _SHS_PAD1, _MPPE_CLIENT_RECEIVE, _SHS_PAD2)[:16]
    return receive + send + b"\0" * 32


# --- framing ---------------------------------------------------------------------------


def _packet(code: EapCode, identifier: int, opcode: OpCode, ms_id: int, body: bytes) -> bytes:
    eap_length = 4 + 1 + _MS_HEAD.size + len(body)
    data = _MS_HEAD.pack(opcode, ms_id, eap_length - 5) + body
    return EapPacket(code, identifier, EapType.MSCHAPV2, data).encode()


def _short(identifier: int, opcode: OpCode) -> bytes:
    """The peer's Success/Failure response: the OpCode alone."""
    return EapPacket(EapCode.RESPONSE, identifier, EapType.MSCHAPV2, bytes((opcode,))).encode()


def _opcode(packet: EapPacket) -> int:
    if packet.type != EapType.MSCHAPV2 or not packet.data:
        raise EapError(f"expected EAP-MSCHAPv2, got EAP type {packet.type}")
    return packet.data[0]


def _tokens(message: bytes) -> dict[str, str]:
    text = message.rstrip(b"\0").decode("ascii", errors="replace")
    return {t[:1]: t[2:] for t in text.split(" ") if len(t) >= 2 and t[1] == "="}


# --- the gateway -----------------------------------------------------------------------


class _Server(Enum):
    CHALLENGE_SENT = 1
    SUCCESS_SENT = 2
    DONE = 3


NtHashLookup = Callable[[str], bytes | None]


class MschapServer:
    """The gateway's EAP-MSCHAPv2 for one IKE SA; `lookup` gives a user's NT hash."""

    method_name = "EAP-MSCHAPv2"
    __slots__ = ("_challenge", "_identifier", "_identity", "_lookup", "_msk", "_state")

    def __init__(self, lookup: NtHashLookup) -> None:
        self._lookup = lookup
        self._challenge = b""
        self._identifier = 0
        self._identity = ""
        self._msk = b""
        self._state = _Server.CHALLENGE_SENT

    def begin(self, identity: str, identifier: int) -> EapStep:
        self._identity, self._identifier = identity, identifier
        self._challenge = os.urandom(CHALLENGE_LEN)
        body = bytes((CHALLENGE_LEN,)) + self._challenge + SERVER_NAME
        packet = _packet(EapCode.REQUEST, identifier, OpCode.CHALLENGE, identifier, body)
        return EapStep(Outcome.CONTINUE, packet)

    def process(self, packet: EapPacket) -> EapStep:
        if packet.code != EapCode.RESPONSE or packet.identifier != self._identifier:
            return self._fail(packet.identifier, "unexpected EAP packet")
        try:
            opcode = _opcode(packet)
        except EapError as exc:
            return self._fail(packet.identifier, str(exc))
        if opcode == OpCode.RESPONSE and self._state is _Server.CHALLENGE_SENT:
            return self._check_response(packet)
        if opcode == OpCode.SUCCESS and self._state is _Server.SUCCESS_SENT:
            self._state = _Server.DONE
            success = EapPacket(EapCode.SUCCESS, packet.identifier).encode()
            return EapStep(Outcome.SUCCESS, success, msk=self._msk, identity=self._identity)
        if opcode == OpCode.FAILURE:
            return self._fail(packet.identifier, "the client gave up (MSCHAPv2 Failure)")
        return self._fail(packet.identifier, f"unexpected MSCHAPv2 OpCode {opcode}")

    def _check_response(self, packet: EapPacket) -> EapStep:
        data = packet.data
        if len(data) < _MS_HEAD.size + 1 + RESPONSE_LEN or data[_MS_HEAD.size] != RESPONSE_LEN:
            return self._fail(packet.identifier, "malformed MSCHAPv2 Response")
        value = data[_MS_HEAD.size + 1:_MS_HEAD.size + 1 + RESPONSE_LEN]
        name = data[_MS_HEAD.size + 1 + RESPONSE_LEN:]
        peer_challenge, response = value[:16], value[24:48]
        user = name.decode("utf-8", errors="replace")
        if user != self._identity:
            return self._fail(packet.identifier, f"MSCHAPv2 name {user!r} is not the EAP "
                              f"identity {self._identity!r}")
        password_hash = self._lookup(user)
        if password_hash is None:
            return self._fail(packet.identifier, f"unknown user {user!r}")
        expected = nt_response(self._challenge, peer_challenge, name, password_hash)
        if not constant_time.bytes_eq(expected, response):
            return self._fail(packet.identifier, f"wrong password for user {user!r}")
        auth = authenticator_response(password_hash, response, peer_challenge,
                                      self._challenge, name)
        self._msk = msk(password_hash, response)
        self._state = _Server.SUCCESS_SENT
        self._identifier = (packet.identifier + 1) % 256
        message = b"S=" + auth.hex().upper().encode() + b" M=Welcome to xfrmctl"
        return EapStep(Outcome.CONTINUE, _packet(EapCode.REQUEST, self._identifier,
                                                 OpCode.SUCCESS, packet.data[1], message))

    def _fail(self, identifier: int, reason: str) -> EapStep:
        self._state = _Server.DONE
        return EapStep.failure(identifier, f"EAP-MSCHAPv2: {reason}", self._identity)


# --- the road warrior ------------------------------------------------------------------


class MschapClient:
    """Our EAP-MSCHAPv2 as a client, with the password's NT hash."""

    method_type = EapType.MSCHAPV2
    __slots__ = ("_auth", "_hash", "_msk", "_pending_msk", "identity")

    def __init__(self, identity: str, password_hash: bytes) -> None:
        self.identity = identity
        self._hash = password_hash
        self._auth = b""
        self._msk = b""
        self._pending_msk = b""

    @property
    def msk(self) -> bytes:
        return self._msk

    @property
    def peer_chain(self) -> tuple[x509.Certificate, ...]:
        return ()  # no certificates in MSCHAPv2

    def process(self, packet: EapPacket) -> bytes:
        opcode = _opcode(packet)
        if opcode == OpCode.CHALLENGE:
            return self._answer_challenge(packet)
        if opcode == OpCode.SUCCESS and self._auth:
            tokens = _tokens(packet.data[_MS_HEAD.size:])
            try:
                received = bytes.fromhex(tokens.get("S", ""))
            except ValueError:
                received = b""
            if not constant_time.bytes_eq(received.ljust(20, b"\0")[:20], self._auth) \
                    or len(received) != 20:
                raise EapError("EAP-MSCHAPv2: the gateway's authenticator response is wrong")
            self._msk = self._pending_msk
            return _short(packet.identifier, OpCode.SUCCESS)
        if opcode == OpCode.FAILURE:
            tokens = _tokens(packet.data[_MS_HEAD.size:])
            raise EapError(f"EAP-MSCHAPv2: the gateway refused the login "
                           f"(E={tokens.get('E', '?')})")
        raise EapError(f"EAP-MSCHAPv2: unexpected OpCode {opcode}")

    def _answer_challenge(self, packet: EapPacket) -> bytes:
        data = packet.data
        if len(data) < _MS_HEAD.size + 1 + CHALLENGE_LEN or data[_MS_HEAD.size] != CHALLENGE_LEN:
            raise EapError("EAP-MSCHAPv2: malformed Challenge")
        challenge = data[_MS_HEAD.size + 1:_MS_HEAD.size + 1 + CHALLENGE_LEN]
        name = self.identity.encode()
        peer_challenge = os.urandom(CHALLENGE_LEN)
        response = nt_response(challenge, peer_challenge, name, self._hash)
        self._auth = authenticator_response(self._hash, response, peer_challenge, challenge,
                                            name)
        self._pending_msk = msk(self._hash, response)
        value = peer_challenge + b"\0" * 8 + response + b"\0"
        return _packet(EapCode.RESPONSE, packet.identifier, OpCode.RESPONSE, data[1],
                       bytes((RESPONSE_LEN,)) + value + name)
