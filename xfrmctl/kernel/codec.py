"""Dataclasses <-> XFRM netlink bytes.

Requests are packed with precompiled `struct.Struct`s from the layouts in
`messages` (one pack call per struct: this is the install hot path). What the
kernel sends is decoded with the pyroute2 classes of `messages` and turned back
into the dataclasses of `types`; `decode_*(encode_*(x)) == x` for every value.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from dataclasses import replace
from functools import lru_cache
from ipaddress import ip_address, ip_network
from socket import htonl, htons, ntohl, ntohs
from typing import Any

from pyroute2.netlink import nlmsg
from pyroute2.netlink.exceptions import NetlinkDecodeError

from . import messages as m
from .interface import AeState
from .messages import AeFlag, Attr, MsgType
from .types import (
    AF_INET,
    REQID_MAX,
    REQID_MIN,
    XFRM_INF,
    Acquire,
    Action,
    Algorithm,
    Counters,
    Direction,
    Encap,
    EncapType,
    Expire,
    IPAddress,
    KernelEvent,
    Lifetime,
    Mapping,
    Mark,
    Migrate,
    MigrateEntry,
    Mode,
    Offload,
    PolicyExpire,
    PolicyKey,
    PolicyNotify,
    PolicySpec,
    PolicyState,
    Proto,
    ReplayState,
    SaDir,
    SaExtraFlag,
    SaFlag,
    SaId,
    SaNotify,
    SaSpec,
    SaState,
    SaStats,
    Selector,
    SpdInfo,
    SpdThresholds,
    Template,
    family_of,
)

NLM_F_REQUEST = 0x1
NLM_F_ACK = 0x4
NLM_F_ROOT = 0x100
NLM_F_MATCH = 0x200
NLM_F_DUMP = NLM_F_ROOT | NLM_F_MATCH
NLM_F_CREATE = 0x400
NLM_F_EXCL = 0x200
NLMSG_ERROR = 2
NLMSG_DONE = 3

NLMSGHDR = struct.Struct("=IHHII")
NLAHDR = struct.Struct("=HH")
U32 = struct.Struct("=I")
U8 = struct.Struct("=B")

S_SELECTOR = m.compile_fields(m.SELECTOR)
S_USERSA_INFO = m.compile_fields(m.USERSA_INFO)
S_USERSA_ID = m.compile_fields(m.USERSA_ID)
S_USERSPI_INFO = m.compile_fields(m.USERSPI_INFO)
S_USERPOLICY_INFO = m.compile_fields(m.USERPOLICY_INFO)
S_USERPOLICY_ID = m.compile_fields(m.USERPOLICY_ID)
S_USER_TMPL = m.compile_fields(m.USER_TMPL)
S_ENCAP = m.compile_fields(m.ENCAP_TMPL)
S_ALGO = m.compile_fields(m.ALGO)
S_ALGO3 = m.compile_fields(m.ALGO_AEAD)  # same shape as ALGO_AUTH
S_REPLAY_ESN = m.compile_fields(m.REPLAY_ESN)
S_MARK = m.compile_fields(m.MARK)
S_OFFLOAD = m.compile_fields(m.OFFLOAD)
S_HTHRESH = m.compile_fields(m.SPDHTHRESH)
S_AEVENT_ID = m.compile_fields(m.AEVENT_ID)
S_REPLAY_STATE = m.compile_fields(m.REPLAY_STATE)
S_LIFETIME_CUR = m.compile_fields(m.LIFETIME_CUR)
NLM_F_REPLACE = 0x100

ZERO_ADDR = bytes(16)
NO_LIFETIME = (XFRM_INF, XFRM_INF, XFRM_INF, XFRM_INF, 0, 0, 0, 0)


# --- small pieces ----------------------------------------------------------------------


def pack_addr(addr: IPAddress | None) -> bytes:
    return ZERO_ADDR if addr is None else addr.packed.ljust(16, b"\0")


def unpack_addr(raw: bytes, family: int) -> IPAddress:
    return ip_address(raw[:4]) if family == AF_INET else ip_address(raw[:16])


def unpack_opt_addr(raw: bytes, family: int) -> IPAddress | None:
    return None if raw == ZERO_ADDR else unpack_addr(raw, family)


def nla(attr: int, payload: bytes) -> bytes:
    size = 4 + len(payload)
    return NLAHDR.pack(size, attr) + payload + bytes(-size & 3)


def header(msg_type: int, flags: int, seq: int, body_len: int) -> bytes:
    return NLMSGHDR.pack(16 + body_len, msg_type, flags, seq, 0)


def message(msg_type: int, flags: int, seq: int, body: bytes) -> bytes:
    return header(msg_type, flags, seq, len(body)) + body


def selector_values(sel: Selector) -> tuple[Any, ...]:
    return (
        pack_addr(sel.dst.network_address), pack_addr(sel.src.network_address),
        htons(sel.dport), htons(sel.dport_mask), htons(sel.sport), htons(sel.sport_mask),
        sel.family, sel.dst.prefixlen, sel.src.prefixlen, sel.proto, sel.ifindex, 0,
    )  # fmt: skip


def lifetime_values(lft: Lifetime) -> tuple[int, ...]:
    return (
        lft.soft_bytes, lft.hard_bytes, lft.soft_packets, lft.hard_packets,
        lft.soft_add_expires_seconds, lft.hard_add_expires_seconds,
        lft.soft_use_expires_seconds, lft.hard_use_expires_seconds,
    )  # fmt: skip


def mark_attrs(mark: Mark | None) -> bytes:
    return b"" if mark is None else nla(Attr.MARK, S_MARK.pack(mark.value, mark.mask))


def u32_attr(attr: int, value: int) -> bytes:
    return nla(attr, U32.pack(value))


# --- SAs ---------------------------------------------------------------------------


def _sa_attrs(sa: SaSpec) -> bytes:
    out = []
    if sa.aead is not None:
        a = sa.aead
        out.append(
            nla(Attr.ALG_AEAD, S_ALGO3.pack(a.name.encode(), len(a.key) * 8, a.icv_bits) + a.key)
        )
    if sa.crypt is not None:
        c = sa.crypt
        out.append(nla(Attr.ALG_CRYPT, S_ALGO.pack(c.name.encode(), len(c.key) * 8) + c.key))
    if sa.auth is not None:
        a = sa.auth
        payload = S_ALGO3.pack(a.name.encode(), len(a.key) * 8, a.icv_bits) + a.key
        out.append(nla(Attr.ALG_AUTH_TRUNC, payload))
    if sa.encap is not None:
        e = sa.encap
        payload = S_ENCAP.pack(e.type, htons(e.sport), htons(e.dport), pack_addr(e.oa))
        out.append(nla(Attr.ENCAP, payload))
    if sa.replay is not None:  # the state it starts from (a moved SA)
        out.append(replay_attr(sa.replay))
    elif sa.esn or sa.replay_window > 32:
        words = (sa.replay_window + 31) // 32
        esn = S_REPLAY_ESN.pack(words, 0, 0, 0, 0, sa.replay_window) + bytes(4 * words)
        out.append(nla(Attr.REPLAY_ESN_VAL, esn))
    out.append(mark_attrs(sa.mark))
    if sa.set_mark is not None:
        out.append(u32_attr(Attr.SET_MARK, sa.set_mark.value))
        out.append(u32_attr(Attr.SET_MARK_MASK, sa.set_mark.mask))
    if sa.if_id:
        out.append(u32_attr(Attr.IF_ID, sa.if_id))
    if sa.tfcpad:
        out.append(u32_attr(Attr.TFCPAD, sa.tfcpad))
    if sa.extra_flags:
        out.append(u32_attr(Attr.SA_EXTRA_FLAGS, int(sa.extra_flags)))
    if sa.offload is not None:
        out.append(nla(Attr.OFFLOAD_DEV, S_OFFLOAD.pack(sa.offload.ifindex, sa.offload.flags)))
    if sa.coaddr is not None:
        out.append(nla(Attr.COADDR, pack_addr(sa.coaddr)))
    if sa.direction != SaDir.NONE:
        out.append(nla(Attr.SA_DIR, U8.pack(sa.direction)))
    return b"".join(out)


# xfrm_selector all zero: no addresses, ports, protocol, and family AF_UNSPEC
UNSPEC_SELECTOR = (ZERO_ADDR, ZERO_ADDR, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0)


def _sa_selector_values(sa: SaSpec) -> tuple[tuple[Any, ...], int]:
    """The SA's selector fields and the flag it needs.

    A tunnel-mode SA without a selector of its own gets the AF_UNSPEC one (family 0 with
    XFRM_STATE_AF_UNSPEC, as strongSwan installs them): the kernel then takes the inner
    family from each packet. With the outer family's "any" selector instead, the kernel
    would never pick the SA for inner packets of the other family (IPv4 in IPv6 or the
    reverse: a v4 flow skips an SA whose selector is AF_INET6) nor decapsulate them.
    Read back, it is the outer family's "any" selector again (see `_sa_spec`)."""
    if sa.selector is None and sa.mode == Mode.TUNNEL:
        return UNSPEC_SELECTOR, SaFlag.AF_UNSPEC
    return selector_values(sa.effective_selector()), 0


def encode_sa(sa: SaSpec, seq: int, update: bool = False) -> bytes:
    """NEWSA (or UPDSA, to fill an SPI reserved by ALLOCSPI) with an ack request."""
    selector, unspec = _sa_selector_values(sa)
    flags = int(sa.flags) | (SaFlag.ESN if sa.esn else 0) | unspec
    window = 0 if (sa.esn or sa.replay_window > 32) else sa.replay_window
    body = S_USERSA_INFO.pack(
        *selector,
        pack_addr(sa.dst), htonl(sa.spi), sa.proto, pack_addr(sa.src),
        *lifetime_values(sa.lifetime), 0, 0, 0, 0, 0, 0, 0,
        0, sa.reqid, sa.family, sa.mode, window, flags,
    ) + _sa_attrs(sa)  # fmt: skip
    msg_type = MsgType.UPDSA if update else MsgType.NEWSA
    return message(msg_type, NLM_F_REQUEST | NLM_F_ACK, seq, body)


def encode_sa_id(
    msg_type: int, sa: SaId, seq: int, flags: int = NLM_F_REQUEST | NLM_F_ACK
) -> bytes:
    body = S_USERSA_ID.pack(pack_addr(sa.dst), htonl(sa.spi), family_of(sa.dst), sa.proto)
    return message(msg_type, flags, seq, body + mark_attrs(sa.mark))


def encode_allocspi(
    src: IPAddress, dst: IPAddress, proto: Proto, reqid: int, lo: int, hi: int, seq: int,
    mark: Mark | None = None,
) -> bytes:  # fmt: skip
    family = family_of(dst)
    body = S_USERSPI_INFO.pack(
        *selector_values(Selector.any(dst.version)),
        pack_addr(dst), 0, proto, pack_addr(src), *NO_LIFETIME, 0, 0, 0, 0, 0, 0, 0,
        0, reqid, family, Mode.TUNNEL, 0, 0, lo, hi,
    )  # fmt: skip
    return message(MsgType.ALLOCSPI, NLM_F_REQUEST, seq, body + mark_attrs(mark))


def encode_dump(msg_type: int, seq: int) -> bytes:
    body = S_USERSA_ID.pack(ZERO_ADDR, 0, 0, 0) if msg_type == MsgType.GETSA else b""
    return message(msg_type, NLM_F_REQUEST | NLM_F_DUMP, seq, body)


def _algorithm(attr: Any, with_icv: bool) -> Algorithm:
    name = attr["alg_name"].rstrip(b"\0").decode()
    key = attr["tail"][: attr["alg_key_len"] // 8]
    icv = attr["alg_trunc_len" if "alg_trunc_len" in attr else "alg_icv_len"] if with_icv else 0
    return Algorithm(name, key, icv)


def decode_selector(f: dict[str, Any], prefix: str, default_family: int) -> Selector:
    names = _SELECTOR_NAMES[prefix]
    return _selector(tuple(f[n] for n in names), default_family)


_SELECTOR_NAMES = {
    p: tuple(p + n for n in m.value_names(m.SELECTOR)) for p in ("sel_", "pol_sel_", "")
}


@lru_cache(maxsize=4096)
def _selector(v: tuple[Any, ...], default_family: int) -> Selector:
    daddr, saddr, dport, dmask, sport, smask, family, plen_d, plen_s, proto, ifindex, _ = v
    family = family or default_family
    return Selector(
        ip_network((unpack_addr(saddr, family), plen_s), strict=False),
        ip_network((unpack_addr(daddr, family), plen_d), strict=False),
        proto, ntohs(sport), ntohs(smask), ntohs(dport), ntohs(dmask), ifindex,
    )  # fmt: skip


def decode_lifetime(f: dict[str, Any], prefix: str) -> Lifetime:
    return _lifetime(tuple(f[prefix + n] for n, _ in m.LIFETIME_CFG))


@lru_cache(maxsize=1024)
def _lifetime(values: tuple[int, ...]) -> Lifetime:
    return Lifetime(*values)


def decode_mark(msg: nlmsg, attr: str = "XFRMA_MARK") -> Mark | None:
    raw = msg.get_attr(attr)
    return None if raw is None else Mark(raw["v"], raw["m"])


def _replay(msg: nlmsg, f: dict[str, Any]) -> tuple[int, ReplayState | None]:
    esn = msg.get_attr("XFRMA_REPLAY_ESN_VAL")
    if esn is not None:
        words = esn["bmp_len"]
        bitmap = struct.unpack_from(f"={words}I", esn["tail"]) if words else ()
        state = ReplayState(
            esn["oseq"], esn["seq"], esn["oseq_hi"], esn["seq_hi"], esn["replay_window"],
            tuple(bitmap),
        )  # fmt: skip
        return esn["replay_window"], state
    legacy = msg.get_attr("XFRMA_REPLAY_VAL")
    window = f["replay_window"]
    if legacy is None:
        return window, None
    return window, ReplayState(legacy["oseq"], legacy["seq"], 0, 0, window, (legacy["bitmap"],))


def _sa_spec(msg: nlmsg, f: dict[str, Any], prefix: str = "") -> tuple[SaSpec, ReplayState | None]:
    family = f[prefix + "family"]
    flags = SaFlag(f[prefix + "flags"])
    if not f[prefix + "sel_family"] and flags & SaFlag.AF_UNSPEC:  # see _sa_selector_values
        flags &= ~SaFlag.AF_UNSPEC
    window, replay = _replay(msg, {"replay_window": f[prefix + "replay_window"]})
    encap = msg.get_attr("XFRMA_ENCAP")
    set_mark = msg.get_attr("XFRMA_SET_MARK")
    auth = msg.get_attr("XFRMA_ALG_AUTH_TRUNC")
    aead, crypt = msg.get_attr("XFRMA_ALG_AEAD"), msg.get_attr("XFRMA_ALG_CRYPT")
    offload = msg.get_attr("XFRMA_OFFLOAD_DEV")
    coaddr = msg.get_attr("XFRMA_COADDR")
    mode = Mode(f[prefix + "mode"])
    selector = decode_selector(f, prefix + "sel_", family)
    spec = SaSpec(
        src=unpack_addr(f[prefix + "saddr"], family),
        dst=unpack_addr(f[prefix + "id_daddr"], family),
        spi=ntohl(f[prefix + "id_spi"]),
        reqid=f[prefix + "reqid"],
        proto=Proto(f[prefix + "id_proto"]),
        mode=mode,
        selector=selector,
        aead=None if aead is None else _algorithm(aead, True),
        crypt=None if crypt is None else _algorithm(crypt, False),
        auth=None if auth is None else _algorithm(auth, True),
        encap=None
        if encap is None
        else Encap(
            ntohs(encap["sport"]),
            ntohs(encap["dport"]),
            EncapType(encap["type"]),
            unpack_opt_addr(encap["oa"], family),
        ),
        replay_window=window,
        esn=bool(flags & SaFlag.ESN),
        lifetime=decode_lifetime(f, prefix + "lft_"),
        mark=decode_mark(msg),
        set_mark=None
        if set_mark is None
        else Mark(set_mark, msg.get_attr("XFRMA_SET_MARK_MASK", 0xFFFFFFFF)),
        if_id=msg.get_attr("XFRMA_IF_ID", 0),
        tfcpad=msg.get_attr("XFRMA_TFCPAD", 0),
        flags=flags & ~SaFlag.ESN,
        extra_flags=SaExtraFlag(msg.get_attr("XFRMA_SA_EXTRA_FLAGS", 0)),
        direction=SaDir(msg.get_attr("XFRMA_SA_DIR", 0)),
        offload=None if offload is None else Offload(offload["ifindex"], offload["flags"]),
        coaddr=None if coaddr is None else unpack_addr(coaddr["addr"], family),
    )
    return spec, replay


def decode_sa(msg: nlmsg) -> SaState:
    """NEWSA/UPDSA (a dump entry, a GETSA answer or a notification) -> SaState."""
    return _sa_state(msg, dict(dict.items(msg)), "")


def _sa_state(msg: nlmsg, f: dict[str, Any], prefix: str) -> SaState:
    spec, replay = _sa_spec(msg, f, prefix)
    counters = Counters(*(f[prefix + "cur_" + n] for n, _ in m.LIFETIME_CUR))
    stats = SaStats(*(f[prefix + "stats_" + n] for n, _ in m.STATS))
    return SaState(spec, counters, stats, replay)


_SA_REQID = struct.Struct("=I")
_SA_REQID_OFFSET = 16 + m.offset_of(m.USERSA_INFO, "reqid")


def owned_sa_message(raw: bytes) -> bool:
    """Peek at the reqid of a NEWSA message without decoding it."""
    reqid: int = _SA_REQID.unpack_from(raw, _SA_REQID_OFFSET)[0]
    return REQID_MIN <= reqid <= REQID_MAX


def normalize_sa(spec: SaSpec) -> SaSpec:
    """The spec as the kernel gives it back (selector filled in, ESN window
    carried by REPLAY_ESN). Used by the fake and by tests comparing round trips."""
    return replace(spec, selector=spec.effective_selector())


# --- policies ----------------------------------------------------------------------


def _template_bytes(t: Template, policy_family: int) -> bytes:
    addr = t.dst or t.src
    family = t.family or (family_of(addr) if addr is not None else policy_family)
    return S_USER_TMPL.pack(
        pack_addr(t.dst), htonl(t.spi), t.proto, family, pack_addr(t.src), t.reqid,
        t.mode, t.share, int(t.optional), t.aalgos, t.ealgos, t.calgos,
    )  # fmt: skip


def _policy_attrs(p: PolicySpec) -> bytes:
    out = []
    if p.templates:
        family = p.selector.family
        out.append(nla(Attr.TMPL, b"".join(_template_bytes(t, family) for t in p.templates)))
    out.append(mark_attrs(p.mark))
    if p.if_id:
        out.append(u32_attr(Attr.IF_ID, p.if_id))
    return b"".join(out)


def encode_policy(p: PolicySpec, seq: int, update: bool = False) -> bytes:
    body = S_USERPOLICY_INFO.pack(
        *selector_values(p.selector), *lifetime_values(p.lifetime), 0, 0, 0, 0,
        p.priority, p.index, p.direction, p.action, p.flags, 0,
    ) + _policy_attrs(p)  # fmt: skip
    msg_type = MsgType.UPDPOLICY if update else MsgType.NEWPOLICY
    return message(msg_type, NLM_F_REQUEST | NLM_F_ACK, seq, body)


def encode_policy_id(msg_type: int, key: PolicyKey, seq: int, index: int = 0) -> bytes:
    body = S_USERPOLICY_ID.pack(*selector_values(key.selector), index, key.direction)
    extra = mark_attrs(key.mark) + (u32_attr(Attr.IF_ID, key.if_id) if key.if_id else b"")
    return message(msg_type, NLM_F_REQUEST | NLM_F_ACK, seq, body + extra)


def _templates(msg: nlmsg, policy_family: int) -> tuple[Template, ...]:
    raw = msg.get_attr("XFRMA_TMPL")
    if raw is None:
        return ()
    out = []
    for t in raw["items"]:
        family = t["family"]
        src, dst = unpack_opt_addr(t["saddr"], family), unpack_opt_addr(t["id_daddr"], family)
        addr = dst or src
        derived = family_of(addr) if addr is not None else policy_family
        out.append(
            Template(
                reqid=t["reqid"],
                proto=Proto(t["id_proto"]),
                mode=Mode(t["mode"]),
                src=src,
                dst=dst,
                spi=ntohl(t["id_spi"]),
                optional=bool(t["optional"]),
                share=t["share"],
                aalgos=t["aalgos"],
                ealgos=t["ealgos"],
                calgos=t["calgos"],
                family=0 if family == derived else family,
            )
        )
    return tuple(out)


def _policy_spec(msg: nlmsg, f: dict[str, Any], prefix: str = "") -> PolicySpec:
    selector = decode_selector(f, prefix + "sel_", AF_INET)
    return PolicySpec(
        selector=selector,
        direction=Direction(f[prefix + "dir"]),
        templates=_templates(msg, selector.family),
        priority=f[prefix + "priority"],
        action=Action(f[prefix + "action"]),
        mark=decode_mark(msg),
        if_id=msg.get_attr("XFRMA_IF_ID", 0),
        index=f[prefix + "index"],
        lifetime=decode_lifetime(f, prefix + "lft_"),
        flags=f[prefix + "flags"],
    )


def socket_policy(msg: nlmsg) -> bool:
    """A per-socket policy (an IKE socket's bypass): its direction is XFRM_POLICY_MAX plus
    the socket's; it belongs to that socket, not to the SPD we manage."""
    return int(msg["dir"]) > Direction.FWD


def decode_policy(msg: nlmsg) -> PolicyState:
    f = dict(dict.items(msg))
    spec = _policy_spec(msg, f)
    return PolicyState(spec, Counters(*(f["cur_" + n] for n, _ in m.LIFETIME_CUR)))


# --- SPD info ------------------------------------------------------------------------


def encode_getspdinfo(seq: int) -> bytes:
    return message(MsgType.GETSPDINFO, NLM_F_REQUEST, seq, U32.pack(0xFFFFFFFF))


def encode_newspdinfo(t: SpdThresholds, seq: int) -> bytes:
    body = (
        U32.pack(0)
        + nla(m.SpdAttr.IPV4_HTHRESH, S_HTHRESH.pack(t.v4_local, t.v4_remote))
        + nla(m.SpdAttr.IPV6_HTHRESH, S_HTHRESH.pack(t.v6_local, t.v6_remote))
    )
    return message(MsgType.NEWSPDINFO, NLM_F_REQUEST | NLM_F_ACK, seq, body)


def decode_spdinfo(msg: nlmsg) -> SpdInfo:
    info = msg.get_attr("XFRMA_SPD_INFO") or {}
    hinfo = msg.get_attr("XFRMA_SPD_HINFO") or {}
    v4 = msg.get_attrs("XFRMA_SPD_IPV4_HTHRESH")
    v6 = msg.get_attrs("XFRMA_SPD_IPV6_HTHRESH")
    thresholds = SpdThresholds(
        v4[0]["lbits"] if v4 else 32, v4[0]["rbits"] if v4 else 32,
        v6[0]["lbits"] if v6 else 128, v6[0]["rbits"] if v6 else 128,
    )  # fmt: skip
    counts = {n: info.get(n, 0) for n, _ in m.SPDINFO}
    return SpdInfo(
        **counts,
        hash_count=hinfo.get("spdhcnt", 0),
        hash_max=hinfo.get("spdhmcnt", 0),
        thresholds=thresholds,
    )


# --- async events (NEWAE/GETAE) ---------------------------------------------------------

AE_GET_FLAGS = AeFlag.RVAL | AeFlag.LVAL | AeFlag.RTHR | AeFlag.ETHR


def _aevent_id(sa: SaId, src: IPAddress | None, flags: int, reqid: int) -> bytes:
    return S_AEVENT_ID.pack(
        pack_addr(sa.dst), htonl(sa.spi), family_of(sa.dst), sa.proto, pack_addr(src), flags,
        reqid,
    )  # fmt: skip


def replay_attr(replay: ReplayState) -> bytes:
    """XFRMA_REPLAY_ESN_VAL when `replay` has the ESN shape (window > 0), else
    XFRMA_REPLAY_VAL (one bitmap word)."""
    if replay.replay_window:
        words = len(replay.bitmap)
        head = S_REPLAY_ESN.pack(
            words, replay.oseq, replay.seq, replay.oseq_hi, replay.seq_hi, replay.replay_window
        )
        return nla(Attr.REPLAY_ESN_VAL, head + struct.pack(f"={words}I", *replay.bitmap))
    if len(replay.bitmap) > 1 or replay.oseq_hi or replay.seq_hi:
        raise ValueError(f"{replay}: the legacy replay state has 32-bit numbers, one word")
    bitmap = replay.bitmap[0] if replay.bitmap else 0
    return nla(Attr.REPLAY_VAL, S_REPLAY_STATE.pack(replay.oseq, replay.seq, bitmap))


def encode_getae(sa: SaId, seq: int, src: IPAddress | None = None) -> bytes:
    """GETAE: the kernel looks the SA up by (daddr, spi, proto, family, mark) and
    echoes the flags: RVAL|LVAL always answered, RTHR/ETHR only when asked for."""
    body = _aevent_id(sa, src, AE_GET_FLAGS, 0) + mark_attrs(sa.mark)
    return message(MsgType.GETAE, NLM_F_REQUEST, seq, body)


def encode_newae(
    sa: SaId, seq: int, replay: ReplayState | None = None, lifetime: Counters | None = None,
    replay_threshold: int | None = None, timer_threshold: int | None = None,
    src: IPAddress | None = None, reqid: int = 0, flags: int | None = None,
    nl_flags: int = NLM_F_REQUEST | NLM_F_ACK | NLM_F_REPLACE,
) -> bytes:  # fmt: skip
    """NEWAE (the kernel insists on NLM_F_REPLACE). `timer_threshold` is the raw
    XFRMA_ETIMER_THRESH: the kernel stores it as jiffies, reports it in 100 ms."""
    attrs, auto = [], AeFlag.UNSPEC
    if replay is not None:
        attrs.append(replay_attr(replay))
        auto |= AeFlag.RVAL
    if lifetime is not None:
        cur = S_LIFETIME_CUR.pack(
            lifetime.bytes, lifetime.packets, lifetime.add_time, lifetime.use_time
        )
        attrs.append(nla(Attr.LTIME_VAL, cur))
        auto |= AeFlag.LVAL
    if replay_threshold is not None:
        attrs.append(u32_attr(Attr.REPLAY_THRESH, replay_threshold))
        auto |= AeFlag.RTHR
    if timer_threshold is not None:
        attrs.append(u32_attr(Attr.ETIMER_THRESH, timer_threshold))
        auto |= AeFlag.ETHR
    attrs.append(mark_attrs(sa.mark))
    body = _aevent_id(sa, src, int(auto) if flags is None else flags, reqid) + b"".join(attrs)
    return message(MsgType.NEWAE, nl_flags, seq, body)


def encode_ae_state(state: AeState, seq: int) -> bytes:
    """An AeState as the kernel's NEWAE answer to GETAE carries it (tests, fixtures)."""
    timer = None if state.timer_threshold_ms is None else state.timer_threshold_ms // 100
    return encode_newae(
        state.sa, seq, state.replay, state.lifetime, state.replay_threshold, timer,
        src=state.src, reqid=state.reqid, flags=state.flags, nl_flags=0,
    )  # fmt: skip


def decode_ae(msg: nlmsg) -> AeState:
    """NEWAE (the answer to GETAE, or an AEVENTS notification) -> AeState."""
    family = msg["id_family"]
    sa = SaId(
        unpack_addr(msg["id_daddr"], family), ntohl(msg["id_spi"]), Proto(msg["id_proto"]),
        decode_mark(msg),
    )  # fmt: skip
    esn = msg.get_attr("XFRMA_REPLAY_ESN_VAL")
    legacy = msg.get_attr("XFRMA_REPLAY_VAL")
    if esn is not None:
        words = esn["bmp_len"]
        replay = ReplayState(
            esn["oseq"], esn["seq"], esn["oseq_hi"], esn["seq_hi"], esn["replay_window"],
            tuple(struct.unpack_from(f"={words}I", esn["tail"])) if words else (),
        )  # fmt: skip
    elif legacy is not None:
        replay = ReplayState(legacy["oseq"], legacy["seq"], bitmap=(legacy["bitmap"],))
    else:
        replay = ReplayState()
    cur = msg.get_attr("XFRMA_LTIME_VAL")
    lifetime = Counters() if cur is None else Counters(*(cur[n] for n, _ in m.LIFETIME_CUR))
    timer = msg.get_attr("XFRMA_ETIMER_THRESH")
    return AeState(
        sa=sa,
        src=unpack_opt_addr(msg["saddr"], family),
        reqid=msg["reqid"],
        replay=replay,
        lifetime=lifetime,
        replay_threshold=msg.get_attr("XFRMA_REPLAY_THRESH"),
        timer_threshold_ms=None if timer is None else timer * 100,
        flags=msg["flags"],
    )


# --- events --------------------------------------------------------------------------


def _acquire(msg: nlmsg) -> Acquire:
    family = msg["pol_sel_family"] or msg["sel_family"] or AF_INET
    templates = _templates(msg, family)
    return Acquire(
        src=unpack_addr(msg["saddr"], family),
        dst=unpack_addr(msg["id_daddr"], family),
        proto=Proto(msg["id_proto"]),
        reqid=templates[0].reqid if templates else 0,
        selector=decode_selector(msg, "sel_", family),
        policy_direction=Direction(msg["pol_dir"]),
        policy_index=msg["pol_index"],
        seq=msg["seq"],
        if_id=msg.get_attr("XFRMA_IF_ID", 0),
    )


def _expire(msg: nlmsg) -> Expire:
    family = msg["family"]
    sa = SaId(
        unpack_addr(msg["id_daddr"], family), ntohl(msg["id_spi"]), Proto(msg["id_proto"]),
        decode_mark(msg),
    )  # fmt: skip
    return Expire(sa, bool(msg["hard"]), msg["reqid"], unpack_addr(msg["saddr"], family))


def _mapping(msg: nlmsg) -> Mapping:
    family = msg["id_family"]
    sa = SaId(unpack_addr(msg["id_daddr"], family), ntohl(msg["id_spi"]), Proto(msg["id_proto"]))
    return Mapping(
        sa, msg["reqid"], unpack_addr(msg["old_saddr"], family),
        unpack_addr(msg["new_saddr"], family), ntohs(msg["old_sport"]), ntohs(msg["new_sport"]),
    )  # fmt: skip


def _migrate(msg: nlmsg) -> Migrate:
    raw = msg.get_attr("XFRMA_MIGRATE")
    entries = tuple(
        MigrateEntry(
            unpack_addr(e["old_saddr"], e["old_family"]),
            unpack_addr(e["old_daddr"], e["old_family"]),
            unpack_addr(e["new_saddr"], e["new_family"]),
            unpack_addr(e["new_daddr"], e["new_family"]),
            Proto(e["proto"]),
            Mode(e["mode"]),
            e["reqid"],
        )
        for e in (raw["items"] if raw is not None else [])
    )
    selector = decode_selector(msg, "sel_", AF_INET)
    return Migrate(selector, Direction(msg["dir"]), entries)


def _sa_notify(msg: nlmsg, kind: str) -> SaNotify:
    if kind == "flush":
        return SaNotify(kind, None)
    if kind == "delete":
        family = msg["family"]
        sa = SaId(unpack_addr(msg["daddr"], family), ntohl(msg["spi"]), Proto(msg["proto"]))
        full = msg.get_attr("XFRMA_SA")
        return SaNotify(kind, sa, full["reqid"] if full is not None else 0)
    spec = decode_sa(msg).spec
    return SaNotify(kind, spec.id, spec.reqid)


def _policy_notify(msg: nlmsg, kind: str) -> PolicyNotify:
    if kind == "flush":
        return PolicyNotify(kind, None)
    if kind == "delete":
        sel = decode_selector(msg, "sel_", AF_INET)
        key = PolicyKey(
            sel, Direction(msg["dir"]), decode_mark(msg), msg.get_attr("XFRMA_IF_ID", 0)
        )
        return PolicyNotify(kind, key, msg["index"])
    spec = decode_policy(msg).spec
    return PolicyNotify(kind, spec.key, spec.index)


EVENT_DECODERS: dict[int, Any] = {
    MsgType.ACQUIRE: _acquire,
    MsgType.EXPIRE: _expire,
    MsgType.POLEXPIRE: lambda msg: PolicyExpire(_policy_spec(msg, msg), bool(msg["hard"])),
    MsgType.MAPPING: _mapping,
    MsgType.MIGRATE: _migrate,
    MsgType.NEWSA: lambda msg: _sa_notify(msg, "new"),
    MsgType.UPDSA: lambda msg: _sa_notify(msg, "update"),
    MsgType.DELSA: lambda msg: _sa_notify(msg, "delete"),
    MsgType.FLUSHSA: lambda msg: _sa_notify(msg, "flush"),
    MsgType.NEWPOLICY: lambda msg: _policy_notify(msg, "new"),
    MsgType.UPDPOLICY: lambda msg: _policy_notify(msg, "update"),
    MsgType.DELPOLICY: lambda msg: _policy_notify(msg, "delete"),
    MsgType.FLUSHPOLICY: lambda msg: _policy_notify(msg, "flush"),
}


class KernelMessageError(ValueError):
    """A message from the kernel that does not decode (truncated, unknown enum value...)."""


# What decoding a malformed message raises, from pyroute2 and from our own decoders.
_DECODE_ERRORS = (ValueError, TypeError, KeyError, IndexError, AttributeError, struct.error,
                  NetlinkDecodeError)


def decode_event(data: bytes | bytearray, offset: int = 0) -> KernelEvent | None:
    """A multicast message -> event dataclass (None for types we don't report).
    Raises KernelMessageError, and only that, when the message does not decode."""
    try:
        (msg_type,) = struct.unpack_from("=H", data, offset + 4)
        decoder = EVENT_DECODERS.get(msg_type)
        if decoder is None:
            return None
        result: KernelEvent = decoder(m.decode(data, offset))
    except _DECODE_ERRORS as exc:
        raise KernelMessageError(f"undecodable kernel message at {offset}: {exc!r}") from None
    return result


def split(data: bytes | bytearray) -> Iterable[tuple[int, int, int, int]]:
    """(offset, length, type, seq) of each netlink message in a datagram."""
    offset = 0
    while offset + 16 <= len(data):
        length, msg_type, _flags, seq, _pid = NLMSGHDR.unpack_from(data, offset)
        if length < 16:
            break
        yield offset, length, msg_type, seq
        offset += (length + 3) & ~3


def error_code(data: bytes | bytearray, offset: int) -> int:
    """The (positive) errno of an NLMSG_ERROR; 0 for an ack."""
    code: int = struct.unpack_from("=i", data, offset + 16)[0]
    return -code
