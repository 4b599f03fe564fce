"""strongSwan's swanctl.conf as an import format: the syntax, the mapping onto the
daemon's model, every unmapped setting listed with its path, and `xfrmctl db import`
taking effect at once in a running daemon."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import select

from tests.support.db_daemon import TWO, daemon, daemon_settings
from tests.support.pki import pem, simple_cert
from xfrmctl.cli import main as cli
from xfrmctl.config import Settings
from xfrmctl.daemon import conf as cf
from xfrmctl.daemon import main, swanctl
from xfrmctl.store import models as m

PSK = "swanctl test-only psk 3c9d"

# In the style of strongSwan's own examples (swanctl.conf(5), testing/tests/swanctl):
# a net-to-net PSK tunnel, a remote-access responder with a pool, and a certificate
# based host-to-host connection.
SWANCTL = f"""
# swanctl.conf, migrated from a strongSwan gateway
connections {{

   gw-gw {{
      local_addrs  = 192.0.2.1
      remote_addrs = 192.0.2.2
      version = 2
      proposals = aes128gcm16-prfsha256-x25519, default
      dpd_delay = 30s
      rekey_time = 4h
      fragmentation = yes
      mobike = no
      keyingtries = 0   # not mapped

      local {{
         auth = psk
         id = gw1.example.org
      }}
      remote {{
         auth = psk
         id = "gw2.example.org"
      }}
      children {{
         net-net {{
            local_ts  = 198.51.100.0/24
            remote_ts = 203.0.113.0/24,203.0.113.128/25
            esp_proposals = aes128gcm16-x25519
            updown = /usr/local/libexec/ipsec/_updown iptables
            rekey_time = 1h
            start_action = trap
            dpd_action = restart
            close_action = start
            mode = tunnel
         }}
      }}
   }}

   rw
   {{
      local_addrs = 192.0.2.1
      pools = rw_pool
      local {{
         auth = psk
         id = gw1.example.org
      }}
      remote {{
         auth = psk
      }}
      children {{
         net {{
            local_ts = 0.0.0.0/0
            esp_proposals = default
         }}
      }}
   }}

   host {{
      local_addrs = 192.0.2.1
      remote_addrs = 192.0.2.3
      local {{
         auth = pubkey
         certs = gwCert.pem
         id = gw1.example.org
      }}
      remote {{
         auth = pubkey
         id = host.example.org
      }}
      children {{
         host {{
            mode = transport
            mark_in = 0x2/0xff
         }}
      }}
   }}
}}

pools {{
   rw_pool {{
      addrs = 10.3.0.0/28
      dns = 198.51.100.53
   }}
}}

secrets {{
   ike-gw {{
      id-1 = gw1.example.org
      id-2 = gw2.example.org
      secret = "{PSK}"
   }}
   eap-carol {{
      id = carol
      secret = Ar3etTnp
   }}
}}
"""

@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    return daemon_settings(tmp_path, monkeypatch)


@pytest.fixture
def swanctl_dir(tmp_path: Path) -> Path:
    """/etc/swanctl as strongSwan lays it out: the file, x509/, x509ca/, private/."""
    from cryptography.hazmat.primitives import serialization  # noqa: PLC0415
    from cryptography.hazmat.primitives.asymmetric import ec  # noqa: PLC0415

    base = tmp_path / "swanctl"
    for sub in ("x509", "x509ca", "private"):
        (base / sub).mkdir(parents=True)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    (base / "x509ca" / "caCert.pem").write_bytes(pem(simple_cert("CA", ca_key, "CA", ca_key, True)))
    (base / "x509" / "gwCert.pem").write_bytes(pem(simple_cert("gw1", key, "CA", ca_key, False)))
    (base / "private" / "gwKey.pem").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    (base / "swanctl.conf").write_text(SWANCTL)
    return base


def test_syntax() -> None:
    parsed = swanctl.parse('a { b = c d  # comment\n  e = 1 }\nf {\n g = "x # y}"\n}\n'
                           "h\n{\n}\n")
    assert parsed == {"a": {"b": "c d", "e": "1"}, "f": {"g": "x # y}"}, "h": {}}
    for bad, error in (("a {\n b = c\n", "not closed"), ("}\n", "without an open"),
                       ("include conf.d/*.conf\n", "include is not supported"),
                       ("a : b {\n}\n", "templates"), ('a = "x\n', "unterminated")):
        with pytest.raises(swanctl.SwanctlError, match=error):
            swanctl.parse(bad, "s.conf")


def test_mapping_and_every_unmapped_setting_listed(swanctl_dir: Path) -> None:
    conf, unsupported = swanctl.load(swanctl_dir / "swanctl.conf")
    gw = conf.connections["gw-gw"]
    assert (gw.local_addrs, gw.remote_addrs) == (["192.0.2.1"], ["192.0.2.2"])
    assert (gw.local_id, gw.remote_id) == ("gw1.example.org", "gw2.example.org")
    assert gw.psk is not None and gw.psk.get_secret_value() == PSK
    assert gw.ike_proposals == "aes128gcm16-prfsha256-x25519"
    assert (gw.dpd_delay, gw.rekey_time) == (30, 14400)
    assert gw.mobike is False and conf.connections["rw"].mobike is True  # no / default
    assert gw.start_action is cf.StartAction.TRAP  # from its child
    assert gw.dpd_action is cf.DpdAction.RESTART and gw.close_action is cf.CloseAction.START
    net = gw.children["net-net"]
    assert net.remote_ts == ["203.0.113.0/24", "203.0.113.128/25"]
    assert (net.rekey_time, net.life_time) == (3600, 3960)
    rw = conf.connections["rw"]
    assert rw.pool == "10.3.0.0/28" and rw.remote_addrs == []
    assert rw.children["net"].esp_proposals is None  # "default": ours
    host = conf.connections["host"]
    assert host.auth.value == "pubkey" and host.children["host"].mode.value == "transport"
    assert host.certificate == swanctl_dir / "x509" / "gwCert.pem"
    assert host.private_key == swanctl_dir / "private" / "gwKey.pem"
    assert host.ca == [swanctl_dir / "x509ca" / "caCert.pem"]
    assert host.children["host"].mark_in == 2
    cf.ike_config("host", host)  # loads as the daemon would
    assert sorted(unsupported) == sorted([
        "connections.gw-gw.keyingtries: not supported",
        "connections.gw-gw.children.net-net.updown: not supported",
        "connections.host.children.host.mark_in: the mask is not supported: imported without",
        "pools.rw_pool.dns: not supported",
        "secrets.eap-carol: only IKE pre-shared keys (secrets.ike*) and postquantum "
        "preshared keys (secrets.ppk*) are imported",
    ])


def test_cli_import_of_swanctl_conf_lists_what_it_left_out(swanctl_dir: Path,
                                                           tmp_path: Path) -> None:
    variables = {"XFRMCTL_DATABASE_URL": f"sqlite:///{tmp_path}/x.db",
                 "XFRMCTL_SECRET_KEY_FILE": str(tmp_path / "k.key"),
                 "XFRMCTL_CONFIG": str(tmp_path / "none.yaml")}
    result = CliRunner().invoke(cli, ["db", "import", str(swanctl_dir / "swanctl.conf")],
                                env=variables)
    assert result.exit_code == 0, result.output
    assert "imported 3 connection(s): gw-gw, rw, host" in result.output
    assert "  connections.gw-gw.children.net-net.updown: not supported" in result.output
    assert PSK not in result.output
    broken = tmp_path / "broken.conf"
    broken.write_text("connections {\n  a {\n")
    bad = CliRunner().invoke(cli, ["db", "import", str(broken)], env=variables)
    assert bad.exit_code == 7 and "not closed" in bad.output and "Traceback" not in bad.output


async def test_db_import_takes_effect_in_a_running_daemon(
        env: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        swanctl_dir: Path) -> None:
    monkeypatch.setattr(main, "WATCH_INTERVAL", 0.2)
    path = tmp_path / "gw.yaml"
    path.write_text(TWO)
    async with daemon(env, path, monkeypatch) as d:
        result = await asyncio.to_thread(
            CliRunner().invoke, cli, ["--json", "db", "import",
                                      str(swanctl_dir / "swanctl.conf")])
        assert result.exit_code == 0, result.output
        assert json.loads(result.output)["imported"] == ["gw-gw", "rw", "host"]
        for _ in range(100):
            if "gw-gw" in d.controller.connections:
                break
            await asyncio.sleep(0.05)
        assert sorted(d.controller.connections) == ["gw-gw", "host", "rw", "site-b", "site-c"]
        managed = d.db.call(lambda s: dict(s.execute(select(
            m.Connection.name, m.Connection.managed_by)).all()))
        assert managed["gw-gw"] is None and managed["site-b"] is not None


def test_ppk_settings_and_secret_are_imported(tmp_path: Path) -> None:
    """RFC 8784: ppk_id/ppk_required and the secrets.ppk* naming that id."""
    path = tmp_path / "swanctl.conf"
    path.write_text("""
connections {
  gw {
    remote_addrs = 192.0.2.2
    ppk_id = pq1
    ppk_required = yes
    local { auth = psk
            id = a }
    remote { auth = psk
             id = b }
    children { net { local_ts = 198.51.100.0/24 } }
  }
  other {
    remote_addrs = 192.0.2.3
    ppk_id = missing
    local { auth = psk
            id = a }
    remote { auth = psk
             id = b }
  }
}
secrets {
  ike-1 { secret = "test-only psk"
          id-1 = a
          id-2 = b }
  ppk-1 { secret = "test-only postquantum preshared key 0123456789"
          id = pq1 }
}
""")
    conf, notes = swanctl.load(path)
    gw = conf.connections["gw"]
    assert (gw.ppk_id, gw.ppk_required) == ("pq1", True)
    assert gw.ppk is not None and gw.ppk.get_secret_value().startswith("test-only postq")
    assert conf.connections["other"].ppk is None
    assert [n for n in notes if "ppk" in n] == [
        "connections.other.ppk_id: no secrets.ppk* with id missing: imported without a PPK"]
