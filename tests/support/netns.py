"""Network namespaces for tests: create, wire up, run code inside, always clean up.

    with netns_pair() as (a, b):            # veth a/b: 192.0.2.1/24 <-> 192.0.2.2/24
        a.run(["ping", "-c1", "192.0.2.2"])
        kernel = await NetlinkKernel.open(a.name)

Names are unique per process and call; every namespace is deleted on exit even when
the body raises. Needs root (skip with `require_root()`).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import TypeVar

import pytest

from xfrmctl.kernel.nsutil import call_in_netns

T = TypeVar("T")


def require_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root (network namespaces)")
    if shutil.which("ip") is None:
        pytest.skip("needs iproute2 (`ip`)")


@dataclass(frozen=True)
class Netns:
    name: str

    def run(
        self, argv: list[str], check: bool = True, input: str | None = None, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        """Run a command inside the namespace (ip netns exec)."""
        return subprocess.run(
            ["ip", "netns", "exec", self.name, *argv],
            check=check, capture_output=True, text=True, input=input, timeout=timeout,
        )  # fmt: skip

    def ip(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["ip", "-n", self.name, *args], check=check, capture_output=True, text=True
        )

    def call(self, fn: Callable[[], T]) -> T:
        """Run a Python callable inside the namespace (on a dedicated thread)."""
        return call_in_netns(self.name, fn)

    def add_dummy(self, ifname: str, *addrs: str) -> None:
        self.ip("link", "add", ifname, "type", "dummy")
        for addr in addrs:
            self.ip("addr", "add", addr, "dev", ifname)
        self.ip("link", "set", ifname, "up")

    def add_addr(self, ifname: str, addr: str) -> None:
        self.ip("addr", "add", addr, "dev", ifname)


def unique_name(prefix: str = "xt") -> str:
    return f"{prefix}-{os.getpid() % 100000}-{uuid.uuid4().hex[:6]}"


@contextmanager
def netns(prefix: str = "xt") -> Iterator[Netns]:
    """A fresh namespace with loopback up; deleted on exit."""
    ns = Netns(unique_name(prefix))
    subprocess.run(["ip", "netns", "add", ns.name], check=True, capture_output=True)
    try:
        ns.ip("link", "set", "lo", "up")
        yield ns
    finally:
        subprocess.run(["ip", "netns", "del", ns.name], check=False, capture_output=True)


def veth(a: Netns, b: Netns, a_addr: str | None, b_addr: str | None, name: str = "veth0") -> None:
    """A veth pair `name` in a and in b, with the given addresses, up."""
    tmp = unique_name("v")[:15]
    a.ip("link", "add", name, "type", "veth", "peer", "name", tmp, "netns", b.name)
    b.ip("link", "set", tmp, "name", name)
    for ns, addr in ((a, a_addr), (b, b_addr)):
        if addr is not None:
            ns.ip("addr", "add", addr, "dev", name, "nodad") if ":" in addr else ns.ip(
                "addr", "add", addr, "dev", name
            )
        ns.ip("link", "set", name, "up")


@contextmanager
def netns_pair(
    a_addr: str = "192.0.2.1/24", b_addr: str = "192.0.2.2/24", prefix: str = "xt"
) -> Iterator[tuple[Netns, Netns]]:
    """Two namespaces joined by veth0 with `a_addr` and `b_addr`."""
    with ExitStack() as stack:
        a = stack.enter_context(netns(prefix + "a"))
        b = stack.enter_context(netns(prefix + "b"))
        veth(a, b, a_addr, b_addr)
        yield a, b
