"""Replay of golden strongSwan exchanges (tests/fixtures/strongswan/*.json): parse every
datagram, derive the keys charon logged, decrypt every SK payload."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from xfrmctl.ike.algorithms import encr_key_size, integ_key_size
from xfrmctl.ike.constants import ExchangeType, PayloadType, ProtocolId
from xfrmctl.ike.crypto import (
    IkeKeys,
    Prf,
    derive_ike_keys,
    derive_rekeyed_ike_keys,
    new_sk_cipher,
)
from xfrmctl.ike.message import Message, decode
from xfrmctl.ike.payloads import (
    KePayload,
    NoncePayload,
    SaPayload,
)
from xfrmctl.ike.proposals import Suite, suite_of
from xfrmctl.ike.sk import SkCipher

FIXTURES = Path(__file__).parents[1] / "fixtures" / "strongswan"


# strongSwan's short payload names, as the fixtures list them.
SHORT_NAMES = {PayloadType.SA: "SA", PayloadType.KE: "KE", PayloadType.IDI: "IDi",
               PayloadType.IDR: "IDr", PayloadType.CERT: "CERT",
               PayloadType.CERTREQ: "CERTREQ", PayloadType.AUTH: "AUTH",
               PayloadType.NONCE: "No", PayloadType.NOTIFY: "N", PayloadType.DELETE: "D",
               PayloadType.VENDOR: "V", PayloadType.TSI: "TSi", PayloadType.TSR: "TSr",
               PayloadType.CP: "CP", PayloadType.EAP: "EAP", PayloadType.SK: "SK"}


@dataclass
class IkeSaState:
    """What we derived for one IKE SA of the capture."""

    suite: Suite
    prf: Prf
    keys: IkeKeys
    cipher_i: SkCipher  # protects what the (original) initiator sends
    cipher_r: SkCipher
    messages: list[tuple[dict[str, Any], Message]] = field(default_factory=list)


def load(path: Path) -> dict[str, Any]:
    fixture: dict[str, Any] = json.loads(path.read_text())
    assert fixture["format"] == 1
    for d in fixture["datagrams"]:
        d["raw"] = bytes.fromhex(d["hex"])
    return fixture


def derive(suite: Suite, keys: IkeKeys) -> IkeSaState:
    assert suite.prf is not None and suite.encr is not None
    return IkeSaState(
        suite, Prf(suite.prf), keys,
        new_sk_cipher(suite.encr, suite.encr_bits, suite.integ, keys.sk_ei, keys.sk_ai),
        new_sk_cipher(suite.encr, suite.encr_bits, suite.integ, keys.sk_er, keys.sk_ar))


def key_sizes(suite: Suite) -> tuple[int, int]:
    encr = encr_key_size(suite.encr, suite.encr_bits) if suite.encr is not None else 0
    return encr, integ_key_size(suite.integ)


def assert_keys_as_logged(keys: IkeKeys, logged: dict[str, str]) -> None:
    for name in ("skeyseed", "sk_d", "sk_ai", "sk_ar", "sk_ei", "sk_er", "sk_pi", "sk_pr"):
        assert getattr(keys, name).hex() == logged[name], name


def found(msg: Message, cls: type[Any]) -> Any:
    payload = msg.find(cls)
    assert payload is not None, f"{cls.__name__} missing"
    return payload


class Replay:
    """Walks one capture in order, deriving every IKE SA's keys as it goes."""

    def __init__(self, fixture: dict[str, Any]) -> None:
        self.fixture = fixture
        self.sas: list[IkeSaState] = []
        self.init: list[Message] = []

    def run(self) -> None:
        datagrams = self.fixture["datagrams"]
        self.init = [decode(d["raw"]) for d in datagrams[:2]]
        self._first_ike_sa()
        pending: tuple[dict[str, Any], Message] | None = None
        for d in datagrams[2:]:
            sa = self.sas[d["ike_sa"]]
            msg = decode(d["raw"], sa.cipher_i if d["from_initiator"] else sa.cipher_r)
            assert msg.protected is not None
            assert [SHORT_NAMES[PayloadType(p.payload_type)] for p in msg.protected] \
                == d["inner"]
            assert (msg.message_id, msg.is_response) == (d["mid"], d["response"])
            sa.messages.append((d, msg))
            if not msg.is_response:
                pending = (d, msg)
            elif pending is not None and msg.exchange == ExchangeType.CREATE_CHILD_SA:
                self._maybe_ike_rekey(sa, pending[1], msg)

    def _first_ike_sa(self) -> None:
        request, response = self.init
        assert request.exchange == ExchangeType.IKE_SA_INIT and response.is_response
        logged = self.fixture["ike_sas"][0]
        suite = suite_of(found(response, SaPayload).proposals[0])
        assert suite.prf is not None
        ni, nr = found(request, NoncePayload).data, found(response, NoncePayload).data
        assert (ni.hex(), nr.hex()) == (logged["ni"], logged["nr"])
        assert (response.spi_i.hex(), response.spi_r.hex()) == (logged["spi_i"],
                                                                 logged["spi_r"])
        keys = derive_ike_keys(Prf(suite.prf), bytes.fromhex(logged["shared_secret"]), ni, nr,
                               response.spi_i, response.spi_r, *key_sizes(suite))
        assert_keys_as_logged(keys, logged)
        self.sas.append(derive(suite, keys))

    def _maybe_ike_rekey(self, old: IkeSaState, request: Message, response: Message) -> None:
        sa_request = found(request, SaPayload)
        if sa_request.proposals[0].protocol != ProtocolId.IKE:
            return
        chosen = found(response, SaPayload).proposals[0]
        logged = self.fixture["ike_sas"][len(self.sas)]
        assert logged["created_by"] == "CREATE_CHILD_SA"
        spi_i = next(p.spi for p in sa_request.proposals if p.number == chosen.number)
        ni, nr = found(request, NoncePayload).data, found(response, NoncePayload).data
        assert found(request, KePayload).group == found(response, KePayload).group
        suite = suite_of(chosen)
        assert suite.prf is not None
        keys = derive_rekeyed_ike_keys(
            old.prf, old.keys.sk_d, Prf(suite.prf), bytes.fromhex(logged["shared_secret"]),
            ni, nr, spi_i, chosen.spi, *key_sizes(suite))
        assert (spi_i.hex(), chosen.spi.hex()) == (logged["spi_i"], logged["spi_r"])
        assert_keys_as_logged(keys, logged)
        self.sas.append(derive(suite, keys))
