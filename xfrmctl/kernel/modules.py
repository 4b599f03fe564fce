"""Which kernel module (and build option) a refused SA needs, in words an operator acts on.

The kernel answers an SA of a protocol it was built without with EPROTONOSUPPORT
("Requested type not found") and an algorithm it lacks with ENOSYS; neither says what
to load. `missing_support` does: "the kernel has no ESP support: modprobe esp4
(CONFIG_INET_ESP)".
"""

from __future__ import annotations

import errno

from .types import Proto, SaSpec

# protocol, IP version -> (module, build option)
PROTOCOL_MODULES: dict[tuple[Proto, int], tuple[str, str]] = {
    (Proto.ESP, 4): ("esp4", "CONFIG_INET_ESP"),
    (Proto.ESP, 6): ("esp6", "CONFIG_INET6_ESP"),
    (Proto.AH, 4): ("ah4", "CONFIG_INET_AH"),
    (Proto.AH, 6): ("ah6", "CONFIG_INET6_AH"),
}

# kernel algorithm name -> (modules, build option)
ALGORITHM_MODULES: dict[str, tuple[str, str]] = {
    "rfc4106(gcm(aes))": ("gcm", "CONFIG_CRYPTO_GCM"),
    "rfc4543(gcm(aes))": ("gcm", "CONFIG_CRYPTO_GCM"),
    "rfc4309(ccm(aes))": ("ccm", "CONFIG_CRYPTO_CCM"),
    "rfc7539esp(chacha20,poly1305)": ("chacha20poly1305", "CONFIG_CRYPTO_CHACHA20POLY1305"),
    "cbc(aes)": ("cbc aes_generic", "CONFIG_CRYPTO_CBC"),
    "rfc3686(ctr(aes))": ("ctr aes_generic", "CONFIG_CRYPTO_CTR"),
    "cbc(des3_ede)": ("cbc des3_ede", "CONFIG_CRYPTO_DES"),
    "hmac(sha1)": ("sha1_generic", "CONFIG_CRYPTO_SHA1"),
    "hmac(sha256)": ("sha256_generic", "CONFIG_CRYPTO_SHA256"),
    "hmac(sha384)": ("sha512_generic", "CONFIG_CRYPTO_SHA512"),
    "hmac(sha512)": ("sha512_generic", "CONFIG_CRYPTO_SHA512"),
    "xcbc(aes)": ("xcbc", "CONFIG_CRYPTO_XCBC"),
    "cmac(aes)": ("cmac", "CONFIG_CRYPTO_CMAC"),
}


def missing_support(sa: SaSpec, code: int) -> str | None:
    """What to load for an SA the kernel refused with `code`, or None if not that."""
    if code == errno.EPROTONOSUPPORT:
        module, option = PROTOCOL_MODULES[(sa.proto, sa.dst.version)]
        return f"the kernel has no {sa.proto.name} support: modprobe {module} ({option})"
    if code != errno.ENOSYS:
        return None
    algorithms = [a.name for a in (sa.aead, sa.crypt, sa.auth) if a is not None]
    modules = [ALGORITHM_MODULES[n] for n in algorithms if n in ALGORITHM_MODULES]
    if sa.crypt is not None and sa.auth is not None:  # encryption plus integrity
        modules.append(("authencesn", "CONFIG_CRYPTO_AUTHENC") if sa.esn else
                       ("authenc", "CONFIG_CRYPTO_AUTHENC"))
    if not modules:
        return f"the kernel lacks an algorithm of {', '.join(algorithms) or 'this SA'}"
    names = " ".join(dict.fromkeys(m for ms, _ in modules for m in ms.split()))
    options = ", ".join(dict.fromkeys(o for _, o in modules))
    return (f"the kernel lacks {' + '.join(algorithms)}: modprobe {names} ({options}; "
            f"check /proc/crypto)")
