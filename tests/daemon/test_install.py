"""What build_child puts into the kernel for a negotiated CHILD_SA."""

from __future__ import annotations

from xfrmctl.daemon import conf as cf
from xfrmctl.daemon.install import build_child
from xfrmctl.ike.config import Mode
from xfrmctl.ike.constants import EncrId, IntegId, ProtocolId
from xfrmctl.ike.events import ChildSaNegotiated
from xfrmctl.ike.proposals import Suite
from xfrmctl.kernel.types import REQID_MIN, Proto, SaFlag


def _event(protocol: ProtocolId, suite: Suite, local: str, remote: str) -> ChildSaNegotiated:
    return ChildSaNegotiated(
        ike_sa=1, connection="c", child="x", child_id=1, protocol=protocol, mode=Mode.TUNNEL,
        spi_in=0xC0000001, spi_out=0xC0000002, local=(local, 500), remote=(remote, 500),
        local_ts=(), remote_ts=(), suite=suite, encr_key_in=b"", integ_key_in=b"\1" * 32,
        encr_key_out=b"", integ_key_out=b"\2" * 32, encap=False, rekey_time=0, life_time=0)


def test_ah_over_ipv4_aligns_its_icv_to_32_bits() -> None:
    ah = Suite(ProtocolId.AH, None, None, IntegId.HMAC_SHA2_256_128)
    child = build_child(_event(ProtocolId.AH, ah, "192.0.2.1", "192.0.2.2"), cf.ChildConf(),
                        REQID_MIN + 1)
    for sa in (child.inbound, child.outbound):
        assert sa.proto is Proto.AH and SaFlag.ALIGN4 in sa.flags
        assert sa.auth is not None and sa.crypt is None and sa.aead is None
    v6 = build_child(_event(ProtocolId.AH, ah, "2001:db8::1", "2001:db8::2"), cf.ChildConf(),
                     REQID_MIN + 1)
    assert SaFlag.ALIGN4 not in v6.outbound.flags  # IPv6 AH is 64-bit aligned
    gcm = Suite(ProtocolId.ESP, EncrId.AES_GCM_16, 128)
    esp = build_child(_event(ProtocolId.ESP, gcm, "192.0.2.1", "192.0.2.2"), cf.ChildConf(),
                      REQID_MIN + 1)
    assert esp.outbound.flags == SaFlag.NONE


def _tunnel(local_ts: tuple[str, ...], remote_ts: tuple[str, ...]) -> ChildSaNegotiated:
    from dataclasses import replace  # noqa: PLC0415

    from xfrmctl.ike import ts  # noqa: PLC0415

    gcm = Suite(ProtocolId.ESP, EncrId.AES_GCM_16, 128)
    return replace(_event(ProtocolId.ESP, gcm, "192.0.2.1", "192.0.2.2"),
                   local_ts=tuple(map(ts.parse, local_ts)),
                   remote_ts=tuple(map(ts.parse, remote_ts)),
                   encr_key_in=b"k" * 20, encr_key_out=b"k" * 20)


def test_a_port_limited_tunnel_blocks_the_subnets_other_traffic() -> None:
    """198.51.100.0/24 === 203.0.113.0/24[tcp/443]: 443 goes through the SA; anything else
    between the subnets meets an outbound block below it instead of leaving in clear."""
    from xfrmctl.kernel.types import Action, Direction  # noqa: PLC0415

    child = build_child(_tunnel(("198.51.100.0/24",), ("203.0.113.0/24[tcp/443]",)),
                        cf.ChildConf(), REQID_MIN + 1)
    out = [p for p in child.policies if p.direction is Direction.OUT]
    (allow,) = [p for p in out if p.action is Action.ALLOW]
    (block,) = [p for p in out if p.action is Action.BLOCK]
    assert (allow.selector.proto, allow.selector.dport, allow.selector.dport_mask) == \
        (6, 443, 0xFFFF)
    assert (str(block.selector.src), str(block.selector.dst), block.selector.proto,
            block.selector.dport_mask) == ("198.51.100.0/24", "203.0.113.0/24", 0, 0)
    assert block.priority > allow.priority  # the allow wins for 443
    assert block.templates and block.owned()  # ours after a restart too
    assert all(p.action is Action.ALLOW for p in child.policies if p.direction is not
               Direction.OUT)
    # a whole-subnet child gets no block; nor one whose other selector covers the pair
    for remote in (("203.0.113.0/24",), ("203.0.113.0/24[tcp/443]", "203.0.113.0/24")):
        plain = build_child(_tunnel(("198.51.100.0/24",), remote), cf.ChildConf(),
                            REQID_MIN + 1)
        assert all(p.action is Action.ALLOW for p in plain.policies)
