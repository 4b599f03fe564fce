"""A restart drops no tunnel: the IKE SAs and the CHILD_SAs they installed are saved
(encrypted, see state.py) and the next process takes them back from the kernel."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from xfrmctl.ike import persist
from xfrmctl.ike.constants import ProtocolId
from xfrmctl.ike.sa import IkeState
from xfrmctl.kernel.types import IPAddress, KernelError, Proto
from xfrmctl.port import ConnectionState

from .install import build_child
from .records import ChildRecord
from .routelinks import link_spec
from .state import StateFile, child_from_dict, child_to_dict

if TYPE_CHECKING:
    from .controller import Controller

log = logging.getLogger("xfrmctl.daemon")
STATE_INTERVAL = 1.0  # seconds between saves of the state (when something changed)
BOOT_ID = Path("/proc/sys/kernel/random/boot_id")


class Restorer:
    """Saves the controller's SAs, and takes them back after a restart."""

    def __init__(self, controller: Controller) -> None:
        self.c = controller

    def snapshot(self) -> dict[str, object]:
        """IKE SAs with the CHILD_SAs they installed, and the reqids (see state.py)."""
        ike_sas = []
        for sa in self.c.manager.all():
            if sa.state is not IkeState.ESTABLISHED:
                continue
            children = [child_to_dict(c.event) for c in self.c.children.values()
                        if c.event.ike_sa == sa.id and c.in_kernel]
            ike_sas.append({"ike": persist.snapshot(sa), "children": children,
                            "installed_at": {str(c.event.spi_in): c.installed_at
                                             for c in self.c.children.values()
                                             if c.event.ike_sa == sa.id}})
        return {"reqids": [[c, n, r] for (c, n), r in self.c._reqids.items()],
                "ike_sas": ike_sas, "clock": {"boot_id": self.c.boot_id(),
                                              "monotonic": self.c.clock(),
                                              "wall": self.c.wall_clock()}}

    async def writer(self, state: StateFile) -> None:
        while True:
            await asyncio.sleep(STATE_INTERVAL)
            if self.c._dirty:
                self.c._dirty = False
                await self.c.drain()
                await asyncio.to_thread(state.save, self.snapshot())

    async def restore(self, state: StateFile) -> None:
        """Take back the tunnels of the previous process: restore its IKE SAs, hold the
        CHILD_SAs still in the kernel, re-create those that are gone, remove orphans."""
        try:
            data = state.load() or {}
        except (ValueError, OSError) as exc:
            log.error("saved state %s unreadable, starting afresh: %s", state.path, exc)
            data = {}
        for conn, child, reqid in data.get("reqids", []):
            self.c._reqids[(conn, child)] = reqid
        shift = self._clock_shift(data.get("clock"))
        for saved in data.get("ike_sas", []):
            shift_times(saved, shift)
        present = {(s.spec.dst, s.spec.spi, s.spec.proto) for s in await self.c.kernel.dump_sas()}
        kept: set[tuple[IPAddress, int, Proto]] = set()
        for saved in data.get("ike_sas", []):
            kept |= self._restore_ike_sa(saved, present)
        for record in self.c.connections.values():
            if not self.c._sas_of(record) and await self.c.traps.adopt(record):
                self.c.lifecycle.set_state(record, ConnectionState.TRAPPED, None)
        # only what was there before any request was answered can be an orphan
        try:
            removed = await self.c.kernel.remove_orphans(kept, among=present)
        except KernelError as exc:
            log.warning("removing orphans of the previous process: %s", exc)
            removed = (0, 0)
            self.c.installer.schedule_resync("orphan removal failed")
        for child in list(self.c.children.values()):
            await self.c.child_sas.hold_child_routes(child)  # kept in the kernel: counted again
            await self.c.child_sas.hold_mss(child)
        log.info("restored %d IKE SAs, %d CHILD_SAs; removed %d orphan SAs, %d policies",
                 len(self.c.manager.all()), len(self.c.children), *removed)
        self.c._flush()

    def _clock_shift(self, saved: dict[str, Any] | None) -> float:
        """Saved times are on the previous process's monotonic clock: the same clock after
        a daemon restart, but another one after a reboot. Then they are moved by the
        wall-clock time that passed, so deadlines keep their distance."""
        boot = self.c.boot_id()
        if not saved or (boot is not None and saved.get("boot_id") == boot):
            return 0.0
        elapsed = self.c.wall_clock() - float(saved["wall"])
        return self.c.clock() - elapsed - float(saved["monotonic"])

    def _restore_ike_sa(self, saved: dict[str, Any], present: set[Any]
                        ) -> set[tuple[IPAddress, int, Proto]]:
        record = self.c.connections.get(saved["ike"]["connection"])
        if record is None:
            return set()  # connection removed meanwhile: its kernel state goes as orphans
        sa = persist.restore(saved["ike"], record.ike, self.c.clock(), self.c._random_spi)
        self.c.manager.adopt(sa)
        kept: set[Any] = set()
        now = self.c.clock()
        for child_data in saved["children"]:
            event = child_from_dict(child_data, sa.id)
            child_conf = record.conf.children.get(event.child)
            proto_ = Proto.AH if event.protocol is ProtocolId.AH else Proto.ESP
            ids = {(ipaddress.ip_address(e[0]), spi, proto) for e, spi, proto in (
                (event.local, event.spi_in, proto_),
                (event.remote, event.spi_out, proto_))}
            if child_conf is None or not ids <= present:
                self.c.changes.replace_lost_child(sa, event, child_conf is not None, now)
                continue
            install = build_child(event, child_conf, self.c.reqid(event.connection, event.child))
            self.c.kernel.adopt_child(install)
            installed_at = saved.get("installed_at", {}).get(str(event.spi_in), now)
            self.c.installer.adopt(ChildRecord(event, install, install.inbound.reqid,
                                               installed_at, conf=child_conf,
                                            link=link_spec(record.conf, child_conf)))
            kept |= ids
        self.c.lifecycle.set_state(record, ConnectionState.UP, None)
        return kept


def shift_times(saved: dict[str, Any], shift: float) -> None:
    """Move one saved IKE_SA's times (see Restorer._clock_shift)."""
    if not shift:
        return
    ike = saved["ike"]
    for key in ("established_at", "rekey_deadline", "reauth_deadline"):
        if ike.get(key) is not None:
            ike[key] += shift
    saved["installed_at"] = {spi: at + shift
                             for spi, at in saved.get("installed_at", {}).items()}


def read_boot_id() -> str | None:
    """This boot's id (monotonic clocks restart with it)."""
    try:
        return BOOT_ID.read_text().strip() or None
    except OSError:
        return None


