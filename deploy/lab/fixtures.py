"""Turn lab captures (deploy/lab/capture.py) into golden fixtures for the IKE core.

    python deploy/lab/fixtures.py CAPTURE_DIR FIXTURE_DIR

CAPTURE_DIR holds one directory per case (capture.pcap, left.log, case.json, certs/);
for each, FIXTURE_DIR/<case>.json is written (format: tests/fixtures/strongswan/
README.md) and the case's certificates are copied to FIXTURE_DIR/certs/<case>/.

The converter checks the fixture before writing it, independently of xfrmctl: it
recomputes SKEYSEED and SK_* from the logged DH secret and the nonces of the
datagrams, and the CHILD_SA keys from SK_d, decrypts every SK payload with the logged
keys (cryptography), and refuses to write a fixture where anything disagrees.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import re
import shutil
import struct
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305

EXCHANGES = {34: "IKE_SA_INIT", 35: "IKE_AUTH", 36: "CREATE_CHILD_SA", 37: "INFORMATIONAL"}
PAYLOADS = {
    33: "SA", 34: "KE", 35: "IDi", 36: "IDr", 37: "CERT", 38: "CERTREQ", 39: "AUTH",
    40: "No", 41: "N", 42: "D", 43: "V", 44: "TSi", 45: "TSr", 46: "SK", 47: "CP",
    48: "EAP", 53: "SKF",
}  # fmt: skip
SK, NONCE, KE, SA, AUTH = 46, 40, 34, 33, 39
KEY_PAD = b"Key Pad for IKEv2"


class FixtureError(Exception):
    """The capture is incomplete or its parts disagree: no fixture is written."""


# -- pcap ---------------------------------------------------------------------------------------


@dataclass
class Datagram:
    time: float
    src: str
    sport: int
    dst: str
    dport: int
    marker: bool
    data: bytes


def read_pcap(path: Path) -> Iterator[tuple[float, int, bytes]]:
    """(timestamp, linktype, frame) for each record of a classic pcap file."""
    raw = path.read_bytes()
    if len(raw) < 24:
        raise FixtureError(f"{path}: no pcap header (tcpdump not stopped with SIGINT?)")
    magic = raw[:4]
    table = {
        b"\xd4\xc3\xb2\xa1": ("<", 1e-6), b"\xa1\xb2\xc3\xd4": (">", 1e-6),
        b"\x4d\x3c\xb2\xa1": ("<", 1e-9), b"\xa1\xb2\x3c\x4d": (">", 1e-9),
    }  # fmt: skip
    if magic not in table:
        raise FixtureError(f"{path}: not a classic pcap file (magic {magic.hex()})")
    endian, unit = table[magic]
    linktype = struct.unpack(endian + "I", raw[20:24])[0] & 0x0FFFFFFF
    off = 24
    while off + 16 <= len(raw):
        sec, frac, incl, _orig = struct.unpack(endian + "IIII", raw[off : off + 16])
        off += 16
        yield sec + frac * unit, linktype, raw[off : off + incl]
        off += incl


def _ip_payload(linktype: int, frame: bytes) -> tuple[int, bytes] | None:
    """(ethertype, network-layer packet) for the link types tcpdump writes here."""
    if linktype == 1:  # Ethernet (veth)
        etype, off = struct.unpack("!H", frame[12:14])[0], 14
        while etype in (0x8100, 0x88A8):
            etype, off = struct.unpack("!H", frame[off + 2 : off + 4])[0], off + 4
        return etype, frame[off:]
    if linktype == 113:  # Linux cooked v1
        return struct.unpack("!H", frame[14:16])[0], frame[16:]
    if linktype == 276:  # Linux cooked v2
        return struct.unpack("!H", frame[0:2])[0], frame[20:]
    if linktype in (101, 12):  # raw IP
        return (0x0800 if frame[0] >> 4 == 4 else 0x86DD), frame
    raise FixtureError(f"unsupported pcap link type {linktype}")


def ike_datagrams(path: Path) -> list[Datagram]:
    """The IKE datagrams (UDP 500, and 4500 with the non-ESP marker) in capture order."""
    out: list[Datagram] = []
    for ts, linktype, frame in read_pcap(path):
        parsed = _ip_payload(linktype, frame)
        if parsed is None:
            continue
        etype, pkt = parsed
        if etype == 0x0800 and pkt[9] == 17:
            ihl = (pkt[0] & 0x0F) * 4
            if struct.unpack("!H", pkt[6:8])[0] & 0x3FFF:
                raise FixtureError("IP fragment in capture: not supported")
            src, dst = ipaddress.ip_address(pkt[12:16]), ipaddress.ip_address(pkt[16:20])
            udp = pkt[ihl : struct.unpack("!H", pkt[2:4])[0]]
        elif etype == 0x86DD and pkt[6] == 17:
            src, dst = ipaddress.ip_address(pkt[8:24]), ipaddress.ip_address(pkt[24:40])
            udp = pkt[40 : 40 + struct.unpack("!H", pkt[4:6])[0]]
        else:
            continue
        sport, dport, ulen = struct.unpack("!HHH", udp[:6])
        data = udp[8:ulen]
        marker = False
        if 4500 in (sport, dport):
            if data == b"\xff":
                continue  # NAT-T keepalive
            if data[:4] != b"\0\0\0\0":
                continue  # ESP in UDP
            data, marker = data[4:], True
        elif 500 not in (sport, dport):
            continue
        out.append(Datagram(ts, str(src), sport, str(dst), dport, marker, data))
    return out


# -- IKE messages ---------------------------------------------------------------------------


@dataclass
class Header:
    spi_i: bytes
    spi_r: bytes
    next_payload: int
    exchange: int
    flags: int
    mid: int
    length: int

    @property
    def response(self) -> bool:
        return bool(self.flags & 0x20)

    @property
    def from_initiator(self) -> bool:
        return bool(self.flags & 0x08)


def parse_header(data: bytes) -> Header:
    if len(data) < 28:
        raise FixtureError("datagram shorter than an IKE header")
    spi_i, spi_r, nxt, _ver, exch, flags, mid, length = struct.unpack("!8s8sBBBBII", data[:28])
    return Header(spi_i, spi_r, nxt, exch, flags, mid, length)


def walk(first: int, body: bytes) -> list[tuple[int, bytes, int]]:
    """(type, payload body, offset of its generic header) along a payload chain."""
    out, nxt, off = [], first, 0
    while nxt != 0:
        if off + 4 > len(body):
            raise FixtureError("payload chain runs past the data")
        following, _crit, plen = struct.unpack("!BBH", body[off : off + 4])
        if plen < 4 or off + plen > len(body):
            raise FixtureError(f"bad payload length {plen}")
        out.append((nxt, body[off + 4 : off + plen], off))
        if nxt in (SK, 53):
            break  # the chain continues inside the encrypted payload
        nxt, off = following, off + plen
    return out


def first_proposal_spi(sa_body: bytes) -> tuple[int, bytes]:
    """(protocol id, SPI) of the first proposal in an SA payload body."""
    if len(sa_body) < 8:
        raise FixtureError("short SA payload")
    protocol, spi_size = sa_body[5], sa_body[6]
    return protocol, sa_body[8 : 8 + spi_size]


# -- crypto (the IKEv2 KDF and SK payload, RFC 7296 2.13-2.14 and 3.14, RFC 5282/7634) -------


def prf(key: bytes, data: bytes) -> bytes:
    return hmac.new(key, data, hashlib.sha256).digest()


def prf_plus(key: bytes, seed: bytes, length: int) -> bytes:
    out, block, i = b"", b"", 1
    while len(out) < length:
        block = prf(key, block + seed + bytes([i]))
        out, i = out + block, i + 1
    return out[:length]


@dataclass(frozen=True)
class Suite:
    """The IKE SK cipher of a proposal string, as this converter needs it."""

    kind: str  # "gcm", "chacha", "cbc"
    enc_key: int  # octets of SK_e, salt included
    integ_key: int  # octets of SK_a (0 for AEAD)

    @classmethod
    def parse(cls, proposal: str) -> Suite:
        algs = proposal.split("-")
        if "prfsha256" not in algs and "sha256" not in algs:
            raise FixtureError(f"{proposal}: only PRF HMAC-SHA2-256 is supported here")
        enc = algs[0]
        if m := re.fullmatch(r"aes(128|192|256)gcm16", enc):
            return cls("gcm", int(m[1]) // 8 + 4, 0)
        if enc == "chacha20poly1305":
            return cls("chacha", 36, 0)
        if (m := re.fullmatch(r"aes(128|192|256)", enc)) and "sha256" in algs:
            return cls("cbc", int(m[1]) // 8, 32)
        raise FixtureError(f"{proposal}: cipher not supported by the converter")

    def decrypt(self, message: bytes, sk_off: int, sk_len: int, ke: bytes, ka: bytes) -> bytes:
        """Plaintext of the SK payload whose generic header starts at ``sk_off``."""
        body = message[sk_off + 4 : sk_off + sk_len]
        if self.kind == "cbc":
            icv = 16
            mac = hmac.new(ka, message[: len(message) - icv], hashlib.sha256).digest()[:icv]
            if not hmac.compare_digest(mac, message[-icv:]):
                raise FixtureError("SK integrity check failed")
            iv, ct = body[:16], body[16:-icv]
            dec = Cipher(algorithms.AES(ke), modes.CBC(iv)).decryptor()
            plain = dec.update(ct) + dec.finalize()
            return plain[: len(plain) - plain[-1] - 1]
        key, salt = ke[:-4], ke[-4:]
        iv, ct = body[:8], body[8:]
        aad = message[: sk_off + 4]
        aead = AESGCM(key) if self.kind == "gcm" else ChaCha20Poly1305(key)
        plain = aead.decrypt(salt + iv, ct, aad)
        return plain[: len(plain) - plain[-1] - 1]


# -- charon log -------------------------------------------------------------------------------

LINE = re.compile(r"^\S+ (\d+)\[(\w+)\] (?:<([^>]*)> )?(.*)$")
DUMP_HEAD = re.compile(r"^(.*?) => (\d+) bytes @ (?:0x[0-9a-f]+|\(nil\))$")
DUMP_LINE = re.compile(r"^\s*(\d+): ((?:[0-9A-F]{2} ?)+)")

KEY_NAMES = {
    "shared Diffie Hellman secret": "shared_secret",
    "SKEYSEED": "skeyseed",
    "Sk_d secret": "sk_d",
    "Sk_ai secret": "sk_ai",
    "Sk_ar secret": "sk_ar",
    "Sk_ei secret": "sk_ei",
    "Sk_er secret": "sk_er",
    "Sk_pi secret": "sk_pi",
    "Sk_pr secret": "sk_pr",
    "IDx'": "id_prime",
    "SK_p": "sk_p",
    "octets = message + nonce + prf(Sk_px, IDx')": "octets",
    "AUTH = prf(prf(secret, keypad), octets)": "auth",
    "DH secret": "child_shared_secret",
    "encryption initiator key": "encr_i",
    "encryption responder key": "encr_r",
    "integrity initiator key": "integ_i",
    "integrity responder key": "integ_r",
}


@dataclass
class LogValue:
    name: str
    subsystem: str
    ike: str
    value: bytes


def parse_log(text: str) -> list[LogValue]:
    """The hex dumps charon logged (names in KEY_NAMES), in log order."""
    pending: dict[str, tuple[str, str, str, int, bytearray]] = {}
    out: list[LogValue] = []
    for line in text.splitlines():
        m = LINE.match(line)
        if not m:
            continue
        thread, subsys, ike, msg = m[1], m[2], m[3] or "", m[4]
        if thread in pending:
            name, psub, pike, total, buf = pending[thread]
            d = DUMP_LINE.match(msg)
            if d and int(d[1]) == len(buf):
                count = min(16, total - len(buf))
                buf += bytes.fromhex("".join(d[2].split()[:count]))
                if len(buf) >= total:
                    del pending[thread]
                    out.append(LogValue(name, psub, pike, bytes(buf)))
                continue
            del pending[thread]  # a dump cut short: drop it
        h = DUMP_HEAD.match(msg)
        if h and h[1] in KEY_NAMES:
            total = int(h[2])
            if total == 0:
                out.append(LogValue(KEY_NAMES[h[1]], subsys, ike, b""))
            else:
                pending[thread] = (KEY_NAMES[h[1]], subsys, ike, total, bytearray())
    return out


@dataclass
class KeySet:
    values: dict[str, bytes] = field(default_factory=dict)
    auth: list[dict[str, bytes]] = field(default_factory=list)


def group_log(values: list[LogValue]) -> tuple[list[KeySet], list[dict[str, bytes]]]:
    """IKE key sets (one per derivation, with the AUTH data that follows) and child keys."""
    ikes: list[KeySet] = []
    children: list[dict[str, bytes]] = []
    child: dict[str, bytes] | None = None
    for v in values:
        if v.name == "shared_secret":
            ikes.append(KeySet({"shared_secret": v.value}))
        elif v.name in ("skeyseed", "sk_d", "sk_ai", "sk_ar", "sk_ei", "sk_er", "sk_pi", "sk_pr"):
            if not ikes or v.name in ikes[-1].values:
                raise FixtureError(f"log: {v.name} without a fresh DH secret before it")
            ikes[-1].values[v.name] = v.value
        elif v.name == "id_prime":
            ikes[-1].auth.append({"id_prime": v.value})
        elif v.name in ("sk_p", "octets", "auth"):
            ikes[-1].auth[-1][v.name] = v.value
        elif v.name == "child_shared_secret":
            child = {"shared_secret": v.value}
            children.append(child)
        elif v.name == "encr_i":
            if child is None or "encr_i" in child:
                child = {}
                children.append(child)
            child["encr_i"] = v.value
        elif v.name in ("encr_r", "integ_i", "integ_r") and child is not None:
            child[v.name] = v.value
    return ikes, children


# -- conversion -------------------------------------------------------------------------------


def derive_ike(
    suite: Suite, skeyseed: bytes, ni: bytes, nr: bytes, spi_i: bytes, spi_r: bytes
) -> dict[str, bytes]:
    a, e = suite.integ_key, suite.enc_key
    sizes = [("sk_d", 32), ("sk_ai", a), ("sk_ar", a), ("sk_ei", e), ("sk_er", e),
             ("sk_pi", 32), ("sk_pr", 32)]  # fmt: skip
    keymat = prf_plus(skeyseed, ni + nr + spi_i + spi_r, sum(n for _, n in sizes))
    out, off = {}, 0
    for name, n in sizes:
        out[name], off = keymat[off : off + n], off + n
    return out


def check_equal(what: str, logged: bytes, computed: bytes) -> None:
    if logged != computed:
        raise FixtureError(f"{what}: log {logged.hex()} != computed {computed.hex()}")


def check_auth(
    case_dir: Path, meta: dict[str, Any], entry: dict[str, str], payload: bytes, init: bytes
) -> None:
    """The AUTH payload on the wire matches what charon logged: PSK MAC or signature."""
    octets = bytes.fromhex(entry["octets"])
    if not octets.startswith(init):
        raise FixtureError(f"{entry['by']} AUTH octets do not start with its IKE_SA_INIT")
    method, data = payload[0], payload[4:]
    if "psk" in meta:
        if method != 2:
            raise FixtureError(f"PSK case with AUTH method {method}")
        mac = prf(prf(meta["psk"].encode(), KEY_PAD), octets)
        check_equal(f"{entry['by']} AUTH (recomputed from PSK)", data, mac)
        check_equal(f"{entry['by']} AUTH (logged)", data, bytes.fromhex(entry["auth"]))
        return
    if method != 14:
        raise FixtureError(f"certificate case with AUTH method {method}, not 14 (RFC 7427)")
    initiator = meta["initiator"]
    side = (
        initiator if entry["by"] == "initiator" else {"left": "right", "right": "left"}[initiator]
    )
    cert_file = case_dir / "certs" / meta["certs"][side]["cert"]
    cert = x509.load_pem_x509_certificate(cert_file.read_bytes())
    key = cert.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise FixtureError("only ECDSA certificates are checked here")
    signature = data[1 + data[0] :]  # after the length-prefixed AlgorithmIdentifier
    try:
        key.verify(signature, octets, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature as exc:
        raise FixtureError(f"{entry['by']} signature does not verify") from exc


def convert(case_dir: Path) -> dict[str, Any]:
    meta = json.loads((case_dir / "case.json").read_text())
    suite = Suite.parse(meta["proposals"])
    grams = ike_datagrams(case_dir / "capture.pcap")
    if not grams:
        raise FixtureError(f"{case_dir}: no IKE datagrams captured")
    log_ikes, log_children = group_log(parse_log((case_dir / "left.log").read_text()))
    t0 = grams[0].time
    ike_sas: list[dict[str, Any]] = []
    by_spis: dict[tuple[bytes, bytes], int] = {}
    child_sas: list[dict[str, Any]] = []
    pending: dict[tuple[bytes, bytes, int], dict[str, Any]] = {}  # request info by (SPIs, mid)
    records: list[dict[str, Any]] = []
    decrypted = auths = 0
    answered: set[tuple[bytes, bytes, int]] = set()
    seen_requests: set[tuple[bytes, bytes, int]] = set()

    def retransmitted(key: tuple[bytes, bytes, int], response: bool) -> bool:
        """A request seen before, or a response to a request already answered."""
        if response:
            return key in answered
        again = key in seen_requests
        seen_requests.add(key)
        return again

    init_msgs: dict[bool, bytes] = {}  # the IKE_SA_INIT request/response of the first SA

    def new_ike(ni: bytes, nr: bytes, spi_i: bytes, spi_r: bytes, old: int | None) -> None:
        idx = len(ike_sas)
        if idx >= len(log_ikes):
            raise FixtureError(f"IKE_SA #{idx} has no key material in the log")
        logged = log_ikes[idx]
        vals = logged.values
        if old is None:
            seed = prf(ni + nr, vals["shared_secret"])
        else:
            seed = prf(ike_sas[old]["_keys"]["sk_d"], vals["shared_secret"] + ni + nr)
        check_equal(f"IKE_SA #{idx} SKEYSEED", vals["skeyseed"], seed)
        derived = derive_ike(suite, seed, ni, nr, spi_i, spi_r)
        for name, value in derived.items():
            if name in vals:
                check_equal(f"IKE_SA #{idx} {name}", vals[name], value)
        auth = []
        for a in logged.auth:
            by = "initiator" if a.get("sk_p") == derived["sk_pi"] else "responder"
            auth.append({"by": by, **{k: v.hex() for k, v in a.items() if k != "sk_p"}})
        ike_sas.append({
            "created_by": "IKE_SA_INIT" if old is None else "CREATE_CHILD_SA",
            "rekeyed_from": old,
            "spi_i": spi_i.hex(), "spi_r": spi_r.hex(), "ni": ni.hex(), "nr": nr.hex(),
            "shared_secret": vals["shared_secret"].hex(), "skeyseed": seed.hex(),
            **{k: v.hex() for k, v in derived.items()},
            "auth": auth,
            "_keys": derived,
        })  # fmt: skip
        by_spis[(spi_i, spi_r)] = idx

    def new_child(ike: int, by: str, ni: bytes, nr: bytes, spi_i: bytes, spi_r: bytes) -> None:
        idx = len(child_sas)
        if idx >= len(log_children):
            raise FixtureError(f"CHILD_SA #{idx} has no key material in the log")
        logged = log_children[idx]
        seed = logged.get("shared_secret", b"") + ni + nr
        sizes = [(k, len(logged.get(k, b""))) for k in ("encr_i", "integ_i", "encr_r", "integ_r")]
        keymat = prf_plus(ike_sas[ike]["_keys"]["sk_d"], seed, sum(n for _, n in sizes))
        off = 0
        for name, n in sizes:
            check_equal(f"CHILD_SA #{idx} {name}", logged.get(name, b""), keymat[off : off + n])
            off += n
        child_sas.append({
            "ike_sa": ike, "created_by": by,
            "spi_i": spi_i.hex(), "spi_r": spi_r.hex(), "ni": ni.hex(), "nr": nr.hex(),
            **({"shared_secret": logged["shared_secret"].hex()} if "shared_secret" in logged
               else {}),
            **{k: v.hex() for k, v in logged.items() if k != "shared_secret"},
        })  # fmt: skip

    for n, g in enumerate(grams):
        h = parse_header(g.data)
        rec: dict[str, Any] = {
            "n": n, "t": round(g.time - t0, 6),
            "src": g.src, "sport": g.sport, "dst": g.dst, "dport": g.dport,
            "non_esp_marker": g.marker,
            "exchange": EXCHANGES.get(h.exchange, str(h.exchange)),
            "response": h.response, "from_initiator": h.from_initiator, "mid": h.mid,
            "spi_i": h.spi_i.hex(), "spi_r": h.spi_r.hex(),
        }  # fmt: skip
        chain = walk(h.next_payload, g.data[28 : h.length])
        rec["payloads"] = [PAYLOADS.get(t, str(t)) for t, _, _ in chain]
        found = {t: body for t, body, _ in chain}
        if h.exchange == 34:
            key = (h.spi_i, b"\0" * 8, h.mid)
            rec["retransmission"] = retransmitted(key, h.response)
            if not rec["retransmission"]:
                init_msgs[h.from_initiator] = g.data
            if not h.response:
                pending.setdefault(key, {"ni": found[NONCE]})
            elif NONCE in found and not rec["retransmission"]:
                req = pending.pop(key)
                new_ike(req["ni"], found[NONCE], h.spi_i, h.spi_r, None)
                answered.add(key)
            rec["ike_sa"] = by_spis.get((h.spi_i, h.spi_r))
        else:
            idx = by_spis.get((h.spi_i, h.spi_r))
            if idx is None:
                raise FixtureError(f"datagram {n}: no IKE_SA with these SPIs")
            rec["ike_sa"] = idx
            keys = ike_sas[idx]["_keys"]
            sk = [(t, body, off) for t, body, off in chain if t == SK]
            if not sk:
                raise FixtureError(f"datagram {n}: no SK payload")
            _, body, off = sk[0]
            ke = keys["sk_ei"] if h.from_initiator else keys["sk_er"]
            ka = keys["sk_ai"] if h.from_initiator else keys["sk_ar"]
            try:
                plain = suite.decrypt(g.data, 28 + off, len(body) + 4, ke, ka)
            except Exception as exc:
                raise FixtureError(f"datagram {n}: SK payload does not decrypt: {exc!r}") from exc
            decrypted += 1
            first_inner = g.data[28 + off]
            inner = walk(first_inner, plain)
            rec["inner"] = [PAYLOADS.get(t, str(t)) for t, _, _ in inner]
            ifound = {t: b for t, b, _ in inner}
            mkey = (h.spi_i, h.spi_r, h.mid)
            rec["retransmission"] = retransmitted(mkey, h.response)
            if not rec["retransmission"] and h.response:
                answered.add(mkey)
            if h.exchange == 35 and AUTH in ifound:
                by = "initiator" if h.from_initiator else "responder"
                entry = next((a for a in ike_sas[idx]["auth"] if a["by"] == by), None)
                if entry is None:
                    raise FixtureError(f"datagram {n}: no logged AUTH octets of the {by}")
                check_auth(case_dir, meta, entry, ifound[AUTH], init_msgs[h.from_initiator])
                auths += 1
            if rec["retransmission"]:
                pass  # the same message again: nothing new to derive
            elif h.exchange == 35 and SA in ifound:
                proto, spi = first_proposal_spi(ifound[SA])
                if not h.response:
                    pending[mkey] = {"spi": spi}
                else:
                    req = pending.pop(mkey)
                    ike = ike_sas[idx]
                    new_child(idx, "IKE_AUTH", bytes.fromhex(ike["ni"]),
                              bytes.fromhex(ike["nr"]), req["spi"], spi)  # fmt: skip
            elif h.exchange == 36 and SA in ifound:
                proto, spi = first_proposal_spi(ifound[SA])
                if not h.response:
                    pending[mkey] = {"spi": spi, "ni": ifound[NONCE], "proto": proto}
                else:
                    req = pending.pop(mkey)
                    if proto == 1:  # IKE_SA rekey: the new SPIs are in the SA payloads
                        new_ike(req["ni"], ifound[NONCE], req["spi"], spi, idx)
                    else:
                        new_child(idx, "CREATE_CHILD_SA", req["ni"], ifound[NONCE],
                                  req["spi"], spi)  # fmt: skip
        rec["hex"] = g.data.hex()
        records.append(rec)

    if len(ike_sas) != len(log_ikes) or len(child_sas) != len(log_children):
        raise FixtureError(
            f"log has {len(log_ikes)} IKE / {len(log_children)} CHILD key sets, "
            f"capture {len(ike_sas)} / {len(child_sas)}"
        )
    for ike in ike_sas:
        del ike["_keys"]
    fixture: dict[str, Any] = {
        "format": 1,
        "source": "strongSwan 5.9.8 charon <-> charon, Linux 6.1 lab VM (deploy/lab)",
        **meta,
        "prf": "PRF_HMAC_SHA2_256",
        "datagrams": records,
        "ike_sas": ike_sas,
        "child_sas": child_sas,
        "checked": {
            "ike_keys_recomputed": len(ike_sas),
            "child_keys_recomputed": len(child_sas),
            "sk_payloads_decrypted": decrypted,
            "auth_payloads_verified": auths,
        },
    }
    return fixture


def main(argv: list[str]) -> int:
    src, dst = Path(argv[1]), Path(argv[2])
    dst.mkdir(parents=True, exist_ok=True)
    failed = 0
    for case_dir in sorted(p for p in src.iterdir() if (p / "case.json").exists()):
        try:
            fixture = convert(case_dir)
        except FixtureError as exc:
            failed += 1
            print(f"fixtures: {case_dir.name}: FAILED: {exc}")
            continue
        if (case_dir / "certs").is_dir():
            certs = dst / "certs" / case_dir.name
            shutil.rmtree(certs, ignore_errors=True)
            shutil.copytree(case_dir / "certs", certs)
            fixture["certs_dir"] = f"certs/{case_dir.name}"
        out = dst / f"{case_dir.name}.json"
        out.write_text(json.dumps(fixture, indent=1) + "\n")
        c = fixture["checked"]
        print(f"fixtures: {out.name}: {len(fixture['datagrams'])} datagrams, "
              f"{c['ike_keys_recomputed']} IKE_SAs, {c['child_keys_recomputed']} CHILD_SAs "
              f"checked, {c['sk_payloads_decrypted']} SK payloads decrypted, "
              f"{c['auth_payloads_verified']} AUTH payloads verified")  # fmt: skip
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
