"""IKEv2 key derivation (RFC 7296 2.13-2.18) and SK payload ciphers.

Every primitive comes from `cryptography`. Cipher objects are built once per
direction of an SA and reused; AEAD IVs come from a per-cipher 64-bit counter,
so one key never sees the same nonce twice (RFC 5282 3.1, RFC 7634 2).
"""

import os
from dataclasses import dataclass, field
from typing import Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
from cryptography.hazmat.primitives import constant_time, hmac
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESCCM, AESGCM, ChaCha20Poly1305

from .algorithms import encr_info, encr_key_bits, integ_info, prf_info
from .constants import EncrId
from .errors import IntegrityError, LocalError
from .sk import SkCipher

_PRF_PLUS_MAX_BLOCKS: Final = 255


class Prf:
    """A negotiated PRF: prf(key, data) and prf+ (RFC 7296 2.13)."""

    __slots__ = ("_hash", "key_size", "output_size", "prf_id")

    def __init__(self, prf_id: int) -> None:
        info = prf_info(prf_id)
        self.prf_id = prf_id
        self._hash = info.hash()
        self.output_size = info.output_size
        self.key_size = info.key_size

    def __call__(self, key: bytes, data: bytes) -> bytes:
        mac = hmac.HMAC(key, self._hash)
        mac.update(data)
        return mac.finalize()

    def plus(self, key: bytes, seed: bytes, length: int) -> bytes:
        """prf+(K, S) = T1 | T2 | ... cut to `length`; Tn = prf(K, Tn-1 | S | n)."""
        blocks = -(-length // self.output_size)
        if blocks > _PRF_PLUS_MAX_BLOCKS:
            raise LocalError(f"prf+ cannot produce {length} octets (max 255 blocks)")
        out: list[bytes] = []
        previous = b""
        for counter in range(1, blocks + 1):
            previous = self(key, previous + seed + bytes((counter,)))
            out.append(previous)
        return b"".join(out)[:length]


@dataclass(frozen=True, slots=True)
class IkeKeys:
    skeyseed: bytes = field(repr=False)
    sk_d: bytes = field(repr=False)
    sk_ai: bytes = field(repr=False)
    sk_ar: bytes = field(repr=False)
    sk_ei: bytes = field(repr=False)
    sk_er: bytes = field(repr=False)
    sk_pi: bytes = field(repr=False)
    sk_pr: bytes = field(repr=False)


@dataclass(frozen=True, slots=True)
class ChildKeys:
    """CHILD_SA keys; `_i` protect initiator->responder traffic, `_r` the reverse."""

    encr_i: bytes = field(repr=False)
    integ_i: bytes = field(repr=False)
    encr_r: bytes = field(repr=False)
    integ_r: bytes = field(repr=False)


def _split(data: bytes, sizes: tuple[int, ...]) -> list[bytes]:
    parts, pos = [], 0
    for size in sizes:
        parts.append(data[pos : pos + size])
        pos += size
    return parts


def _expand_ike_keys(
    prf: Prf, skeyseed: bytes, seed: bytes, encr_key_size: int, integ_key_size: int
) -> IkeKeys:
    sizes = (
        prf.key_size,
        integ_key_size,
        integ_key_size,
        encr_key_size,
        encr_key_size,
        prf.key_size,
        prf.key_size,
    )
    d, ai, ar, ei, er, pi, pr = _split(prf.plus(skeyseed, seed, sum(sizes)), sizes)
    return IkeKeys(skeyseed, d, ai, ar, ei, er, pi, pr)


def derive_ike_keys(
    prf: Prf,
    shared_secret: bytes,
    nonce_i: bytes,
    nonce_r: bytes,
    spi_i: bytes,
    spi_r: bytes,
    encr_key_size: int,
    integ_key_size: int,
) -> IkeKeys:
    """SKEYSEED = prf(Ni | Nr, g^ir); keys = prf+(SKEYSEED, Ni | Nr | SPIi | SPIr)."""
    skeyseed = prf(nonce_i + nonce_r, shared_secret)
    seed = nonce_i + nonce_r + spi_i + spi_r
    return _expand_ike_keys(prf, skeyseed, seed, encr_key_size, integ_key_size)


def derive_rekeyed_ike_keys(
    old_prf: Prf,
    old_sk_d: bytes,
    prf: Prf,
    shared_secret: bytes,
    nonce_i: bytes,
    nonce_r: bytes,
    spi_i: bytes,
    spi_r: bytes,
    encr_key_size: int,
    integ_key_size: int,
    additional: bytes = b"",
) -> IkeKeys:
    """RFC 7296 2.18: SKEYSEED = prf_old(SK_d_old, g^ir(new) | Ni | Nr), then prf+ (new PRF);
    RFC 9370 2.2.4 appends the additional key exchanges' secrets: ... | Nr | SK(1)...SK(n)."""
    skeyseed = old_prf(old_sk_d, shared_secret + nonce_i + nonce_r + additional)
    seed = nonce_i + nonce_r + spi_i + spi_r
    return _expand_ike_keys(prf, skeyseed, seed, encr_key_size, integ_key_size)


def derive_additional_ike_keys(
    prf: Prf,
    sk_d: bytes,
    shared_secret: bytes,
    nonce_i: bytes,
    nonce_r: bytes,
    spi_i: bytes,
    spi_r: bytes,
    encr_key_size: int,
    integ_key_size: int,
) -> IkeKeys:
    """RFC 9370 2.2.2, after each additional key exchange of an IKE SA's setup:
    SKEYSEED(n) = prf(SK_d(n-1), SK(n) | Ni | Nr), then every SK_* anew with
    prf+(SKEYSEED(n), Ni | Nr | SPIi | SPIr) (the IKE SA's own nonces and SPIs)."""
    skeyseed = prf(sk_d, shared_secret + nonce_i + nonce_r)
    seed = nonce_i + nonce_r + spi_i + spi_r
    return _expand_ike_keys(prf, skeyseed, seed, encr_key_size, integ_key_size)


def derive_child_keymat(
    prf: Prf,
    sk_d: bytes,
    nonce_i: bytes,
    nonce_r: bytes,
    length: int,
    shared_secret: bytes | None = None,
    additional: bytes = b"",
) -> bytes:
    """RFC 7296 2.17: KEYMAT = prf+(SK_d, [g^ir (new) |] Ni | Nr); RFC 9370 2.2.4 appends
    the additional key exchanges' secrets: ... | Ni | Nr | SK(1) | ... | SK(n)."""
    seed = (shared_secret or b"") + nonce_i + nonce_r + additional
    return prf.plus(sk_d, seed, length)


def split_child_keymat(keymat: bytes, encr_key_size: int, integ_key_size: int) -> ChildKeys:
    """Cut KEYMAT: encr_i, integ_i, encr_r, integ_r (initiator->responder first)."""
    sizes = (encr_key_size, integ_key_size, encr_key_size, integ_key_size)
    if len(keymat) < sum(sizes):
        raise LocalError(f"KEYMAT has {len(keymat)} octets, {sum(sizes)} needed")
    encr_i, integ_i, encr_r, integ_r = _split(keymat, sizes)
    return ChildKeys(encr_i, integ_i, encr_r, integ_r)


# --- SK payload ciphers -------------------------------------------------------------------


class _IvCounter:
    """Explicit AEAD IVs: a 64-bit counter, never repeated for one key."""

    __slots__ = ("_next",)

    def __init__(self, first: int = 0) -> None:
        self._next = first

    @property
    def position(self) -> int:
        return self._next

    def take(self) -> bytes:
        if self._next >= 1 << 64:
            raise LocalError("AEAD IV space exhausted: rekey the IKE SA")
        value = self._next
        self._next += 1
        return value.to_bytes(8, "big")


class _AeadCipher:
    """AES-GCM/CCM (RFC 5282) and ChaCha20-Poly1305 (RFC 7634): nonce = salt | IV."""

    block_size = 1
    iv_size = 8

    def __init__(self, encr_id: EncrId, key_bits: int, keymat: bytes, first_iv: int = 0) -> None:
        info = encr_info(encr_id)
        key, self._salt = keymat[: key_bits // 8], keymat[key_bits // 8 :]
        self.icv_size = info.icv_size
        self._ivs = _IvCounter(first_iv)
        self._aead: AESGCM | AESCCM | ChaCha20Poly1305 | None = None
        self._gcm_key: algorithms.AES | None = None
        if encr_id == EncrId.CHACHA20_POLY1305:
            self._aead = ChaCha20Poly1305(key)
        elif info.salt_size == 3:
            self._aead = AESCCM(key, tag_length=info.icv_size)
        elif info.icv_size == 16:
            self._aead = AESGCM(key)
        else:  # GCM with a truncated tag: the AESGCM class only makes 16-octet tags
            self._gcm_key = algorithms.AES(key)

    def seal(self, aad: bytes, plaintext: bytes) -> bytes:
        iv = self._ivs.take()
        nonce = self._salt + iv
        if self._aead is not None:
            return iv + self._aead.encrypt(nonce, plaintext, aad)
        assert self._gcm_key is not None
        enc = Cipher(self._gcm_key, modes.GCM(nonce)).encryptor()
        enc.authenticate_additional_data(aad)
        ciphertext = enc.update(plaintext) + enc.finalize()
        return iv + ciphertext + enc.tag[: self.icv_size]

    def open(self, aad: bytes, body: bytes) -> bytes:
        if len(body) < self.iv_size + self.icv_size:
            raise IntegrityError("encrypted payload shorter than IV and ICV")
        nonce = self._salt + body[: self.iv_size]
        try:
            if self._aead is not None:
                return self._aead.decrypt(nonce, body[self.iv_size :], aad)
            assert self._gcm_key is not None
            tag = body[-self.icv_size :]
            mode = modes.GCM(nonce, tag, min_tag_length=self.icv_size)
            dec = Cipher(self._gcm_key, mode).decryptor()
            dec.authenticate_additional_data(aad)
            return dec.update(body[self.iv_size : -self.icv_size]) + dec.finalize()
        except InvalidTag:
            raise IntegrityError() from None


class _CbcHmacCipher:
    """AES-CBC or 3DES-CBC with a truncated HMAC over aad | IV | ciphertext (RFC 7296 3.14)."""

    def __init__(self, encr_id: EncrId, key: bytes, integ_id: int, integ_key: bytes) -> None:
        self._algorithm: algorithms.AES | TripleDES = (
            TripleDES(key) if encr_id == EncrId.TRIPLE_DES else algorithms.AES(key)
        )
        info, integ = encr_info(encr_id), integ_info(integ_id)
        self.iv_size = info.iv_size
        self.block_size = info.block_size
        self.icv_size = integ.icv_size
        if len(integ_key) != integ.key_size:
            raise LocalError(f"integrity key must be {integ.key_size} octets")
        self._mac = hmac.HMAC(integ_key, integ.hash())  # pre-keyed, copied per message

    def _icv(self, aad: bytes, iv_and_ciphertext: bytes) -> bytes:
        mac = self._mac.copy()
        mac.update(aad)
        mac.update(iv_and_ciphertext)
        return mac.finalize()[: self.icv_size]

    def seal(self, aad: bytes, plaintext: bytes) -> bytes:
        if len(plaintext) % self.block_size:
            raise LocalError("SK plaintext is not padded to the cipher block size")
        iv = os.urandom(self.iv_size)
        enc = Cipher(self._algorithm, modes.CBC(iv)).encryptor()
        body = iv + enc.update(plaintext) + enc.finalize()
        return body + self._icv(aad, body)

    def open(self, aad: bytes, body: bytes) -> bytes:
        data, icv = body[: -self.icv_size], body[-self.icv_size :]
        ciphertext_len = len(data) - self.iv_size
        if ciphertext_len <= 0 or ciphertext_len % self.block_size:
            raise IntegrityError("encrypted payload length is not a whole number of blocks")
        if not constant_time.bytes_eq(self._icv(aad, data), icv):
            raise IntegrityError()
        iv = data[: self.iv_size]
        dec = Cipher(self._algorithm, modes.CBC(iv)).decryptor()
        return dec.update(data[self.iv_size :]) + dec.finalize()


_AEAD_IDS = frozenset(
    {
        EncrId.AES_GCM_8,
        EncrId.AES_GCM_12,
        EncrId.AES_GCM_16,
        EncrId.AES_CCM_8,
        EncrId.AES_CCM_12,
        EncrId.AES_CCM_16,
        EncrId.CHACHA20_POLY1305,
    }
)
_CBC_IDS = frozenset({EncrId.AES_CBC, EncrId.TRIPLE_DES})


def new_sk_cipher(
    encr_id: int,
    key_bits: int | None,
    integ_id: int | None,
    encr_key: bytes,
    integ_key: bytes,
    first_iv: int = 0,
) -> SkCipher:
    """A cipher for one direction of an IKE SA (SK_ei/SK_ai or SK_er/SK_ar).

    `first_iv` restarts an AEAD cipher's IV counter past every IV it used before (an IKE
    SA restored after a daemon restart); CBC ciphers draw random IVs and ignore it.
    """
    bits = encr_key_bits(encr_id, key_bits)
    info, encr = encr_info(encr_id), EncrId(encr_id)
    if len(encr_key) != bits // 8 + info.salt_size:
        raise LocalError(f"{encr.name} needs {bits // 8 + info.salt_size} octets of key")
    if encr in _AEAD_IDS:
        if integ_id:
            raise LocalError("an AEAD cipher takes no integrity transform")
        return _AeadCipher(encr, bits, encr_key, first_iv)
    if encr in _CBC_IDS:
        if not integ_id:
            raise LocalError(f"{encr.name} needs an integrity transform")
        return _CbcHmacCipher(encr, encr_key, integ_id, integ_key)
    raise LocalError(f"{encr.name} is not supported for IKE SAs")


def iv_position(cipher: SkCipher) -> int:
    """The next IV an AEAD cipher will use (0 for CBC ciphers): saved with an SA's state."""
    return cipher._ivs.position if isinstance(cipher, _AeadCipher) else 0
