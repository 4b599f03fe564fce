"""Per-child options against strongSwan 5.9.8 on a real kernel: AH, ESN with a large replay
window, TFC padding, and a CHILD_SA rekey driven by a packet lifetime. Each case pings
through the SA and reads the option back from both kernels (`ip -s xfrm state`).

The module has its own pair, charon (right) and daemon (left), from the `lab` fixture of
test_interop_strongswan.py; each case loads its connection as those cases do.
"""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass, field
from typing import Any

import pytest

from tests.lab.interop_common import (
    LEFT_ID,
    PSK,
    RIGHT_ID,
    ping_done,
    ping_from,
    wait_clean,
    wait_sas_gone,
)
from tests.lab.swan_lab import Lab, keep_logs, lab
from tests.support.strongswan import SwanConn, SwanSecret
from tests.support.xfrmctl_daemon import (
    Event,
    child,
    connection,
    daemon_conf,
    wait_installed,
    xfrm_states,
)

__all__ = ["keep_logs", "lab"]  # fixtures, imported for pytest


@dataclass(frozen=True)
class Option:
    id: str
    ours: dict[str, Any]  # the child's options in our configuration
    swan: dict[str, Any] = field(default_factory=dict)  # charon's child options
    we_initiate: bool = True


OPTIONS = [
    Option("ah-sha256", {"ah_proposals": "sha256-x25519"},
           {"ah_proposals": ["sha256-x25519"], "esp_proposals": None}),
    Option("esn-replay-window-128", {"esn": True, "replay_window": 128},
           {"esp_proposals": ["aes128gcm16-x25519-esn"], "replay_window": 128},
           we_initiate=False),
    Option("tfc-padding-1000", {"tfc_padding": 1000}),
    # with PFS, as charon's proposal asks for on a rekey
    Option("rekey-on-packet-lifetime", {"rekey_packets": 20, "life_packets": 60,
                                        "esp_proposals": "aes128gcm16-x25519"}),
]


def _load(lab: Lab, option: Option, name: str) -> None:
    pair = lab.pair
    lab.charon.load([SwanConn(
        "gw", child_name="net", local_addrs=[pair.right.outer], remote_addrs=[pair.left.outer],
        local_id=RIGHT_ID, remote_id=LEFT_ID, local_ts=[pair.right.subnet],
        remote_ts=[pair.left.subnet], child_extra=option.swan)],
        [SwanSecret(PSK, ids=[LEFT_ID, RIGHT_ID])])
    kid = child([pair.left.subnet], [pair.right.subnet], **option.ours)
    conn = connection(pair.left.outer, pair.right.outer, {"net": kid}, psk=PSK,
                      local_id=LEFT_ID, remote_id=RIGHT_ID,
                      start_action="start" if option.we_initiate else "none")
    lab.daemon.reload(daemon_conf([pair.left.outer], {name: conn}))


def _ping(lab: Lab, count: int) -> subprocess.Popen[str]:
    left, right = lab.pair.left, lab.pair.right
    return ping_from(left, left.inner, right.inner, count)


def _state_text(netns: str, spi: int) -> str:
    """The `ip -s xfrm state` block of one SA."""
    out = subprocess.run(["ip", "-n", netns, "-s", "xfrm", "state"], capture_output=True,
                         text=True, check=True, timeout=60).stdout
    blocks = re.split(r"\n(?=src )", out)
    (block,) = [b for b in blocks if re.search(rf"spi {spi:#010x}\b", b)]
    return block


def _tx_bytes(netns: str, dev: str) -> int:
    out = subprocess.run(["ip", "-n", netns, "-s", "-j", "link", "show", dev],
                         capture_output=True, text=True, check=True, timeout=60).stdout
    match = re.search(r'"tx":\{"bytes":(\d+)', out)
    assert match, out
    return int(match[1])


def _check_counters(lab: Lab, event: Event, proc: subprocess.Popen[str], pings: int) -> None:
    """`proc` (pings through the SA) done: both SAs counted them in both kernels."""
    spis = (int(event["spi_in"]), int(event["spi_out"]))
    before = {s.spi: s.packets for s in xfrm_states(lab.pair.left.netns)}
    out, _ = proc.communicate(timeout=120)
    kernels = [_state_text(gw.netns, spi) for gw in (lab.pair.left, lab.pair.right)
               for spi in spis]
    if " 0% packet loss" not in out:
        pytest.fail("\n".join([out, *kernels]))  # in full: the kernels' counters say where
    ours = {s.spi: s.packets for s in xfrm_states(lab.pair.left.netns)}
    theirs = {s.spi: s.packets for s in xfrm_states(lab.pair.right.netns)}
    for spi in spis:
        assert ours[spi] - before[spi] == pings and theirs[spi] == ours[spi], (ours, theirs)


@pytest.mark.parametrize("option", OPTIONS, ids=[o.id for o in OPTIONS])
def test_child_option(lab: Lab, option: Option, keep_logs: None) -> None:
    name = f"o{next(lab.names)}"
    daemon, charon, pair = lab.daemon, lab.charon, lab.pair
    mark = daemon.mark()
    _load(lab, option, name)
    if not option.we_initiate:
        charon.initiate("net", "gw", timeout=90)
    event = wait_installed(daemon, mark, connection=name)
    spi_in, spi_out = int(event["spi_in"]), int(event["spi_out"])
    ours, theirs = _state_text(pair.left.netns, spi_out), _state_text(pair.right.netns, spi_out)

    if option.id.startswith("ah"):
        for text in (ours, theirs):
            assert "proto ah" in text and "auth-trunc hmac(sha256)" in text, text
        _check_counters(lab, event, _ping(lab, 5), 5)
    elif option.id.startswith("esn"):
        for text in (ours, theirs):
            assert re.search(r"flag .*\besn\b", text), text
            assert re.search(r"replay_window 128\b", text), text
        _check_counters(lab, event, _ping(lab, 5), 5)
    elif option.id.startswith("tfc"):
        assert "tfcpad 1000" in ours, ours
        sent = _tx_bytes(pair.left.netns, pair.left.veth)
        _check_counters(lab, event, _ping(lab, 5), 5)
        # 5 echo requests of 84 octets, each padded to 1000 inside the ESP payload
        assert _tx_bytes(pair.left.netns, pair.left.veth) - sent >= 5 * 1000
    else:  # the kernel's soft packet limit starts the rekey; the ping loses nothing
        proc = _ping(lab, 40)
        new = wait_installed(daemon, mark, 60, rekey_of=spi_in)
        assert new["initiator"] is True
        daemon.wait_event("ChildSaDeleted", 60, mark, spi_in=spi_in)
        ping_done(proc)
        wait_sas_gone((pair.left.netns,), event)
        assert "INSTALLED" in {c.get("state") for sa in charon.list_sas()
                               for c in sa.children.values()}

    before = daemon.mark()
    daemon.reload(daemon_conf([pair.left.outer], {}))
    daemon.wait_event("IkeSaDown", 60, before, connection=name)
    wait_clean(pair, lambda: not charon.list_sas())
    assert not daemon.errors(mark), daemon.tail()
