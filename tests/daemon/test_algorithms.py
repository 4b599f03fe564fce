"""The daemon's map from IKE transform ids to XFRM algorithms (moved out of the kernel
layer, issue 12): names, ICV lengths, the key handed on whole (salt included)."""

from __future__ import annotations

import pytest

from xfrmctl.daemon import algorithms
from xfrmctl.ike import algorithms as ike_alg
from xfrmctl.ike.constants import EncrId, IntegId
from xfrmctl.kernel.algorithms import AEAD_NAMES, AUTH_NAMES, CRYPT_NAMES, KEY_SIZES


def test_algorithm_table() -> None:
    gcm = algorithms.encr_algorithm(EncrId.AES_GCM_16, bytes(20))
    assert (gcm.name, gcm.icv_bits) == ("rfc4106(gcm(aes))", 128)
    assert algorithms.encr_algorithm(EncrId.AES_GCM_12, bytes(20)).icv_bits == 96
    assert algorithms.encr_algorithm(EncrId.AES_GCM_8, bytes(20)).icv_bits == 64
    chacha = algorithms.encr_algorithm(EncrId.CHACHA20_POLY1305, bytes(36))
    assert chacha.name == "rfc7539esp(chacha20,poly1305)"
    # KEYMAT octets per direction, salt included: one table (the IKE core's) says so
    assert ike_alg.encr_key_size(EncrId.AES_GCM_16, 256) == 36
    assert ike_alg.encr_key_size(EncrId.CHACHA20_POLY1305, None) == 36
    assert ike_alg.encr_key_size(EncrId.TRIPLE_DES, None) == 24
    assert algorithms.encr_algorithm(EncrId.NULL, b"").name == "ecb(cipher_null)"
    sha = algorithms.integ_algorithm(IntegId.HMAC_SHA2_384_192, bytes(48))
    assert (sha.name, sha.icv_bits) == ("hmac(sha384)", 192)
    assert algorithms.integ_algorithm(IntegId.HMAC_SHA1_96, bytes(20)).icv_bits == 96
    assert algorithms.integ_algorithm(IntegId.HMAC_MD5_96, bytes(16)).name == "hmac(md5)"
    assert algorithms.is_aead(EncrId.AES_GCM_16) and not algorithms.is_aead(EncrId.AES_CBC)
    assert not algorithms.is_aead(EncrId.NULL)


def test_algorithm_errors() -> None:
    with pytest.raises(algorithms.UnsupportedTransform):
        algorithms.encr_algorithm(EncrId.IDEA, bytes(16))
    with pytest.raises(ValueError):
        algorithms.integ_algorithm(IntegId.HMAC_SHA2_256_128, bytes(16))


def test_every_transform_the_ike_core_keys_has_a_kernel_algorithm_of_the_right_kind() -> None:
    """A transform the IKE core can negotiate and key, but the daemon cannot name to the
    kernel, would fail only at install time: the two tables must cover each other."""
    assert set(ike_alg.ENCR) <= set(algorithms.ENCR_NAMES)
    assert set(ike_alg.INTEG) == set(algorithms.INTEG_NAMES)
    for encr, name in algorithms.ENCR_NAMES.items():
        assert name in (AEAD_NAMES if algorithms.is_aead(encr) else CRYPT_NAMES), encr
    assert set(algorithms.INTEG_NAMES.values()) <= AUTH_NAMES


@pytest.mark.parametrize("encr", sorted(ike_alg.ENCR))
def test_the_keymat_split_gives_keys_the_kernel_takes(encr: EncrId) -> None:
    info = ike_alg.ENCR[encr]
    for bits in info.key_bits:
        name = algorithms.ENCR_NAMES[encr]
        if name in KEY_SIZES:
            assert ike_alg.encr_key_size(encr, bits) in KEY_SIZES[name], (encr, bits)
