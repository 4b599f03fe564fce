"""From a negotiated CHILD_SA to the kernel objects that carry it: two SAs and policies.

Pure functions (no I/O): the controller hands the result to `KernelIPsec.install_child`.
"""

from __future__ import annotations

import ipaddress
import itertools
import os
from collections.abc import Iterator
from dataclasses import replace

from xfrmctl.ike import ts
from xfrmctl.ike.config import Mode as IkeMode
from xfrmctl.ike.constants import EncrId, IntegId, ProtocolId
from xfrmctl.ike.events import ChildSaNegotiated
from xfrmctl.ike.payloads import TrafficSelector
from xfrmctl.kernel.types import (
    XFRM_INF,
    Action,
    Algorithm,
    ChildInstall,
    Direction,
    Encap,
    IPNetwork,
    Lifetime,
    Mark,
    Mode,
    PolicySpec,
    Proto,
    SaFlag,
    SaSpec,
    Selector,
    Template,
)

from . import algorithms as esp_alg
from .conf import ChildConf

# Policy priorities: lower wins. Like strongSwan, more specific selectors get a lower value.
PRIORITY_BASE = 200_000


def _algorithms(event: ChildSaNegotiated, inbound: bool
                ) -> tuple[Algorithm | None, Algorithm | None, Algorithm | None]:
    """(aead, crypt, auth) for one direction."""
    suite = event.suite
    encr_key = event.encr_key_in if inbound else event.encr_key_out
    integ_key = event.integ_key_in if inbound else event.integ_key_out
    auth = esp_alg.integ_algorithm(IntegId(suite.integ), integ_key) if suite.integ else None
    if suite.encr is None:  # AH
        return None, None, auth
    encr = esp_alg.encr_algorithm(EncrId(suite.encr), encr_key)
    if esp_alg.is_aead(EncrId(suite.encr)):
        return encr, None, None
    return None, encr, auth


def _lifetime(event: ChildSaNegotiated, jitter: float) -> Lifetime:
    def count(value: int) -> int:
        return value or XFRM_INF

    soft_time = int(event.rekey_time * (1 - jitter)) if event.rekey_time else 0
    soft_bytes = int(event.rekey_bytes * (1 - jitter)) if event.rekey_bytes else 0
    soft_packets = int(event.rekey_packets * (1 - jitter)) if event.rekey_packets else 0
    return Lifetime(
        soft_bytes=count(soft_bytes), hard_bytes=count(event.life_bytes),
        soft_packets=count(soft_packets), hard_packets=count(event.life_packets),
        soft_add_expires_seconds=soft_time,
        hard_add_expires_seconds=int(event.life_time),
    )


def _mark(value: int | None, mask: int | None = None) -> Mark | None:
    """A mark with its mask (None: all 32 bits); a mark of 0 means none unless masked."""
    if value is None or (not value and not mask):
        return None
    return Mark(value, 0xFFFFFFFF if mask is None else mask)


def _sa_flags(proto: Proto, local: ipaddress.IPv4Address | ipaddress.IPv6Address) -> SaFlag:
    """AH over IPv4 pads its ICV to 32 bits (RFC 4302 3.3.3.2.1), as strongSwan and other
    stacks do; Linux pads to 64 bits unless told, and the peer would drop every packet."""
    return SaFlag.ALIGN4 if proto is Proto.AH and local.version == 4 else SaFlag.NONE


def build_child(event: ChildSaNegotiated, conf: ChildConf, reqid: int) -> ChildInstall:
    """The inbound SA, the outbound SA and the policies of one negotiated CHILD_SA.

    Marks (VTI, or mark-routed setups): `mark_out` on the outbound SA and OUT policy,
    `mark_in` on the IN/FWD policies only. The inbound SA stays unmarked: ESP arrives
    with no mark when the kernel looks its SA up (a VTI sets its ikey only afterwards,
    for the policy check), as strongSwan does by default.
    """
    local, remote = ts.address(event.local[0]), ts.address(event.remote[0])
    mode = Mode.TUNNEL if event.mode is IkeMode.TUNNEL else Mode.TRANSPORT
    proto = Proto.AH if event.protocol is ProtocolId.AH else Proto.ESP
    # Up to 10% earlier soft expiry, so the two ends rarely rekey at the same moment.
    jitter = int.from_bytes(os.urandom(2), "big") / 65535 * 0.1
    lifetime = _lifetime(event, jitter)
    aead, crypt, auth = _algorithms(event, inbound=True)
    inbound = SaSpec(
        src=remote, dst=local, spi=event.spi_in, reqid=reqid, proto=proto, mode=mode,
        aead=aead, crypt=crypt, auth=auth, lifetime=lifetime,
        encap=Encap(event.remote[1], event.local[1]) if event.encap else None,
        replay_window=conf.replay_window, esn=event.suite.esn, if_id=conf.if_id or 0,
        flags=_sa_flags(proto, local))
    aead, crypt, auth = _algorithms(event, inbound=False)
    outbound = replace(
        inbound, src=local, dst=remote, spi=event.spi_out, aead=aead, crypt=crypt, auth=auth,
        encap=Encap(event.local[1], event.remote[1]) if event.encap else None,
        mark=_mark(conf.mark_out, conf.mark_out_mask),
        tfcpad=conf.tfc_padding if event.tfc_padding else 0)
    policies = tuple(policies_for(event.local_ts, event.remote_ts, local, remote, mode, proto,
                                  reqid, conf))
    return ChildInstall(inbound, outbound, policies)



def _selectors(local: TrafficSelector, remote: TrafficSelector
               ) -> Iterator[tuple[Selector, Selector, int]]:
    """(outbound selector, inbound selector, priority) for a pair of traffic selectors."""
    if local.ts_type != remote.ts_type:
        return
    if local.ip_protocol and remote.ip_protocol and local.ip_protocol != remote.ip_protocol:
        return
    proto = local.ip_protocol or remote.ip_protocol
    lports = ts.port_masks(local.start_port, local.end_port)
    rports = ts.port_masks(remote.start_port, remote.end_port)
    for lnet, rnet in itertools.product(ts.to_networks(local), ts.to_networks(remote)):
        for (lport, lmask), (rport, rmask) in itertools.product(lports, rports):
            out = Selector(lnet, rnet, proto, lport, lmask, rport, rmask)
            into = Selector(rnet, lnet, proto, rport, rmask, lport, lmask)
            specificity = lnet.prefixlen + rnet.prefixlen + (4 if proto else 0) + \
                (2 if lmask or rmask else 0)
            yield out, into, PRIORITY_BASE - specificity


def policies_for(local_ts: tuple[TrafficSelector, ...], remote_ts: tuple[TrafficSelector, ...],
                 local: ipaddress.IPv4Address | ipaddress.IPv6Address,
                 remote: ipaddress.IPv4Address | ipaddress.IPv6Address, mode: Mode, proto: Proto,
                 reqid: int, conf: ChildConf) -> Iterator[PolicySpec]:
    """OUT, IN (and FWD in tunnel mode) policies for every selector pair."""
    tunnel = mode is Mode.TUNNEL
    out_tmpl = Template(reqid, proto, mode, local if tunnel else None,
                        remote if tunnel else None)
    in_tmpl = Template(reqid, proto, mode, remote if tunnel else None,
                       local if tunnel else None)
    if_id = conf.if_id or 0
    mark_in = _mark(conf.mark_in, conf.mark_in_mask)
    mark_out = _mark(conf.mark_out, conf.mark_out_mask)
    for lts, rts in itertools.product(local_ts, remote_ts):
        for out_sel, in_sel, prio in _selectors(lts, rts):
            yield PolicySpec(out_sel, Direction.OUT, (out_tmpl,), prio, mark=mark_out,
                             if_id=if_id)
            yield PolicySpec(in_sel, Direction.IN, (in_tmpl,), prio, mark=mark_in,
                             if_id=if_id)
            if tunnel:
                yield PolicySpec(in_sel, Direction.FWD, (in_tmpl,), prio, mark=mark_in,
                                 if_id=if_id)
    if tunnel:
        for out_sel, prio in fences(local_ts, remote_ts):
            yield PolicySpec(out_sel, Direction.OUT, (out_tmpl,), prio, Action.BLOCK,
                             mark=mark_out, if_id=if_id)


def fences(local_ts: tuple[TrafficSelector, ...], remote_ts: tuple[TrafficSelector, ...]
           ) -> list[tuple[Selector, int]]:
    """Outbound block selectors for a tunnel limited by protocol or port ("web but not
    file sharing": 198.51.100.0/24 === 203.0.113.0/24[tcp/443]): the subnets' other
    traffic is dropped rather than sent in the clear by the route to the remote subnet.
    Only address pairs no unrestricted selector pair of the child already covers; they
    rank below the child's own policies (less specific: a higher priority value)."""
    narrowed: dict[tuple[IPNetwork, IPNetwork], None] = {}
    whole: set[tuple[IPNetwork, IPNetwork]] = set()
    for lts, rts in itertools.product(local_ts, remote_ts):
        if lts.ts_type != rts.ts_type:
            continue
        limited = bool(lts.ip_protocol or rts.ip_protocol) or \
            (lts.start_port, lts.end_port, rts.start_port, rts.end_port) != (0, 0xFFFF) * 2
        for pair in itertools.product(ts.to_networks(lts), ts.to_networks(rts)):
            if limited:
                narrowed[pair] = None
            else:
                whole.add(pair)
    return [(Selector(lnet, rnet), PRIORITY_BASE - lnet.prefixlen - rnet.prefixlen)
            for lnet, rnet in narrowed if (lnet, rnet) not in whole]


def trap_policies(local_ts: tuple[TrafficSelector, ...], remote_ts: tuple[TrafficSelector, ...],
                  local: str, remote: str, conf: ChildConf, reqid: int) -> list[PolicySpec]:
    """Outbound policies whose templates have no SA yet: traffic makes the kernel send
    ACQUIRE, and the daemon initiates (start_action = trap). They are the very policies the
    CHILD_SA installs later (same key, same reqid), so the kernel layer's reference count
    keeps them across the SA's life."""
    mode = Mode.TUNNEL if conf.mode is IkeMode.TUNNEL else Mode.TRANSPORT
    proto = Proto.AH if conf.ah_proposals else Proto.ESP
    return [p for p in policies_for(local_ts, remote_ts, ipaddress.ip_address(local),
                                    ipaddress.ip_address(remote), mode, proto, reqid, conf)
            if p.direction is Direction.OUT]


def esp_overhead(event: ChildSaNegotiated) -> int:
    """Worst-case octets ESP adds to a packet in this CHILD_SA (tunnel mode: the outer
    IP header too; NAT-T: the UDP header), for a route-based interface's MTU."""
    suite = event.suite
    ipv6 = ":" in event.local[0]
    if suite.encr is None:  # AH: header plus ICV
        icv = esp_alg.icv_bytes(None, IntegId(suite.integ) if suite.integ else None)
        return (40 if ipv6 else 20) + 12 + icv
    aead = esp_alg.is_aead(EncrId(suite.encr))
    iv = 8 if aead else 16
    block = 4 if aead else 16
    icv = esp_alg.icv_bytes(EncrId(suite.encr), IntegId(suite.integ) if suite.integ else None)
    outer = (40 if ipv6 else 20) if event.mode is IkeMode.TUNNEL else 0
    return outer + 8 + iv + (block - 1) + 2 + icv + (8 if event.encap else 0)


def interface_mtu(event: ChildSaNegotiated, underlay_mtu: int = 1500) -> int:
    """The largest inner packet that fits the underlay after ESP, rounded down to 4."""
    return (underlay_mtu - esp_overhead(event)) // 4 * 4
