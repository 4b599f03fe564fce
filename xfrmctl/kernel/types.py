"""Kernel-facing value types: what the daemon asks the kernel to hold, and what it says back.

Every type is a frozen dataclass so specs can be compared, hashed (policy reference
counting keys on them) and logged. Key material is never part of a repr.

Addresses are `ipaddress` objects; networks are `ipaddress` networks. Ports in
selectors and encapsulation are host-order ints (the codec converts).
"""

from __future__ import annotations

import errno as _errno
import os
from dataclasses import dataclass, field
from enum import IntEnum, IntFlag
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_network

IPAddress = IPv4Address | IPv6Address
IPNetwork = IPv4Network | IPv6Network

AF_INET = 2
AF_INET6 = 10

# The reqid range this daemon owns. Every SA and every policy template it installs
# carries a reqid inside it; dumps and deletes only ever look at entries in it, so
# state another daemon (strongSwan uses small reqids from 1 up, `ip xfrm` defaults
# to 0) is never touched.
REQID_MIN = 0x7F000000
REQID_MAX = 0x7FFFFFFF

XFRM_INF = 0xFFFFFFFFFFFFFFFF


def owns_reqid(reqid: int) -> bool:
    return REQID_MIN <= reqid <= REQID_MAX


def family_of(addr: IPAddress | IPNetwork) -> int:
    return AF_INET if addr.version == 4 else AF_INET6


class Proto(IntEnum):
    ESP = 50
    AH = 51
    COMP = 108


class Mode(IntEnum):
    TRANSPORT = 0
    TUNNEL = 1
    BEET = 4


class Direction(IntEnum):
    IN = 0
    OUT = 1
    FWD = 2


class SaDir(IntEnum):
    """XFRMA_SA_DIR (kernel >= 6.10); NONE omits the attribute."""

    NONE = 0
    IN = 1
    OUT = 2


class Action(IntEnum):
    ALLOW = 0
    BLOCK = 1


class SaFlag(IntFlag):
    NONE = 0
    NOECN = 1
    DECAP_DSCP = 2
    NOPMTUDISC = 4
    WILDRECV = 8
    ICMP = 16
    AF_UNSPEC = 32
    ALIGN4 = 64
    ESN = 128


class SaExtraFlag(IntFlag):
    NONE = 0
    DONT_ENCAP_DSCP = 1
    OSEQ_MAY_WRAP = 2


class EncapType(IntEnum):
    ESPINUDP_NON_IKE = 1
    ESPINUDP = 2


def _any_net(version: int) -> IPNetwork:
    return ip_network("0.0.0.0/0") if version == 4 else ip_network("::/0")


@dataclass(frozen=True)
class Selector:
    """xfrm_selector: which packets an SA or policy applies to."""

    src: IPNetwork
    dst: IPNetwork
    proto: int = 0
    sport: int = 0
    sport_mask: int = 0
    dport: int = 0
    dport_mask: int = 0
    ifindex: int = 0

    def __post_init__(self) -> None:
        if self.src.version != self.dst.version:
            raise ValueError(f"selector mixes families: {self.src} -> {self.dst}")

    @property
    def family(self) -> int:
        return family_of(self.src)

    @classmethod
    def any(cls, version: int = 4) -> Selector:
        return cls(_any_net(version), _any_net(version))

    @classmethod
    def host(cls, src: IPAddress, dst: IPAddress, proto: int = 0) -> Selector:
        return cls(ip_network(src), ip_network(dst), proto)


@dataclass(frozen=True)
class Mark:
    value: int
    mask: int = 0xFFFFFFFF


@dataclass(frozen=True)
class Lifetime:
    """Soft/hard limits; XFRM_INF (or 0 for seconds) means no limit."""

    soft_bytes: int = XFRM_INF
    hard_bytes: int = XFRM_INF
    soft_packets: int = XFRM_INF
    hard_packets: int = XFRM_INF
    soft_add_expires_seconds: int = 0
    hard_add_expires_seconds: int = 0
    soft_use_expires_seconds: int = 0
    hard_use_expires_seconds: int = 0


@dataclass(frozen=True)
class Algorithm:
    """A kernel crypto algorithm with its key. `icv_bits` is the AEAD ICV length or
    the HMAC truncation length; 0 for plain ciphers."""

    name: str
    key: bytes = field(repr=False)
    icv_bits: int = 0

    def __post_init__(self) -> None:
        if len(self.name.encode()) >= 64:
            raise ValueError(f"algorithm name too long: {self.name!r}")


@dataclass(frozen=True)
class Encap:
    """UDP encapsulation (NAT-T, RFC 3948). `oa` is the original address (NAT-OA)."""

    sport: int
    dport: int
    type: EncapType = EncapType.ESPINUDP
    oa: IPAddress | None = None

    def __post_init__(self) -> None:
        # The kernel has no "absent" NAT-OA: an all-zero address means none.
        if self.oa is not None and self.oa.is_unspecified:
            object.__setattr__(self, "oa", None)


@dataclass(frozen=True)
class ReplayState:
    """Replay counters; with ESN the 64-bit sequence numbers are split hi/lo."""

    oseq: int = 0
    seq: int = 0
    oseq_hi: int = 0
    seq_hi: int = 0
    replay_window: int = 0
    bitmap: tuple[int, ...] = ()


@dataclass(frozen=True)
class Offload:
    ifindex: int
    flags: int = 0


@dataclass(frozen=True)
class SaId:
    """What identifies an SA in the kernel: destination, SPI, protocol (and mark)."""

    dst: IPAddress
    spi: int
    proto: Proto = Proto.ESP
    mark: Mark | None = None

    def __str__(self) -> str:
        return f"SA {self.proto.name} spi 0x{self.spi:08x} dst {self.dst}"


@dataclass(frozen=True)
class SaSpec:
    """One SA as installed. Exactly one of: `aead`; `crypt` (+ optional `auth`);
    `auth` alone (AH, or ESP with NULL encryption given as crypt)."""

    src: IPAddress
    dst: IPAddress
    spi: int
    reqid: int
    proto: Proto = Proto.ESP
    mode: Mode = Mode.TUNNEL
    selector: Selector | None = None
    aead: Algorithm | None = None
    crypt: Algorithm | None = None
    auth: Algorithm | None = None
    encap: Encap | None = None
    replay_window: int = 32
    esn: bool = False
    lifetime: Lifetime = Lifetime()
    mark: Mark | None = None
    set_mark: Mark | None = None
    if_id: int = 0
    tfcpad: int = 0
    flags: SaFlag = SaFlag.NONE
    extra_flags: SaExtraFlag = SaExtraFlag.NONE
    direction: SaDir = SaDir.NONE
    offload: Offload | None = None
    coaddr: IPAddress | None = None
    # the replay state to start from (XFRMA_REPLAY_VAL/ESN_VAL with NEWSA, which the
    # kernel applies over the fresh one): an SA re-added elsewhere keeps its sequence
    # numbers. Only written, never read back (a dump's spec has None; SaState has it).
    replay: ReplayState | None = None

    def __post_init__(self) -> None:
        if self.src.version != self.dst.version:
            raise ValueError(f"SA mixes families: {self.src} -> {self.dst}")
        if self.aead is not None and (self.crypt is not None or self.auth is not None):
            raise ValueError("an AEAD SA takes no separate crypt/auth algorithm")

    @property
    def id(self) -> SaId:
        return SaId(self.dst, self.spi, self.proto, self.mark)

    @property
    def family(self) -> int:
        return family_of(self.src)

    def effective_selector(self) -> Selector:
        """Transport mode SAs default to a host-to-host selector, tunnel ones to any."""
        if self.selector is not None:
            return self.selector
        if self.mode == Mode.TRANSPORT:
            return Selector.host(self.src, self.dst)
        return Selector.any(self.src.version)


@dataclass(frozen=True)
class Counters:
    bytes: int = 0
    packets: int = 0
    add_time: int = 0
    use_time: int = 0


@dataclass(frozen=True)
class SaStats:
    replay_window: int = 0
    replay: int = 0
    integrity_failed: int = 0


@dataclass(frozen=True)
class SaState:
    """An SA read back from the kernel: the spec plus what the kernel counts."""

    spec: SaSpec
    counters: Counters = Counters()
    stats: SaStats = SaStats()
    replay: ReplayState | None = None


@dataclass(frozen=True)
class Template:
    """xfrm_user_tmpl: which SA a policy requires. `src`/`dst` are the tunnel
    endpoints (unset for transport mode)."""

    reqid: int
    proto: Proto = Proto.ESP
    mode: Mode = Mode.TUNNEL
    src: IPAddress | None = None
    dst: IPAddress | None = None
    spi: int = 0
    optional: bool = False
    share: int = 0
    aalgos: int = 0xFFFFFFFF
    ealgos: int = 0xFFFFFFFF
    calgos: int = 0xFFFFFFFF
    family: int = 0  # 0: taken from the addresses, else the policy's family


@dataclass(frozen=True)
class PolicySpec:
    selector: Selector
    direction: Direction
    templates: tuple[Template, ...] = ()
    priority: int = 0
    action: Action = Action.ALLOW
    mark: Mark | None = None
    if_id: int = 0
    index: int = 0
    lifetime: Lifetime = Lifetime()
    flags: int = 0

    @property
    def key(self) -> PolicyKey:
        return PolicyKey(self.selector, self.direction, self.mark, self.if_id)

    def owned(self) -> bool:
        return bool(self.templates) and all(owns_reqid(t.reqid) for t in self.templates)


@dataclass(frozen=True)
class PolicyKey:
    """What makes two policies the same kernel entry."""

    selector: Selector
    direction: Direction
    mark: Mark | None = None
    if_id: int = 0

    def __str__(self) -> str:
        sel = self.selector
        return f"policy {sel.src} -> {sel.dst} dir {self.direction.name.lower()}"


@dataclass(frozen=True)
class PolicyState:
    spec: PolicySpec
    counters: Counters = Counters()


@dataclass(frozen=True)
class ChildInstall:
    """Everything the kernel holds for one CHILD_SA."""

    inbound: SaSpec
    outbound: SaSpec
    policies: tuple[PolicySpec, ...] = ()


@dataclass(frozen=True)
class SpdThresholds:
    """Prefix lengths from which selectors go to the policy hash (xfrmu_spdhthresh)."""

    v4_local: int = 32
    v4_remote: int = 32
    v6_local: int = 128
    v6_remote: int = 128


@dataclass(frozen=True)
class SpdInfo:
    incnt: int = 0
    outcnt: int = 0
    fwdcnt: int = 0
    inscnt: int = 0
    outscnt: int = 0
    fwdscnt: int = 0
    hash_count: int = 0
    hash_max: int = 0
    thresholds: SpdThresholds = SpdThresholds()


# --- kernel events -----------------------------------------------------------------


@dataclass(frozen=True)
class Acquire:
    """A packet hit a policy whose template has no SA (a trap)."""

    src: IPAddress
    dst: IPAddress
    proto: Proto
    reqid: int
    selector: Selector
    policy_direction: Direction
    policy_index: int
    seq: int = 0
    if_id: int = 0


@dataclass(frozen=True)
class Expire:
    sa: SaId
    hard: bool
    reqid: int = 0
    src: IPAddress | None = None


@dataclass(frozen=True)
class PolicyExpire:
    policy: PolicySpec
    hard: bool


@dataclass(frozen=True)
class Mapping:
    """NAT mapping of an UDP-encapsulated SA's peer changed."""

    sa: SaId
    reqid: int
    old_src: IPAddress
    new_src: IPAddress
    old_sport: int
    new_sport: int


@dataclass(frozen=True)
class MigrateEntry:
    old_src: IPAddress
    old_dst: IPAddress
    new_src: IPAddress
    new_dst: IPAddress
    proto: Proto
    mode: Mode
    reqid: int


@dataclass(frozen=True)
class Migrate:
    selector: Selector
    direction: Direction
    entries: tuple[MigrateEntry, ...]


@dataclass(frozen=True)
class SaNotify:
    """Someone (maybe us) added/updated/deleted an SA, or flushed (sa=None)."""

    kind: str  # "new" | "update" | "delete" | "flush"
    sa: SaId | None
    reqid: int = 0


@dataclass(frozen=True)
class PolicyNotify:
    kind: str  # "new" | "update" | "delete" | "flush"
    key: PolicyKey | None
    index: int = 0


@dataclass(frozen=True)
class EventsLost:
    """The kernel dropped events (monitor socket overrun): resynchronise by dumping."""

    errno: int


@dataclass(frozen=True)
class AddressChange:
    """RTM_NEWADDR / RTM_DELADDR: a usable address came or went (MOBIKE follows)."""

    added: bool
    address: IPAddress
    ifindex: int = 0


@dataclass(frozen=True)
class RouteChange:
    """RTM_NEWROUTE / RTM_DELROUTE: the path to a peer may have changed."""

    added: bool
    table: int = 254


KernelEvent = (
    EventsLost | Acquire | Expire | PolicyExpire | Mapping | Migrate | SaNotify | PolicyNotify
    | AddressChange | RouteChange
)


class KernelError(Exception):
    """A kernel operation failed: names the operation, the object and the errno."""

    def __init__(self, op: str, obj: object, errno: int, detail: str = "") -> None:
        self.op = op
        self.obj = obj
        self.errno = errno
        self.hint: str | None = None  # what to do, when known (e.g. a module to load)
        name = _errno.errorcode.get(errno, str(errno))
        text = f"{op} {obj}: {name} ({os.strerror(errno)})"
        super().__init__(f"{text}: {detail}" if detail else text)
