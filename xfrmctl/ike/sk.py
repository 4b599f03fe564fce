"""The contract between the message codec and the SK payload protection.

The codec (`message.py`) builds the bytes of an Encrypted (SK) or Encrypted
Fragment (SKF) payload; a cipher (`crypto.py`) protects them. One cipher object
serves one direction of one IKE SA and is reused for every message.

`aad` is every octet from the start of the IKE header up to the IV: the IKE header
(its Length field already final), the generic payload header of SK/SKF and, for SKF,
the Fragment Number and Total Fragments fields. AEAD suites (RFC 5282, RFC 7634) use
it as associated data; CBC+HMAC suites compute the ICV over `aad || IV || ciphertext`.
`plaintext` is already padded by the codec: inner payloads || padding || pad length,
a multiple of `block_size` long.
"""

from typing import Protocol


class SkCipher(Protocol):
    @property
    def iv_size(self) -> int: ...

    @property
    def icv_size(self) -> int: ...

    @property
    def block_size(self) -> int: ...

    def seal(self, aad: bytes, plaintext: bytes) -> bytes:
        """Return IV || ciphertext || ICV."""
        ...

    def open(self, aad: bytes, body: bytes) -> bytes:
        """Check and decrypt IV || ciphertext || ICV; raise IntegrityError on failure."""
        ...
