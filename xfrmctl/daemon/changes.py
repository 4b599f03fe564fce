"""Configuration changes applied to running tunnels, make-before-break (what changes is
decided in confdiff.py): new CHILD_SAs before old ones go, IKE_SA rekeys for new
proposals (reauthentication when they drop the running PRF), and reauthentication (RFC
7296 2.8.3) for any other IKE-level change."""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING

from xfrmctl.ike.config import IkeConfig
from xfrmctl.ike.errors import LocalError
from xfrmctl.ike.events import ChildSaNegotiated, ReauthDue
from xfrmctl.ike.proposals import keeping_prf
from xfrmctl.ike.sa import IkeSa, IkeState
from xfrmctl.port import ConnectionState

from . import conf as cf
from . import confdiff
from .pool import AddressPool
from .records import ChildRecord, ChildRecordState, ConnectionRecord
from .revocation import add_configured, configured_crls
from .routelinks import wanted_links

if TYPE_CHECKING:
    from .controller import Controller

log = logging.getLogger("xfrmctl.daemon")


class Changes:
    """Reloads, replacements and reauthentications of the controller's connections."""

    def __init__(self, controller: Controller) -> None:
        self.c = controller

    def delete_replaced(self, ike_sa: int, spis: Sequence[int]) -> None:
        """The replacing CHILD_SA is installed: delete the ones it replaces."""
        sa = self.c.manager.get(ike_sa)
        if sa is None or sa.state is not IkeState.ESTABLISHED:
            return
        now = self.c.clock()
        for spi in spis:
            if spi in self.c.children:
                with contextlib.suppress(LocalError):
                    self.c.manager.act(sa, lambda s, spi=spi: s.delete_child(  # type: ignore[misc]
                        spi, now, "replaced"))
        self.c._flush()

    async def reload(self, conf: cf.DaemonConf) -> list[str]:
        """Apply a new configuration, doing the least that reaches it (see confdiff.py):
        running SAs of a changed connection are changed make-before-break, never torn
        down and set up again."""
        before = {name: r.conf for name, r in self.c.connections.items()}
        credentials = {name: r.credentials for name, r in self.c.connections.items()}
        changed = self.c.load(conf)
        await self.c._sync_links()  # new interfaces before any CHILD_SA moves onto them
        for name in changed:
            record = self.c.connections[name]
            diff = confdiff.diff_connection(
                name, before.get(name), conf.connections.get(name),
                credentials_changed=name in credentials
                and credentials[name] != record.credentials)
            if diff.removed:
                await self.drop_connection(record)
                self.c.connections.pop(name, None)
                continue
            log.info("%s: %s", name, _describe(diff))
            live = [sa for sa in self.c._sas_of(record) if sa.state is IkeState.ESTABLISHED]
            if diff.added or not live:
                await self.restart_connection(record, fresh=diff.added)
                continue
            if await self.c.traps.update(record, before[name]) and \
                    record.state is ConnectionState.DOWN:
                self.c.lifecycle.set_state(record, ConnectionState.TRAPPED, None)
            if diff.reauth:
                for sa in live:
                    sa.config = record.ike  # what rekeys it until the new one is up
                    if self.drives(sa, record):
                        self.reauthenticate(sa, record)
            elif diff.negotiates:
                for sa in live:
                    rekey = diff.ike_rekey and self.drives(sa, record)
                    if rekey and _drops_prf(sa, record):
                        sa.config = record.ike
                        self.reauthenticate(sa, record)
                        continue
                    self.apply_children(sa, record)
                    if rekey:  # the CHILD_SAs move
                        self.c.manager.act(sa, functools.partial(IkeSa.rekey, now=self.c.clock()))
            else:
                for sa in live:
                    sa.config = record.ike  # local settings: the next rekey reads them
        self.c._flush()
        return changed

    async def drop_connection(self, record: ConnectionRecord) -> None:
        now = self.c.clock()
        record.wanted = False
        await self.c.traps.remove(record)
        for sa in self.c._sas_of(record):
            self.c.manager.act(sa, lambda s: s.delete(now, "connection removed"))
        self.c.installer.forget_lingering(record.name)

    async def restart_connection(self, record: ConnectionRecord, fresh: bool) -> None:
        """A new connection, or one with no IKE SA up: (re)start it as configured."""
        if not fresh:
            now = self.c.clock()
            for sa in self.c._sas_of(record):  # half-open with the old settings
                self.c.manager.act(sa, lambda s: s.delete(now, "configuration changed"))
            await self.c.traps.remove(record)
        wanted = record.wanted
        await self.c._apply_start_action(record)
        if wanted and not record.wanted and record.conf.remote_addrs:
            record.wanted = True  # brought up by the API: keep it up
            self.c._initiate(record)

    def apply_children(self, sa: IkeSa, record: ConnectionRecord) -> None:
        """Bring the CHILD_SAs of a running IKE SA to the configured children: create the
        new, delete the removed, replace the changed (new first, then the old deleted)."""
        sa.config = record.ike
        now = self.c.clock()
        running: dict[str, list[ChildRecord]] = {}
        for child in self.c.children.values():
            if child.event.ike_sa == sa.id and child.state != ChildRecordState.DELETED:
                running.setdefault(child.event.child, []).append(child)
        for name, children in running.items():
            conf = record.conf.children.get(name)
            for child in children:
                if conf is None:
                    spi = child.event.spi_in
                    self.c.manager.act(sa, lambda s, spi=spi: s.delete_child(  # type: ignore[misc]
                        spi, now, "removed from the configuration"))
            stale = [c for c in children if conf is not None and c.conf is not None
                     and confdiff.diff_child(c.conf, conf)]
            if conf is None or not stale or not self.drives(sa, record, conf):
                continue
            if all(self.rekey_with(sa, c, record, now) for c in stale):
                continue
            self.c._replace_after[(sa.id, name)] = tuple(c.event.spi_in for c in stale)
            self.c.manager.act(sa, lambda s, name=name: s.create_child(  # type: ignore[misc]
                name, now))
        for name, conf in record.conf.children.items():
            if name not in running and self.drives(sa, record, conf):
                self.c.manager.act(sa, lambda s, name=name: s.create_child(  # type: ignore[misc]
                    name, now))

    def rekey_with(self, sa: IkeSa, child: ChildRecord, record: ConnectionRecord,
                   now: float) -> bool:
        """Replace a CHILD_SA by rekeying it with its child's new configuration: both ends
        then keep sending on the old one until it is deleted (make-before-break even with
        a peer that installs a new CHILD_SA's outbound SA at once). Not for a change of
        mode or protocol, which a rekey cannot carry."""
        old, new = child.conf, record.conf.children[child.event.child]
        assert old is not None
        if (old.mode, bool(old.ah_proposals)) != (new.mode, bool(new.ah_proposals)):
            return False
        spi, config = child.event.spi_in, record.ike.child(child.event.child)
        try:
            self.c.manager.act(sa, lambda s: s.rekey_child(spi, now, config))
        except LocalError:
            return False  # being rekeyed or deleted right now
        child.state = ChildRecordState.REKEYING
        return True

    @staticmethod
    def drives(sa: IkeSa, record: ConnectionRecord, child: cf.ChildConf | None = None
               ) -> bool:
        """Whether this end brings a change to a running IKE SA: its original initiator,
        or an end that starts the child itself. A passive responder leaves it to the peer
        (both ends changed alike would otherwise both act)."""
        start = (child.start_action if child else None) or record.conf.start_action
        return sa.is_initiator or record.wanted or start is not cf.StartAction.NONE

    def reauthenticate(self, sa: IkeSa, record: ConnectionRecord) -> None:
        """RFC 7296 2.8.3, make-before-break: a new IKE SA with the children of the old
        one (as configured now) comes up; then the old one is deleted."""
        if any(old == sa.id for old, _ in self.c._reauths.values()):
            return  # already under way
        names = sorted({c.event.child for c in self.c.children.values()
                        if c.event.ike_sa == sa.id} & set(record.conf.children))
        names += [n for n, c in record.conf.children.items()
                  if n not in names and self.drives(sa, record, c)]
        if not names:
            names = list(record.conf.children)
        try:
            new = self.c.manager.initiate(record.name, sa.local, sa.remote, self.c.clock(),
                                          names, reauth=True)
        except LocalError as exc:
            log.error("reauthenticating %s: %s", record.name, exc)
            return
        log.info("reauthenticating IKE SA %d of %s as %d (make-before-break)", sa.id,
                 record.name, new.id)
        self.c._reauths[new.id] = (sa.id, set(names))

    def on_reauth_due(self, event: ReauthDue) -> None:
        """reauth_time reached: reauthenticate, make-before-break. A responder cannot do
        it for a remote-access client (it holds a virtual IP from us): that IKE SA ends at
        its hard lifetime unless the client reauthenticates (as strongSwan)."""
        sa, record = self.c.manager.get(event.ike_sa), self.c.connections.get(event.connection)
        if sa is None or record is None or sa.state is not IkeState.ESTABLISHED:
            return
        if any(other.established_at is not None and sa.established_at is not None
               and other.established_at > sa.established_at
               and other.state is IkeState.ESTABLISHED and other.remote == sa.remote
               and other.id not in self.c._reauths for other in self.c._sas_of(record)):
            return  # the peer reauthenticated it already: it deletes this one
        if not sa.is_initiator and sa.virtual_ip is not None:
            log.warning("IKE SA %d of %s: the client did not reauthenticate; it expires at "
                        "its hard lifetime (over_time)", sa.id, record.name)
            return
        self.reauthenticate(sa, record)

    def reauth_child_done(self, ike_sa: int, child: str) -> None:
        """A child came up (or failed) on a reauthentication's new IKE SA; when none is
        left, the old IKE SA goes, after the kernel work queued so far."""
        entry = self.c._reauths.get(ike_sa)
        if entry is None:
            return
        entry[1].discard(child)
        if not entry[1]:
            del self.c._reauths[ike_sa]
            self.c.installer.queue(functools.partial(self.finish_reauth, entry[0], ike_sa))

    def finish_reauth(self, old_id: int, new_id: int) -> None:
        old, new = self.c.manager.get(old_id), self.c.manager.get(new_id)
        if old is None or new is None or new.state is not IkeState.ESTABLISHED:
            return
        log.info("IKE SA %d of %s reauthenticated as %d: deleting the old one", old_id,
                 old.name, new_id)
        now = self.c.clock()
        self.c.manager.act(old, lambda s: s.delete(now, "reauthenticated"))
        self.c._flush()

    def reauth_failed(self, ike_sa: int) -> None:
        entry = self.c._reauths.pop(ike_sa, None)
        if entry is not None:
            log.warning("reauthentication of IKE SA %d failed: keeping it", entry[0])



    def load(self, conf: cf.DaemonConf) -> list[str]:
        """Take a new configuration; returns the names of connections that changed."""
        self.c.conf = conf
        self.load_radius(conf)
        changed = []
        for name, conn in sorted(conf.connections.items()):
            old = self.c.connections.get(name)
            try:  # a psk_file (or key) rewritten in place is a change too
                credentials = cf.credential_digest(conn)
            except OSError as exc:
                self.not_loadable(name, exc)
                continue
            if old is not None and old.conf == conn and old.credentials == credentials:
                self.reload_crls(name, conn, old.ike)
                continue
            pool = None
            if conn.pool:
                pool = self.c._pools.setdefault(name, AddressPool(conn.pool))
            try:
                ike = cf.ike_config(name, conn, pool, self.c.revocation.store, self.c.radius)
                add_configured(self.c.revocation.store, name, ike,
                               configured_crls(conn.crl_pem, conn.crl))
            except (OSError, ValueError) as exc:  # e.g. a psk_file or key that is missing
                self.not_loadable(name, exc)
                continue
            self.c.not_loaded.pop(name, None)
            # The database's id if given; else kept across reloads, new ones numbered on.
            ident = conn.id or (old.id if old else self.next_id())
            record = ConnectionRecord(ident, name, conn, ike, credentials=credentials)
            if old is not None:  # what runs stays: reload() applies the difference
                record.state, record.reason, record.detail = old.state, old.reason, old.detail
                record.since, record.traps = old.since, old.traps
                record.wanted = old.wanted
            self.c.connections[name] = record
            changed.append(name)
        for name in set(self.c.connections) - set(conf.connections):
            changed.append(name)
            self.c.revocation.store.remove_crls(f"connection {name}")
        for name in set(self.c.not_loaded) - set(conf.connections):
            del self.c.not_loaded[name]
        self.c.manager.configs = {r.name: r.ike for r in self.c.connections.values()
                                  if r.name in conf.connections}
        self.c._wanted_links = wanted_links({r.name: r.conf for r in self.c.connections.values()
                                             if r.name in conf.connections})
        return changed

    def reload_crls(self, name: str, conn: cf.ConnectionConf, ike: IkeConfig) -> None:
        """Read a running connection's CRL files again (new content is no reason to
        reauthenticate); one that went bad leaves the last good one in use."""
        if not (conn.crl or conn.crl_pem):
            return
        try:
            add_configured(self.c.revocation.store, name, ike,
                           configured_crls(conn.crl_pem, conn.crl))
        except (OSError, ValueError) as exc:
            log.error("connection %s: CRL not loaded: %s", name, exc)

    def load_radius(self, conf: cf.DaemonConf) -> None:
        """The RADIUS server eap-radius connections relay to (a secret_file that cannot
        be read leaves none: their logins fail with that said)."""
        try:
            self.c.radius.configure(cf.radius_server(conf.radius))
        except OSError as exc:
            log.error("radius: secret_file %s: %s", exc.filename, exc.strerror)
            self.c.radius.configure(None)

    def not_loadable(self, name: str, exc: Exception) -> None:
        """One connection that cannot be loaded is left out (a running one keeps its
        last good configuration); the others load. `status` says why."""
        why = f"{exc.strerror}: {exc.filename}" if isinstance(exc, OSError) and exc.filename \
            else str(exc)
        if self.c.not_loaded.get(name) != why:
            log.error("connection %s not loaded: %s", name, why)
        self.c.not_loaded[name] = why

    def next_id(self) -> int:
        return max((r.id for r in self.c.connections.values()), default=0) + 1

    def replace_lost_child(self, sa: IkeSa, event: ChildSaNegotiated, still_configured: bool,
                           now: float) -> None:
        """A CHILD_SA gone from the kernel (or from the configuration): delete it with the
        peer, and negotiate a new one if it is still configured."""
        spi_in, name = event.spi_in, event.child
        self.c.manager.act(sa, lambda s: s.delete_child(spi_in, now, "lost in restart"))
        if still_configured:
            self.c.manager.act(sa, lambda s: s.create_child(name, now))


def _drops_prf(sa: IkeSa, record: ConnectionRecord) -> bool:
    """The new IKE proposals lack the SA's PRF: a rekey would change it, which strongSwan
    and RFC 7296 key differently (ike/tasks/ike_rekey.py), so it is reauthenticated."""
    return sa.suite is not None and not keeping_prf(record.ike.proposals, sa.suite.prf)


def _describe(diff: confdiff.ConnectionDiff) -> str:
    if diff.added:
        return "added"
    parts = ["reauthenticating" if diff.reauth else "rekeying the IKE SA"
             if diff.ike_rekey else ""]
    if diff.credentials_changed:
        parts.append("new credential file content")
    for what, names in (("new", diff.children_added), ("removed", diff.children_removed),
                        ("replaced", diff.children_replaced),
                        ("new interfaces for", diff.links_changed)):
        if names and not diff.reauth:
            parts.append(f"{what} children {', '.join(names)}")
    if diff.local_fields:
        parts.append(f"local settings {', '.join(diff.local_fields)}")
    return "; ".join(p for p in parts if p) or "nothing to negotiate"
