"""The daemon file as an import format: `import_file` / `xfrmctl db import` write its
connections into the database, and `read_conf` gives back what the file meant."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from sqlalchemy import func, select

from tests.support.pki import pem, simple_cert
from xfrmctl.cli import main as cli
from xfrmctl.daemon import conf as cf
from xfrmctl.daemon.dbconfig import apply_file, import_file, read_conf
from xfrmctl.store import models as m
from xfrmctl.store import repo
from xfrmctl.store.db import Database
from xfrmctl.store.secrets import SecretBox

PSK = "import test-only psk 91c2"


@pytest.fixture
def conf_file(tmp_path: Path) -> Path:
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    (tmp_path / "ca.pem").write_bytes(pem(simple_cert("Test CA", ca_key, "Test CA", ca_key, True)))
    (tmp_path / "gw.pem").write_bytes(pem(simple_cert("gw.example", key, "Test CA", ca_key, False)))
    (tmp_path / "gw.key").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    (tmp_path / "site-b.psk").write_text(PSK + "\n")
    path = tmp_path / "xfrmctl.yaml"
    path.write_text(f"""
listen: [192.0.2.1]
connections:
  site-b:
    local_addrs: [192.0.2.1]
    remote_addrs: [192.0.2.2]
    psk_file: {tmp_path}/site-b.psk
    ike_proposals: aes128gcm16-prfsha256-x25519
    start_action: start
    dpd_delay: 30
    dpd_action: restart
    fragmentation: false
    children:
      lan:
        local_ts: [198.51.100.0/24]
        remote_ts: [203.0.113.0/24]
        esp_proposals: aes128gcm16-x25519
        rekey_time: 1800
        life_time: 2000
        mark_in: 5
        mark_in_mask: 0x0f
        mark_out: 0x60
        mark_out_mask: 0xf0
      host:
        mode: transport
  hq:
    remote_addrs: [203.0.113.9]
    remote_port: 4500
    local_id: gw.example
    remote_id: hq.example
    auth: pubkey
    certificate: {tmp_path}/gw.pem
    private_key: {tmp_path}/gw.key
    ca: [{tmp_path}/ca.pem]
    encap: true
    fragmentation: force
    reauth_time: 7200
    over_time: 600
    children:
      vti:
        remote_ts: [192.0.2.128/25]
        interface_kind: vti
        interface_name: vti-hq
        mark_in: 42
        mark_out: 42
""")
    return path


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Database]:
    database = Database(f"sqlite:///{tmp_path}/x.db")
    m.Base.metadata.create_all(database.engine)
    yield database
    database.dispose()


def _without_auth(config: object) -> object:
    return dataclasses.replace(config, local_auth=None, remote_auth=None)  # type: ignore[type-var]


def test_import_round_trip(conf_file: Path, db: Database, tmp_path: Path) -> None:
    box = SecretBox.from_file(tmp_path / "secret.key")
    assert import_file(db, box, conf_file) == ["site-b", "hq"]
    original = cf.load(conf_file)
    loaded, problems = db.call(read_conf, box)
    assert problems == {}
    assert sorted(loaded.connections) == ["hq", "site-b"]
    for name, conn in original.connections.items():
        back = loaded.connections[name]
        assert back.id is not None and all(c.id for c in back.children.values())
        # What the IKE core gets is the same, credentials apart...
        assert _without_auth(cf.ike_config(name, back)) == _without_auth(
            cf.ike_config(name, conn))
        assert back.children.keys() == conn.children.keys()
        for child_name, child in conn.children.items():
            assert back.children[child_name].model_dump(exclude={"id", "esp_proposals"}) == \
                child.model_dump(exclude={"id", "esp_proposals"})
    # ...and the credentials are the file's.
    psk_auth = cf.ike_config("site-b", loaded.connections["site-b"]).local_auth
    assert psk_auth.psk == PSK.encode()
    hq_auth = cf.ike_config("hq", loaded.connections["hq"])
    assert hq_auth.local_auth.certificate == x509.load_pem_x509_certificate(
        (tmp_path / "gw.pem").read_bytes())
    assert hq_auth.remote_auth.trust is not None

    secrets = db.call(lambda s: list(s.scalars(select(m.Secret))))
    assert {(x.name, x.kind) for x in secrets} == {("site-b-psk", m.SecretKind.PSK),
                                                   ("hq-key", m.SecretKind.PRIVATE_KEY)}
    assert all(PSK.encode() not in x.ciphertext for x in secrets)
    audit = repr([repo.snapshot(e) for e in db.call(lambda s: list(s.scalars(
        select(m.Event))))])
    assert "import:xfrmctl.yaml" in audit and PSK not in audit


def test_import_is_all_or_nothing(conf_file: Path, db: Database, tmp_path: Path) -> None:
    box = SecretBox.from_file(tmp_path / "secret.key")
    import_file(db, box, conf_file)
    db.call(lambda s: s.delete(s.scalar(select(m.Connection).where(
        m.Connection.name == "hq"))))
    with pytest.raises(repo.Conflict):
        import_file(db, box, conf_file)  # site-b exists: hq must not come back either
    names = db.call(lambda s: list(s.scalars(select(m.Connection.name))))
    assert names == ["site-b"]


def test_remote_access_settings_and_close_action_are_stored(db: Database,
                                                            tmp_path: Path) -> None:
    """A pool, request_virtual_ip and close_action survive the database (refused before)."""
    path = tmp_path / "ra.yaml"
    path.write_text("connections:\n  ra:\n    psk: x\n    pool: 198.51.100.0/28\n"
                    "  client:\n    psk: y\n    remote_addrs: [192.0.2.9]\n"
                    "    request_virtual_ip: true\n    close_action: start\n")
    box = SecretBox.from_file(tmp_path / "secret.key")
    assert import_file(db, box, path) == ["ra", "client"]
    loaded, problems = db.call(read_conf, box)
    assert problems == {}
    ra, client = loaded.connections["ra"], loaded.connections["client"]
    assert (ra.pool, ra.request_virtual_ip) == ("198.51.100.0/28", False)
    assert (client.pool, client.request_virtual_ip) == (None, True)
    assert client.close_action is cf.CloseAction.START


def test_cli_db_import(conf_file: Path, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/cli.db"
    env = {"XFRMCTL_DATABASE_URL": url, "XFRMCTL_SECRET_KEY_FILE": str(tmp_path / "k.key"),
           "XFRMCTL_CONFIG": str(tmp_path / "none.yaml")}
    runner = CliRunner()
    first = runner.invoke(cli, ["--json", "db", "import", str(conf_file)], env=env)
    assert first.exit_code == 0, first.output
    assert '"imported": [\n    "site-b",\n    "hq"\n  ]' in first.output
    again = runner.invoke(cli, ["db", "import", str(conf_file)], env=env)
    assert again.exit_code == 6 and "nothing imported" in again.output
    for result in (first, again):
        assert PSK not in result.output
    database = Database(url)  # migrated by the command, then filled
    try:
        assert database.call(lambda s: s.scalar(select(func.count(m.Child.id)))) == 3
    finally:
        database.dispose()


def test_mss_survives_the_database(db: Database, tmp_path: Path) -> None:
    """`mss` auto, a number and off come back as written (the column holds text)."""
    path = tmp_path / "mss.yaml"
    path.write_text("connections:\n  c:\n    psk: x\n    children:\n"
                    "      a: {mss: auto}\n      n: {mss: 1360}\n      o: {}\n")
    box = SecretBox.from_file(tmp_path / "secret.key")
    assert import_file(db, box, path) == ["c"]
    loaded, problems = db.call(read_conf, box)
    assert problems == {}
    kids = loaded.connections["c"].children
    assert (kids["a"].mss, kids["n"].mss, kids["o"].mss) == ("auto", 1360, "off")


def test_ppk_is_stored_as_a_secret_and_read_back(db: Database, tmp_path: Path) -> None:
    """ppk_id, ppk_required and the PPK (a secret of kind ppk, encrypted) survive the
    database; a PPK taken out of the file takes its secret with it."""
    ppk = "test-only postquantum preshared key 0123456789abcdef"
    path = tmp_path / "ppk.yaml"
    body = "connections:\n  c:\n    psk: x\n    remote_addrs: [192.0.2.2]\n"
    path.write_text(body + f"    ppk_id: pq1\n    ppk: '{ppk}'\n    ppk_required: true\n")
    box = SecretBox.from_file(tmp_path / "secret.key")
    apply_file(db, box, path)
    loaded, problems = db.call(read_conf, box)
    conn = loaded.connections["c"]
    assert problems == {} and (conn.ppk_id, conn.ppk_required) == ("pq1", True)
    assert conn.ppk is not None and conn.ppk.get_secret_value() == ppk
    (secret,) = [s for s in db.call(lambda s: list(s.scalars(select(m.Secret))))
                 if s.kind is m.SecretKind.PPK]
    assert ppk.encode() not in secret.ciphertext
    path.write_text(body)
    apply_file(db, box, path)
    loaded, _ = db.call(read_conf, box)
    assert loaded.connections["c"].ppk is None
    assert m.SecretKind.PPK not in {s.kind for s in db.call(
        lambda s: list(s.scalars(select(m.Secret))))}


@pytest.mark.parametrize(("extra", "message"), [
    ("    ppk_id: pq1\n", "ppk and ppk_id go together"),
    ("    ppk_required: true\n", "ppk_required needs ppk"),
    ("    ppk_id: pq1\n    ppk: short\n", "at least 32 octets"),
])
def test_bad_ppk_settings_say_what_to_do(extra: str, message: str) -> None:
    import yaml  # noqa: PLC0415
    from pydantic import ValidationError  # noqa: PLC0415

    data = yaml.safe_load("psk: x\n" + extra.replace("    ", ""))
    with pytest.raises(ValidationError, match=message):
        cf.ConnectionConf.model_validate(data)
