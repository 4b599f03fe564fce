"""The daemon's saved state: IKE SAs, the CHILD_SAs they installed and the reqids, so a
restarted daemon takes its tunnels back instead of dropping them.

The file holds key material: it is AES-GCM encrypted with a key kept in a separate 0400
file (the same scheme as the database's secrets), written atomically (temporary file and
rename) and never logged.
"""

from __future__ import annotations

import json
import os
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

from xfrmctl.ike import ts
from xfrmctl.ike.config import Mode
from xfrmctl.ike.constants import ProtocolId
from xfrmctl.ike.events import ChildSaNegotiated
from xfrmctl.ike.persist import suite_from_dict, suite_to_dict
from xfrmctl.store.secrets import SecretBox

_KEYS = ("encr_key_in", "integ_key_in", "encr_key_out", "integ_key_out")
_NAME = "xfrmctl-daemon-state"


class StateFile:
    def __init__(self, path: Path, key_file: Path) -> None:
        self.path = path
        self._box = SecretBox.from_file(key_file)

    def save(self, data: dict[str, Any]) -> None:
        blob = self._box.encrypt(_NAME, json.dumps(data).encode())
        tmp = self.path.with_name(self.path.name + ".tmp")
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, blob)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self.path)

    def load(self) -> dict[str, Any] | None:
        if not self.path.exists():
            return None
        data: dict[str, Any] = json.loads(self._box.decrypt(_NAME, self.path.read_bytes()))
        return data

    def clear(self) -> None:
        self.path.unlink(missing_ok=True)


def child_to_dict(event: ChildSaNegotiated) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for f in fields(event):
        value = getattr(event, f.name)
        if f.name in _KEYS:
            value = value.hex()
        elif f.name in ("local_ts", "remote_ts"):
            value = [ts.format_ts(t) for t in value]
        elif f.name == "suite":
            value = suite_to_dict(value)
        elif f.name in ("mode", "protocol"):
            value = value.value
        elif f.name in ("local", "remote"):
            value = list(value)
        out[f.name] = value
    return out


def child_from_dict(data: dict[str, Any], ike_sa: int) -> ChildSaNegotiated:
    values = dict(data)
    for name in _KEYS:
        values[name] = bytes.fromhex(values[name])
    values["local_ts"] = tuple(ts.parse(t) for t in values["local_ts"])
    values["remote_ts"] = tuple(ts.parse(t) for t in values["remote_ts"])
    values["suite"] = suite_from_dict(values["suite"])
    values["mode"], values["protocol"] = Mode(values["mode"]), ProtocolId(values["protocol"])
    values["local"], values["remote"] = tuple(values["local"]), tuple(values["remote"])
    return replace(ChildSaNegotiated(**values), ike_sa=ike_sa)
