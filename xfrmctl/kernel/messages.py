"""XFRM netlink messages (include/uapi/linux/xfrm.h) declared on pyroute2's classes.

The struct layouts are tables of (field, struct format) with explicit padding, so the
same table declares the pyroute2 `nlmsg`/`nla` classes (used to decode what the
kernel sends) and compiles to one `struct.Struct` each (used by `codec` to encode
requests fast). Sizes are checked against the C sizeof() values at import.
Multi-byte fields are native order; the big-endian ones (SPI, ports) are swapped by
the codec.
"""

from __future__ import annotations

import struct
from enum import IntEnum, IntFlag
from typing import Any

from pyroute2.netlink import nla, nlmsg

Fields = tuple[tuple[str, str], ...]


class MsgType(IntEnum):
    NEWSA = 0x10
    DELSA = 0x11
    GETSA = 0x12
    NEWPOLICY = 0x13
    DELPOLICY = 0x14
    GETPOLICY = 0x15
    ALLOCSPI = 0x16
    ACQUIRE = 0x17
    EXPIRE = 0x18
    UPDPOLICY = 0x19
    UPDSA = 0x1A
    POLEXPIRE = 0x1B
    FLUSHSA = 0x1C
    FLUSHPOLICY = 0x1D
    NEWAE = 0x1E
    GETAE = 0x1F
    REPORT = 0x20
    MIGRATE = 0x21
    NEWSADINFO = 0x22
    GETSADINFO = 0x23
    NEWSPDINFO = 0x24
    GETSPDINFO = 0x25
    MAPPING = 0x26


class Attr(IntEnum):
    ALG_AUTH = 1
    ALG_CRYPT = 2
    ALG_COMP = 3
    ENCAP = 4
    TMPL = 5
    SA = 6
    POLICY = 7
    SEC_CTX = 8
    LTIME_VAL = 9
    REPLAY_VAL = 10
    REPLAY_THRESH = 11
    ETIMER_THRESH = 12
    SRCADDR = 13
    COADDR = 14
    LASTUSED = 15
    POLICY_TYPE = 16
    MIGRATE = 17
    ALG_AEAD = 18
    KMADDRESS = 19
    ALG_AUTH_TRUNC = 20
    MARK = 21
    TFCPAD = 22
    REPLAY_ESN_VAL = 23
    SA_EXTRA_FLAGS = 24
    PROTO = 25
    ADDRESS_FILTER = 26
    PAD = 27
    OFFLOAD_DEV = 28
    SET_MARK = 29
    SET_MARK_MASK = 30
    IF_ID = 31
    MTIMER_THRESH = 32
    SA_DIR = 33


class AeFlag(IntFlag):
    """enum xfrm_ae_ftype_t: what a NEWAE/GETAE carries (xfrm_aevent_id.flags)."""

    UNSPEC = 0
    RTHR = 1  # XFRMA_REPLAY_THRESH
    RVAL = 2  # XFRMA_REPLAY_VAL / XFRMA_REPLAY_ESN_VAL
    LVAL = 4  # XFRMA_LTIME_VAL
    ETHR = 8  # XFRMA_ETIMER_THRESH
    CR = 16
    CE = 32
    CU = 64


class SpdAttr(IntEnum):
    INFO = 1
    HINFO = 2
    IPV4_HTHRESH = 3
    IPV6_HTHRESH = 4


class Group(IntEnum):
    """XFRMNLGRP_*: multicast groups (bind mask bit is 1 << (group - 1))."""

    ACQUIRE = 1
    EXPIRE = 2
    SA = 3
    POLICY = 4
    AEVENTS = 5
    REPORT = 6
    MIGRATE = 7
    MAPPING = 8


# --- struct layouts ------------------------------------------------------------------

ADDR = "16s"


def cat(*parts: Fields) -> Fields:
    return tuple(field for part in parts for field in part)


def _prefixed(prefix: str, fields: Fields) -> Fields:
    return tuple((name if name.startswith("_") else prefix + name, fmt) for name, fmt in fields)


def _pads(fields: Fields) -> Fields:
    """Give every padding field a unique name (pyroute2 keys fields by name)."""
    return tuple((f"_pad{i}" if n == "_" else n, f) for i, (n, f) in enumerate(fields))


SELECTOR: Fields = (
    ("daddr", ADDR), ("saddr", ADDR), ("dport", "H"), ("dport_mask", "H"),
    ("sport", "H"), ("sport_mask", "H"), ("family", "H"), ("prefixlen_d", "B"),
    ("prefixlen_s", "B"), ("proto", "B"), ("_", "3x"), ("ifindex", "i"), ("user", "I"),
)  # fmt: skip
XFRM_ID: Fields = (("daddr", ADDR), ("spi", "I"), ("proto", "B"), ("_", "3x"))
LIFETIME_CFG: Fields = tuple(
    (n, "Q")
    for n in (
        "soft_bytes", "hard_bytes", "soft_packets", "hard_packets",
        "soft_add", "hard_add", "soft_use", "hard_use",
    )
)  # fmt: skip
LIFETIME_CUR: Fields = (("bytes", "Q"), ("packets", "Q"), ("add_time", "Q"), ("use_time", "Q"))
STATS: Fields = (("replay_window", "I"), ("replay", "I"), ("integrity_failed", "I"))

USERSA_INFO: Fields = _pads(
    cat(
        _prefixed("sel_", SELECTOR), _prefixed("id_", XFRM_ID), (("saddr", ADDR),),
        _prefixed("lft_", LIFETIME_CFG), _prefixed("cur_", LIFETIME_CUR),
        _prefixed("stats_", STATS),
        (("seq", "I"), ("reqid", "I"), ("family", "H"), ("mode", "B")),
        (("replay_window", "B"), ("flags", "B"), ("_", "7x")),
    )
)  # fmt: skip
USERSA_ID: Fields = _pads(
    (("daddr", ADDR), ("spi", "I"), ("family", "H"), ("proto", "B"), ("_", "x"))
)
USERSPI_INFO: Fields = cat(USERSA_INFO, (("min", "I"), ("max", "I")))
USERPOLICY_INFO: Fields = _pads(
    cat(
        _prefixed("sel_", SELECTOR), _prefixed("lft_", LIFETIME_CFG),
        _prefixed("cur_", LIFETIME_CUR),
        (("priority", "I"), ("index", "I"), ("dir", "B"), ("action", "B")),
        (("flags", "B"), ("share", "B"), ("_", "4x")),
    )
)  # fmt: skip
USERPOLICY_ID: Fields = _pads(
    cat(_prefixed("sel_", SELECTOR), (("index", "I"), ("dir", "B"), ("_", "3x")))
)
USER_TMPL: Fields = _pads(
    cat(
        _prefixed("id_", XFRM_ID),
        (("family", "H"), ("_", "2x"), ("saddr", ADDR), ("reqid", "I"), ("mode", "B")),
        (("share", "B"), ("optional", "B"), ("_", "x")),
        (("aalgos", "I"), ("ealgos", "I"), ("calgos", "I")),
    )
)
ENCAP_TMPL: Fields = _pads(
    (("type", "H"), ("sport", "H"), ("dport", "H"), ("_", "2x"), ("oa", ADDR))
)
USER_ACQUIRE: Fields = _pads(
    cat(
        _prefixed("id_", XFRM_ID), (("saddr", ADDR),), _prefixed("sel_", SELECTOR),
        _prefixed("pol_", USERPOLICY_INFO),
        (("aalgos", "I"), ("ealgos", "I"), ("calgos", "I"), ("seq", "I")),
    )
)  # fmt: skip
USER_EXPIRE: Fields = _pads(cat(USERSA_INFO, (("hard", "B"), ("_", "7x"))))
USER_POLEXPIRE: Fields = _pads(cat(USERPOLICY_INFO, (("hard", "B"), ("_", "7x"))))
USER_MAPPING: Fields = cat(
    _prefixed("id_", USERSA_ID),
    (("reqid", "I"), ("old_saddr", ADDR), ("new_saddr", ADDR)),
    (("old_sport", "H"), ("new_sport", "H")),
)
USER_MIGRATE: Fields = (
    ("old_daddr", ADDR), ("old_saddr", ADDR), ("new_daddr", ADDR), ("new_saddr", ADDR),
    ("proto", "B"), ("mode", "B"), ("reserved", "H"), ("reqid", "I"),
    ("old_family", "H"), ("new_family", "H"),
)  # fmt: skip
AEVENT_ID: Fields = cat(
    _prefixed("id_", USERSA_ID), (("saddr", ADDR), ("flags", "I"), ("reqid", "I"))
)
USERSA_FLUSH: Fields = (("proto", "B"), ("_pad0", "3x"))
ALGO: Fields = (("alg_name", "64s"), ("alg_key_len", "I"))
ALGO_AUTH: Fields = cat(ALGO, (("alg_trunc_len", "I"),))
ALGO_AEAD: Fields = cat(ALGO, (("alg_icv_len", "I"),))
REPLAY_STATE: Fields = (("oseq", "I"), ("seq", "I"), ("bitmap", "I"))
REPLAY_ESN: Fields = (
    ("bmp_len", "I"), ("oseq", "I"), ("seq", "I"), ("oseq_hi", "I"), ("seq_hi", "I"),
    ("replay_window", "I"),
)  # fmt: skip
MARK: Fields = (("v", "I"), ("m", "I"))
OFFLOAD: Fields = (("ifindex", "i"), ("flags", "B"), ("_pad0", "3x"))
POLICY_TYPE: Fields = (
    ("type", "B"), ("_pad0", "x"), ("reserved1", "H"), ("reserved2", "B"), ("_pad1", "x"),
)  # fmt: skip
SPDINFO: Fields = tuple(
    (n, "I") for n in ("incnt", "outcnt", "fwdcnt", "inscnt", "outscnt", "fwdscnt")
)
SPDHINFO: Fields = (("spdhcnt", "I"), ("spdhmcnt", "I"))
SPDHTHRESH: Fields = (("lbits", "B"), ("rbits", "B"))
U32: Fields = (("value", "I"),)


def compile_fields(fields: Fields) -> struct.Struct:
    """One native-order, unaligned struct for a layout (padding made explicit)."""
    return struct.Struct("=" + "".join(fmt for _, fmt in fields))


def value_names(fields: Fields) -> tuple[str, ...]:
    return tuple(name for name, fmt in fields if not fmt.endswith("x"))


def offset_of(fields: Fields, name: str) -> int:
    names = [n for n, _ in fields]
    return compile_fields(fields[: names.index(name)]).size


C_SIZES = {
    "SELECTOR": (SELECTOR, 56), "USERSA_INFO": (USERSA_INFO, 224),
    "USERSA_ID": (USERSA_ID, 24), "USERSPI_INFO": (USERSPI_INFO, 232),
    "USERPOLICY_INFO": (USERPOLICY_INFO, 168), "USERPOLICY_ID": (USERPOLICY_ID, 64),
    "USER_TMPL": (USER_TMPL, 64), "ENCAP_TMPL": (ENCAP_TMPL, 24),
    "USER_ACQUIRE": (USER_ACQUIRE, 280), "USER_EXPIRE": (USER_EXPIRE, 232),
    "USER_POLEXPIRE": (USER_POLEXPIRE, 176), "USER_MAPPING": (USER_MAPPING, 64),
    "USER_MIGRATE": (USER_MIGRATE, 76), "AEVENT_ID": (AEVENT_ID, 48),
    "REPLAY_ESN": (REPLAY_ESN, 24), "ALGO_AEAD": (ALGO_AEAD, 72), "POLICY_TYPE": (POLICY_TYPE, 6),
}  # fmt: skip
for _name, (_fields, _size) in C_SIZES.items():
    assert compile_fields(_fields).size == _size, (_name, compile_fields(_fields).size)


# --- pyroute2 classes (decoding) ----------------------------------------------------


class _struct_nla(nla):  # type: ignore[misc]
    """An NLA holding one fixed struct; extra bytes after it land in `tail`."""

    __slots__ = ()
    fields: Fields = ()

    def decode(self) -> None:
        nla.decode(self)
        end = self.offset + self.length
        start = self.offset + 4 + compile_fields(self.fields).size
        self["tail"] = bytes(self.data[start:end])


class _array_nla(nla):  # type: ignore[misc]
    """An NLA holding back-to-back structs (XFRMA_TMPL, XFRMA_MIGRATE)."""

    __slots__ = ()
    item: Fields = ()

    def decode(self) -> None:
        nla.decode(self)
        layout = compile_fields(self.item)
        names = [n for n, _ in self.item]
        start, end = self.offset + 4, self.offset + self.length
        self["items"] = [
            dict(zip(names, _unpack_with_pads(layout, self.item, self.data, off), strict=True))
            for off in range(start, end - layout.size + 1, layout.size)
        ]


def _unpack_with_pads(
    layout: struct.Struct, fields: Fields, data: bytes | bytearray, offset: int
) -> list[Any]:
    values = iter(layout.unpack_from(data, offset))
    return [None if fmt.endswith("x") else next(values) for _, fmt in fields]


def _struct_class(name: str, fields: Fields) -> type[_struct_nla]:
    return type(name, (_struct_nla,), {"__slots__": (), "fields": fields})


def _array_class(name: str, item: Fields) -> type[_array_nla]:
    return type(name, (_array_nla,), {"__slots__": (), "item": item})


class _xfrm_attrs:
    """The XFRMA_* NLA table shared by every XFRM message class."""

    nla_map = (
        (0, "XFRMA_UNSPEC", "none"),
        (Attr.ALG_AUTH, "XFRMA_ALG_AUTH", "algo"),
        (Attr.ALG_CRYPT, "XFRMA_ALG_CRYPT", "algo"),
        (Attr.ALG_COMP, "XFRMA_ALG_COMP", "algo"),
        (Attr.ENCAP, "XFRMA_ENCAP", "encap"),
        (Attr.TMPL, "XFRMA_TMPL", "tmpl"),
        (Attr.SA, "XFRMA_SA", "usersa_info"),
        (Attr.POLICY, "XFRMA_POLICY", "userpolicy_info"),
        (Attr.SEC_CTX, "XFRMA_SEC_CTX", "hex"),
        (Attr.LTIME_VAL, "XFRMA_LTIME_VAL", "lifetime_cur"),
        (Attr.REPLAY_VAL, "XFRMA_REPLAY_VAL", "replay_state"),
        (Attr.REPLAY_THRESH, "XFRMA_REPLAY_THRESH", "uint32"),
        (Attr.ETIMER_THRESH, "XFRMA_ETIMER_THRESH", "uint32"),
        (Attr.SRCADDR, "XFRMA_SRCADDR", "address"),
        (Attr.COADDR, "XFRMA_COADDR", "address"),
        (Attr.LASTUSED, "XFRMA_LASTUSED", "uint64"),
        (Attr.POLICY_TYPE, "XFRMA_POLICY_TYPE", "policy_type"),
        (Attr.MIGRATE, "XFRMA_MIGRATE", "migrate"),
        (Attr.ALG_AEAD, "XFRMA_ALG_AEAD", "algo_aead"),
        (Attr.KMADDRESS, "XFRMA_KMADDRESS", "hex"),
        (Attr.ALG_AUTH_TRUNC, "XFRMA_ALG_AUTH_TRUNC", "algo_auth"),
        (Attr.MARK, "XFRMA_MARK", "mark"),
        (Attr.TFCPAD, "XFRMA_TFCPAD", "uint32"),
        (Attr.REPLAY_ESN_VAL, "XFRMA_REPLAY_ESN_VAL", "replay_esn"),
        (Attr.SA_EXTRA_FLAGS, "XFRMA_SA_EXTRA_FLAGS", "uint32"),
        (Attr.PROTO, "XFRMA_PROTO", "uint8"),
        (Attr.ADDRESS_FILTER, "XFRMA_ADDRESS_FILTER", "hex"),
        (Attr.PAD, "XFRMA_PAD", "hex"),
        (Attr.OFFLOAD_DEV, "XFRMA_OFFLOAD_DEV", "offload"),
        (Attr.SET_MARK, "XFRMA_SET_MARK", "uint32"),
        (Attr.SET_MARK_MASK, "XFRMA_SET_MARK_MASK", "uint32"),
        (Attr.IF_ID, "XFRMA_IF_ID", "uint32"),
        (Attr.MTIMER_THRESH, "XFRMA_MTIMER_THRESH", "uint32"),
        (Attr.SA_DIR, "XFRMA_SA_DIR", "uint8"),
    )
    algo = _struct_class("algo", ALGO)
    algo_auth = _struct_class("algo_auth", ALGO_AUTH)
    algo_aead = _struct_class("algo_aead", ALGO_AEAD)
    encap = _struct_class("encap", ENCAP_TMPL)
    tmpl = _array_class("tmpl", USER_TMPL)
    migrate = _array_class("migrate", USER_MIGRATE)
    usersa_info = _struct_class("usersa_info", USERSA_INFO)
    userpolicy_info = _struct_class("userpolicy_info", USERPOLICY_INFO)
    lifetime_cur = _struct_class("lifetime_cur", LIFETIME_CUR)
    replay_state = _struct_class("replay_state", REPLAY_STATE)
    replay_esn = _struct_class("replay_esn", REPLAY_ESN)
    address = _struct_class("address", (("addr", ADDR),))
    policy_type = _struct_class("policy_type", POLICY_TYPE)
    mark = _struct_class("mark", MARK)
    offload = _struct_class("offload", OFFLOAD)


def _message_class(name: str, fields: Fields) -> type[nlmsg]:
    body = {"__slots__": (), "fields": fields}
    return type(name, (_xfrm_attrs, nlmsg), body)


usersa_info_msg = _message_class("usersa_info_msg", USERSA_INFO)
usersa_id_msg = _message_class("usersa_id_msg", USERSA_ID)
userpolicy_info_msg = _message_class("userpolicy_info_msg", USERPOLICY_INFO)
userpolicy_id_msg = _message_class("userpolicy_id_msg", USERPOLICY_ID)
user_acquire_msg = _message_class("user_acquire_msg", USER_ACQUIRE)
user_expire_msg = _message_class("user_expire_msg", USER_EXPIRE)
user_polexpire_msg = _message_class("user_polexpire_msg", USER_POLEXPIRE)
user_mapping_msg = _message_class("user_mapping_msg", USER_MAPPING)
aevent_msg = _message_class("aevent_msg", AEVENT_ID)
usersa_flush_msg = _message_class("usersa_flush_msg", USERSA_FLUSH)
empty_msg = _message_class("empty_msg", ())


class spdinfo_msg(nlmsg):  # type: ignore[misc]
    __slots__ = ()
    fields = (("flags", "I"),)
    nla_map = (
        (0, "XFRMA_SPD_UNSPEC", "none"),
        (SpdAttr.INFO, "XFRMA_SPD_INFO", "info"),
        (SpdAttr.HINFO, "XFRMA_SPD_HINFO", "hinfo"),
        (SpdAttr.IPV4_HTHRESH, "XFRMA_SPD_IPV4_HTHRESH", "hthresh"),
        (SpdAttr.IPV6_HTHRESH, "XFRMA_SPD_IPV6_HTHRESH", "hthresh"),
    )
    info = _struct_class("info", SPDINFO)
    hinfo = _struct_class("hinfo", SPDHINFO)
    hthresh = _struct_class("hthresh", SPDHTHRESH)


# Which class decodes which message type the kernel sends us.
MESSAGE_CLASSES: dict[int, type[nlmsg]] = {
    MsgType.NEWSA: usersa_info_msg,
    MsgType.UPDSA: usersa_info_msg,
    MsgType.DELSA: usersa_id_msg,
    MsgType.GETSA: usersa_id_msg,
    MsgType.NEWPOLICY: userpolicy_info_msg,
    MsgType.UPDPOLICY: userpolicy_info_msg,
    MsgType.DELPOLICY: userpolicy_id_msg,
    MsgType.GETPOLICY: userpolicy_id_msg,
    MsgType.ACQUIRE: user_acquire_msg,
    MsgType.EXPIRE: user_expire_msg,
    MsgType.POLEXPIRE: user_polexpire_msg,
    MsgType.MAPPING: user_mapping_msg,
    MsgType.MIGRATE: userpolicy_id_msg,
    MsgType.NEWAE: aevent_msg,
    MsgType.GETAE: aevent_msg,
    MsgType.FLUSHSA: usersa_flush_msg,
    MsgType.FLUSHPOLICY: empty_msg,
    MsgType.NEWSPDINFO: spdinfo_msg,
    MsgType.GETSPDINFO: spdinfo_msg,
}


def decode(data: bytes | bytearray, offset: int = 0) -> nlmsg:
    """Decode one XFRM message at `offset` with its pyroute2 class."""
    (msg_type,) = struct.unpack_from("=H", data, offset + 4)
    msg = MESSAGE_CLASSES[msg_type](data, offset=offset)
    msg.decode()
    return msg
