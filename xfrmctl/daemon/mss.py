"""MTU and TCP MSS of CHILD_SAs: what fits through the tunnel, and the nftables rules
that clamp TCP SYNs to it (a child's `mss: auto | N | off`).

ESP costs every packet its headers and trailers (RFC 4303 2, RFC 3948 2.1): the outer IP
header (tunnel mode), UDP encapsulation (NAT-T), the ESP header (SPI and sequence), the
IV, padding to the cipher's block (at least 4 octets' alignment), pad length and next
header, and the ICV. A TCP segment whose packet does not fit after that is fragmented
(ESP fragments) or dropped; clamping the MSS in SYNs keeps TCP from sending those.

The rules are held by owner (a CHILD_SA's inbound SPI) and shared: a rekey that keeps the
suite keeps the rule; one that changes it adds the new rule before the old one goes
(make-before-break, as the installer orders `in_kernel` of the new CHILD_SA before
`left` of the old). A previous process's rules (tunnels kept over a restart) are taken
over by digest; what nobody claims after the restore is removed.
"""

from __future__ import annotations

import logging
from collections.abc import Hashable, Sequence
from dataclasses import dataclass

from xfrmctl.ike import algorithms as ike_alg
from xfrmctl.ike import ts
from xfrmctl.ike.config import Mode
from xfrmctl.ike.constants import EncrId, IntegId
from xfrmctl.ike.events import ChildSaNegotiated
from xfrmctl.kernel.nft import ClampRule, Firewall, FirewallError, Hook, RuleHandle, Through
from xfrmctl.kernel.types import IPNetwork

from . import algorithms as esp_alg
from .conf import ChildConf
from .install import interface_mtu

log = logging.getLogger("xfrmctl.daemon")
DEFAULT_PATH_MTU = 1500
TCP_HEADER = 20
IP_HEADER = {4: 20, 6: 40}
ESP_HEADER = 8  # SPI + sequence number
ESP_TRAILER = 2  # pad length + next header
UDP_HEADER = 8


def esp_mtu(event: ChildSaNegotiated, path_mtu: int) -> int:
    """The largest inner IP packet that leaves as one ESP packet of at most `path_mtu`
    octets with the negotiated suite (exact: padding counted for this length)."""
    suite = event.suite
    outer = IP_HEADER[6 if ":" in event.local[0] else 4]
    udp = UDP_HEADER if event.encap else 0
    if suite.encr is None:  # AH: a header of 12 plus the ICV, padded to 4 (IPv6: 8)
        icv = esp_alg.icv_bytes(None, IntegId(suite.integ) if suite.integ else None)
        ah = 12 + icv + (-(12 + icv) % (8 if outer == 40 else 4))
        return path_mtu - ah - (outer if event.mode is Mode.TUNNEL else 0)
    encr = EncrId(suite.encr)
    info = ike_alg.ENCR.get(encr)
    iv = info.iv_size if info else 16
    block = max(info.block_size if info else 16, 4)
    icv = esp_alg.icv_bytes(encr, IntegId(suite.integ) if suite.integ else None)
    if event.mode is Mode.TUNNEL:  # the whole inner packet is encrypted
        room = path_mtu - outer - udp - ESP_HEADER - iv - icv
        return room // block * block - ESP_TRAILER
    # transport: the packet's own IP header stays in front, its payload is encrypted
    room = path_mtu - outer - udp - ESP_HEADER - iv - icv
    return outer + room // block * block - ESP_TRAILER


def mss_for(mtu: int, version: int) -> int:
    """The TCP MSS of packets of `mtu` octets (no IP or TCP options counted)."""
    return mtu - IP_HEADER[version] - TCP_HEADER


@dataclass(frozen=True, slots=True)
class ChildMss:
    """A CHILD_SA's effective MTU, its MSS per inner IP version, and the clamp rules."""

    mtu: int
    mss: dict[int, int]  # IP version -> MSS clamped to (empty: mss off)
    rules: tuple[ClampRule, ...]


def _versions(event: ChildSaNegotiated) -> list[int]:
    versions = {n.version for s in (*event.local_ts, *event.remote_ts) for n in ts.to_networks(s)}
    return sorted(versions) or [6 if ":" in event.local[0] else 4]


def _carries_tcp(event: ChildSaNegotiated) -> bool:
    return all(not s.ip_protocol or s.ip_protocol == 6 for s in event.local_ts) and \
        all(not s.ip_protocol or s.ip_protocol == 6 for s in event.remote_ts)


def child_mss(event: ChildSaNegotiated, conf: ChildConf, path_mtu: int,
              interface: str | None = None) -> ChildMss:
    """What a negotiated CHILD_SA gets: its MTU after ESP on a path of `path_mtu`, and
    with `mss` auto or a number, the rules that clamp TCP SYNs through it: policy-based
    children by their selectors and the IPsec transform, route-based ones (`interface`)
    by the interface."""
    mtu = esp_mtu(event, path_mtu)
    if interface is not None:  # the interface's MTU: configured, or as the daemon sets it
        mtu = min(mtu, conf.mtu or interface_mtu(event))
    if conf.mss == "off" or not _carries_tcp(event):
        return ChildMss(mtu, {}, ())
    versions = _versions(event)
    mss = {v: conf.mss if isinstance(conf.mss, int) else mss_for(mtu, v) for v in versions}
    owner = f"{event.connection}/{event.child}"
    rules: list[ClampRule] = []
    if interface is not None:
        for v in versions:
            rules += [ClampRule(owner, Hook.FORWARD, v, mss[v], Through.INTERFACE, oif=interface),
                      ClampRule(owner, Hook.OUTPUT, v, mss[v], Through.INTERFACE, oif=interface),
                      ClampRule(owner, Hook.FORWARD, v, mss[v], Through.INTERFACE, iif=interface)]
        return ChildMss(mtu, mss, tuple(rules))
    for lnet, rnet in _pairs(event):
        m = mss[lnet.version]
        rules += [ClampRule(owner, Hook.FORWARD, lnet.version, m, Through.LEAVING, lnet, rnet),
                  ClampRule(owner, Hook.OUTPUT, lnet.version, m, Through.LEAVING, lnet, rnet),
                  ClampRule(owner, Hook.FORWARD, lnet.version, m, Through.ARRIVED, rnet, lnet)]
    return ChildMss(mtu, mss, tuple(dict.fromkeys(rules)))


def _pairs(event: ChildSaNegotiated) -> list[tuple[IPNetwork, IPNetwork]]:
    local = [n for s in event.local_ts for n in ts.to_networks(s)]
    remote = [n for s in event.remote_ts for n in ts.to_networks(s)]
    return [(lnet, rnet) for lnet in local for rnet in remote if lnet.version == rnet.version]


class MssClamps:
    """The clamp rules in the kernel, counted by owner (any hashable key)."""

    def __init__(self, firewall: Firewall) -> None:
        self.firewall = firewall
        self._handles: dict[ClampRule, RuleHandle] = {}
        self._owners: dict[ClampRule, set[Hashable]] = {}
        self._held: dict[Hashable, tuple[ClampRule, ...]] = {}
        self._found: dict[str, RuleHandle] = {}  # a previous process's, by digest

    async def start(self) -> None:
        """Note the rules a previous process left (taken over or pruned later)."""
        try:
            self._found = await self.firewall.list_rules()
        except FirewallError as exc:
            log.warning("reading the MSS rules: %s", exc)

    async def hold(self, owner: Hashable, rules: Sequence[ClampRule]) -> None:
        """Make `owner` hold exactly `rules`: new ones go in (one transaction) before
        the ones it no longer needs go. Raises FirewallError (then nothing changed)."""
        wanted = tuple(dict.fromkeys(rules))
        missing = [r for r in wanted if r not in self._handles]
        adopted = {r: self._found[r.digest] for r in missing if r.digest in self._found}
        fresh = [r for r in missing if r not in adopted]
        handles = await self.firewall.add_rules(fresh) if fresh else []
        for rule in adopted:
            del self._found[rule.digest]
        self._handles.update(adopted)
        self._handles.update(zip(fresh, handles, strict=True))
        for rule in wanted:
            self._owners.setdefault(rule, set()).add(owner)
        old = self._held.get(owner, ())
        self._held[owner] = wanted
        await self._drop(owner, [r for r in old if r not in wanted])

    async def release(self, owner: Hashable) -> None:
        """Drop `owner`'s rules; remove those no other owner holds."""
        await self._drop(owner, list(self._held.pop(owner, ())))

    async def _drop(self, owner: Hashable, rules: list[ClampRule]) -> None:
        unused = []
        for rule in rules:
            owners = self._owners.get(rule, set())
            owners.discard(owner)
            if not owners:
                self._owners.pop(rule, None)
                unused.append(self._handles.pop(rule))
        if not unused:
            return
        try:
            await self.firewall.delete_rules(unused)
        except FirewallError as exc:
            log.warning("removing MSS rules: %s", exc)

    async def prune(self) -> None:
        """Remove the previous process's rules that no restored CHILD_SA claimed."""
        stale, self._found = list(self._found.values()), {}
        if not stale:
            return
        try:
            await self.firewall.delete_rules(stale)
        except FirewallError as exc:
            log.warning("removing stale MSS rules: %s", exc)

    def held(self, owner: Hashable) -> tuple[ClampRule, ...]:
        return self._held.get(owner, ())

    async def close(self) -> None:
        """Every rule and our table go (the daemon stops without keeping tunnels)."""
        self._handles.clear()
        self._owners.clear()
        self._held.clear()
        self._found.clear()
        try:
            await self.firewall.remove_table()
        except FirewallError as exc:
            log.warning("removing the MSS rules' table: %s", exc)
