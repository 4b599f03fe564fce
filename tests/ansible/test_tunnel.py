"""A tunnel by playbook on the host: two `xfrmctl daemon --api --kernel memory` gateways in
network namespaces joined by veth (IKE is real, the kernel's SAs are the in-memory
fake). The README's playbook brings the tunnel up; the lab's playbook
(playbooks/tunnel.yml) does too and waits with the info module; a second run of either
changes nothing. The lab test runs the same playbook on real ESP and pings through it.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.netns import netns_pair, require_root

from .conftest import Api
from .tunnel import (
    ANSIBLE_PLAYBOOK,
    REPO,
    TUNNEL_PLAYBOOK,
    ApiDaemon,
    Gateway,
    Played,
    play,
    prepare_database,
    write_inventory,
)

PSK = "ansible-tunnel-psk-Kq2w8"


@pytest.fixture
def gateways(tmp_path: Path) -> Iterator[tuple[Gateway, Gateway]]:
    require_root()
    if not ANSIBLE_PLAYBOOK.exists():
        pytest.skip("ansible-core is not installed (pip install -e '.[dev]')")
    with netns_pair(prefix="xat") as (a, b):
        pair = []
        for host, ns, transit, lan in (("gw1", a, "192.0.2.1", "198.51.100.0/24"),
                                       ("gw2", b, "192.0.2.2", "203.0.113.0/24")):
            token = prepare_database(tmp_path / host)
            daemon = ApiDaemon(ns.name, tmp_path / host, listen=transit, kernel="memory")
            pair.append(Gateway(host, daemon, token, transit, lan))
        try:
            for gw in pair:
                gw.daemon.start(wait=False)
            for gw in pair:
                gw.daemon.wait_ready(120)
                deadline = time.monotonic() + 120
                while not gw.daemon.socket.is_socket():
                    assert gw.daemon.running and time.monotonic() < deadline, gw.daemon.tail()
                    time.sleep(0.2)
            yield pair[0], pair[1]
        finally:
            for gw in pair:
                gw.daemon.stop()


def _api(gw: Gateway) -> Api:
    return Api(f"unix://{gw.daemon.socket}", gw.token, gw.daemon.workdir, {})


def _installed(gw: Gateway) -> list[str]:
    return sorted(sa["name"] for sa in _api(gw).get("/child-sas")["data"]
                  if sa["state"] == "INSTALLED")


def _run_twice(playbook: Path, gw1: Gateway, gw2: Gateway, work: Path
               ) -> tuple[Played, Played]:
    inventory = write_inventory(work / "inventory.yml", gw1, gw2)
    first = play(playbook, inventory, work, {"vault_psk": PSK})
    assert first.proc.returncode == 0, first.output[-6000:]
    # gw1: the PSK, the connection, the tunnel up; gw2: the PSK and the connection
    assert {h: r["changed"] for h, r in first.recap.items()} == {"gw1": 3, "gw2": 2}, \
        first.output[-3000:]
    assert _installed(gw1) == ["lan"]
    second = play(playbook, inventory, work, {"vault_psk": PSK})
    assert second.proc.returncode == 0, second.output[-6000:]
    assert {h: (r["changed"], r["failed"]) for h, r in second.recap.items()} == {
        "gw1": (0, 0), "gw2": (0, 0)}, second.output[-3000:]
    for text in (first.output, second.output, gw1.daemon.log_path.read_text(),
                 gw2.daemon.log_path.read_text()):
        assert PSK not in text
    return first, second


def test_readme_playbook_brings_up_a_tunnel_and_a_second_run_changes_nothing(
        gateways: tuple[Gateway, Gateway], tmp_path: Path) -> None:
    gw1, gw2 = gateways
    section = (REPO / "README.md").read_text().split("## Ansible", 1)[1]
    readme = tmp_path / "tunnel.yml"
    readme.write_text(section.split("```yaml\n", 1)[1].split("```", 1)[0])
    _run_twice(readme, gw1, gw2, tmp_path)
    deadline = time.monotonic() + 30  # the responder installs as it answers IKE_AUTH
    while _installed(gw2) != ["lan"]:
        assert time.monotonic() < deadline, gw2.daemon.tail()
        time.sleep(0.5)


def test_lab_playbook_waits_for_the_child_sa_on_both_sides(
        gateways: tuple[Gateway, Gateway], tmp_path: Path) -> None:
    gw1, gw2 = gateways
    first, _ = _run_twice(TUNNEL_PLAYBOOK, gw1, gw2, tmp_path)
    assert _installed(gw2) == ["lan"]  # the info task waited for it
    assert first.recap["gw1"]["skipped"] == first.recap["gw2"]["skipped"] == 1
