"""The key state of an IKE SA (RFC 7296 2.14, 2.18): PRF, SK_* keys, the SK ciphers.

Made once by the IKE_SA_INIT exchange (or an IKE SA rekey, or a restore) and then only
read: CHILD_SA key material comes from SK_d, AUTH from SK_p, the SK payload from the
ciphers. Nonces are per exchange: the task that sends or answers one holds it.
"""

from __future__ import annotations

import os

from .algorithms import encr_key_size, integ_key_size
from .crypto import (
    IkeKeys,
    Prf,
    derive_additional_ike_keys,
    derive_child_keymat,
    derive_ike_keys,
    derive_rekeyed_ike_keys,
    iv_position,
    new_sk_cipher,
)
from .proposals import Suite
from .sk import SkCipher

NONCE_SIZE = 32


def new_nonce() -> bytes:
    return os.urandom(NONCE_SIZE)


def new_spi() -> bytes:
    """A random IKE SPI (8 bytes)."""
    return os.urandom(8)


class KeyState:
    """PRF, SK_* keys and the inbound/outbound SK ciphers of one IKE SA."""

    __slots__ = ("cipher_in", "cipher_out", "keys", "prf")

    def __init__(self, suite: Suite, keys: IkeKeys, initiator: bool, first_iv: int = 0
                 ) -> None:
        assert suite.prf is not None and suite.encr is not None
        self.prf = Prf(suite.prf)
        self.keys = keys
        enc_i = new_sk_cipher(suite.encr, suite.encr_bits, suite.integ, keys.sk_ei, keys.sk_ai,
                              first_iv if initiator else 0)
        enc_r = new_sk_cipher(suite.encr, suite.encr_bits, suite.integ, keys.sk_er, keys.sk_ar,
                              0 if initiator else first_iv)
        self.cipher_out: SkCipher = enc_i if initiator else enc_r
        self.cipher_in: SkCipher = enc_r if initiator else enc_i

    @classmethod
    def derive(cls, suite: Suite, shared: bytes, nonce_i: bytes, nonce_r: bytes,
               spi_i: bytes, spi_r: bytes, initiator: bool) -> KeyState:
        """The keys of a new IKE SA from its IKE_SA_INIT exchange."""
        assert suite.prf is not None and suite.encr is not None
        keys = derive_ike_keys(Prf(suite.prf), shared, nonce_i, nonce_r, spi_i, spi_r,
                               encr_key_size(suite.encr, suite.encr_bits),
                               integ_key_size(suite.integ))
        return cls(suite, keys, initiator)

    def rekeyed(self, suite: Suite, shared: bytes, nonce_i: bytes, nonce_r: bytes,
                spi_i: bytes, spi_r: bytes, initiator: bool, additional: bytes = b""
                ) -> KeyState:
        """The keys of the IKE SA that replaces this one (RFC 7296 2.18; `additional`: the
        secrets of RFC 9370 additional key exchanges, in order)."""
        assert suite.prf is not None and suite.encr is not None
        keys = derive_rekeyed_ike_keys(
            self.prf, self.keys.sk_d, Prf(suite.prf), shared, nonce_i, nonce_r, spi_i, spi_r,
            encr_key_size(suite.encr, suite.encr_bits), integ_key_size(suite.integ),
            additional)
        return KeyState(suite, keys, initiator)

    def after_additional_exchange(self, suite: Suite, shared: bytes, nonce_i: bytes,
                                  nonce_r: bytes, spi_i: bytes, spi_r: bytes,
                                  initiator: bool) -> KeyState:
        """The keys once an IKE_INTERMEDIATE additional key exchange is done (RFC 9370)."""
        assert suite.encr is not None
        keys = derive_additional_ike_keys(
            self.prf, self.keys.sk_d, shared, nonce_i, nonce_r, spi_i, spi_r,
            encr_key_size(suite.encr, suite.encr_bits), integ_key_size(suite.integ))
        return KeyState(suite, keys, initiator)

    def child_keymat(self, nonce_i: bytes, nonce_r: bytes, size: int,
                     shared: bytes | None, additional: bytes = b"") -> bytes:
        """KEYMAT for a CHILD_SA (RFC 7296 2.17, RFC 9370 2.2.4)."""
        return derive_child_keymat(self.prf, self.keys.sk_d, nonce_i, nonce_r, size, shared,
                                   additional)

    def sk_p(self, ours: bool, initiator: bool) -> bytes:
        """SK_pi or SK_pr: ours (signing our AUTH) or the peer's (checking theirs)."""
        return self.keys.sk_pi if ours == initiator else self.keys.sk_pr

    @property
    def iv_out(self) -> int:
        """The next IV our outbound AEAD cipher uses (0 for CBC): saved with the SA."""
        return iv_position(self.cipher_out)
