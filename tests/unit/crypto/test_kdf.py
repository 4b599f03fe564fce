"""PRF, prf+ and IKEv2 key derivation against published vectors."""

import pytest

from xfrmctl.ike.constants import PrfId
from xfrmctl.ike.crypto import (
    Prf,
    derive_child_keymat,
    derive_ike_keys,
    derive_rekeyed_ike_keys,
    split_child_keymat,
)
from xfrmctl.ike.errors import LocalError

h = bytes.fromhex

# RFC 4231 test cases 1, 2, 6 (also RFC 4868 2.7.1, the PRF-HMAC-SHA2 test cases).
RFC4231 = [
    (
        b"\x0b" * 20,
        b"Hi There",
        "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7",
        "87aa7cdea5ef619d4ff0b4241a1d6cb02379f4e2ce4ec2787ad0b30545e17cde"
        "daa833b7d6b8a702038b274eaea3f4e4be9d914eeb61f1702e696c203a126854",
    ),
    (
        b"Jefe",
        b"what do ya want for nothing?",
        "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843",
        "164b7a7bfcf819e2e395fbe73b56e0a387bd64222e831fd610270cd7ea250554"
        "9758bf75c05a994a6d034f65f8f0e6fdcaeab1a34d4a6b4b636e070a38bce737",
    ),
    (
        b"\xaa" * 131,
        b"Test Using Larger Than Block-Size Key - Hash Key First",
        "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54",
        "80b24263c7c1a3ebb71493c1dd7be8b49b46d1f41b4aeec1121b013783f8f352"
        "6b56d037e05f2598bd0fd2215d6a1e5295e64f73f63f0aec8b915a985d786598",
    ),
]


@pytest.mark.parametrize(("key", "data", "sha256", "sha512"), RFC4231)
def test_prf_hmac_sha2_rfc4231(key: bytes, data: bytes, sha256: str, sha512: str) -> None:
    assert Prf(PrfId.HMAC_SHA2_256)(key, data) == h(sha256)
    assert Prf(PrfId.HMAC_SHA2_512)(key, data) == h(sha512)


def test_prf_rfc4868_key_sized_to_output() -> None:
    # RFC 4868 2.7.2.1 test case AUTH256-1: a 32-octet key, as IKEv2 uses it.
    out = Prf(PrfId.HMAC_SHA2_256)(b"\x0b" * 32, b"Hi There")
    assert out == h("198a607eb44bfbc69903a0f1cf2bbdc5ba0aa3f3d9ae3c1c7a3b1696a0b68cf7")


def test_prf_sizes() -> None:
    for prf_id, size in [
        (PrfId.HMAC_SHA1, 20),
        (PrfId.HMAC_SHA2_256, 32),
        (PrfId.HMAC_SHA2_384, 48),
        (PrfId.HMAC_SHA2_512, 64),
    ]:
        prf = Prf(prf_id)
        assert prf.output_size == prf.key_size == size
        assert len(prf(b"k", b"d")) == size
    with pytest.raises(LocalError):
        Prf(PrfId.AES128_XCBC)


def test_prf_plus_is_the_rfc7296_iteration() -> None:
    prf = Prf(PrfId.HMAC_SHA2_256)
    key, seed = b"K" * 32, b"seed"
    t1 = prf(key, seed + b"\x01")
    t2 = prf(key, t1 + seed + b"\x02")
    t3 = prf(key, t2 + seed + b"\x03")
    assert prf.plus(key, seed, 96) == t1 + t2 + t3
    assert prf.plus(key, seed, 70) == (t1 + t2 + t3)[:70]
    assert prf.plus(key, seed, 1) == t1[:1]
    # A longer output extends a shorter one.
    assert prf.plus(key, seed, 200)[:70] == prf.plus(key, seed, 70)


def test_prf_plus_stops_at_255_blocks() -> None:
    prf = Prf(PrfId.HMAC_SHA2_256)
    assert len(prf.plus(b"k", b"s", 255 * 32)) == 255 * 32
    with pytest.raises(LocalError):
        prf.plus(b"k", b"s", 255 * 32 + 1)


# NIST CAVS sample for the SP 800-135 IKEv2 KDF, SHA-1, 1056-bit DKM, as listed in
# libreswan's CAVS test driver (programs/cavp): g^ir, g^ir(new), Ni, Nr, SPIi, SPIr.
CAVS_SHA1 = {
    "gir": "4b2c1f971981a8ad8d0abeafabf38cf75fc8349c148142465ed9c8b516b8be52",
    "gir_new": "863f3c9d06efd39d2b907b97f8699e5dd5251ef64a2a176f36ee40c87d4f9330",
    "ni": "32b50d5f4a3763f3",
    "nr": "9206a04b26564cb1",
    "spii": "34c9e7c188868785",
    "spir": "3ff77d760d2b2199",
    "skeyseed": "a9a7b222b59f8f48645f28a1db5b5f5d7479cba7",
    "dkm": "a14293677cc80ff8f9cc0eee30d895da9d8f405666e30ef0dfcb63c634a46002a2a63080e514a062"
    "768b76606f9fa5e992204fc5a670bde3f10d6b027113936a5c55b648a194ae587b0088d52204b702c979"
    "fa280870d2ed41efa9c549fd11198af1670b143d384bd275c5f594cf266b05ebadca855e4249520a441a"
    "81157435a7a56cc4",
    "dkm_child": "8059e3ee8810e6c3a91bc8bcd2a7a41151b8d0e6ae239c7b38093ad85ef4c5811a8e7b5d1cda"
    "bd9560b2d5e092d1f24e2d4b85eccdf0ad0dc9abd94b51ee71814ca6dbc8bb51b6309f5b9545c7eb35cf"
    "5580b1e521a8fe20754a2d883ba0c2cf285f524aea6545b33106bc03e614296d319d41d4b50b3f510b1c"
    "0a22f3e664994d234cb4",
    "dkm_child_dh": "bb43244c1860ad65ee1e211ffe8bb3661750c8f89cb9f547df7f4fa61d37301628190e38"
    "c66232eab4b3ab14c400a5197dd3730ed4820a8a10394d51e1c0400052f63ebd36b0e7ef53aaed31eba4"
    "a5080d7d4b5666023a8bbb5ffb7857240f9a05884d1b7d2f933708450b7b3288f1fc863ab49fa901227c"
    "ffc06e27899c7054d56fd74c",
    "skeyseed_rekey": "63e81194946ebd05df7df5ebf5d8750056bf1f1d",
}


def test_cavs_ikev2_kdf_sha1() -> None:
    v = {k: h(x) for k, x in CAVS_SHA1.items()}
    prf = Prf(PrfId.HMAC_SHA1)
    # DKM is 132 octets: SK_d(20) ai ar(2*20) ei er(2*16) pi pr(2*20) = 132.
    keys = derive_ike_keys(prf, v["gir"], v["ni"], v["nr"], v["spii"], v["spir"], 16, 20)
    assert keys.skeyseed == v["skeyseed"]
    joined = keys.sk_d + keys.sk_ai + keys.sk_ar + keys.sk_ei + keys.sk_er + keys.sk_pi + keys.sk_pr
    assert joined == v["dkm"]
    assert keys.sk_d == v["dkm"][:20]
    assert derive_child_keymat(prf, keys.sk_d, v["ni"], v["nr"], 132) == v["dkm_child"]
    pfs = derive_child_keymat(prf, keys.sk_d, v["ni"], v["nr"], 132, v["gir_new"])
    assert pfs == v["dkm_child_dh"]
    rekeyed = derive_rekeyed_ike_keys(
        prf, keys.sk_d, prf, v["gir_new"], v["ni"], v["nr"], v["spii"], v["spir"], 16, 20
    )
    assert rekeyed.skeyseed == v["skeyseed_rekey"]


# NIST CAVS IKEv2 SHA-256 sample values as carried in NSS's ike-sha256-vectors.h
# (cases 6, 7 and 8): SKEYSEED, prf+ for the DKM, and the rekey SKEYSEED.
CAVS_SHA256_NI = h("3f302be1abcb28e1")
CAVS_SHA256_NR = h("8c332ee006064c9b")
CAVS_SHA256_SPII = h("40dac39e1e1a8640")
CAVS_SHA256_SPIR = h("8619a1cf9a6e4c07")
CAVS_SHA256_GIR = h("0f4d257d7a58fc4545c7d7a88119eee5d5c9690c5b4c989171d3abbfd99d1d29")
CAVS_SHA256_SKEYSEED = h("5f00d1bd2c58ec224b1e6b71fa0f19a1faa7a193952c444411b47c1a9d8ba6fe")
CAVS_SHA256_DKM = h(
    "0b137d669b0947d7d026d593f0305ad401ff0c471357d695778a9c7f4b4869ece98aca531"
    "188d16041b3bb936d2dbb3b4993a6e768a809160de45d0283f273a6cdf6854379e31be72b"
    "8d3d1fa990cf9c5b015ca9f918a7df6253c958114a09d4e1c19bdcd4db14b29d98db1a74a"
    "d405c588662c14a04d0d36aa4ab55e90f8986d12d4aad"
)
CAVS_SHA256_GIR_NEW = h("25f3b12d6f282739256e39bf54eda53b60ffcf379bb7bcc90c27b4c4c578616c")
CAVS_SHA256_SKEYSEED_REKEY = h("2d63f6debc92048b4fef3889c4c99ca67d6496e0fac14a2bca9a2d6566ff2398")


def test_cavs_ikev2_kdf_sha256() -> None:
    prf = Prf(PrfId.HMAC_SHA2_256)
    # Any key sizes: the keys are a prefix of the 132-octet DKM of the vector.
    keys = derive_ike_keys(
        prf,
        CAVS_SHA256_GIR,
        CAVS_SHA256_NI,
        CAVS_SHA256_NR,
        CAVS_SHA256_SPII,
        CAVS_SHA256_SPIR,
        encr_key_size=2,
        integ_key_size=0,
    )
    assert keys.skeyseed == CAVS_SHA256_SKEYSEED
    seed = CAVS_SHA256_NI + CAVS_SHA256_NR + CAVS_SHA256_SPII + CAVS_SHA256_SPIR
    assert prf.plus(CAVS_SHA256_SKEYSEED, seed, 132) == CAVS_SHA256_DKM
    assert keys.sk_d == CAVS_SHA256_DKM[:32]
    joined = keys.sk_d + keys.sk_ei + keys.sk_er + keys.sk_pi + keys.sk_pr
    assert joined == CAVS_SHA256_DKM[: 32 + 4 + 64]
    rekeyed = derive_rekeyed_ike_keys(
        prf,
        keys.sk_d,
        prf,
        CAVS_SHA256_GIR_NEW,
        CAVS_SHA256_NI,
        CAVS_SHA256_NR,
        CAVS_SHA256_SPII,
        CAVS_SHA256_SPIR,
        16,
        32,
    )
    assert rekeyed.skeyseed == CAVS_SHA256_SKEYSEED_REKEY


def test_ike_key_layout_follows_rfc7296_order() -> None:
    prf = Prf(PrfId.HMAC_SHA2_384)
    ni, nr, si, sr = b"\x01" * 32, b"\x02" * 32, b"\x03" * 8, b"\x04" * 8
    keys = derive_ike_keys(prf, b"\x05" * 48, ni, nr, si, sr, 36, 0)
    stream = prf.plus(prf(ni + nr, b"\x05" * 48), ni + nr + si + sr, 48 * 3 + 36 * 2)
    assert keys.sk_d == stream[:48]
    assert keys.sk_ai == keys.sk_ar == b""
    assert keys.sk_ei == stream[48:84]
    assert keys.sk_er == stream[84:120]
    assert keys.sk_pi == stream[120:168]
    assert keys.sk_pr == stream[168:216]


def test_rekey_uses_old_prf_for_skeyseed_and_new_prf_for_prf_plus() -> None:
    old, new = Prf(PrfId.HMAC_SHA1), Prf(PrfId.HMAC_SHA2_256)
    sk_d, g, ni, nr, si, sr = b"d" * 20, b"g" * 32, b"i" * 16, b"r" * 16, b"I" * 8, b"R" * 8
    keys = derive_rekeyed_ike_keys(old, sk_d, new, g, ni, nr, si, sr, 16, 32)
    assert keys.skeyseed == old(sk_d, g + ni + nr)
    assert len(keys.skeyseed) == 20
    assert keys.sk_d == new.plus(keys.skeyseed, ni + nr + si + sr, 32)


def test_child_keymat_split_order() -> None:
    keymat = bytes(range(100))
    keys = split_child_keymat(keymat, 20, 16)
    assert keys.encr_i == keymat[0:20]
    assert keys.integ_i == keymat[20:36]
    assert keys.encr_r == keymat[36:56]
    assert keys.integ_r == keymat[56:72]
    with pytest.raises(LocalError):
        split_child_keymat(keymat[:71], 20, 16)


def test_keys_never_in_repr() -> None:
    prf = Prf(PrfId.HMAC_SHA2_256)
    keys = derive_ike_keys(prf, b"s" * 32, b"n" * 16, b"m" * 16, b"a" * 8, b"b" * 8, 16, 32)
    child = split_child_keymat(b"\xab" * 64, 16, 16)
    for obj, secrets in [(keys, [keys.sk_d, keys.sk_ei, keys.skeyseed]), (child, [child.encr_i])]:
        text = repr(obj)
        for secret in secrets:
            assert secret.hex() not in text
            assert repr(secret) not in text
