"""ENOBUFS on the real kernel's event socket: a monitor socket with a tiny receive buffer
overruns while the daemon is busy; the netlink layer reports EventsLost and the daemon
resynchronises by dumping: a trap policy removed behind its back meanwhile is put back,
and policies that are not ours are left alone. (The host kernel has no ESP: policies
only; SAs are covered by the fake kernel's fault tests and the lab.)"""

from __future__ import annotations

import asyncio
import errno
import socket
from ipaddress import ip_network

import pytest

from tests.support.gateways import A, B, connection
from tests.support.netns import netns, require_root
from xfrmctl.daemon import conf as cf
from xfrmctl.daemon import controller
from xfrmctl.daemon.controller import Controller
from xfrmctl.kernel.messages import Group
from xfrmctl.kernel.netlink import DAEMON_GROUPS, SO_RCVBUFFORCE, NetlinkKernel
from xfrmctl.kernel.types import Direction, EventsLost, PolicySpec, Selector

pytestmark = pytest.mark.netns


def _foreign(i: int) -> PolicySpec:
    """A template-less policy of somebody else (an allow rule): not ours."""
    return PolicySpec(Selector(ip_network(f"2001:db8:9::{i:x}/128"),
                               ip_network("2001:db8:8::/48")), Direction.OUT)


async def test_overrun_event_socket_makes_the_daemon_resync(
        monkeypatch: pytest.MonkeyPatch) -> None:
    require_root()
    monkeypatch.setattr(controller, "RESYNC_DELAY", 0.01)
    with netns("eo") as ns:
        # POLICY events too, so that writes fill the monitor socket
        kernel = await NetlinkKernel.open(ns.name, groups=(*DAEMON_GROUPS, Group.POLICY))
        other = await NetlinkKernel.open(ns.name, monitor=False)
        assert kernel._monitor is not None
        kernel._monitor.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 1)  # the minimum
        conf = cf.DaemonConf(connections={"site-b": connection(
            A, B, "198.51.100.0/24", "203.0.113.0/24", start="trap")})
        ctrl = Controller(conf, kernel)
        seen: list[object] = []
        original = ctrl._on_kernel_event
        monkeypatch.setattr(ctrl, "_on_kernel_event",
                            lambda e: (seen.append(e), original(e)))
        await ctrl.start()
        await ctrl.drain()
        (trap,) = ctrl.connections["site-b"].traps
        assert "tmpl" in ns.ip("xfrm", "policy").stdout
        # the daemon is busy (its loop does not read the monitor socket) while many
        # events arrive, and somebody deletes its trap policy
        loop = asyncio.get_running_loop()
        loop.remove_reader(kernel._monitor.fileno())
        assert all(e is None for e in await other.add_policies([_foreign(i)
                                                                for i in range(300)]))
        ns.ip("xfrm", "policy", "delete", "src", "198.51.100.0/24", "dst", "203.0.113.0/24",
              "dir", "out")
        loop.add_reader(kernel._monitor.fileno(), kernel._monitor_readable)
        kernel._monitor_readable()
        for _ in range(200):
            await asyncio.sleep(0.01)
            await ctrl.drain()
            if "tmpl" in ns.ip("xfrm", "policy").stdout:
                break
        assert any(isinstance(e, EventsLost) and e.errno == errno.ENOBUFS for e in seen)
        policies = await kernel._dump_policies()
        assert trap.key in {p.spec.key for p in policies}  # put back by the resync
        assert sum(1 for p in policies if not p.spec.templates) == 300  # others' untouched
        await ctrl.stop(keep_tunnels=False)
        assert not [p for p in await kernel._dump_policies() if p.spec.templates]
        await other.close()
        await kernel.close()
