"""Key exchange methods for IKEv2 KE payloads (RFC 7296 3.4).

Encodings: X25519/X448 as RFC 8031 (raw u-coordinate), ECP groups as RFC 5903
(x || y, each padded to the field size, no point-format octet; the shared secret
is the x coordinate), MODP groups as RFC 7296 (public value and shared secret
left-padded with zeros to the prime's length).

ML-KEM (FIPS 203, draft-ietf-ipsecme-ikev2-mlkem) is a key encapsulation method: the
initiator sends its encapsulation key, the responder answers with a ciphertext
(`respond`), and the initiator decapsulates it. Both values have fixed lengths per
parameter set.

Peer values are checked as RFC 6989 asks; anything wrong is a `ProtocolError`
(INVALID_SYNTAX): wrong length, point not on the curve, X25519/X448 results of
all zeros (low-order points), MODP values outside 1 < y < p-1, an ML-KEM
encapsulation key that fails the FIPS 203 modulus check or a ciphertext of the
wrong length.
"""

import functools
import warnings
from collections.abc import Callable
from typing import Final, Protocol

from cryptography.hazmat.primitives.asymmetric import ec, mlkem, x448, x25519
from cryptography.utils import CryptographyDeprecationWarning
from kyber_py.ml_kem import ML_KEM_512

from .algorithms import DH
from .constants import DhId, NotifyType
from .errors import LocalError, ProtocolError

# cryptography deprecates FFDH and warns on each attribute access of its module;
# IKE peers still need the MODP groups, so the names are bound once, quietly.
with warnings.catch_warnings():
    warnings.simplefilter("ignore", CryptographyDeprecationWarning)
    from cryptography.hazmat.primitives.asymmetric.dh import (
        DHParameterNumbers,
        DHParameters,
        DHPrivateNumbers,
        DHPublicNumbers,
    )

# MODP primes of RFC 2409 (group 2) and RFC 3526 (groups 5, 14-16), generator 2.
# Each is 2^s - 2^(s-64) - 1 + 2^64 * (floor(2^(s-130) * pi) + offset); the unit
# tests recompute them from that formula.
_MODP_1024 = (
    "FFFFFFFFFFFFFFFFC90FDAA22168C234C4C6628B80DC1CD129024E088A67CC74"
    "020BBEA63B139B22514A08798E3404DDEF9519B3CD3A431B302B0A6DF25F1437"
    "4FE1356D6D51C245E485B576625E7EC6F44C42E9A637ED6B0BFF5CB6F406B7ED"
    "EE386BFB5A899FA5AE9F24117C4B1FE649286651ECE65381FFFFFFFFFFFFFFFF"
)

_MODP_1536 = (
    "FFFFFFFFFFFFFFFFC90FDAA22168C234C4C6628B80DC1CD129024E088A67CC74"
    "020BBEA63B139B22514A08798E3404DDEF9519B3CD3A431B302B0A6DF25F1437"
    "4FE1356D6D51C245E485B576625E7EC6F44C42E9A637ED6B0BFF5CB6F406B7ED"
    "EE386BFB5A899FA5AE9F24117C4B1FE649286651ECE45B3DC2007CB8A163BF05"
    "98DA48361C55D39A69163FA8FD24CF5F83655D23DCA3AD961C62F356208552BB"
    "9ED529077096966D670C354E4ABC9804F1746C08CA237327FFFFFFFFFFFFFFFF"
)

_MODP_2048 = (
    "FFFFFFFFFFFFFFFFC90FDAA22168C234C4C6628B80DC1CD129024E088A67CC74"
    "020BBEA63B139B22514A08798E3404DDEF9519B3CD3A431B302B0A6DF25F1437"
    "4FE1356D6D51C245E485B576625E7EC6F44C42E9A637ED6B0BFF5CB6F406B7ED"
    "EE386BFB5A899FA5AE9F24117C4B1FE649286651ECE45B3DC2007CB8A163BF05"
    "98DA48361C55D39A69163FA8FD24CF5F83655D23DCA3AD961C62F356208552BB"
    "9ED529077096966D670C354E4ABC9804F1746C08CA18217C32905E462E36CE3B"
    "E39E772C180E86039B2783A2EC07A28FB5C55DF06F4C52C9DE2BCBF695581718"
    "3995497CEA956AE515D2261898FA051015728E5A8AACAA68FFFFFFFFFFFFFFFF"
)

_MODP_3072 = (
    "FFFFFFFFFFFFFFFFC90FDAA22168C234C4C6628B80DC1CD129024E088A67CC74"
    "020BBEA63B139B22514A08798E3404DDEF9519B3CD3A431B302B0A6DF25F1437"
    "4FE1356D6D51C245E485B576625E7EC6F44C42E9A637ED6B0BFF5CB6F406B7ED"
    "EE386BFB5A899FA5AE9F24117C4B1FE649286651ECE45B3DC2007CB8A163BF05"
    "98DA48361C55D39A69163FA8FD24CF5F83655D23DCA3AD961C62F356208552BB"
    "9ED529077096966D670C354E4ABC9804F1746C08CA18217C32905E462E36CE3B"
    "E39E772C180E86039B2783A2EC07A28FB5C55DF06F4C52C9DE2BCBF695581718"
    "3995497CEA956AE515D2261898FA051015728E5A8AAAC42DAD33170D04507A33"
    "A85521ABDF1CBA64ECFB850458DBEF0A8AEA71575D060C7DB3970F85A6E1E4C7"
    "ABF5AE8CDB0933D71E8C94E04A25619DCEE3D2261AD2EE6BF12FFA06D98A0864"
    "D87602733EC86A64521F2B18177B200CBBE117577A615D6C770988C0BAD946E2"
    "08E24FA074E5AB3143DB5BFCE0FD108E4B82D120A93AD2CAFFFFFFFFFFFFFFFF"
)

_MODP_4096 = (
    "FFFFFFFFFFFFFFFFC90FDAA22168C234C4C6628B80DC1CD129024E088A67CC74"
    "020BBEA63B139B22514A08798E3404DDEF9519B3CD3A431B302B0A6DF25F1437"
    "4FE1356D6D51C245E485B576625E7EC6F44C42E9A637ED6B0BFF5CB6F406B7ED"
    "EE386BFB5A899FA5AE9F24117C4B1FE649286651ECE45B3DC2007CB8A163BF05"
    "98DA48361C55D39A69163FA8FD24CF5F83655D23DCA3AD961C62F356208552BB"
    "9ED529077096966D670C354E4ABC9804F1746C08CA18217C32905E462E36CE3B"
    "E39E772C180E86039B2783A2EC07A28FB5C55DF06F4C52C9DE2BCBF695581718"
    "3995497CEA956AE515D2261898FA051015728E5A8AAAC42DAD33170D04507A33"
    "A85521ABDF1CBA64ECFB850458DBEF0A8AEA71575D060C7DB3970F85A6E1E4C7"
    "ABF5AE8CDB0933D71E8C94E04A25619DCEE3D2261AD2EE6BF12FFA06D98A0864"
    "D87602733EC86A64521F2B18177B200CBBE117577A615D6C770988C0BAD946E2"
    "08E24FA074E5AB3143DB5BFCE0FD108E4B82D120A92108011A723C12A787E6D7"
    "88719A10BDBA5B2699C327186AF4E23C1A946834B6150BDA2583E9CA2AD44CE8"
    "DBBBC2DB04DE8EF92E8EFC141FBECAA6287C59474E6BC05D99B2964FA090C3A2"
    "233BA186515BE7ED1F612970CEE2D7AFB81BDD762170481CD0069127D5B05AA9"
    "93B4EA988D8FDDC186FFB7DC90A6C08F4DF435C934063199FFFFFFFFFFFFFFFF"
)

_MODP_HEX: Final = {
    DhId.MODP_1024: _MODP_1024,
    DhId.MODP_1536: _MODP_1536,
    DhId.MODP_2048: _MODP_2048,
    DhId.MODP_3072: _MODP_3072,
    DhId.MODP_4096: _MODP_4096,
}
MODP_PRIMES: Final[dict[int, int]] = {g: int(h, 16) for g, h in _MODP_HEX.items()}
MODP_GENERATOR: Final = 2




@functools.cache
def _modp_parameters(group: int) -> DHParameters:
    """Built once per group, on first use: keygen speed matters, and building all five
    at import costs every process (the CLI too) ~0.1 s, ~10 s under the lab's TCG."""
    return DHParameterNumbers(MODP_PRIMES[group], MODP_GENERATOR).parameters()


_CURVES: Final[dict[int, ec.EllipticCurve]] = {
    DhId.ECP_256: ec.SECP256R1(),
    DhId.ECP_384: ec.SECP384R1(),
    DhId.ECP_521: ec.SECP521R1(),
}

class _Kem(Protocol):
    """One ML-KEM parameter set: key generation (from the FIPS 203 seed d || z when
    given) and encapsulation. ValueError for a bad encapsulation key or ciphertext."""

    def generate(self, seed: bytes | None) -> tuple[bytes, Callable[[bytes], bytes]]:
        """(the encapsulation key, decapsulate(ciphertext) -> shared secret)."""
        ...

    def encapsulate(self, public: bytes) -> tuple[bytes, bytes]:
        """(ciphertext, shared secret) for the encapsulation key `public`."""
        ...


class _CryptographyKem:
    """ML-KEM-768 and -1024 from cryptography (OpenSSL)."""

    def __init__(self, private_type: type[mlkem.MLKEM768PrivateKey | mlkem.MLKEM1024PrivateKey],
                 public_type: type[mlkem.MLKEM768PublicKey | mlkem.MLKEM1024PublicKey]) -> None:
        self._private_type, self._public_type = private_type, public_type

    def generate(self, seed: bytes | None) -> tuple[bytes, Callable[[bytes], bytes]]:
        private = self._private_type.generate() if seed is None \
            else self._private_type.from_seed_bytes(seed)
        return private.public_key().public_bytes_raw(), private.decapsulate

    def encapsulate(self, public: bytes) -> tuple[bytes, bytes]:
        secret, ciphertext = self._public_type.from_public_bytes(public).encapsulate()
        return ciphertext, secret


class _KyberPyKem:
    """ML-KEM-512, which cryptography does not offer: kyber-py's FIPS 203 implementation
    (pure Python, ~20 ms an operation; 512 is the least used parameter set)."""

    def generate(self, seed: bytes | None) -> tuple[bytes, Callable[[bytes], bytes]]:
        public, private = ML_KEM_512.keygen() if seed is None else ML_KEM_512.key_derive(seed)
        return public, functools.partial(ML_KEM_512.decaps, private)

    def encapsulate(self, public: bytes) -> tuple[bytes, bytes]:
        secret, ciphertext = ML_KEM_512.encaps(public)  # checks the modulus (FIPS 203 7.2)
        return ciphertext, secret


_MLKEM: Final[dict[int, _Kem]] = {
    DhId.ML_KEM_512: _KyberPyKem(),
    DhId.ML_KEM_768: _CryptographyKem(mlkem.MLKEM768PrivateKey, mlkem.MLKEM768PublicKey),
    DhId.ML_KEM_1024: _CryptographyKem(mlkem.MLKEM1024PrivateKey, mlkem.MLKEM1024PublicKey),
}

SUPPORTED_GROUPS: Final[frozenset[int]] = frozenset(
    {DhId.CURVE25519, DhId.CURVE448, *_CURVES, *MODP_PRIMES, *_MLKEM}
)
KEMS: Final[frozenset[int]] = frozenset(_MLKEM)


class KeyExchange(Protocol):
    """One side of one key exchange: our public value, and the secret with a peer's."""

    @property
    def group(self) -> int: ...

    @property
    def public_key(self) -> bytes: ...

    def shared_secret(self, peer: bytes) -> bytes: ...


def _bad_value(group: int, why: str) -> ProtocolError:
    return ProtocolError(
        f"invalid {DhId(group).name} key exchange data: {why}",
        notify=NotifyType.INVALID_SYNTAX,
    )


def _check_length(group: int, peer: bytes, from_responder: bool = False) -> None:
    expected = DH[DhId(group)].size(from_responder)
    if len(peer) != expected:
        raise _bad_value(group, f"{len(peer)} octets, {expected} expected")


class _Montgomery:
    """X25519 (RFC 7748, RFC 8031) and X448."""

    def __init__(self, group: int, private: bytes | None = None) -> None:
        self.group = group
        self._private: x25519.X25519PrivateKey | x448.X448PrivateKey
        if group == DhId.CURVE448:
            self._private = (
                x448.X448PrivateKey.generate()
                if private is None
                else x448.X448PrivateKey.from_private_bytes(private)
            )
        else:
            self._private = (
                x25519.X25519PrivateKey.generate()
                if private is None
                else x25519.X25519PrivateKey.from_private_bytes(private)
            )
        self.public_key = self._private.public_key().public_bytes_raw()

    def shared_secret(self, peer: bytes) -> bytes:
        _check_length(self.group, peer)
        try:
            if isinstance(self._private, x448.X448PrivateKey):
                secret = self._private.exchange(x448.X448PublicKey.from_public_bytes(peer))
            else:
                secret = self._private.exchange(x25519.X25519PublicKey.from_public_bytes(peer))
        except ValueError:  # OpenSSL refuses an all-zero result
            raise _bad_value(self.group, "low-order point") from None
        if not any(secret):
            raise _bad_value(self.group, "low-order point")
        return secret


class _Ecp:
    """NIST prime curves with the RFC 5903 encoding."""

    def __init__(self, group: int, private: bytes | None = None) -> None:
        self.group = group
        self._curve = _CURVES[group]
        self._private = (
            ec.generate_private_key(self._curve)
            if private is None
            else ec.derive_private_key(int.from_bytes(private, "big"), self._curve)
        )
        self._size = DH[DhId(group)].public_size // 2
        numbers = self._private.public_key().public_numbers()
        self.public_key = numbers.x.to_bytes(self._size, "big") + numbers.y.to_bytes(
            self._size, "big"
        )

    def shared_secret(self, peer: bytes) -> bytes:
        _check_length(self.group, peer)
        try:
            point = ec.EllipticCurvePublicKey.from_encoded_point(self._curve, b"\x04" + peer)
        except ValueError:
            raise _bad_value(self.group, "point not on the curve") from None
        return self._private.exchange(ec.ECDH(), point).rjust(self._size, b"\x00")


class _Modp:
    """Finite-field groups (RFC 2409, RFC 3526)."""

    def __init__(self, group: int, private: bytes | None = None) -> None:
        self.group = group
        parameters = _modp_parameters(group)
        self._p = MODP_PRIMES[group]
        self._size = DH[DhId(group)].public_size
        self._parameter_numbers = parameters.parameter_numbers()
        if private is None:
            self._private = parameters.generate_private_key()
        else:
            x = int.from_bytes(private, "big")
            y = pow(MODP_GENERATOR, x, self._p)
            public = DHPublicNumbers(y, self._parameter_numbers)
            self._private = DHPrivateNumbers(x, public).private_key()
        y = self._private.public_key().public_numbers().y
        self.public_key = y.to_bytes(self._size, "big")

    def shared_secret(self, peer: bytes) -> bytes:
        _check_length(self.group, peer)
        y = int.from_bytes(peer, "big")
        if not 1 < y < self._p - 1:
            raise _bad_value(self.group, "value not in 1 < y < p-1")
        try:
            public = DHPublicNumbers(y, self._parameter_numbers).public_key()
            secret = self._private.exchange(public)
        except ValueError:
            raise _bad_value(self.group, "value rejected by the group check") from None
        return secret.rjust(self._size, b"\x00")


class _MlKem:
    """The initiator's side of ML-KEM: the encapsulation key out, the ciphertext in."""

    def __init__(self, group: int, seed: bytes | None = None) -> None:
        self.group = group
        self.public_key, self._decapsulate = _MLKEM[group].generate(seed)

    def shared_secret(self, peer: bytes) -> bytes:
        _check_length(self.group, peer, from_responder=True)
        try:
            return self._decapsulate(peer)
        except ValueError:
            raise _bad_value(self.group, "ciphertext rejected") from None


def respond(group: int, peer: bytes) -> tuple[bytes, bytes]:
    """The responder's side of a key exchange with the initiator's KE data `peer`:
    (our KE data, the shared secret). For a KEM our KE data is the ciphertext."""
    if group not in _MLKEM:
        ours = new_key_exchange(group)
        return ours.public_key, ours.shared_secret(peer)
    _check_length(group, peer)
    try:
        return _MLKEM[group].encapsulate(peer)
    except ValueError:
        raise _bad_value(group, "encapsulation key fails the modulus check") from None


def new_key_exchange(group: int) -> KeyExchange:
    """A fresh key pair for `group` (a DhId value)."""
    return key_exchange_from_private(group, None)


def key_exchange_from_private(group: int, private: bytes | None) -> KeyExchange:
    """A key pair from a known private value (big-endian scalar or exponent; raw
    RFC 7748 bytes for X25519/X448). Meant for known-answer tests and replaying
    captured exchanges; `None` generates a fresh key."""
    if group not in SUPPORTED_GROUPS:
        raise LocalError(f"unsupported key exchange method {group}")
    if group in (DhId.CURVE25519, DhId.CURVE448):
        return _Montgomery(group, private)
    if group in _MLKEM:
        return _MlKem(group, private)  # `private`: the 64-octet FIPS 203 seed (d || z)
    if group in _CURVES:
        return _Ecp(group, private)
    return _Modp(group, private)
