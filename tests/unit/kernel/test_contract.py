"""Run the KernelIPsec contract against the fake and (root) the real kernel in a netns."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from tests.support.netns import netns, require_root
from tests.unit.kernel.contract import *  # noqa: F403
from tests.unit.kernel.contract import KernelEnv
from xfrmctl.kernel.capabilities import Capabilities, probe
from xfrmctl.kernel.fake import FakeKernel
from xfrmctl.kernel.netlink import NetlinkKernel

_caps: list[Capabilities] = []


def _capabilities() -> Capabilities:
    if not _caps:
        _caps.append(asyncio.run(probe()))
    return _caps[0]


@pytest.fixture(params=["fake", pytest.param("netlink", marks=pytest.mark.netns)])
async def env(request: pytest.FixtureRequest) -> AsyncIterator[KernelEnv]:
    if request.param == "fake":
        yield KernelEnv(FakeKernel(), None, "")
        return
    require_root()
    caps = await asyncio.to_thread(_capabilities)
    if not caps.xfrm_netlink:
        pytest.skip(caps.xfrm_netlink.reason)
    with netns("kc") as ns:
        kernel = await NetlinkKernel.open(ns.name)
        try:
            yield KernelEnv(kernel, ns.name, "" if caps.esp else caps.esp.reason)
        finally:
            await kernel.close()
