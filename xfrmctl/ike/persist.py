"""Save an established IKE SA (with its CHILD_SAs) and bring it back in a new process.

It reads and sets only the public state of IkeSa (its KeyState, RequestWindow, timers
and CHILD_SAs) and resumes the SA through `IkeSa.resume`. The format is VERSION 1, as
written since the first release: a daemon restarted across an upgrade restores it.

This is what lets the daemon restart without dropping tunnels: the kernel keeps forwarding
with the CHILD_SAs it holds, and the restored IKE SA answers the peer's next request with
the right keys and message IDs. A snapshot is a dict of plain values (JSON-able); it holds
key material, so the caller stores it encrypted.

AEAD IVs must never repeat under one key: the snapshot records the next IV of our
outbound cipher and a restored SA starts `IV_MARGIN` past it, which covers every message
sent between the last snapshot and the restart.
"""

from __future__ import annotations

import ipaddress
from typing import Any

from .child import ChildSa, new_id
from .config import ChildConfig, Identity, IkeConfig, Mode
from .constants import ProtocolId
from .crypto import IkeKeys
from .errors import LocalError
from .keys import KeyState
from .proposals import Suite
from .sa import IkeSa, IkeState, random_child_spi
from .ts import format_ts, parse

VERSION = 1
IV_MARGIN = 1 << 24
_KEY_FIELDS = ("skeyseed", "sk_d", "sk_ai", "sk_ar", "sk_ei", "sk_er", "sk_pi", "sk_pr")
_SUITE_FIELDS = ("encr", "encr_bits", "integ", "prf", "dh", "esn")


def suite_to_dict(suite: Suite) -> dict[str, Any]:
    saved = {"protocol": int(suite.protocol), **{f: getattr(suite, f) for f in _SUITE_FIELDS}}
    if suite.addke:  # written only when used: records of classic suites stay as they were
        saved["addke"] = list(suite.addke)
    return saved


def suite_from_dict(data: dict[str, Any]) -> Suite:
    return Suite(protocol=ProtocolId(data["protocol"]), **{f: data[f] for f in _SUITE_FIELDS},
                 addke=tuple(data.get("addke", ())))


def _identity(identity: Identity | None) -> list[Any] | None:
    return None if identity is None else [identity.id_type, identity.data.hex(), identity.text]


def _unidentity(data: list[Any] | None) -> Identity | None:
    return None if data is None else Identity(data[0], bytes.fromhex(data[1]), data[2])


def _child(child: ChildSa) -> dict[str, Any]:
    return {"name": child.config.name, "protocol": int(child.protocol),
            "mode": child.mode.value, "spi_in": child.spi_in, "spi_out": child.spi_out,
            "local_ts": [format_ts(t) for t in child.local_ts],
            "remote_ts": [format_ts(t) for t in child.remote_ts],
            "suite": suite_to_dict(child.suite), "created": child.created}


def snapshot(sa: IkeSa) -> dict[str, Any]:
    """Everything needed to continue an ESTABLISHED IKE SA in another process."""
    if sa.state is not IkeState.ESTABLISHED or sa.config is None or sa.suite is None:
        raise LocalError(f"IKE SA {sa.id} is not established: nothing to save")
    keys = sa.keys
    assert keys is not None
    return {
        "version": VERSION,
        "connection": sa.config.name,
        "initiator": sa.is_initiator,
        "local": list(sa.local), "remote": list(sa.remote),
        "spi_i": sa.spi_i.hex(), "spi_r": sa.spi_r.hex(),
        "suite": suite_to_dict(sa.suite),
        "keys": {f: getattr(keys.keys, f).hex() for f in _KEY_FIELDS},
        "iv_out": keys.iv_out,
        "next_request_id": sa.window.next_request_id,
        "expected_peer_id": sa.window.expected_peer_id,
        "local_id": _identity(sa.local_id), "remote_id": _identity(sa.remote_id),
        "nat_local": sa.nat_local, "nat_remote": sa.nat_remote,
        "peer_fragmentation": sa.peer_fragmentation,
        "peer_hashes": sorted(sa.peer_hashes),
        "virtual_ip": sa.virtual_ip,
        "remote_eap_id": sa.remote_eap_id,
        "mobike": sa.mobike, "original_initiator": sa.original_initiator,
        "established_at": sa.established_at,
        "rekey_deadline": sa.rekey_deadline,
        "reauth_deadline": sa.reauth_deadline,
        "children": [_child(c) for c in sa.children.values()],
    }


def restore(data: dict[str, Any], config: IkeConfig, now: float,
            spi_allocator: Any = random_child_spi) -> IkeSa:
    """An ESTABLISHED IkeSa from a snapshot; CHILD_SAs whose child config is gone are kept
    under their old config (the caller decides whether to delete them)."""
    if data.get("version") != VERSION:
        raise LocalError(f"snapshot version {data.get('version')} is not {VERSION}")
    sa = IkeSa(initiator=data["initiator"], local=tuple(data["local"]),
               remote=tuple(data["remote"]), now=now, config=config,
               spi_allocator=spi_allocator)
    sa.spi_i, sa.spi_r = bytes.fromhex(data["spi_i"]), bytes.fromhex(data["spi_r"])
    suite = suite_from_dict(data["suite"])
    keys = IkeKeys(**{f: bytes.fromhex(data["keys"][f]) for f in _KEY_FIELDS})
    sa.suite = suite
    sa.keys = KeyState(suite, keys, sa.is_initiator, data["iv_out"] + IV_MARGIN)
    sa.window.next_request_id = data["next_request_id"]
    sa.window.expected_peer_id = data["expected_peer_id"]
    sa.local_id, sa.remote_id = _unidentity(data["local_id"]), _unidentity(data["remote_id"])
    sa.nat_local, sa.nat_remote = data["nat_local"], data["nat_remote"]
    sa.peer_fragmentation = data["peer_fragmentation"]
    sa.peer_hashes = set(data["peer_hashes"])
    sa.virtual_ip = data["virtual_ip"]
    sa.remote_eap_id = data.get("remote_eap_id")  # absent in snapshots before EAP
    _reclaim_lease(sa, config)
    sa.mobike = data.get("mobike", False)
    sa.original_initiator = data.get("original_initiator", sa.is_initiator)
    sa.established_at = data["established_at"]
    for child in data["children"]:
        restored = _restore_child(child, config, sa.established_at or now)
        sa.children[restored.child_id] = restored
    sa.resume(now, data["rekey_deadline"], data.get("reauth_deadline"))
    return sa



def _reclaim_lease(sa: IkeSa, config: IkeConfig) -> None:
    """A restored gateway SA takes its peer's virtual IP back, so no new client gets it."""
    if sa.is_initiator or not sa.virtual_ip or config.pool is None:
        return
    config.pool.claim(sa.lease_owner, ipaddress.ip_address(sa.virtual_ip))

def _restore_child(data: dict[str, Any], config: IkeConfig, created: float) -> ChildSa:
    try:
        child_config = config.child(data["name"])
    except KeyError:  # removed from the configuration meanwhile
        child_config = ChildConfig(data["name"])
    return ChildSa(new_id(), child_config, ProtocolId(data["protocol"]), Mode(data["mode"]),
                   data["spi_in"], data["spi_out"],
                   tuple(parse(t) for t in data["local_ts"]),
                   tuple(parse(t) for t in data["remote_ts"]), suite_from_dict(data["suite"]),
                   data.get("created", created))
