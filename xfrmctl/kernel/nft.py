"""The daemon's own nftables rules: TCP MSS clamping for CHILD_SAs.

Every rule lives in one table of ours (`inet xfrmctl`, chains `mss_forward` and
`mss_output` at the mangle priority), so nothing else in the ruleset is touched and the
whole table can go when the daemon stops. A rule is identified by a digest of what it
matches and sets, written into its comment: a new process finds the rules the previous
one left (tunnels kept over a restart) and takes them over instead of doubling them.

`Firewall` is the interface; `NftFirewall` drives `nft -j -f -` (the JSON API, one
transaction per call, so a batch goes in whole or not at all), `FakeFirewall` keeps the
rules in memory for unit tests and the daemon's in-memory kernel mode.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol

from .types import IPNetwork

TABLE = "xfrmctl"
FAMILY = "inet"
PRIORITY_MANGLE = -150
COMMENT_PREFIX = "xfrmctl:"


class Hook(StrEnum):
    FORWARD = "forward"  # traffic routed through this gateway
    OUTPUT = "output"  # this host's own traffic

    @property
    def chain(self) -> str:
        return f"mss_{self.value}"


class Through(StrEnum):
    """How a packet is tied to IPsec when no interface says so (policy-based)."""

    LEAVING = "leaving"  # its route has an IPsec transform (`rt ipsec exists`)
    ARRIVED = "arrived"  # it was decrypted (`meta ipsec exists`)
    INTERFACE = "interface"  # matched by an XFRM interface / VTI name


@dataclass(frozen=True, slots=True)
class ClampRule:
    """Clamp the MSS of TCP SYNs (and SYN-ACKs) of one family to `mss` where the packet
    matches: addresses (None: any) and either an IPsec transform or an interface."""

    owner: str  # "connection/child", for people reading the ruleset
    hook: Hook
    version: int  # 4 or 6
    mss: int
    through: Through
    src: IPNetwork | None = None
    dst: IPNetwork | None = None
    iif: str | None = None
    oif: str | None = None

    @property
    def digest(self) -> str:
        fields = (self.hook.value, self.version, self.mss, self.through.value,
                  str(self.src), str(self.dst), self.iif, self.oif)
        return hashlib.sha256(repr(fields).encode()).hexdigest()[:16]

    @property
    def comment(self) -> str:
        return f"{COMMENT_PREFIX}{self.digest} {self.owner}"[:128]


@dataclass(frozen=True, slots=True)
class RuleHandle:
    chain: str
    handle: int


class FirewallError(Exception):
    """nftables refused or could not be run; the message says what to do."""


class Firewall(Protocol):
    async def add_rules(self, rules: Sequence[ClampRule]) -> list[RuleHandle]:
        """Add the rules in one transaction (all or none); their handles, in order."""

    async def delete_rules(self, handles: Sequence[RuleHandle]) -> None:
        """Delete rules by handle in one transaction; one already gone is skipped."""

    async def list_rules(self) -> dict[str, RuleHandle]:
        """Our rules now in the kernel, by digest (empty when the table is not there)."""

    async def remove_table(self) -> None:
        """Our table and every rule in it (the daemon stops); absent is fine."""


# --------------------------------------------------------------------------- JSON


def _match(left: dict[str, Any], right: object, op: str = "==") -> dict[str, Any]:
    return {"match": {"op": op, "left": left, "right": right}}


def _prefix(net: IPNetwork) -> object:
    if net.num_addresses == 1:
        return str(net.network_address)
    return {"prefix": {"addr": str(net.network_address), "len": net.prefixlen}}


def rule_expr(rule: ClampRule) -> list[dict[str, Any]]:
    """The nftables JSON expression of a rule."""
    proto = "ip" if rule.version == 4 else "ip6"
    expr = [_match({"meta": {"key": "nfproto"}}, "ipv4" if rule.version == 4 else "ipv6")]
    for field, net in (("saddr", rule.src), ("daddr", rule.dst)):
        if net is not None and net.prefixlen:
            expr.append(_match({"payload": {"protocol": proto, "field": field}}, _prefix(net)))
    if rule.iif is not None:
        expr.append(_match({"meta": {"key": "iifname"}}, rule.iif))
    if rule.oif is not None:
        expr.append(_match({"meta": {"key": "oifname"}}, rule.oif))
    if rule.through is Through.LEAVING:
        expr.append(_match({"rt": {"key": "ipsec"}}, True))
    elif rule.through is Through.ARRIVED:
        expr.append(_match({"meta": {"key": "ipsec"}}, True))
    mss = {"tcp option": {"name": "maxseg", "field": "size"}}
    expr += [  # SYN set, RST clear (SYN and SYN-ACK), an MSS above ours: ours
        _match({"&": [{"payload": {"protocol": "tcp", "field": "flags"}}, ["syn", "rst"]]},
               "syn"),
        _match(mss, rule.mss, ">"),
        {"mangle": {"key": mss, "value": rule.mss}},
    ]
    return expr


def _table() -> dict[str, Any]:
    return {"add": {"table": {"family": FAMILY, "name": TABLE}}}


def _chain(hook: Hook) -> dict[str, Any]:
    return {"add": {"chain": {"family": FAMILY, "table": TABLE, "name": hook.chain,
                              "type": "filter", "hook": hook.value,
                              "prio": PRIORITY_MANGLE, "policy": "accept"}}}


def add_commands(rules: Sequence[ClampRule]) -> list[dict[str, Any]]:
    """The table, both chains (adding what exists is a no-op) and the rules."""
    return [_table(), *(_chain(h) for h in Hook), *(
        {"add": {"rule": {"family": FAMILY, "table": TABLE, "chain": r.hook.chain,
                          "expr": rule_expr(r), "comment": r.comment}}} for r in rules)]


def our_rules(listing: dict[str, Any]) -> dict[str, RuleHandle]:
    """Our rules in `nft -j list table` output, by the digest in their comment."""
    found: dict[str, RuleHandle] = {}
    for item in listing.get("nftables", []):
        rule = item.get("rule") if isinstance(item, dict) else None
        if not rule or rule.get("table") != TABLE:
            continue
        comment = str(rule.get("comment", ""))
        if comment.startswith(COMMENT_PREFIX):
            digest = comment[len(COMMENT_PREFIX):].split(" ", 1)[0]
            found[digest] = RuleHandle(str(rule["chain"]), int(rule["handle"]))
    return found


# --------------------------------------------------------------------------- nft


class NftFirewall:
    """The real one: `nft` with its JSON API (`command` may prefix it, e.g. with
    `ip netns exec NS`)."""

    def __init__(self, command: Sequence[str] = ("nft",)) -> None:
        self.command = tuple(command)
        self._lock = asyncio.Lock()  # one transaction at a time, in order

    async def _run(self, args: Sequence[str], payload: dict[str, Any] | None = None,
                   what: str = "nft") -> tuple[int, str, str]:
        data = json.dumps(payload).encode() if payload is not None else None
        try:
            proc = await asyncio.create_subprocess_exec(
                *self.command, *args, stdin=asyncio.subprocess.PIPE if data else None,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        except OSError as exc:
            raise FirewallError(f"{what}: cannot run {self.command[-1]!r} ({exc.strerror}): "
                                "install nftables (apt-get install nftables)") from None
        out, err = await proc.communicate(data)
        return proc.returncode or 0, out.decode(), err.decode().strip()

    async def _apply(self, commands: list[dict[str, Any]], what: str,
                     echo: bool = False) -> str:
        args = ["-j", *(["-e", "-a"] if echo else []), "-f", "-"]
        async with self._lock:
            code, out, err = await self._run(args, {"nftables": commands}, what)
        if code:
            raise FirewallError(f"{what}: nft: {err or f'exit status {code}'}")
        return out

    async def add_rules(self, rules: Sequence[ClampRule]) -> list[RuleHandle]:
        if not rules:
            return []
        out = await self._apply(add_commands(rules), f"adding {len(rules)} MSS rules",
                                echo=True)
        handles = [RuleHandle(str(c["add"]["rule"]["chain"]), int(c["add"]["rule"]["handle"]))
                   for c in json.loads(out).get("nftables", [])
                   if isinstance(c, dict) and "rule" in c.get("add", {})]
        if len(handles) != len(rules):
            raise FirewallError(f"nft echoed {len(handles)} handles for {len(rules)} rules")
        return handles

    async def delete_rules(self, handles: Sequence[RuleHandle]) -> None:
        if not handles:
            return
        present = {h for h in (await self.list_rules()).values()}
        gone = [h for h in handles if h in present]
        if gone:
            await self._apply([{"delete": {"rule": {
                "family": FAMILY, "table": TABLE, "chain": h.chain, "handle": h.handle}}}
                for h in gone], f"deleting {len(gone)} MSS rules")

    async def list_rules(self) -> dict[str, RuleHandle]:
        async with self._lock:
            code, out, err = await self._run(["-j", "list", "table", FAMILY, TABLE])
        if code:
            if "No such file or directory" in err:
                return {}
            raise FirewallError(f"listing table {FAMILY} {TABLE}: nft: {err}")
        result: dict[str, RuleHandle] = our_rules(json.loads(out))
        return result

    async def remove_table(self) -> None:
        async with self._lock:
            code, _, err = await self._run(["delete", "table", FAMILY, TABLE])
        if code and "No such file or directory" not in err:
            raise FirewallError(f"deleting table {FAMILY} {TABLE}: nft: {err}")


# --------------------------------------------------------------------------- fake


class FakeFirewall:
    """Rules in memory, with the real one's behaviour: handles, all-or-none batches,
    a table that exists only once something was added. `fail` makes the next add fail."""

    def __init__(self) -> None:
        self.rules: dict[RuleHandle, ClampRule] = {}
        self.table = False
        self.fail: str | None = None
        self.transactions = 0
        self._next = 1

    async def add_rules(self, rules: Sequence[ClampRule]) -> list[RuleHandle]:
        if not rules:
            return []
        if self.fail is not None:
            reason, self.fail = self.fail, None
            raise FirewallError(f"adding {len(rules)} MSS rules: nft: {reason}")
        self.transactions += 1
        self.table = True
        handles = []
        for rule in rules:
            handle = RuleHandle(rule.hook.chain, self._next)
            self._next += 1
            self.rules[handle] = rule
            handles.append(handle)
        return handles

    async def delete_rules(self, handles: Sequence[RuleHandle]) -> None:
        self.transactions += 1
        for handle in handles:
            self.rules.pop(handle, None)

    async def list_rules(self) -> dict[str, RuleHandle]:
        return {rule.digest: handle for handle, rule in self.rules.items()}

    async def remove_table(self) -> None:
        self.rules.clear()
        self.table = False

