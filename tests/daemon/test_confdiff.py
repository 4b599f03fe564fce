"""The per-connection difference that decides what a configuration change renegotiates."""

from __future__ import annotations

import pytest

from xfrmctl.daemon import conf as cf
from xfrmctl.daemon.confdiff import diff_connection

PSK = "test-only psk for confdiff"


def conn(**kw: object) -> cf.ConnectionConf:
    children = kw.pop("children", {"lan": cf.ChildConf(local_ts=["198.51.100.0/24"],
                                                       remote_ts=["203.0.113.0/24"])})
    base: dict[str, object] = {"local_addrs": ["192.0.2.1"], "remote_addrs": ["192.0.2.2"],
                               "psk": PSK, "children": children}
    return cf.ConnectionConf.model_validate({**base, **kw})


def child(**kw: object) -> cf.ChildConf:
    base = {"local_ts": ["198.51.100.0/24"], "remote_ts": ["203.0.113.0/24"]}
    return cf.ChildConf.model_validate({**base, **kw})


def test_new_and_removed_connections() -> None:
    assert diff_connection("x", None, conn()).added
    assert diff_connection("x", conn(), None).removed


def test_an_identical_configuration_negotiates_nothing() -> None:
    d = diff_connection("x", conn(), conn())
    assert not d.negotiates and not d.reauth and d.local_fields == ()


@pytest.mark.parametrize("field,value", [
    ("dpd_delay", 5), ("dpd_action", "restart"), ("close_action", "start"),
    ("start_action", "start"), ("rekey_time", 600), ("id", 7)])
def test_local_settings_negotiate_nothing(field: str, value: object) -> None:
    d = diff_connection("x", conn(), conn(**{field: value}))
    assert not d.negotiates
    assert d.local_fields == ((field,) if field != "id" else ("id",))


def test_new_ike_proposals_alone_are_an_ike_rekey() -> None:
    d = diff_connection("x", conn(), conn(ike_proposals="aes256gcm16-prfsha384-ecp384"))
    assert d.ike_rekey and not d.reauth and d.negotiates
    d = diff_connection("x", conn(), conn(ike_proposals="aes256gcm16-prfsha384-ecp384",
                                          local_id="@a.example"))
    assert d.reauth and not d.ike_rekey


@pytest.mark.parametrize("field,value", [
    ("local_id", "@a.example"),
    ("remote_id", "@b.example"), ("psk", "another test-only psk"),
    ("remote_addrs", ["192.0.2.3"]), ("local_port", 4500), ("fragmentation", False),
    ("encap", True), ("mobike", False)])  # MOBIKE is negotiated in IKE_AUTH
def test_ike_level_changes_reauthenticate(field: str, value: object) -> None:
    d = diff_connection("x", conn(), conn(**{field: value}))
    assert d.reauth and d.negotiates


def test_children_added_removed_and_replaced() -> None:
    old = conn(children={"lan": child(), "dmz": child(remote_ts=["192.0.2.128/26"]),
                         "voip": child(remote_ts=["192.0.2.64/26"])})
    new = conn(children={"lan": child(esp_proposals="aes256gcm16-x25519"),
                         "voip": child(remote_ts=["192.0.2.64/26"], rekey_time=600,
                                       life_time=700),
                         "mgmt": child(remote_ts=["192.0.2.32/27"])})
    d = diff_connection("x", old, new)
    assert not d.reauth
    assert d.children_added == ("mgmt",)
    assert d.children_removed == ("dmz",)
    assert d.children_replaced == ("lan",)  # voip's lifetimes apply at its next rekey


@pytest.mark.parametrize("field,value", [
    ("local_ts", ["198.51.100.0/25"]), ("remote_ts", ["203.0.113.0/25"]),
    ("mode", "transport"), ("esp_proposals", "aes256gcm16"), ("mark_out", 5),
    ("replay_window", 64), ("esn", True), ("tfc_padding", 100)])
def test_negotiated_or_installed_child_properties_replace_it(field: str,
                                                              value: object) -> None:
    d = diff_connection("x", conn(children={"lan": child()}),
                        conn(children={"lan": child(**{field: value})}))
    assert d.children_replaced == ("lan",) and not d.reauth


@pytest.mark.parametrize("update", [{"interface_name": "ipsec1"}, {"if_id": 8},
                                    {"routes": ["203.0.113.0/25"]},
                                    {"interface_kind": None, "interface_name": None}])
def test_interface_changes_name_the_child(update: dict[str, object]) -> None:
    routed = child(interface_kind="xfrmi", interface_name="ipsec0", if_id=7,
                   routes=["203.0.113.0/24"])
    d = diff_connection("x", conn(children={"lan": routed}),
                        conn(children={"lan": routed.model_copy(update=update)}))
    assert d.links_changed == ("lan",) and d.children_replaced == ("lan",)
    assert diff_connection("x", conn(children={"lan": routed}),
                           conn(children={"lan": routed})).links_changed == ()


def test_new_credential_file_content_is_a_reauthentication() -> None:
    d = diff_connection("x", conn(), conn(), credentials_changed=True)
    assert d.reauth and d.credentials_changed and not d.ike_rekey and d.negotiates
