"""Key exchange: RFC 5903 / RFC 7748 vectors, IKE encodings, RFC 6989 checks."""

import pytest

from xfrmctl.ike.algorithms import DH
from xfrmctl.ike.constants import DhId, NotifyType
from xfrmctl.ike.dh import (
    KEMS,
    MODP_PRIMES,
    SUPPORTED_GROUPS,
    key_exchange_from_private,
    new_key_exchange,
)
from xfrmctl.ike.errors import LocalError, ProtocolError

h = bytes.fromhex

# RFC 5903 section 8: i, g^i (x, y), r, g^r (x, y), g^ir x coordinate.
RFC5903 = {
    DhId.ECP_256: dict(
        i="C88F01F510D9AC3F70A292DAA2316DE544E9AAB8AFE84049C62A9C57862D1433",
        gi="DAD0B65394221CF9B051E1FECA5787D098DFE637FC90B9EF945D0C3772581180"
        "5271A0461CDB8252D61F1C456FA3E59AB1F45B33ACCF5F58389E0577B8990BB3",
        r="C6EF9C5D78AE012A011164ACB397CE2088685D8F06BF9BE0B283AB46476BEE53",
        gr="D12DFB5289C8D4F81208B70270398C342296970A0BCCB74C736FC7554494BF63"
        "56FBF3CA366CC23E8157854C13C58D6AAC23F046ADA30F8353E74F33039872AB",
        gir="D6840F6B42F6EDAFD13116E0E12565202FEF8E9ECE7DCE03812464D04B9442DE",
    ),
    DhId.ECP_384: dict(
        i="099F3C7034D4A2C699884D73A375A67F7624EF7C6B3C0F160647B67414DCE655"
        "E35B538041E649EE3FAEF896783AB194",
        gi="667842D7D180AC2CDE6F74F37551F55755C7645C20EF73E31634FE72B4C55EE6"
        "DE3AC808ACB4BDB4C88732AEE95F41AA9482ED1FC0EEB9CAFC4984625CCFC23F"
        "65032149E0E144ADA024181535A0F38EEB9FCFF3C2C947DAE69B4C634573A81C",
        r="41CB0779B4BDB85D47846725FBEC3C9430FAB46CC8DC5060855CC9BDA0AA2942"
        "E0308312916B8ED2960E4BD55A7448FC",
        gr="E558DBEF53EECDE3D3FCCFC1AEA08A89A987475D12FD950D83CFA41732BC509D"
        "0D1AC43A0336DEF96FDA41D0774A3571DCFBEC7AACF3196472169E838430367F"
        "66EEBE3C6E70C416DD5F0C68759DD1FFF83FA40142209DFF5EAAD96DB9E6386C",
        gir="11187331C279962D93D604243FD592CB9D0A926F422E47187521287E7156C5C4"
        "D603135569B9E9D09CF5D4A270F59746",
    ),
    DhId.ECP_521: dict(
        i="0037ADE9319A89F4DABDB3EF411AACCCA5123C61ACAB57B5393DCE47608172A0"
        "95AA85A30FE1C2952C6771D937BA9777F5957B2639BAB072462F68C27A57382D4A52",
        gi=None,
        r="0145BA99A847AF43793FDD0E872E7CDFA16BE30FDC780F97BCCC3F078380201E"
        "9C677D600B343757A3BDBF2A3163E4C2F869CCA7458AA4A4EFFC311F5CB151685EB9",
        gr=None,
        gir="01144C7D79AE6956BC8EDB8E7C787C4521CB086FA64407F97894E5E6B2D79B04"
        "D1427E73CA4BAA240A34786859810C06B3C715A3A8CC3151F2BEE417996D19F3DDEA",
    ),
}


@pytest.mark.parametrize("group", list(RFC5903))
def test_ecp_rfc5903_vectors(group: DhId) -> None:
    v = RFC5903[group]
    initiator = key_exchange_from_private(group, h(v["i"]))
    responder = key_exchange_from_private(group, h(v["r"]))
    if v["gi"] is not None:
        assert initiator.public_key == h(v["gi"])  # x || y, no 0x04 (RFC 5903 7)
        assert responder.public_key == h(v["gr"])
    assert len(initiator.public_key) == DH[group].public_size
    assert initiator.shared_secret(responder.public_key) == h(v["gir"])
    assert responder.shared_secret(initiator.public_key) == h(v["gir"])


# RFC 7748 6.1 and 6.2.
X25519 = dict(
    a="77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a",
    a_pub="8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a",
    b_pub="de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f",
    k="4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742",
)
X448 = dict(
    a="9a8f4925d1519f5775cf46b04b5800d4ee9ee8bae8bc5565d498c28dd9c9baf5"
    "74a9419744897391006382a6f127ab1d9ac2d8c0a598726b",
    a_pub="9b08f7cc31b7e3e67d22d5aea121074a273bd2b83de09c63faa73d2c22c5d9bb"
    "c836647241d953d40c5b12da88120d53177f80e532c41fa0",
    b_pub="3eb7a829b0cd20f5bcfc0b599b6feccf6da4627107bdb0d4f345b43027d8b972"
    "fc3e34fb4232a13ca706dcb57aec3dae07bdc1c67bf33609",
    k="07fff4181ac6cc95ec1c16a94a0f74d12da232ce40a77552281d282bb60c0b56"
    "fd2464c335543936521c24403085d59a449a5037514a879d",
)


@pytest.mark.parametrize(("group", "v"), [(DhId.CURVE25519, X25519), (DhId.CURVE448, X448)])
def test_montgomery_rfc7748_vectors(group: DhId, v: dict[str, str]) -> None:
    alice = key_exchange_from_private(group, h(v["a"]))
    assert alice.public_key == h(v["a_pub"])
    assert alice.shared_secret(h(v["b_pub"])) == h(v["k"])


# Diffie-Hellman groups; the ML-KEM key encapsulation methods (initiator key, responder
# ciphertext) are tested in tests/unit/ike/test_pq_proposals.py.
DH_GROUPS = sorted(SUPPORTED_GROUPS - KEMS)


@pytest.mark.parametrize("group", DH_GROUPS)
def test_every_group_agrees_with_itself(group: int) -> None:
    a, b = new_key_exchange(group), new_key_exchange(group)
    assert a.group == group
    size = DH[DhId(group)].public_size
    assert len(a.public_key) == len(b.public_key) == size
    secret = a.shared_secret(b.public_key)
    assert secret == b.shared_secret(a.public_key)
    if DhId(group).name.startswith("MODP"):
        assert len(secret) == size  # padded to the prime's length


@pytest.mark.parametrize("group", DH_GROUPS)
def test_wrong_length_is_invalid_syntax(group: int) -> None:
    a, b = new_key_exchange(group), new_key_exchange(group)
    for peer in (b.public_key[:-1], b.public_key + b"\x00", b""):
        with pytest.raises(ProtocolError) as err:
            a.shared_secret(peer)
        assert err.value.notify == NotifyType.INVALID_SYNTAX


_P25519 = 2**255 - 19
X25519_LOW_ORDER = [
    0,
    1,
    _P25519 - 1,
    _P25519,
    _P25519 + 1,
    # points of order 8 (the list libsodium and others refuse)
    int.from_bytes(h("e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800"), "little"),
    int.from_bytes(h("5f9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f1157"), "little"),
]


@pytest.mark.parametrize("u", X25519_LOW_ORDER)
def test_x25519_low_order_points_rejected(u: int) -> None:
    with pytest.raises(ProtocolError):
        new_key_exchange(DhId.CURVE25519).shared_secret(u.to_bytes(32, "little"))


def test_x448_low_order_points_rejected() -> None:
    p = 2**448 - 2**224 - 1
    for u in (0, 1, p - 1):
        with pytest.raises(ProtocolError):
            new_key_exchange(DhId.CURVE448).shared_secret(u.to_bytes(56, "little"))


@pytest.mark.parametrize("group", [DhId.ECP_256, DhId.ECP_384, DhId.ECP_521])
def test_ecp_point_not_on_curve_rejected(group: DhId) -> None:
    good = new_key_exchange(group).public_key
    half = len(good) // 2
    y = int.from_bytes(good[half:], "big")
    off_curve = good[:half] + ((y + 1) % 2 ** (8 * half)).to_bytes(half, "big")
    for peer in (off_curve, bytes(len(good))):
        with pytest.raises(ProtocolError) as err:
            new_key_exchange(group).shared_secret(peer)
        assert err.value.notify == NotifyType.INVALID_SYNTAX


@pytest.mark.parametrize("group", [DhId.MODP_2048, DhId.MODP_1024])
def test_modp_degenerate_values_rejected(group: DhId) -> None:
    p = MODP_PRIMES[group]
    size = DH[group].public_size
    for y in (0, 1, p - 1, p, 2 ** (8 * size) - 1):
        with pytest.raises(ProtocolError):
            new_key_exchange(group).shared_secret(y.to_bytes(size, "big"))


def _pi_times_two_to_the(bits: int) -> int:
    """floor(pi * 2**bits) by Machin's formula in integers (64 guard bits)."""

    def arctan_inverse(x: int, one: int) -> int:
        total, term, n, sign = 0, one // x, 1, 1
        while term:
            total += sign * (term // n)
            term //= x * x
            n += 2
            sign = -sign
        return total

    one = 1 << (bits + 64)
    return (4 * (4 * arctan_inverse(5, one) - arctan_inverse(239, one))) >> 64


# RFC 2409 6.2 and RFC 3526: p = 2^s - 2^(s-64) - 1 + 2^64 * (floor(2^(s-130) pi) + offset)
MODP_OFFSETS = {
    DhId.MODP_1024: (1024, 129093),
    DhId.MODP_1536: (1536, 741804),
    DhId.MODP_2048: (2048, 124476),
    DhId.MODP_3072: (3072, 1690314),
    DhId.MODP_4096: (4096, 240904),
}


@pytest.mark.parametrize("group", list(MODP_OFFSETS))
def test_modp_primes_match_their_rfc_formula(group: DhId) -> None:
    s, offset = MODP_OFFSETS[group]
    expected = 2**s - 2 ** (s - 64) - 1 + 2**64 * (_pi_times_two_to_the(s - 130) + offset)
    assert MODP_PRIMES[group] == expected
    assert DH[group].public_size * 8 == s


def test_unsupported_group_is_local_error() -> None:
    with pytest.raises(LocalError):
        new_key_exchange(DhId.MODP_768)
    assert DhId.MODP_768 not in SUPPORTED_GROUPS
