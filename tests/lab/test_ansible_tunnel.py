"""The Ansible collection brings up a real tunnel: one run of a playbook configures two
xfrmctl gateways (database-mode daemons in the lab's namespaces, each with its API on a
unix socket), brings the tunnel up with the sa module (which waits for gw1's CHILD_SA)
and waits with the info module until gw2 has its CHILD_SA too; ESP then carries a ping.
That a second run of the same playbook changes nothing is checked on the host against
in-memory kernels (tests/ansible/test_tunnel.py): the modules read the same API answers
there, and a second run here would cost seven minutes of CI under TCG.

    gw1: xfrmctl --api                           gw2: xfrmctl --api
    198.51.100.0/24 == ESP 192.0.2.1 <-> 192.0.2.2 == 203.0.113.0/24

Kept cheap for TCG, where every Python start is slow: one ansible-playbook run for both
gateways (two local hosts, parallel forks), no facts, pipelining, four tasks and six
module runs (the PSK and the connection tasks run for both gateways at once), results
from the recap (no task writes a file), the ping by the test itself.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from tests.ansible.tunnel import (
    ANSIBLE_PLAYBOOK,
    TUNNEL_PLAYBOOK,
    ApiDaemon,
    Gateway,
    play,
    prepare_database,
    write_inventory,
)
from tests.lab.conftest import GatewayPair
from tests.lab.pair_common import Steps, ping, route_subnets, wait_for_api

pytestmark = pytest.mark.lab

PSK = "lab-ansible-psk-not-secret"
PLAY_TIMEOUT = 1500.0  # seconds for one ansible-playbook run under TCG


def test_playbook_brings_up_a_tunnel(
    gateway_pair: GatewayPair, tmp_path: Path,
    record_property: Callable[[str, object], None],
) -> None:
    if not ANSIBLE_PLAYBOOK.exists():
        pytest.skip("ansible-core is not installed (pip install -e '.[dev]')")
    pair, step = gateway_pair, Steps(record_property)
    route_subnets(pair)
    gws = []
    for host, side in (("gw1", pair.left), ("gw2", pair.right)):
        token = prepare_database(tmp_path / host)
        daemon = ApiDaemon(side.netns, tmp_path / host, listen=side.outer)
        daemon.start(wait=False)  # both start at once
        gws.append(Gateway(host, daemon, token, side.outer, side.subnet))
    gw1, gw2 = gws
    try:
        for gw in gws:
            gw.daemon.wait_ready()
            wait_for_api(gw.daemon.socket, gw.daemon)
        step("started")
        inventory = write_inventory(tmp_path / "inventory.yml", gw1, gw2)

        first = play(TUNNEL_PLAYBOOK, inventory, tmp_path, {"vault_psk": PSK}, PLAY_TIMEOUT)
        assert first.proc.returncode == 0, first.output[-8000:]
        # gw1: PSK, connection, tunnel up (waited for); gw2: PSK, connection, waited
        assert {h: (r["changed"], r["failed"]) for h, r in first.recap.items()} == {
            "gw1": (3, 0), "gw2": (2, 0)}, first.output[-3000:]
        step("first_run")
        out = ping(pair.left, pair.right)
        assert " 0% packet loss" in out, out
        step("ping")

        for text in (first.output, *(gw.daemon.log_path.read_text() for gw in gws)):
            assert PSK not in text
    finally:
        for gw in gws:
            gw.daemon.stop()
