"""Kernel install benchmark: xfrmctl's netlink layer vs `ip -batch`, same work, same kernel.

    .venv/bin/python bench/kernel_install.py [-n 10000] [--policies-only]

Each side gets a fresh network namespace and installs N CHILD_SAs: an SA pair
(AES-GCM-128) and an out + in policy per pair, then removes everything. Where the
kernel lacks ESP (the host here) only the policies are benched, and it says so.
Prints both rates (objects/s) and the ratio ours / ip.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from ipaddress import ip_address, ip_network
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from xfrmctl.kernel.capabilities import probe
from xfrmctl.kernel.netlink import NetlinkKernel
from xfrmctl.kernel.types import (
    REQID_MIN,
    Algorithm,
    ChildInstall,
    Direction,
    PolicySpec,
    SaSpec,
    Selector,
    Template,
)

LEFT, RIGHT = ip_address("192.0.2.1"), ip_address("192.0.2.2")
NET_L, NET_R = ip_network("198.51.100.0/24"), ip_network("203.0.113.0/24")
KEY = bytes(range(20))


@dataclass
class Result:
    seconds: float
    objects: int

    @property
    def rate(self) -> float:
        return self.objects / self.seconds


def selectors(i: int) -> tuple[Selector, Selector]:
    port = i % 65535 + 1
    return (
        Selector(NET_L, NET_R, 17, dport=port, dport_mask=0xFFFF),
        Selector(NET_R, NET_L, 17, sport=port, sport_mask=0xFFFF),
    )


def children(n: int) -> list[ChildInstall]:
    out = []
    for i in range(n):
        reqid = REQID_MIN + i
        sel_out, sel_in = selectors(i)
        pols = (
            PolicySpec(sel_out, Direction.OUT, (Template(reqid, src=LEFT, dst=RIGHT),), 100),
            PolicySpec(sel_in, Direction.IN, (Template(reqid, src=RIGHT, dst=LEFT),), 100),
        )
        aead = Algorithm("rfc4106(gcm(aes))", KEY, 128)
        sa_in = SaSpec(RIGHT, LEFT, 0xC2000000 + i, reqid, aead=aead)
        sa_out = SaSpec(LEFT, RIGHT, 0xC1000000 + i, reqid, aead=aead)
        out.append(ChildInstall(sa_in, sa_out, pols))
    return out


def ip_batch_lines(cs: list[ChildInstall], with_sas: bool) -> tuple[str, str]:
    add, remove = [], []
    for c in cs:
        if with_sas:
            for sa in (c.inbound, c.outbound):
                add.append(
                    f"xfrm state add src {sa.src} dst {sa.dst} proto esp spi {sa.spi:#x} "
                    f"reqid {sa.reqid} mode tunnel aead 'rfc4106(gcm(aes))' 0x{KEY.hex()} 128"
                )
                remove.append(
                    f"xfrm state delete src {sa.src} dst {sa.dst} proto esp spi {sa.spi:#x}"
                )
        for p in c.policies:
            sel, t = p.selector, p.templates[0]
            ports = f"dport {sel.dport}" if sel.dport else f"sport {sel.sport}"
            match = f"src {sel.src} dst {sel.dst} proto udp {ports} dir {p.direction.name.lower()}"
            add.append(
                f"xfrm policy add {match} priority {p.priority} tmpl src {t.src} dst {t.dst} "
                f"proto esp reqid {t.reqid} mode tunnel"
            )
            remove.append(f"xfrm policy delete {match}")
    return "\n".join(add) + "\n", "\n".join(remove) + "\n"


def fresh_netns() -> str:
    name = f"bench-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    return name


def run_ip(ns: str, script: str) -> float:
    with tempfile.NamedTemporaryFile("w", suffix=".batch", delete=False) as f:
        f.write(script)
    try:
        start = time.perf_counter()
        subprocess.run(["ip", "-n", ns, "-batch", f.name], check=True)
        return time.perf_counter() - start
    finally:
        os.unlink(f.name)


async def bench_ours(cs: list[ChildInstall], with_sas: bool) -> tuple[Result, Result]:
    ns = fresh_netns()
    try:
        kernel = await NetlinkKernel.open(ns, monitor=False)
        objects = len(cs) * (4 if with_sas else 2)
        start = time.perf_counter()
        if with_sas:
            errors = await kernel.install_children(cs)
        else:
            errors = await kernel.add_policies([p for c in cs for p in c.policies])
        added = time.perf_counter() - start
        assert not any(errors), next(e for e in errors if e)
        start = time.perf_counter()
        if with_sas:
            await kernel.remove_children(cs)
        else:
            await kernel.remove_policies([p for c in cs for p in c.policies])
        removed = time.perf_counter() - start
        await kernel.close()
        return Result(added, objects), Result(removed, objects)
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)


def bench_ip(cs: list[ChildInstall], with_sas: bool) -> tuple[Result, Result]:
    add, remove = ip_batch_lines(cs, with_sas)
    ns = fresh_netns()
    try:
        objects = len(cs) * (4 if with_sas else 2)
        return Result(run_ip(ns, add), objects), Result(run_ip(ns, remove), objects)
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("-n", type=int, default=10_000, help="CHILD_SAs (SA pairs)")
    parser.add_argument("--policies-only", action="store_true")
    args = parser.parse_args()
    caps = await probe()
    with_sas = bool(caps.esp) and not args.policies_only
    if not with_sas:
        why = "asked" if args.policies_only else caps.esp.reason
        print(f"policies only ({why})")
    cs = children(args.n)
    ip_add, ip_rm = bench_ip(cs, with_sas)
    our_add, our_rm = await bench_ours(cs, with_sas)
    what = "SAs+policies" if with_sas else "policies"
    print(f"{args.n} CHILD_SAs, {our_add.objects} {what} each way, kernel {os.uname().release}")
    for label, ours, ip in (("install", our_add, ip_add), ("remove", our_rm, ip_rm)):
        print(f"{label:8s} xfrmctl {ours.rate:10.0f}/s   ip -batch {ip.rate:10.0f}/s   "
              f"ratio {ours.rate / ip.rate:5.2f}")  # fmt: skip


if __name__ == "__main__":
    asyncio.run(main())
