"""The configuration payload in IKE_AUTH (RFC 7296 3.15): a virtual IP for the initiator,
with the DNS servers of the connection.

Not an exchange of its own: like strongSwan's ike_config task it adds to IKE_AUTH's
request (`build`), answer (`respond`) and the processing of that answer (`process`).
"""

from __future__ import annotations

import ipaddress
from typing import TYPE_CHECKING

from ..config import IkeConfig
from ..constants import CfgAttr, CfgType
from ..events import VirtualIpAssigned
from ..message import Message
from ..payloads import CfgAttribute, CpPayload

if TYPE_CHECKING:
    from ..sa import IkeSa


def build(sa: IkeSa, conf: IkeConfig) -> CpPayload | None:
    """Initiator: ask for an address of our local address's family."""
    if not conf.request_virtual_ip:
        return None
    attr = CfgAttr.INTERNAL_IP6_ADDRESS if ":" in sa.local[0] else CfgAttr.INTERNAL_IP4_ADDRESS
    return CpPayload(CfgType.REQUEST, (CfgAttribute(attr, b""),))


def respond(sa: IkeSa, conf: IkeConfig, msg: Message) -> CpPayload | None:
    """Responder: give the peer an address from the connection's pool, if it asked."""
    cp = msg.find(CpPayload)
    if cp is None or cp.cfg_type != CfgType.REQUEST or conf.pool is None:
        return None
    address = conf.pool.acquire(sa.lease_owner)
    if address is None:
        return None
    sa.virtual_ip = str(address)
    attr = CfgAttr.INTERNAL_IP4_ADDRESS if address.version == 4 else \
        CfgAttr.INTERNAL_IP6_ADDRESS
    value = address.packed if address.version == 4 else address.packed + b"\x80"
    sa.emit(VirtualIpAssigned(sa.id, conf.name, str(address), True))
    return CpPayload(CfgType.REPLY, (CfgAttribute(attr, value), *_dns(conf)))


def _dns(conf: IkeConfig) -> tuple[CfgAttribute, ...]:
    """INTERNAL_IP4_DNS / INTERNAL_IP6_DNS for each configured server (RFC 7296 3.15.1)."""
    out = []
    for text in conf.dns:
        server = ipaddress.ip_address(text)
        kind = CfgAttr.INTERNAL_IP4_DNS if server.version == 4 else CfgAttr.INTERNAL_IP6_DNS
        out.append(CfgAttribute(kind, server.packed))
    return tuple(out)


def process(sa: IkeSa, msg: Message) -> None:
    """Initiator: take the address the responder gave us, if any."""
    cp = msg.find(CpPayload)
    if cp is None or cp.cfg_type != CfgType.REPLY:
        return
    for attr in cp.attributes:
        if attr.attr_type == CfgAttr.INTERNAL_IP4_ADDRESS and len(attr.value) == 4:
            sa.virtual_ip = str(ipaddress.IPv4Address(attr.value))
        elif attr.attr_type == CfgAttr.INTERNAL_IP6_ADDRESS and len(attr.value) == 17:
            sa.virtual_ip = str(ipaddress.IPv6Address(attr.value[:16]))
        else:
            continue
        sa.emit(VirtualIpAssigned(sa.id, sa.conf().name, sa.virtual_ip, False))
        return
