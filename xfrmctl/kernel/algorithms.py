"""The algorithms XFRM takes, by the kernel crypto API's names, and what it checks.

The kernel layer speaks XFRM only: which IKE transform becomes which of these names is
the daemon's business (xfrmctl.daemon.algorithms). A key is the blob XFRM is given:
for the rfc4106/4309/4543/7539esp/3686 templates the salt or nonce is its last bytes.
The fake kernel refuses what the real one refuses: an unknown name (ENOSYS), a key of
a length the cipher does not take, or an AEAD ICV length other than 64/96/128 (EINVAL).
"""

from __future__ import annotations

AEAD_NAMES = frozenset({
    "rfc4106(gcm(aes))", "rfc4309(ccm(aes))", "rfc4543(gcm(aes))",
    "rfc7539esp(chacha20,poly1305)",
})
CRYPT_NAMES = frozenset({
    "cbc(aes)", "rfc3686(ctr(aes))", "cbc(des3_ede)", "cbc(des)", "cbc(cast5)",
    "cbc(blowfish)", "cbc(camellia)", "rfc3686(ctr(camellia))", "ecb(cipher_null)",
})
AUTH_NAMES = frozenset({
    "hmac(md5)", "hmac(sha1)", "xcbc(aes)", "cmac(aes)", "hmac(sha256)", "hmac(sha384)",
    "hmac(sha512)",
})
KERNEL_ALGORITHM_NAMES = AEAD_NAMES | CRYPT_NAMES | AUTH_NAMES

# Key blob lengths (octets) the kernel accepts, where it checks them.
KEY_SIZES: dict[str, frozenset[int]] = {
    "rfc4106(gcm(aes))": frozenset({20, 28, 36}),
    "rfc4309(ccm(aes))": frozenset({19, 27, 35}),
    "rfc4543(gcm(aes))": frozenset({20, 28, 36}),
    "rfc7539esp(chacha20,poly1305)": frozenset({36}),
    "cbc(aes)": frozenset({16, 24, 32}),
    "rfc3686(ctr(aes))": frozenset({20, 28, 36}),
    "cbc(des3_ede)": frozenset({24}),
    "ecb(cipher_null)": frozenset({0}),
}
AEAD_ICV_BITS = frozenset({64, 96, 128})
