"""IKE against a real strongSwan charon on the host kernel, which has no ESP: our daemon
runs on the in-memory kernel and charon refuses each CHILD_SA, which still proves that
it decrypted our request. What needs no ESP is proven here, in seconds, not in the VM.

Rekeys when the proposals change: strongSwan derives a rekeyed IKE_SA's keys with the
old PRF for prf+ too, RFC 7296 2.18 (and Libreswan) with the new one, so the keys differ
whenever a rekey changes the PRF. A rekey keeps the PRF (as initiator and as responder)
and a configuration that drops the running PRF reauthenticates, make-before-break;
every request on the new IKE_SA must pass charon's integrity check.

(strongSwan 6 closes the IKE_SA when its first CHILD_SA fails, so its cases are in the
lab: tests/lab/test_pq_lab.py.)

    ours: xfrmctl daemon (--kernel memory)  192.0.2.1 <-> 192.0.2.2  charon
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support import strongswan
from tests.support.netns import Netns, netns, require_root, veth
from tests.support.strongswan import Charon, SwanConn, SwanSecret
from tests.support.xfrmctl_daemon import Event, XfrmctlDaemon, child, connection, daemon_conf

pytestmark = pytest.mark.netns

PSK = "charon-rekey-test-psk-not-secret"
OURS, THEIRS = "192.0.2.1", "192.0.2.2"
SHA256_X25519 = "aes128gcm16-prfsha256-x25519"
SHA256_ECP384 = "aes256gcm16-prfsha256-ecp384"  # a new cipher and group, the same PRF
SHA384_ECP384 = "aes256gcm16-prfsha384-ecp384"  # a new PRF
TIMEOUT = 60.0


@pytest.fixture
def pair() -> Iterator[tuple[Netns, Netns]]:
    require_root()
    with netns("rk") as ours, netns("rs") as theirs:
        veth(ours, theirs, f"{OURS}/24", f"{THEIRS}/24")
        yield ours, theirs


def _conf(proposals: str, *children: str) -> dict[str, Any]:
    kids = {name: child([f"198.51.100.{i}/32"], [f"203.0.113.{i}/32"])
            for i, name in enumerate(children, 1)}
    return daemon_conf([OURS], {"gw": connection(
        OURS, THEIRS, kids, psk=PSK, local_id="left", remote_id="right",
        ike_proposals=proposals, start_action="start")})


@contextlib.contextmanager
def _running(pair: tuple[Netns, Netns], work: Path, theirs: tuple[str, ...], ours: str
             ) -> Iterator[tuple[XfrmctlDaemon, Charon]]:
    """charon allowing the proposals `theirs`, then our daemon initiating with `ours`
    and one child; both stopped at the end. Yields once our IKE_SA is up."""
    if (reason := strongswan.available()) is not None:
        pytest.skip(reason)
    charon = Charon(pair[1].name, work / "charon")
    daemon = XfrmctlDaemon(pair[0].name, work / "ours", _conf(ours, "net"), kernel="memory")
    try:
        charon.start()
        _load(charon, theirs)
        daemon.start()
        yield daemon, charon
    finally:
        daemon.stop()
        charon.stop()


def _load(charon: Charon, proposals: tuple[str, ...]) -> None:
    charon.load([SwanConn("gw", local_addrs=[THEIRS], remote_addrs=[OURS], local_id="right",
                          remote_id="left", proposals=proposals,
                          local_ts=["203.0.113.0/24"], remote_ts=["198.51.100.0/24"])],
                secrets=[SwanSecret(PSK, ids=["left", "right"])])


def _event(daemon: XfrmctlDaemon, kind: str, after: int, **fields: Any) -> Event:
    """Our event `kind` (NegotiationFailed is expected here: charon refuses children)."""
    return daemon.wait_line(
        lambda e: e.get("event") == kind and all(e.get(k) == v for k, v in fields.items()),
        TIMEOUT, kind, after)


def _answered_on_new_sa(daemon: XfrmctlDaemon, charon: Charon, proposals: str,
                        ike_sa: int) -> None:
    """A CREATE_CHILD_SA on IKE_SA `ike_sa` gets charon's answer (its refusal, decrypted
    and authenticated by us), and charon found no request failing its integrity check."""
    mark = daemon.mark()
    daemon.reload(_conf(proposals, "net", "extra"))
    refused = _event(daemon, "NegotiationFailed", mark, child="extra")
    assert refused["ike_sa"] == ike_sa, refused
    assert "integrity check failed" not in charon.log_text()


def test_our_rekey_keeps_the_prf_and_a_dropped_prf_reauthenticates(
        pair: tuple[Netns, Netns], tmp_path: Path) -> None:
    with _running(pair, tmp_path, (SHA256_X25519, SHA256_ECP384, SHA384_ECP384),
                  SHA256_X25519) as (daemon, charon):
        first = _event(daemon, "IkeSaUp", 0)
        # a new cipher and group with the same PRF: a rekey
        mark = daemon.mark()
        daemon.reload(_conf(f"{SHA256_ECP384}, {SHA384_ECP384}", "net"))
        rekeyed = _event(daemon, "IkeSaRekeyed", mark, ike_sa=first["ike_sa"])
        assert rekeyed["suite"] == "AES_GCM_16_256/PRF_HMAC_SHA2_256/ECP_384", rekeyed
        _answered_on_new_sa(daemon, charon, f"{SHA256_ECP384}, {SHA384_ECP384}",
                            rekeyed["new_ike_sa"])
        # proposals without the running PRF: a new IKE_SA (reauthentication), not a rekey
        mark = daemon.mark()
        daemon.reload(_conf(SHA384_ECP384, "net"))
        up = _event(daemon, "IkeSaUp", mark)
        assert up["suite"] == "AES_GCM_16_256/PRF_HMAC_SHA2_384/ECP_384", up
        _event(daemon, "IkeSaDown", mark, ike_sa=rekeyed["new_ike_sa"],
               reason="reauthenticated")
        assert not daemon.events("IkeSaRekeyed")[1:], "the PRF change was a rekey"
        _answered_on_new_sa(daemon, charon, SHA384_ECP384, up["ike_sa"])


def test_a_peer_rekey_keeps_the_prf_where_it_offers_it(
        pair: tuple[Netns, Netns], tmp_path: Path) -> None:
    """Both configurations end up preferring SHA-384 while the IKE_SA runs SHA-256:
    charon's rekey offers both and we, the responder, keep SHA-256."""
    preferring_sha384 = f"{SHA384_ECP384}, {SHA256_X25519}"
    with _running(pair, tmp_path, (SHA384_ECP384, SHA256_X25519),
                  SHA256_X25519) as (daemon, charon):
        first = _event(daemon, "IkeSaUp", 0)
        mark = daemon.mark()
        daemon.reload(_conf(preferring_sha384, "net"))  # our own rekey keeps SHA-256
        ours_done = _event(daemon, "IkeSaRekeyed", mark, ike_sa=first["ike_sa"])
        assert "PRF_HMAC_SHA2_256" in ours_done["suite"], ours_done
        mark = daemon.mark()
        charon.rekey(ike="gw")
        rekeyed = _event(daemon, "IkeSaRekeyed", mark, ike_sa=ours_done["new_ike_sa"])
        assert "PRF_HMAC_SHA2_256" in rekeyed["suite"], rekeyed
        _answered_on_new_sa(daemon, charon, preferring_sha384, rekeyed["new_ike_sa"])
