"""The MSS clamp rules through the real `nft` in a namespace, read back with nft itself,
and the path MTU read from the outgoing link (nftables and rtnetlink work on the host
kernel; ESP does not, so packets through the rules are the lab's)."""

from __future__ import annotations

import json
import shutil
from collections.abc import AsyncIterator

import pytest

from tests.support.netns import Netns, netns_pair, require_root
from xfrmctl.daemon import conf as cf
from xfrmctl.daemon.mss import MssClamps, child_mss
from xfrmctl.ike import ts
from xfrmctl.ike.config import Mode
from xfrmctl.ike.constants import EncrId, ProtocolId
from xfrmctl.ike.events import ChildSaNegotiated
from xfrmctl.ike.proposals import Suite
from xfrmctl.kernel.links import KernelLinks
from xfrmctl.kernel.nft import FirewallError, NftFirewall

pytestmark = pytest.mark.netns


def _event(spi: int = 0xC0000001) -> ChildSaNegotiated:
    return ChildSaNegotiated(
        ike_sa=1, connection="site", child="lan", child_id=1, protocol=ProtocolId.ESP,
        mode=Mode.TUNNEL, spi_in=spi, spi_out=spi + 1, local=("192.0.2.1", 500),
        remote=("192.0.2.2", 500), local_ts=(ts.parse("198.51.100.0/24"),),
        remote_ts=(ts.parse("203.0.113.0/24"),),
        suite=Suite(ProtocolId.ESP, EncrId.AES_GCM_16, 128), encr_key_in=b"",
        integ_key_in=b"", encr_key_out=b"", integ_key_out=b"", encap=False, rekey_time=0,
        life_time=0)


@pytest.fixture
async def ns() -> AsyncIterator[Netns]:
    require_root()
    if shutil.which("nft") is None:
        pytest.skip("needs nftables (`nft`)")
    with netns_pair() as (left, _right):
        yield left


def ruleset(ns: Netns) -> str:
    return ns.run(["nft", "list", "ruleset"]).stdout


async def test_rules_in_our_table_replaced_released_and_gone(ns: Netns) -> None:
    firewall = NftFirewall(("ip", "netns", "exec", ns.name, "nft"))
    clamps = MssClamps(firewall)
    rules = child_mss(_event(), cf.ChildConf(mss="auto"), 1500).rules
    await clamps.hold(1, rules)
    text = ruleset(ns)
    assert "table inet xfrmctl" in text
    assert ("ip saddr 198.51.100.0/24 ip daddr 203.0.113.0/24 rt ipsec exists "
            "tcp flags syn / syn,rst tcp option maxseg size > 1406 "
            "tcp option maxseg size set 1406") in text
    assert "ip saddr 203.0.113.0/24 ip daddr 198.51.100.0/24 meta ipsec exists" in text
    assert text.count("maxseg size set 1406") == 3
    assert set(await firewall.list_rules()) == {r.digest for r in rules}
    # a new MSS for the same owner: the new rules, then the old ones gone
    fixed = child_mss(_event(), cf.ChildConf(mss=1300), 1500).rules
    await clamps.hold(1, fixed)
    text = ruleset(ns)
    assert text.count("maxseg size set 1300") == 3 and "1406" not in text
    # a second owner of the same rules keeps them when the first lets go
    await clamps.hold(2, fixed)
    await clamps.release(1)
    assert ruleset(ns).count("maxseg size set 1300") == 3
    await clamps.release(2)
    assert "maxseg" not in ruleset(ns)
    await clamps.close()
    assert "xfrmctl" not in ruleset(ns)
    await clamps.close()  # no table: fine


async def test_a_restart_takes_the_rules_over(ns: Netns) -> None:
    firewall = NftFirewall(("ip", "netns", "exec", ns.name, "nft"))
    rules = child_mss(_event(), cf.ChildConf(mss="auto"), 1500).rules
    await MssClamps(firewall).hold(1, rules)
    listed = json.loads(ns.run(["nft", "-j", "list", "table", "inet", "xfrmctl"]).stdout)
    assert len([i for i in listed["nftables"] if "rule" in i]) == 3
    second = MssClamps(firewall)
    await second.start()
    await second.hold(5, rules)
    await second.prune()
    assert ruleset(ns).count("maxseg size set 1406") == 3  # not doubled, not removed
    await second.release(5)
    assert "maxseg" not in ruleset(ns)
    await second.close()


async def test_nft_errors_are_clear(ns: Netns) -> None:
    missing = NftFirewall(("ip", "netns", "exec", ns.name, "/nonexistent/nft"))
    rules = child_mss(_event(), cf.ChildConf(mss="auto"), 1500).rules
    with pytest.raises(FirewallError, match="nft"):
        await missing.add_rules(rules)


async def test_path_mtu_is_the_outgoing_links(ns: Netns) -> None:
    ns.ip("link", "set", "veth0", "mtu", "1400")
    links = await KernelLinks.open(ns.name)
    try:
        hop = await links.next_hop("192.0.2.2")
        assert await links.link_mtu(hop.oif) == 1400
    finally:
        await links.close()
