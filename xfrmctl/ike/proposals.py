"""Proposals: the strongSwan-style keyword syntax, and selection (RFC 7296 3.3.6).

A configured proposal is a set of acceptable algorithms per transform type, written as
keywords joined by '-', several proposals joined by ',':
    "aes128gcm16-prfsha256-x25519, aes256-sha256-modp3072"
For ESP/AH the key exchange keywords are the PFS groups used when rekeying.
Additional key exchanges (RFC 9370) are written as strongSwan does, `keN_<method>` for
ADDKE N (1..7), `keN_none` making that one optional:
    "aes256gcm16-prfsha384-x25519-ke1_mlkem768"

RFC 7296 3.3.6: a proposal with a transform type we do not know is never chosen (the
whole proposal, not just that transform); neither is one whose additional key exchanges
we cannot do in that exchange (each ADDKE type offered must include one of ours, or
NONE).

Selection: the responder walks its own proposals in its order of preference and, for each,
the peer's proposals in their order; the first pair with something common in every transform
type wins, taking from each type our most preferred algorithm the peer also offered.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from enum import Enum

from .constants import (
    ADDKE_TYPES,
    DhId,
    EncrId,
    EsnId,
    IntegId,
    PrfId,
    ProtocolId,
    TransformType,
)
from .payloads import Proposal, Transform

Algorithm = tuple[int, int | None]  # (transform id, key length in bits or None)

_AEAD = {EncrId.AES_GCM_8, EncrId.AES_GCM_12, EncrId.AES_GCM_16, EncrId.AES_CCM_8,
         EncrId.AES_CCM_12, EncrId.AES_CCM_16, EncrId.CHACHA20_POLY1305,
         EncrId.NULL_AUTH_AES_GMAC}


def _encr_keywords() -> dict[str, tuple[TransformType, int, int | None]]:
    table: dict[str, tuple[TransformType, int, int | None]] = {
        "3des": (TransformType.ENCR, EncrId.TRIPLE_DES, None),
        "null": (TransformType.ENCR, EncrId.NULL, None),
        "chacha20poly1305": (TransformType.ENCR, EncrId.CHACHA20_POLY1305, None),
    }
    for bits in (128, 192, 256):
        table[f"aes{bits}"] = (TransformType.ENCR, EncrId.AES_CBC, bits)
        table[f"aes{bits}ctr"] = (TransformType.ENCR, EncrId.AES_CTR, bits)
        for icv, gcm_id, ccm_id in ((8, EncrId.AES_GCM_8, EncrId.AES_CCM_8),
                                    (12, EncrId.AES_GCM_12, EncrId.AES_CCM_12),
                                    (16, EncrId.AES_GCM_16, EncrId.AES_CCM_16)):
            table[f"aes{bits}gcm{icv}"] = (TransformType.ENCR, gcm_id, bits)
            table[f"aes{bits}ccm{icv}"] = (TransformType.ENCR, ccm_id, bits)
        table[f"aes{bits}gcm"] = (TransformType.ENCR, EncrId.AES_GCM_16, bits)
    table["aes"] = table["aes128"]
    return table


KEYWORDS: dict[str, tuple[TransformType, int, int | None]] = {
    **_encr_keywords(),
    "md5": (TransformType.INTEG, IntegId.HMAC_MD5_96, None),
    "sha1": (TransformType.INTEG, IntegId.HMAC_SHA1_96, None),
    "sha": (TransformType.INTEG, IntegId.HMAC_SHA1_96, None),
    "sha256": (TransformType.INTEG, IntegId.HMAC_SHA2_256_128, None),
    "sha2_256": (TransformType.INTEG, IntegId.HMAC_SHA2_256_128, None),
    "sha384": (TransformType.INTEG, IntegId.HMAC_SHA2_384_192, None),
    "sha512": (TransformType.INTEG, IntegId.HMAC_SHA2_512_256, None),
    "aesxcbc": (TransformType.INTEG, IntegId.AES_XCBC_96, None),
    "prfmd5": (TransformType.PRF, PrfId.HMAC_MD5, None),
    "prfsha1": (TransformType.PRF, PrfId.HMAC_SHA1, None),
    "prfsha256": (TransformType.PRF, PrfId.HMAC_SHA2_256, None),
    "prfsha384": (TransformType.PRF, PrfId.HMAC_SHA2_384, None),
    "prfsha512": (TransformType.PRF, PrfId.HMAC_SHA2_512, None),
    "prfaesxcbc": (TransformType.PRF, PrfId.AES128_XCBC, None),
    "modp768": (TransformType.DH, DhId.MODP_768, None),
    "modp1024": (TransformType.DH, DhId.MODP_1024, None),
    "modp1536": (TransformType.DH, DhId.MODP_1536, None),
    "modp2048": (TransformType.DH, DhId.MODP_2048, None),
    "modp3072": (TransformType.DH, DhId.MODP_3072, None),
    "modp4096": (TransformType.DH, DhId.MODP_4096, None),
    "modp6144": (TransformType.DH, DhId.MODP_6144, None),
    "modp8192": (TransformType.DH, DhId.MODP_8192, None),
    "ecp256": (TransformType.DH, DhId.ECP_256, None),
    "ecp384": (TransformType.DH, DhId.ECP_384, None),
    "ecp521": (TransformType.DH, DhId.ECP_521, None),
    "x25519": (TransformType.DH, DhId.CURVE25519, None),
    "curve25519": (TransformType.DH, DhId.CURVE25519, None),
    "x448": (TransformType.DH, DhId.CURVE448, None),
    "curve448": (TransformType.DH, DhId.CURVE448, None),
    "mlkem512": (TransformType.DH, DhId.ML_KEM_512, None),
    "mlkem768": (TransformType.DH, DhId.ML_KEM_768, None),
    "mlkem1024": (TransformType.DH, DhId.ML_KEM_1024, None),
    "esn": (TransformType.ESN, EsnId.ESN, None),
    "noesn": (TransformType.ESN, EsnId.NO_ESN, None),
}

# Integrity algorithm -> the PRF an IKE proposal gets when it names none (as strongSwan does).
_PRF_FOR_INTEG: dict[int, PrfId] = {
    IntegId.HMAC_MD5_96: PrfId.HMAC_MD5,
    IntegId.HMAC_SHA1_96: PrfId.HMAC_SHA1,
    IntegId.HMAC_SHA2_256_128: PrfId.HMAC_SHA2_256,
    IntegId.HMAC_SHA2_384_192: PrfId.HMAC_SHA2_384,
    IntegId.HMAC_SHA2_512_256: PrfId.HMAC_SHA2_512,
    IntegId.AES_XCBC_96: PrfId.AES128_XCBC,
}

# Old algorithms: accepted only when a connection's proposal names them explicitly.
LEGACY: frozenset[tuple[TransformType, int]] = frozenset({
    (TransformType.ENCR, EncrId.TRIPLE_DES),
    (TransformType.ENCR, EncrId.NULL),
    (TransformType.INTEG, IntegId.HMAC_MD5_96),
    (TransformType.INTEG, IntegId.HMAC_SHA1_96),
    (TransformType.PRF, PrfId.HMAC_MD5),
    (TransformType.DH, DhId.MODP_768),
    (TransformType.DH, DhId.MODP_1024),
    (TransformType.DH, DhId.MODP_1536),
})

_TYPE_ORDER = (TransformType.ENCR, TransformType.PRF, TransformType.INTEG, TransformType.DH,
               TransformType.ESN, *ADDKE_TYPES)
_ADDKE_WORD = re.compile(r"ke([1-7])_([a-z0-9_]+)")
_NONE: Algorithm = (DhId.NONE, None)


@dataclass(frozen=True, slots=True)
class ProposalSpec:
    """One configured proposal: acceptable algorithms per transform type, best first."""

    protocol: ProtocolId
    algorithms: dict[TransformType, tuple[Algorithm, ...]] = field(hash=False)
    text: str = ""

    def get(self, ttype: TransformType) -> tuple[Algorithm, ...]:
        return self.algorithms.get(ttype, ())

    @property
    def dh_groups(self) -> tuple[int, ...]:
        return tuple(a[0] for a in self.get(TransformType.DH) if a[0] != DhId.NONE)

    @property
    def is_aead(self) -> bool:
        return all(a[0] in _AEAD for a in self.get(TransformType.ENCR))

    @property
    def has_addke(self) -> bool:
        return any(self.get(t) for t in ADDKE_TYPES)

    def to_wire(self, number: int, spi: bytes, *, with_dh: bool = True,
                with_addke: bool = False) -> Proposal:
        """The proposal as sent; additional key exchanges only where the exchange does
        them (`with_addke`: IKE_SA_INIT)."""
        transforms = tuple(
            Transform(ttype, alg_id, bits)
            for ttype in _TYPE_ORDER
            if (with_dh or ttype is not TransformType.DH)
            and (with_addke or ttype not in ADDKE_TYPES)
            for alg_id, bits in self.get(ttype)
        )
        return Proposal(number, self.protocol, spi, transforms)

    def __str__(self) -> str:
        return self.text or describe_spec(self)


def parse_proposals(text: str, protocol: ProtocolId) -> tuple[ProposalSpec, ...]:
    """Parse "kw-kw-kw, kw-kw" into proposals; raise ValueError naming the bad keyword."""
    parts = [p.strip() for p in text.split(",")]
    if not text.strip() or any(not p for p in parts):
        raise ValueError(f"empty proposal in {text!r}")
    return tuple(_parse_one(part, protocol) for part in parts)


def _parse_one(text: str, protocol: ProtocolId) -> ProposalSpec:
    algorithms: dict[TransformType, list[Algorithm]] = {}
    for word in text.lower().split("-"):
        ttype, alg_id, bits = _keyword(word, text)
        entry = (alg_id, bits)
        bucket = algorithms.setdefault(ttype, [])
        if entry not in bucket:
            bucket.append(entry)
    _complete(algorithms, protocol, text)
    return ProposalSpec(protocol, {t: tuple(v) for t, v in algorithms.items()}, text)


def _keyword(word: str, text: str) -> tuple[TransformType, int, int | None]:
    """One keyword: an algorithm, or `keN_<method>` / `keN_none` (ADDKE N, RFC 9370)."""
    addke = _ADDKE_WORD.fullmatch(word)
    if addke is None:
        if word not in KEYWORDS:
            raise ValueError(f"unknown algorithm keyword {word!r} in proposal {text!r}")
        return KEYWORDS[word]
    ttype = ADDKE_TYPES[int(addke.group(1)) - 1]
    method = addke.group(2)
    if method == "none":
        return ttype, DhId.NONE, None
    known = KEYWORDS.get(method)
    if known is None or known[0] is not TransformType.DH:
        raise ValueError(f"{word!r} in proposal {text!r}: {method!r} is not a key exchange "
                         f"method (e.g. ke1_mlkem768)")
    return ttype, known[1], None


def _complete(algs: dict[TransformType, list[Algorithm]], protocol: ProtocolId,
              text: str) -> None:
    """Check what each protocol requires and fill in the implied transforms."""
    encr = algs.get(TransformType.ENCR, [])
    aead = [a for a in encr if a[0] in _AEAD]
    if aead and len(aead) != len(encr):
        raise ValueError(f"proposal {text!r} mixes AEAD and non-AEAD ciphers")
    if aead and algs.get(TransformType.INTEG):
        raise ValueError(f"proposal {text!r}: AEAD ciphers take no integrity algorithm")
    if protocol is ProtocolId.AH:
        if encr:
            raise ValueError(f"AH proposal {text!r} cannot have an encryption algorithm")
        if not algs.get(TransformType.INTEG):
            raise ValueError(f"AH proposal {text!r} needs an integrity algorithm")
    elif not encr:
        raise ValueError(f"proposal {text!r} needs an encryption algorithm")
    elif not aead and not algs.get(TransformType.INTEG):
        raise ValueError(f"proposal {text!r} needs an integrity algorithm")
    if any(algs.get(t) for t in ADDKE_TYPES) and not algs.get(TransformType.DH):
        raise ValueError(f"proposal {text!r}: additional key exchanges (keN_) need a key "
                         f"exchange method too (e.g. x25519-ke1_mlkem768)")
    if protocol is ProtocolId.IKE:
        _complete_ike(algs, text)
    else:
        if algs.get(TransformType.PRF):
            raise ValueError(f"{protocol.name} proposal {text!r} cannot have a PRF")
        algs.setdefault(TransformType.ESN, [(EsnId.NO_ESN, None)])


def _complete_ike(algs: dict[TransformType, list[Algorithm]], text: str) -> None:
    if TransformType.ESN in algs:
        raise ValueError(f"IKE proposal {text!r} cannot have an ESN transform")
    if not algs.get(TransformType.DH):
        raise ValueError(f"IKE proposal {text!r} needs a key exchange method")
    if not algs.get(TransformType.PRF):
        implied = [(_PRF_FOR_INTEG[i], None) for i, _ in algs.get(TransformType.INTEG, [])
                   if i in _PRF_FOR_INTEG]
        if not implied:
            raise ValueError(f"IKE proposal {text!r} needs a PRF (e.g. prfsha256)")
        algs[TransformType.PRF] = list(dict.fromkeys(implied))


def uses_legacy(specs: Iterable[ProposalSpec]) -> bool:
    return any((t, a[0]) in LEGACY for s in specs for t, algs in s.algorithms.items()
               for a in algs)


DEFAULT_IKE = parse_proposals(
    "aes128gcm16-aes256gcm16-chacha20poly1305-prfsha256-prfsha384-prfsha512"
    "-x25519-ecp256-ecp384-x448-ecp521-modp3072-modp4096-modp2048,"
    "aes128-aes256-sha256-sha384-sha512-prfsha256-prfsha384-prfsha512"
    "-x25519-ecp256-ecp384-x448-ecp521-modp3072-modp4096-modp2048",
    ProtocolId.IKE,
)
DEFAULT_ESP = parse_proposals(
    "aes128gcm16-aes256gcm16-chacha20poly1305-noesn-esn,"
    "aes128-aes256-sha256-sha384-sha512-noesn-esn",
    ProtocolId.ESP,
)


@dataclass(frozen=True, slots=True)
class Suite:
    """What one negotiated proposal says: one algorithm per transform type."""

    protocol: ProtocolId
    encr: int | None = None
    encr_bits: int | None = None
    integ: int | None = None
    prf: int | None = None
    dh: int | None = None
    esn: bool = False
    addke: tuple[int, ...] = ()  # RFC 9370 additional key exchanges, in ADDKE order

    @property
    def aead(self) -> bool:
        return self.encr in _AEAD

    def __str__(self) -> str:
        names = []
        if self.encr is not None:
            name = EncrId(self.encr).name
            names.append(f"{name}_{self.encr_bits}" if self.encr_bits else name)
        if self.integ:
            names.append(IntegId(self.integ).name)
        if self.prf is not None:
            names.append(f"PRF_{PrfId(self.prf).name}")
        if self.dh:
            names.append(DhId(self.dh).name)
        names += [f"KE{n}_{_dh_name(i)}" for n, i in enumerate(self.addke, 1)]
        if self.protocol is not ProtocolId.IKE:
            names.append("ESN" if self.esn else "NO_ESN")
        return "/".join(names)


def _dh_name(group: int) -> str:
    return DhId(group).name if group in DhId._value2member_map_ else str(group)


def suite_of(proposal: Proposal) -> Suite:
    """The suite of a proposal that has (at most) one transform per type."""
    first: dict[TransformType, Transform] = {}
    for t in proposal.transforms:
        first.setdefault(TransformType(t.type), t)
    encr = first.get(TransformType.ENCR)
    integ = first.get(TransformType.INTEG)
    prf = first.get(TransformType.PRF)
    dh = first.get(TransformType.DH)
    esn = first.get(TransformType.ESN)
    return Suite(
        protocol=ProtocolId(proposal.protocol),
        encr=encr.id if encr else None,
        encr_bits=encr.key_length if encr else None,
        integ=integ.id if integ and integ.id != IntegId.NONE else None,
        prf=prf.id if prf else None,
        dh=dh.id if dh and dh.id != DhId.NONE else None,
        esn=bool(esn and esn.id == EsnId.ESN),
        addke=tuple(first[t].id for t in ADDKE_TYPES if t in first and first[t].id != DhId.NONE),
    )


def _offered(proposal: Proposal) -> dict[TransformType, set[Algorithm]]:
    offered: dict[TransformType, set[Algorithm]] = {}
    for t in proposal.transforms:
        if t.unknown_attributes or t.type not in TransformType._value2member_map_:
            continue  # RFC 7296 3.3.6: a transform with unknown attributes is unusable
        offered.setdefault(TransformType(t.type), set()).add((t.id, t.key_length))
    return offered


class DhRule(Enum):
    """How key exchange transforms take part in a selection."""

    REQUIRE = "require"  # IKE_SA_INIT, CREATE_CHILD_SA with a KE payload: a common group
    NONE = "none"  # CREATE_CHILD_SA without KE: neither side may insist on PFS
    IGNORE = "ignore"  # IKE_AUTH: the first CHILD_SA never does a key exchange


def _match_addke(ours: tuple[Algorithm, ...], theirs: set[Algorithm], usable: bool
                 ) -> Algorithm | bool:
    """One ADDKE type: the algorithm to take, True to leave it out, False for no match.
    Where the exchange does no additional key exchanges (`usable` False) the peer's offer
    must allow NONE."""
    if not usable or not ours:
        return not theirs or _NONE in theirs
    pick = next((a for a in ours if a in theirs), None)
    if pick is None:
        return not theirs and _NONE in ours
    return True if pick == _NONE else pick


def _match(spec: ProposalSpec, peer: Proposal, dh: DhRule, addke: bool = False
           ) -> tuple[Transform, ...] | None:
    """Our best transform of each type that `peer` offers, or None if a type has none."""
    offered = _offered(peer)
    chosen: list[Transform] = []
    for ttype in _TYPE_ORDER:
        ours = spec.get(ttype)
        theirs = offered.get(ttype, set())
        if ttype in ADDKE_TYPES:
            if dh is DhRule.IGNORE:
                continue
            result = _match_addke(ours, theirs, addke)
            if result is False:
                return None
            if isinstance(result, tuple):
                chosen.append(Transform(ttype, result[0], result[1]))
            continue
        if ttype is TransformType.DH and dh is not DhRule.REQUIRE:
            if dh is DhRule.NONE and (spec.dh_groups or theirs - {(DhId.NONE, None)}):
                return None
            continue
        if not ours and not theirs:
            continue
        pick = next((a for a in ours if a in theirs), None)
        if pick is None:
            return None
        chosen.append(Transform(ttype, pick[0], pick[1]))
    return tuple(chosen)


def acceptable(peer: Proposal, spi_size: int | None = None) -> bool:
    """Can a proposal be considered at all? Not with a transform of a type we do not know
    (RFC 7296 3.3.6: the whole proposal is skipped, not just that transform), nor with an
    SPI of the wrong size (3.3.1: none in IKE_SA_INIT, so `spi_size` 0 there)."""
    if spi_size is not None and len(peer.spi) != spi_size:
        return False
    return all(t.type in TransformType._value2member_map_ for t in peer.transforms)


def select(local: Sequence[ProposalSpec], offered: Sequence[Proposal],
           dh: DhRule = DhRule.REQUIRE, spi_size: int | None = None,
           addke: bool = False) -> Proposal | None:
    """Choose a proposal as responder; None means NO_PROPOSAL_CHOSEN.

    The result carries the peer's proposal number and SPI, one transform per type.
    Proposals that are not `acceptable` (unknown transform types, an SPI not of
    `spi_size` octets when given) are skipped. `addke`: the exchange can do additional
    key exchanges (IKE_SA_INIT); elsewhere a proposal insisting on one is not chosen.
    """
    offered = [p for p in offered if acceptable(p, spi_size)]
    for spec in local:
        for peer in offered:
            if peer.protocol != spec.protocol:
                continue
            transforms = _match(spec, peer, dh, addke)
            if transforms is not None:
                return Proposal(peer.number, ProtocolId(peer.protocol), peer.spi, transforms)
    return None


def keeping_prf(local: Sequence[ProposalSpec], prf: int | None) -> tuple[ProposalSpec, ...]:
    """The IKE proposals narrowed to `prf`, the running IKE SA's (those without it left
    out): an IKE rekey that changes the PRF is keyed differently by strongSwan (its old
    PRF for prf+ too) and by RFC 7296 2.18 (the new one), so rekeys keep the PRF and a
    configuration that drops it reauthenticates (daemon/changes.py). Empty: none has it."""
    return tuple(
        ProposalSpec(spec.protocol, {**spec.algorithms, TransformType.PRF: (alg,)})
        for spec in local
        for alg in spec.get(TransformType.PRF) if alg[0] == prf)


def accept_chosen(sent: Sequence[Proposal], chosen: Proposal) -> bool:
    """Initiator check: the responder's choice is one transform per type of a proposal we
    sent under that number (RFC 7296 2.7)."""
    match = next((p for p in sent if p.number == chosen.number), None)
    if match is None or match.protocol != chosen.protocol:
        return False
    offered = _offered(match)
    seen: set[int] = set()
    for t in chosen.transforms:
        if t.type in seen or t.type not in TransformType._value2member_map_ \
                or (t.id, t.key_length) not in offered.get(TransformType(t.type), ()):
            return False
        seen.add(t.type)
    optional = {TransformType.DH} | {t for t in ADDKE_TYPES if _NONE in offered.get(t, ())}
    required = {TransformType(t) for t in offered} - optional
    return required <= {TransformType(t) for t in seen}


def describe_spec(spec: ProposalSpec) -> str:
    """Keywords of a proposal, for logs and failure reports."""
    reverse = {(t, a, b): kw for kw, (t, a, b) in reversed(KEYWORDS.items())}
    words = [_word(reverse, t, a) for t in _TYPE_ORDER for a in spec.get(t)]
    return "-".join(words)


def _word(reverse: dict[tuple[TransformType, int, int | None], str], ttype: TransformType,
          alg: Algorithm) -> str:
    if ttype in ADDKE_TYPES:
        method = "none" if alg[0] == DhId.NONE \
            else reverse.get((TransformType.DH, alg[0], None), str(alg[0]))
        return f"ke{ttype - TransformType.ADDKE1 + 1}_{method}"
    return reverse.get((ttype, alg[0], alg[1]), f"{ttype.name}:{alg[0]}")


def describe_offer(proposals: Sequence[Proposal]) -> list[str]:
    """Human form of proposals from the wire, one string per proposal."""
    out = []
    for p in proposals:
        algs: dict[TransformType, list[Algorithm]] = {}
        for t in p.transforms:
            try:
                algs.setdefault(TransformType(t.type), []).append((t.id, t.key_length))
            except ValueError:
                continue
        protocol = ProtocolId(p.protocol) if p.protocol in ProtocolId._value2member_map_ \
            else ProtocolId.NONE  # whatever the peer sent, describing it must not fail
        out.append(describe_spec(ProposalSpec(protocol, {k: tuple(v) for k, v in algs.items()})))
    return out
