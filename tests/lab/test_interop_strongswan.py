"""xfrmctl against strongSwan 5.9.8 (charon) on a real kernel, ping through ESP every time.
The cases and checks are those of interop_common.py (test_pair_interop.py runs them
against a second xfrmctl daemon).

One gateway pair, one charon (right, 192.0.2.2) and one xfrmctl daemon (left, 192.0.2.1)
for the whole module: a cold start of either costs minutes under TCG. Each case loads its
connection into charon (``swanctl --load-all`` replaces the previous one) and into our
daemon (SIGHUP with a configuration holding only this case's connection, under a fresh
name, so the previous case's SAs are deleted and this one starts clean), brings the
tunnel up from the side the case says, checks the kernel on both sides while pinging,
runs the case's extra steps (rekeys), and deletes from the side the case says: both
kernels must then be empty. A failing case keeps both logs in
``<results>/interop-logs/<case>/``.

Our daemon is policy-based and installs no routes: each gateway routes the remote subnet
to its peer (charon's own routes in table 220 take precedence on its side).
"""


from __future__ import annotations

import time

import pytest

from tests.lab.interop_common import (
    CASES,
    IKE_REKEY,
    LEFT_ID,
    POOL,
    PSK,
    RIGHT_ID,
    Case,
    check_traffic,
    ip_in,
    rekey_child_while_pinging,
    rekey_ike_while_pinging,
    until,
    wait_child_deleted,
    wait_clean,
    xfrmctl_conf,
)
from tests.lab.swan_lab import SWAN_DH, Lab, keep_logs, lab, swan_child, swan_conn
from tests.support.strongswan import SA, SwanSecret
from tests.support.xfrmctl_daemon import Event, daemon_conf, wait_installed

__all__ = ["keep_logs", "lab"]  # fixtures, imported for pytest

# ---------------------------------------------------------------------------- configs


def load_charon(lab: Lab, case: Case) -> None:
    conn = swan_conn(lab, case)
    if case.x509:
        lab.charon.load([conn], certs={"right.pem": lab.certs["right.pem"]},
                        cacerts={"ca.pem": lab.certs["ca.pem"]},
                        keys={"right.key": lab.certs["right.key"]})
    else:
        lab.charon.load([conn], [SwanSecret(PSK, ids=[LEFT_ID, RIGHT_ID])])


# ---------------------------------------------------------------------------- checks


def charon_vip(sas: list[SA]) -> str:
    vips = [str(v) for sa in sas for v in sa.raw.get("local-vips", [])]
    assert vips, sas[0].raw
    return vips[0]


# ---------------------------------------------------------------------------- the cases


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_interop(lab: Lab, case: Case, keep_logs: None) -> None:
    name = f"c{next(lab.names)}"
    daemon, charon, pair = lab.daemon, lab.charon, lab.pair
    mark = daemon.mark()
    load_charon(lab, case)
    # the previous case's connection goes away
    daemon.reload(xfrmctl_conf(pair, case, name, lab.credentials))
    if not case.we_initiate:
        charon.initiate("net", "gw", timeout=90)
    up = daemon.wait_event("IkeSaUp", 120, mark, connection=name)
    assert up["initiator"] is case.we_initiate
    event = wait_installed(daemon, mark, connection=name)
    installed = time.monotonic()  # our rekey timers run from about here
    sas = charon.wait_child_installed("net")
    kid = swan_child(sas)
    assert {int(kid["spi-in"], 16), int(kid["spi-out"], 16)} == {
        int(event["spi_out"]), int(event["spi_in"])}
    assert kid["mode"] == case.mode.upper()
    if case.encap:
        assert kid.get("encap") == "yes", kid
    if case.narrow:
        assert event["local_ts"] == [f"{pair.left.inner}/32"]
        assert event["remote_ts"] == [f"{pair.right.inner}/32"]
    vip = None
    if case.vip:
        vip = charon_vip(sas)
        assert ip_in(vip, POOL), vip
        assert event["remote_ts"] == [f"{vip}/32"]
    check_traffic(pair, case, event, vip)

    if case.peer_rekeys_child:
        event = rekey_child_while_pinging(
            pair, case, daemon, event, vip, mark, by_peer=True, seconds=12,
            trigger=lambda: charon.rekey(child="net"))
        check_swan_pfs(lab, case, event)
    if case.peer_rekeys_ike:
        old = charon.list_sas()[0].uniqueid
        rekey_ike_while_pinging(pair, case, daemon, event, vip, seconds=8,
                                trigger=lambda: charon.rekey(ike="gw"))
        charon.wait_for(lambda sas: bool(sas) and sas[0].uniqueid != old
                        and sas[0].state == "ESTABLISHED", 60, "IKE_SA rekeyed")
    if case.we_rekey:
        event = rekey_child_while_pinging(pair, case, daemon, event, vip, mark,
                                          by_peer=False, seconds=until(installed, IKE_REKEY))
        check_swan_pfs(lab, case, event)

    before = daemon.mark()
    if case.delete_by_us:
        daemon.reload(daemon_conf([pair.left.outer], {}))
    else:
        charon.terminate(ike="gw", timeout=60)
        daemon.wait_event("IkeSaDown", 60, before, connection=name)
    wait_child_deleted(daemon, mark, event)
    wait_clean(pair, lambda: not charon.list_sas())
    assert not daemon.errors(mark), daemon.tail()


def check_swan_pfs(lab: Lab, case: Case, event: Event) -> None:
    """charon's side of the rekeyed CHILD_SA of our ``event`` ran the key exchange too."""
    kid = next(c for sa in lab.charon.list_sas() for c in sa.children.values()
               if int(c["spi-in"], 16) == int(event["spi_out"]))
    assert kid.get("dh-group") == SWAN_DH[case.dh], kid
