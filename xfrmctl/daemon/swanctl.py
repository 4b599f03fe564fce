"""strongSwan's `swanctl.conf` as an import format (`xfrmctl db import swanctl.conf`).

`parse` reads the settings syntax (nested `name { key = value }` sections, `#` comments,
quoted values; `include` is refused: import the included file itself) into nested
dicts. `convert` maps connections (local/remote auth rounds, children, proposals), IKE
secrets (PSKs) and pools onto the daemon's model and lists every setting it cannot map,
with its path (`connections.rw.children.net.updown: not supported`), instead of
dropping it silently. No PyPI package parses this format, hence the small tokenizer.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import conf as cf

Section = dict[str, Any]  # values: str, or Section


class SwanctlError(ValueError):
    """The file is not valid swanctl.conf syntax (the message has file and line)."""


# --------------------------------------------------------------------------- syntax

_NAME = re.compile(r"[^\s{}=#:\"]+")


def parse(text: str, source: str = "swanctl.conf") -> Section:
    """Nested sections as dicts; a repeated key keeps the last value, as strongSwan."""
    root: Section = {}
    stack: list[Section] = [root]
    names: list[str] = []
    pending: str | None = None  # a section name waiting for its "{" (next line)
    for number, raw in enumerate(text.splitlines(), 1):
        line = _strip_comment(raw).strip()
        where = f"{source}:{number}"
        while line:
            if pending is not None:
                if not line.startswith("{"):
                    raise SwanctlError(f"{where}: expected '{{' after section {pending!r}")
                stack.append(stack[-1].setdefault(pending, {}))
                names.append(pending)
                pending, line = None, line[1:].strip()
                continue
            if line.startswith("}"):
                if len(stack) == 1:
                    raise SwanctlError(f"{where}: '}}' without an open section")
                stack.pop()
                names.pop()
                line = line[1:].strip()
                continue
            match = _NAME.match(line)
            if match is None:
                raise SwanctlError(f"{where}: unexpected {line[:20]!r}")
            name, line = match.group(), line[match.end():].strip()
            if name == "include":
                raise SwanctlError(f"{where}: include is not supported: import the "
                                   "included file itself, or paste it in")
            if line.startswith("="):
                value, line = _value(line[1:].strip(), where)
                if isinstance(stack[-1].get(name), dict):
                    raise SwanctlError(f"{where}: {name} is a section and a value")
                stack[-1][name] = value
                continue
            if line.startswith(":"):  # `name : template {` - inheritance
                raise SwanctlError(f"{where}: section templates ({name} : ...) are not "
                                   "supported: write the settings out")
            if line.startswith("{"):
                stack.append(stack[-1].setdefault(name, {}))
                names.append(name)
                line = line[1:].strip()
                continue
            if line:
                raise SwanctlError(f"{where}: expected '=' or '{{' after {name!r}")
            pending = name
    if pending is not None or len(stack) > 1:
        raise SwanctlError(f"{source}: section {'.'.join(names) or pending} is not closed")
    return root


def _strip_comment(line: str) -> str:
    quoted = False
    for i, char in enumerate(line):
        if char == '"' and (i == 0 or line[i - 1] != "\\"):
            quoted = not quoted
        elif char == "#" and not quoted:
            return line[:i]
    return line


def _value(text: str, where: str) -> tuple[str, str]:
    """A value runs to the end of the line (or an unquoted '}'); quotes keep spaces."""
    if text.startswith('"'):
        out, i = [], 1
        while i < len(text):
            char = text[i]
            if char == "\\" and i + 1 < len(text):
                out.append({"n": "\n", "t": "\t"}.get(text[i + 1], text[i + 1]))
                i += 2
                continue
            if char == '"':
                return "".join(out), text[i + 1:].strip()
            out.append(char)
            i += 1
        raise SwanctlError(f"{where}: unterminated quoted value")
    end = text.find("}")
    if end < 0:
        return text.strip(), ""
    return text[:end].strip(), text[end:]


# --------------------------------------------------------------------------- mapping


@dataclass
class Converted:
    conf: dict[str, Any]  # a DaemonConf as data (validate with cf.DaemonConf)
    unsupported: list[str] = field(default_factory=list)  # "path: why"


def _list(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def _seconds(value: str) -> int:
    match = re.fullmatch(r"(\d+)\s*([smhd]?)", value.strip())
    if match is None:
        raise ValueError(f"{value!r} is not a time (e.g. 30s, 1h)")
    return int(match.group(1)) * _UNITS[match.group(2) or "s"]


def _bytes_or_count(value: str) -> int:
    match = re.fullmatch(r"(\d+)\s*([kKmMgG]?)", value.strip())
    if match is None:
        raise ValueError(f"{value!r} is not a number")
    return int(match.group(1)) * {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}[
        match.group(2).lower()]


def _yes(value: str) -> bool:
    return value.lower() in ("yes", "true", "1", "on")


def _proposals(value: str) -> str | None:
    items = [p for p in _list(value) if p != "default"]
    return ", ".join(items) or None


_CLOSE = {"none": "none", "clear": "none", "trap": "trap", "hold": "trap", "start": "start",
          "restart": "start"}
_DPD = {"none": "clear", "clear": "clear", "trap": "trap", "hold": "trap",
        "restart": "restart", "start": "restart"}


def _address_ok(text: str) -> bool:
    if text == "%any":
        return True
    try:
        ipaddress.ip_network(text, strict=False)
    except ValueError:
        return False
    return True


class _Mapper:
    def __init__(self, root: Section, base: Path) -> None:
        self.root = root
        self.base = base  # the swanctl directory (x509/, x509ca/, private/ ...)
        self.notes: list[str] = []
        self.ppks: list[tuple[list[str], str]] = []  # postquantum preshared keys

    def note(self, path: str, why: str = "not supported") -> None:
        self.notes.append(f"{path}: {why}")

    def rest(self, path: str, section: Section, used: set[str]) -> None:
        for key, value in section.items():
            if key not in used:
                self.note(f"{path}.{key}", "not supported" if not isinstance(value, dict)
                          else "section not supported")

    def convert(self) -> Converted:
        connections: dict[str, Any] = {}
        psks = self._secrets(self.root.get("secrets", {}))
        self.ppks = self._secrets(self.root.get("secrets", {}), "ppk")
        pools = self._pools(self.root.get("pools", {}))
        for name, section in self.root.get("connections", {}).items():
            if not isinstance(section, dict):
                self.note(f"connections.{name}", "expected a section")
                continue
            connections[name] = self._connection(f"connections.{name}", section, psks, pools)
        for key in self.root:
            if key not in ("connections", "secrets", "pools"):
                self.note(key, "section not supported" if isinstance(self.root[key], dict)
                          else "not supported")
        return Converted({"connections": connections}, self.notes)

    def _connection(self, path: str, s: Section, psks: list[tuple[list[str], str]],
                    pools: dict[str, str]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        used: set[str] = set()
        simple: dict[str, Callable[[str], Any]] = {
            "local_addrs": _list, "remote_addrs": _list, "local_port": int,
            "remote_port": int, "proposals": _proposals, "dpd_delay": _seconds,
            "rekey_time": _seconds, "encap": _yes}
        target = {"proposals": "ike_proposals"}
        for key, convert in simple.items():
            if key in s:
                used.add(key)
                try:
                    out[target.get(key, key)] = convert(s[key])
                except ValueError as exc:
                    self.note(f"{path}.{key}", str(exc))
        for key in ("local_addrs", "remote_addrs"):
            bad = [a for a in out.get(key, []) if not _address_ok(a)]
            if bad:
                out[key] = [a for a in out[key] if a not in bad]
                self.note(f"{path}.{key}", f"{', '.join(bad)}: only IP addresses and "
                          "prefixes are supported (no names or ranges)")
        if "version" in s:
            used.add("version")
            if s["version"] not in ("0", "2"):
                self.note(f"{path}.version", "only IKEv2 is supported")
        if "mobike" in s:
            used.add("mobike")
            out["mobike"] = _yes(s["mobike"])
        if "fragmentation" in s:
            used.add("fragmentation")
            value = s["fragmentation"].lower()
            out["fragmentation"] = value != "no"
            if value == "force":
                self.note(f"{path}.fragmentation", "force is not supported: imported as yes")
        if "pools" in s:
            used.add("pools")
            names = _list(s["pools"])
            found = [pools[n] for n in names if n in pools]
            if found:
                out["pool"] = found[0]
            if len(names) > 1 or not found:
                self.note(f"{path}.pools", "one pool (an address prefix) per connection: "
                          f"imported {found[0] if found else 'none'}")
        if "vips" in s:
            used.add("vips")
            out["request_virtual_ip"] = True
        self._ppk(path, s, out, used)
        auth_sections = [k for k in s if k == "local" or k.startswith("local-")]
        self._auth(path, s, out, "local", auth_sections, used)
        self._auth(path, s, out, "remote",
                   [k for k in s if k == "remote" or k.startswith("remote-")], used)
        if out.get("auth") == "psk":
            psk = self._psk_for(out, psks)
            if psk is None:
                self.note(f"{path}", "no IKE secret (secrets.ike*) matches its identities")
            else:
                out["psk"] = psk
        children = {}
        for name, child in s.get("children", {}).items():
            children[name] = self._child(f"{path}.children.{name}", child, out)
        if "children" in s:
            used.add("children")
        out["children"] = children
        self.rest(path, s, used)
        return out

    def _auth(self, path: str, s: Section, out: dict[str, Any], side: str,
              sections: list[str], used: set[str]) -> None:
        if not sections:
            return
        first, *more = sorted(sections)
        used.update(sections)
        for extra in more:
            self.note(f"{path}.{extra}", "one authentication round per side")
        a = s[first]
        seen = {"auth", "id"}
        method = a.get("auth", "pubkey")
        kind = "psk" if method == "psk" else (
            "pubkey" if method in ("pubkey", "rsa", "ecdsa") or method.startswith(
                ("rsa-", "ecdsa-", "pubkey-")) else None)
        if kind is None:
            self.note(f"{path}.{first}.auth", f"{method} is not supported (psk or pubkey)")
        elif side == "local" or "auth" not in out:
            out["auth"] = kind
        if "id" in a:
            out[f"{side}_id"] = a["id"]
        if side == "local" and "certs" in a:
            seen.add("certs")
            certs = _list(a["certs"])
            out["certificate"] = str(self._file("x509", certs[0]))
            key = self._private_key()
            if key is not None:
                out["private_key"] = str(key)
            else:
                self.note(f"{path}.{first}.certs", "no single private key found in "
                          f"{self.base}/private, ecdsa, rsa or pkcs8")
        if side == "remote" and kind == "pubkey":
            seen.add("cacerts")
            names = _list(a.get("cacerts", "")) or [p.name for p in sorted(
                (self.base / "x509ca").glob("*")) if p.is_file()]
            out["ca"] = [str(self._file("x509ca", n)) for n in names]
        self.rest(f"{path}.{first}", a, seen)

    def _file(self, directory: str, name: str) -> Path:
        path = Path(name)
        return path if path.is_absolute() else self.base / directory / path

    def _private_key(self) -> Path | None:
        keys = [p for d in ("private", "ecdsa", "rsa", "pkcs8")
                for p in sorted((self.base / d).glob("*")) if p.is_file()]
        return keys[0] if len(keys) == 1 else None

    def _psk_for(self, conn: dict[str, Any], psks: list[tuple[list[str], str]]
                 ) -> str | None:
        ids = {conn.get("local_id"), conn.get("remote_id"), *conn.get("remote_addrs", []),
               *conn.get("local_addrs", [])}
        for owners, value in psks:
            if not owners or ids & set(owners) or "%any" in owners:
                return value
        return None

    def _child(self, path: str, s: Section, conn: dict[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        used: set[str] = set()
        for key in ("local_ts", "remote_ts"):
            if key in s:
                used.add(key)
                out[key] = [t for t in _list(s[key]) if t != "dynamic"]
        for key in ("esp_proposals", "ah_proposals"):
            if key in s:
                used.add(key)
                value = _proposals(s[key])
                if value is not None:
                    out[key] = value
        if "mode" in s:
            used.add("mode")
            if s["mode"] in ("tunnel", "transport"):
                out["mode"] = s["mode"]
            else:
                self.note(f"{path}.mode", f"{s['mode']} is not supported (tunnel, transport)")
        if "start_action" in s:
            used.add("start_action")
            action = {"route": "trap", "trap": "trap", "start": "start", "none": "none"}.get(
                s["start_action"])
            if action is None:
                self.note(f"{path}.start_action", f"{s['start_action']} is not supported")
            else:
                out["start_action"] = action
                if action != "none" and conn.get("start_action", "none") == "none":
                    conn["start_action"] = action  # the connection starts for its child
        for key, actions in (("close_action", _CLOSE), ("dpd_action", _DPD)):
            if key in s:
                used.add(key)
                if s[key] in actions:
                    conn[key] = actions[s[key]]  # the connection's here, not the child's
                else:
                    self.note(f"{path}.{key}", f"{s[key]} is not supported")
        for key, convert in (("rekey_time", _seconds), ("life_time", _seconds),
                             ("rekey_bytes", _bytes_or_count), ("life_bytes", _bytes_or_count),
                             ("rekey_packets", _bytes_or_count),
                             ("life_packets", _bytes_or_count), ("replay_window", int),
                             ("tfc_padding", lambda v: 1500 if v == "mtu" else int(v))):
            if key in s:
                used.add(key)
                try:
                    out[key] = convert(s[key])
                except ValueError as exc:
                    self.note(f"{path}.{key}", str(exc))
        for key in ("mark_in", "mark_out"):
            if key in s:
                used.add(key)
                value, _, mask = s[key].partition("/")
                try:
                    out[key] = int(value, 0)
                except ValueError:
                    self.note(f"{path}.{key}", f"{s[key]} is not supported (a number)")
                if mask:
                    self.note(f"{path}.{key}", "the mask is not supported: imported without")
        if "rekey_time" in out and "life_time" not in out:
            out["life_time"] = out["rekey_time"] * 11 // 10  # strongSwan: 110%
        self.rest(path, s, used)
        return out

    def _ppk(self, path: str, s: Section, out: dict[str, Any], used: set[str]) -> None:
        """RFC 8784: ppk_id and ppk_required, the PPK from the secrets.ppk* naming it."""
        if "ppk_required" in s:
            used.add("ppk_required")
            out["ppk_required"] = _yes(s["ppk_required"])
        if "ppk_id" not in s:
            return
        used.add("ppk_id")
        ppk = next((v for ids, v in self.ppks if s["ppk_id"] in ids), None)
        if ppk is None:
            self.note(f"{path}.ppk_id", f"no secrets.ppk* with id {s['ppk_id']}: "
                      "imported without a PPK")
            out.pop("ppk_required", None)
            return
        out["ppk_id"], out["ppk"] = s["ppk_id"], ppk

    def _secrets(self, s: Section, kind: str = "ike") -> list[tuple[list[str], str]]:
        out = []
        for name, section in s.items():
            path = f"secrets.{name}"
            if name.startswith("ppk") != (kind == "ppk"):
                continue  # the other pass's
            if not name.startswith(kind) or not isinstance(section, dict):
                self.note(path, "only IKE pre-shared keys (secrets.ike*) and postquantum "
                          "preshared keys (secrets.ppk*) are imported")
                continue
            owners = [v for k, v in section.items() if k == "id" or k.startswith("id")]
            try:
                value = _secret_value(section.get("secret", ""))
            except ValueError as exc:
                self.note(f"{path}.secret", str(exc))
                continue
            out.append((owners, value))
            self.rest(path, section, {"secret", *(k for k in section if k.startswith("id"))})
        return out

    def _pools(self, s: Section) -> dict[str, str]:
        out = {}
        for name, section in s.items():
            path = f"pools.{name}"
            addrs = section.get("addrs", "") if isinstance(section, dict) else ""
            if "/" in addrs and "," not in addrs:
                out[name] = addrs.strip()
            else:
                self.note(f"{path}.addrs", "only a prefix (e.g. 10.3.0.0/24) is supported")
            if isinstance(section, dict):
                self.rest(path, section, {"addrs"})
        return out


def _secret_value(value: str) -> str:
    """strongSwan's secret encodings: text, 0x hex, 0s base64."""
    if value.startswith("0x"):
        raw = binascii.unhexlify(value[2:])
    elif value.startswith("0s"):
        raw = base64.b64decode(value[2:])
    else:
        if not value:
            raise ValueError("empty secret")
        return value
    try:
        return raw.decode()
    except UnicodeDecodeError:
        raise ValueError("a binary PSK (not UTF-8 text) is not supported") from None


def load(path: Path) -> tuple[cf.DaemonConf, list[str]]:
    """A swanctl.conf as a validated DaemonConf and the settings it could not map."""
    converted = _Mapper(parse(path.read_text(), str(path)), path.parent).convert()
    return cf.DaemonConf.model_validate(converted.conf), converted.unsupported


def looks_like_swanctl(path: Path) -> bool:
    return path.suffix == ".conf" or path.name.startswith("swanctl")
