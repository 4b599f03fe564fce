"""Post-quantum hybrid key exchange against strongSwan 6.0.6 on a real kernel: X25519 in
IKE_SA_INIT plus ML-KEM-768 as ADDKE1 in an IKE_INTERMEDIATE exchange (RFC 9242, RFC
9370; charon's key and ciphertext come in fragments, RFC 7383), IntAuth bound in AUTH,
then a CHILD_SA with ping through ESP. Both roles, and rekeys by both sides while
pinging: the CHILD_SA with PFS (X25519 + ML-KEM-768 over IKE_FOLLOWUP_KE) and the IKE SA
(the same), losing no packet. The second case adds ML-KEM-512 (kyber-py on our side) as
ADDKE2.

strongSwan 6.0.6 is unpacked to /opt/strongswan6 by deploy/setup.sh (Debian 12 ships
5.9.8, which has neither RFC 9370 nor ML-KEM); without it the module skips with the
reason. One charon 6.0.6 (right, 192.0.2.2) and one xfrmctl daemon (left, 192.0.2.1) for
the module; each case loads its connection into both (our daemon by SIGHUP, under a fresh
name) and deletes it at the end, leaving both kernels clean. A failing case keeps both
logs in ``<results>/pq-logs/<case>/``.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.lab.conftest import GatewayPair
from tests.lab.interop_common import (
    IKE_REKEY,
    LEFT_ID,
    PSK,
    RIGHT_ID,
    Case,
    case_logs,
    check_traffic,
    rekey_child_while_pinging,
    rekey_ike_while_pinging,
    routed_pair,
    until,
    wait_child_deleted,
    wait_clean,
    write_credentials,
    xfrmctl_conf,
)
from tests.lab.swan_lab import swan_child
from tests.support.strongswan import STRONGSWAN6, Charon, SwanConn, SwanSecret, available
from tests.support.xfrmctl_daemon import Event, XfrmctlDaemon, daemon_conf, wait_installed

HYBRID_IKE = "aes256gcm16-prfsha384-x25519-ke1_mlkem768"
# ML-KEM-512 (kyber-py on our side) as a second additional key exchange
HYBRID_IKE_512 = "aes256gcm16-prfsha384-x25519-ke1_mlkem768-ke2_mlkem512"
HYBRID_ESP = "aes256gcm16-x25519-ke1_mlkem768"

CASES = [
    Case("hybrid-x25519-mlkem768-we-initiate-peer-rekeys", ike=HYBRID_IKE, esp=HYBRID_ESP,
         peer_rekeys_child=True, peer_rekeys_ike=True, delete_by_us=False),
    Case("hybrid-x25519-mlkem768-mlkem512-peer-initiates-we-rekey", we_initiate=False,
         ike=HYBRID_IKE_512, esp=HYBRID_ESP, we_rekey=True),
]


@dataclass
class PqLab:
    pair: GatewayPair
    charon: Charon
    daemon: XfrmctlDaemon
    credentials: Path
    results: Path
    names: Iterator[int] = field(default_factory=lambda: itertools.count(1))


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory, lab_results: Path) -> Iterator[PqLab]:
    reason = available(STRONGSWAN6)
    if reason:
        pytest.skip(f"strongSwan 6.0.6 is needed: {reason}")
    work = tmp_path_factory.mktemp("pq")
    write_credentials(work / "credentials")
    with routed_pair("pq") as pair:
        daemon = XfrmctlDaemon(pair.left.netns, work / "daemon",
                               daemon_conf([pair.left.outer], {}))
        # charon fragments what exceeds 1024 octets (IP and UDP headers included): its
        # ML-KEM-768 key (request) and ciphertext (response) reach us in fragments
        charon = Charon(pair.right.netns, work / "charon", build=STRONGSWAN6,
                        options={"fragment_size": 1024})
        daemon.start(wait=False)
        try:
            charon.start()
            daemon.wait_ready()
            yield PqLab(pair, charon, daemon, work / "credentials", lab_results)
        finally:
            charon.stop()
            daemon.stop()


@pytest.fixture
def keep_logs(request: pytest.FixtureRequest, lab: PqLab) -> Iterator[None]:
    failed = yield from case_logs(
        request, lab.results, "pq-logs",
        [(lab.daemon.log_path, "xfrmctl.log"), (lab.charon.log_path, "charon.log")],
        [(lab.daemon.config_path, "xfrmctl.yaml"),
         (lab.charon.swanctl_dir / "swanctl.conf", "swanctl.conf")])
    if failed:  # leave nothing up for the next case
        for sa in lab.charon.list_sas():
            lab.charon.terminate(ike_id=sa.uniqueid, timeout=30)


def load_charon(lab: PqLab, case: Case) -> None:
    me, peer = lab.pair.right, lab.pair.left
    conn = SwanConn(
        "gw", child_name="net", local_addrs=[me.outer], remote_addrs=[peer.outer],
        local_id=RIGHT_ID, remote_id=LEFT_ID, proposals=[case.ike], esp_proposals=[case.esp],
        local_ts=[me.subnet], remote_ts=[peer.subnet], mode=case.mode, auth="psk",
        child_rekey_time="1h", child_life_time="2h", rekey_time="4h")
    lab.charon.load([conn], [SwanSecret(PSK, ids=[LEFT_ID, RIGHT_ID])])


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_pq_hybrid(lab: PqLab, case: Case, keep_logs: None) -> None:
    name = f"pq{next(lab.names)}"
    daemon, charon, pair = lab.daemon, lab.charon, lab.pair
    mark = daemon.mark()
    load_charon(lab, case)
    daemon.reload(xfrmctl_conf(pair, case, name, lab.credentials))
    if not case.we_initiate:
        charon.initiate("net", "gw", timeout=120)
    up = daemon.wait_event("IkeSaUp", 180, mark, connection=name)
    assert up["initiator"] is case.we_initiate
    # our side: X25519 then ML-KEM-768 as the first additional key exchange
    assert "CURVE25519/KE1_ML_KEM_768" in str(up["suite"]), up
    event = wait_installed(daemon, mark, connection=name)
    installed = time.monotonic()  # our rekey timers run from about here
    sas = charon.wait_child_installed("net")
    ike = sas[0].raw
    # charon's side agrees: its IKE_SA has ML-KEM-768 as ADDKE1 (VICI "ke1-group")
    assert "ML_KEM_768" in str(ike), ike
    if case.ike == HYBRID_IKE_512:  # and ML-KEM-512 as ADDKE2 on both sides
        assert "KE2_ML_KEM_512" in str(up["suite"]) and "ML_KEM_512" in str(ike), (up, ike)
    assert "IKE_INTERMEDIATE" in charon.log_text(), "no IKE_INTERMEDIATE in charon's log"
    kid = swan_child(sas)
    assert {int(kid["spi-in"], 16), int(kid["spi-out"], 16)} == {
        int(event["spi_out"]), int(event["spi_in"])}
    check_traffic(pair, case, event, None)

    if case.peer_rekeys_child:
        event = rekey_child_while_pinging(
            pair, case, daemon, event, None, mark, by_peer=True, seconds=12,
            trigger=lambda: charon.rekey(child="net"))
        check_swan_hybrid_child(lab, event)
    if case.peer_rekeys_ike:
        old = charon.list_sas()[0].uniqueid
        rekey_ike_while_pinging(pair, case, daemon, event, None, seconds=8,
                                trigger=lambda: charon.rekey(ike="gw"))
        charon.wait_for(lambda sas: bool(sas) and sas[0].uniqueid != old
                        and sas[0].state == "ESTABLISHED", 60, "IKE_SA rekeyed")
        assert "ML_KEM_768" in str(charon.list_sas()[0].raw)
    if case.we_rekey:
        event = rekey_child_while_pinging(pair, case, daemon, event, None, mark,
                                          by_peer=False, seconds=until(installed, IKE_REKEY))
        check_swan_hybrid_child(lab, event)
    assert "IKE_FOLLOWUP_KE" in charon.log_text() or not (
        case.peer_rekeys_child or case.we_rekey), "no IKE_FOLLOWUP_KE in charon's log"

    before = daemon.mark()
    if case.delete_by_us:
        daemon.reload(daemon_conf([pair.left.outer], {}))
    else:
        charon.terminate(ike="gw", timeout=60)
        daemon.wait_event("IkeSaDown", 60, before, connection=name)
    wait_child_deleted(daemon, mark, event)
    wait_clean(pair, lambda: not charon.list_sas())
    assert not daemon.errors(mark), daemon.tail()


def check_swan_hybrid_child(lab: PqLab, event: Event) -> None:
    """charon's side of the rekeyed CHILD_SA of our ``event`` ran X25519 and ML-KEM-768,
    and so did ours."""
    assert "CURVE25519/KE1_ML_KEM_768" in str(event["suite"]), event
    kid = next(c for sa in lab.charon.list_sas() for c in sa.children.values()
               if int(c["spi-in"], 16) == int(event["spi_out"]))
    assert kid.get("dh-group") == "CURVE_25519" and "ML_KEM_768" in str(kid), kid
