"""The selector a tunnel-mode SA carries to the kernel (no root, no kernel).

A tunnel-mode SA installed with the outer family's "any" selector is never picked for an
inner packet of the other family: the kernel skips an SA whose selector family differs
from the flow's (xfrm_state_look_at) and decapsulates by the selector's family. IPv4
subnets inside an IPv6 tunnel (tests/lab/test_ipv6.py) then lose every packet. Like
strongSwan, such SAs go in with an AF_UNSPEC selector and XFRM_STATE_AF_UNSPEC.
"""

from __future__ import annotations

from ipaddress import ip_address, ip_network

import pytest

from xfrmctl.kernel import codec
from xfrmctl.kernel import messages as m
from xfrmctl.kernel.types import (
    AF_INET,
    AF_INET6,
    REQID_MIN,
    Algorithm,
    Mode,
    SaFlag,
    SaSpec,
    Selector,
)

GCM = Algorithm("rfc4106(gcm(aes))", bytes(20), 128)
OUTER = {6: ("2001:db8:0:1::1", "2001:db8:0:1::2"), 4: ("192.0.2.1", "192.0.2.2")}


def sa(version: int, **kw: object) -> SaSpec:
    src, dst = OUTER[version]
    return SaSpec(ip_address(src), ip_address(dst), 0xC0000001, REQID_MIN, aead=GCM,
                  **kw)  # type: ignore[arg-type]


def wire(spec: SaSpec) -> dict[str, object]:
    """The xfrm_usersa_info fields of the NEWSA the codec sends for ``spec``."""
    return dict(dict.items(m.decode(codec.encode_sa(spec, 1))))


@pytest.mark.parametrize("version", [4, 6])
def test_tunnel_sa_without_selector_goes_in_af_unspec(version: int) -> None:
    fields = wire(sa(version))
    assert fields["sel_family"] == 0
    assert fields["sel_prefixlen_s"] == fields["sel_prefixlen_d"] == 0
    assert int(fields["flags"]) & SaFlag.AF_UNSPEC  # or the kernel sets the outer family
    assert fields["family"] == (AF_INET6 if version == 6 else AF_INET)


@pytest.mark.parametrize("version", [4, 6])
def test_tunnel_sa_reads_back_as_before(version: int) -> None:
    """Decoded, it is the outer family's "any" selector without the flag, as the fake
    kernel keeps it: the daemon compares specs across both."""
    spec = sa(version)
    got = codec.decode_sa(m.decode(codec.encode_sa(spec, 1))).spec
    assert got == codec.normalize_sa(spec)
    assert got.flags == SaFlag.NONE


def test_given_selectors_and_transport_mode_keep_their_family() -> None:
    inner = Selector(ip_network("198.51.100.0/24"), ip_network("203.0.113.0/24"))
    fields = wire(sa(6, selector=inner))
    assert (fields["sel_family"], fields["sel_prefixlen_s"]) == (AF_INET, 24)
    assert not int(fields["flags"]) & SaFlag.AF_UNSPEC
    fields = wire(sa(6, mode=Mode.TRANSPORT))
    assert (fields["sel_family"], fields["sel_prefixlen_s"]) == (AF_INET6, 128)
    assert not int(fields["flags"]) & SaFlag.AF_UNSPEC
