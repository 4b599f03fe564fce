"""MD4 (RFC 1320), only for MS-CHAPv2's NT password hash.

OpenSSL 3 keeps MD4 in its legacy provider, which `cryptography` does not expose, so this
small implementation does it (checked against RFC 1320's test suite). MD4 is broken as a
hash; MS-CHAPv2 (RFC 2759) fixes its use and nothing else here may call it.
"""

from __future__ import annotations

import struct

_MASK = 0xFFFFFFFF


def _rotl(x: int, n: int) -> int:
    x &= _MASK
    return ((x << n) | (x >> (32 - n))) & _MASK


def _f(x: int, y: int, z: int) -> int:
    return (x & y) | (~x & z)


def _g(x: int, y: int, z: int) -> int:
    return (x & y) | (x & z) | (y & z)


def _h(x: int, y: int, z: int) -> int:
    return x ^ y ^ z


_ROUND2_ORDER = (0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15)
_ROUND2_SHIFTS = (3, 5, 9, 13)
_ROUND3_ORDER = (0, 8, 4, 12, 2, 10, 6, 14, 1, 9, 5, 13, 3, 11, 7, 15)
_ROUND3_SHIFTS = (3, 9, 11, 15)


def _block(state: list[int], block: bytes) -> None:
    x = struct.unpack("<16I", block)
    a, b, c, d = state
    for i in range(16):
        shift = (3, 7, 11, 19)[i % 4]
        a, b, c, d = d, _rotl(a + _f(b, c, d) + x[i], shift), b, c
    for i, k in enumerate(_ROUND2_ORDER):
        a, b, c, d = d, _rotl(a + _g(b, c, d) + x[k] + 0x5A827999, _ROUND2_SHIFTS[i % 4]), b, c
    for i, k in enumerate(_ROUND3_ORDER):
        a, b, c, d = d, _rotl(a + _h(b, c, d) + x[k] + 0x6ED9EBA1, _ROUND3_SHIFTS[i % 4]), b, c
    state[0] = (state[0] + a) & _MASK
    state[1] = (state[1] + b) & _MASK
    state[2] = (state[2] + c) & _MASK
    state[3] = (state[3] + d) & _MASK


def md4(data: bytes) -> bytes:
    """The 16-octet MD4 digest of `data`."""
    state = [0x67452301, 0xEFCDAB89, 0x98BADCFE, 0x10325476]
    padded = data + b"\x80" + b"\0" * ((55 - len(data)) % 64) + struct.pack("<Q", len(data) * 8)
    for offset in range(0, len(padded), 64):
        _block(state, padded[offset:offset + 64])
    return struct.pack("<4I", *state)
