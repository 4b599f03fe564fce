"""One IKE SA and its CHILD_SAs: the sans-I/O state machine of RFC 7296.

Driven by `receive_message()` (the manager routes decoded datagrams here), `handle_timer(now)`
and the API calls (`initiate`, `create_child`, `rekey_child`, `rekey`, `delete_child`,
`delete`, `liveness_check`). Read back with `datagrams_to_send()`, `next_event()` and
`get_timer()`. It never touches a socket, a clock or the kernel: time comes in as `now`
(POSIX seconds), CHILD_SA SPIs from an injected allocator.

Where the rules live:
- state.py: IKE SA and CHILD_SA states; every change goes through its tables.
- window.py: message IDs, one request outstanding (RFC 7296 2.3), retransmission with
  back-off (after `Retransmit.tries` the peer is unreachable and the SA closes), the
  cached response (a retransmitted request is answered from it, never processed twice).
- keys.py: PRF, SK_* keys and the SK ciphers.
- tasks/: one module per exchange, each with the initiator's task (build the request,
  process the answer) and the responder's `respond`; tasks/collisions.py has the rekey
  collision rules (RFC 7296 2.8). A task lives only while its exchange is queued or out.
- inbound.py: what arrives before an exchange sees it: fragments (RFC 7383), malformed
  requests, plaintext once keyed.
- timers.py: the deadlines (half-open, rekey, reauthentication and hard lifetime, DPD,
  CHILD_SA retries); a reauthentication is ReauthDue at its deadline, after which the
  daemon brings up a new IKE SA (IKE_SA_INIT, IKE_AUTH tasks) and deletes this one.
Only integrity-checked requests are answered or use up a message ID. IKE SAs made by a
rekey stay silent until adopted. A TEMPORARY_FAILURE is retried after a short random
delay, on the successor IKE SA if there is one by then.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from . import dh, inbound
from .child import ChildSa, new_id
from .config import ChildConfig, Identity, IkeConfig
from .constants import ExchangeType, TransformType, notify_name
from .errors import IntegrityError, LocalError, ProtocolError
from .events import (
    ChildSaDeleted,
    Event,
    FailureReason,
    IkeSaDown,
    NegotiationFailed,
    PeerMoved,
    ReauthDue,
)
from .fragment import Reassembler, encode_fragments
from .keys import NONCE_SIZE, KeyState, new_nonce
from .limits import Budget
from .message import Message, decode, encode
from .payloads import NotifyPayload, Payload
from .proposals import Suite
from .state import SETTING_UP, UP, ChildState, IkeState, ike_move
from .tasks import ike_intermediate, mobike, rekeyed
from .tasks.base import IkeCollision, notify, reason_of
from .tasks.child_create import ChildCreate
from .tasks.child_delete import ChildDelete
from .tasks.child_rekey import ChildRekey
from .tasks.dpd import Dpd
from .tasks.followup_ke import Followups
from .tasks.ike_auth import IkeAuth
from .tasks.ike_delete import IkeDelete
from .tasks.ike_init import IkeInit, Setup
from .tasks.ike_rekey import IkeRekey, rekey_out
from .tasks.responders import RESPONDERS
from .timers import Timers
from .window import Outstanding, RequestWindow, Task

Endpoint = tuple[str, int]


def random_child_spi() -> int:
    """A random inbound SPI outside the reserved 1..255 range."""
    while True:
        spi = int.from_bytes(os.urandom(4), "big")
        if spi > 255:
            return spi


@dataclass(frozen=True, slots=True)
class Datagram:
    data: bytes
    local: Endpoint
    remote: Endpoint


class IkeSa:
    """An IKE SA as initiator or responder. Create with `initiator()` or `responder()`.

    The exchanges (tasks/) read and change it through its plain-named methods and
    attributes; the underscored ones are its own."""

    # No per-instance dict: a gateway holds one of these per tunnel (memory per IKE_SA).
    __slots__ = ("_events", "_last_peer_activity", "_out", "_state", "alloc_spi", "budget",
                 "candidates", "children", "config", "created", "down_reason",
                 "established_at", "followups", "id", "is_initiator", "keys", "local", "local_id",
                 "mobike", "nat_local", "nat_remote", "original_initiator", "own_addresses",
                 "path", "peer_addresses", "peer_fragmentation", "peer_hashes", "reassembly",
                 "remote", "remote_eap_id", "remote_id", "setup", "silent", "spawned", "spi_i",
                 "spi_r", "successor", "suite", "timers", "virtual_ip", "wall_offset", "window")

    def __init__(self, *, initiator: bool, local: Endpoint, remote: Endpoint, now: float,
                 config: IkeConfig | None, candidates: Sequence[IkeConfig] = (),
                 spi_allocator: Callable[[], int] = random_child_spi) -> None:
        self.id = new_id()
        self.is_initiator = initiator  # original initiator of this IKE SA
        self.local = local
        self.remote = remote
        self.config = config
        self.candidates = tuple(candidates) or ((config,) if config else ())
        self._state = IkeState.CREATED
        self.created = now
        # `now` + this = the wall-clock time (certificate validity); the caller's `now`
        # may be a monotonic clock (timers immune to clock steps). Set by the manager.
        self.wall_offset = 0.0
        self.established_at: float | None = None
        self.spi_i = os.urandom(8) if initiator else b"\0" * 8
        self.spi_r = b"\0" * 8 if initiator else os.urandom(8)
        self.suite: Suite | None = None
        self.children: dict[int, ChildSa] = {}
        self.successor: IkeSa | None = None
        self.local_id: Identity | None = None
        self.remote_id: Identity | None = None
        self.nat_local = self.nat_remote = self.peer_fragmentation = False
        self.peer_hashes: set[int] = set()
        self.virtual_ip: str | None = None  # ours (initiator) or the peer's (responder)
        self.remote_eap_id: str | None = None  # the user the peer logged in as with EAP
        # MOBIKE (tasks/mobike.py): negotiated?; who decides the addresses (the original
        # initiator, also after IKE rekeys); the addresses each side listed besides its own
        self.mobike = False
        self.original_initiator = initiator
        self.own_addresses: tuple[str, ...] | None = None  # None: not listed yet
        self.peer_addresses: tuple[str, ...] | None = None  # None: the peer listed none
        # the (local, remote) of the request being answered: answers go back its way
        self.path: tuple[Endpoint, Endpoint] | None = None
        self.down_reason = ""
        self.alloc_spi = spi_allocator
        self.window = RequestWindow()
        self.keys: KeyState | None = None
        self.setup: Setup | None = Setup()  # until IKE_AUTH is done
        self.budget: Budget | None = None  # the manager's: fragment buffers are charged to it
        self.reassembly: dict[bool, Reassembler] | None = None  # by is_response
        # responder: SAs waiting for their IKE_FOLLOWUP_KE exchanges, by link (RFC 9370)
        self.followups: dict[bytes, Followups] | None = None
        self._events: list[Event] = []
        self._out: list[Datagram] = []
        self._last_peer_activity = now
        self.timers = Timers()
        self.spawned: list[IkeSa] = []  # made by rekeys, for the manager (take_spawned)
        self.silent = False  # a rekey's IKE SA not (yet) adopted: no events

    # ----------------------------------------------------------------- construction

    @classmethod
    def initiator(cls, config: IkeConfig, local: Endpoint, remote: Endpoint, now: float,
                  spi_allocator: Callable[[], int] = random_child_spi) -> IkeSa:
        return cls(initiator=True, local=local, remote=remote, now=now, config=config,
                   spi_allocator=spi_allocator)

    @classmethod
    def responder(cls, candidates: Sequence[IkeConfig], local: Endpoint, remote: Endpoint,
                  now: float, spi_allocator: Callable[[], int] = random_child_spi) -> IkeSa:
        sa = cls(initiator=False, local=local, remote=remote, now=now, config=None,
                 candidates=candidates, spi_allocator=spi_allocator)
        sa.timers.half_open = now + min(c.half_open_timeout for c in candidates)
        return sa

    def resume(self, now: float, rekey_at: float | None, reauth_at: float | None) -> None:
        """Continue as ESTABLISHED with the keys, message IDs and CHILD_SAs set on it
        (persist.py restores a saved SA this way)."""
        self.setup = None
        self.move_to(IkeState.ESTABLISHED)
        self.timers.rekey = rekey_at
        self.timers.arm_lifetime(self.conf(), now, reauth_at)
        self.arm_dpd(now)

    @property
    def state(self) -> IkeState:
        return self._state

    @property
    def rekey_deadline(self) -> float | None:
        """When this IKE SA rekeys itself (POSIX time), if it will."""
        return self.timers.rekey

    @property
    def reauth_deadline(self) -> float | None:
        """When the daemon is asked to reauthenticate it (ReauthDue), if ever."""
        return self.timers.reauth

    @property
    def expire_deadline(self) -> float | None:
        """Its hard lifetime: deleted then unless rekeyed or reauthenticated."""
        return self.timers.expire

    @property
    def our_spi(self) -> bytes:
        return self.spi_i if self.is_initiator else self.spi_r

    @property
    def name(self) -> str:
        return self.config.name if self.config else "?"

    @property
    def wall_time(self) -> float:
        """Wall-clock time of the last message from the peer (certificate validity)."""
        return self._last_peer_activity + self.wall_offset

    @property
    def lease_owner(self) -> str:
        """Whose virtual IP lease a gateway's SA holds: the EAP user's, else the peer's
        IKE identity (road warriors often all send their private address as IDi)."""
        return f"eap:{self.remote_eap_id}" if self.remote_eap_id else str(self.remote_id)

    def conf(self) -> IkeConfig:
        if self.config is None:
            raise LocalError("IKE SA has no connection yet")
        return self.config

    def move_to(self, new: IkeState) -> None:
        """Change state along `TRANSITIONS` (state.py)."""
        self._state = ike_move(self._state, new, self.id)

    # ----------------------------------------------------------------- outputs

    def datagrams_to_send(self) -> list[Datagram]:
        out, self._out = self._out, []
        return out

    def next_event(self) -> Event | None:
        return self._events.pop(0) if self._events else None

    def emit(self, event: Event) -> None:
        self._events.append(event)

    def get_timer(self) -> float | None:
        out = self.window.outstanding
        return self.timers.next(out.deadline if out else None)

    # ----------------------------------------------------------------- API

    def initiate(self, now: float, children: Iterable[str] | None = None) -> None:
        """Start IKE_SA_INIT; the named children (default: all) come up with IKE_AUTH
        (the first) and CREATE_CHILD_SA (the others)."""
        conf = self.conf()
        if not self.is_initiator or self.state is not IkeState.CREATED or self.setup is None:
            raise LocalError("initiate() needs a fresh initiator IKE SA")
        names = list(children) if children is not None else [c.name for c in conf.children]
        self.setup.children = [conf.child(n) for n in names]
        self.setup.ke = dh.new_key_exchange(conf.proposals[0].dh_groups[0])
        self.setup.nonce_i = new_nonce()
        self.move_to(IkeState.INIT_SENT)
        self.send_init(IkeInit(), now)

    def create_child(self, name: str, now: float) -> None:
        self.queue(ChildCreate(self.conf().child(name)), now)

    def rekey_child(self, spi_in: int, now: float, config: ChildConfig | None = None) -> None:
        """Rekey a CHILD_SA with its child's current configuration, or `config`: a changed
        child is replaced this way, make-before-break on both ends (RFC 7296 2.9.2 only
        says the selectors and algorithms SHOULD NOT change)."""
        child = self.child_by_spi_in(spi_in)
        if child is None or child.state is not ChildState.INSTALLED:
            raise LocalError(f"no installed CHILD_SA with inbound SPI {spi_in:08x}")
        child.move_to(ChildState.REKEYING)
        self.queue(ChildRekey(config or self.current_child_config(child.config), child), now)

    def current_child_config(self, old: ChildConfig) -> ChildConfig:
        """The configuration of a running CHILD_SA's child as it is now (changed since?)."""
        try:
            return self.config.child(old.name) if self.config is not None else old
        except KeyError:
            return old

    def delete_child(self, spi_in: int, now: float, reason: str = "deleted") -> None:
        child = self.child_by_spi_in(spi_in)
        if child is None:
            raise LocalError(f"no CHILD_SA with inbound SPI {spi_in:08x}")
        self.queue(ChildDelete(child, reason), now)

    def rekey(self, now: float) -> None:
        """Rekey this IKE SA (RFC 7296 2.18)."""
        if self.state is IkeState.ESTABLISHED and rekey_out(self) is None:
            self.queue(IkeRekey(), now)

    def delete(self, now: float, reason: str = "deleted") -> None:
        """Delete the IKE SA and with it every CHILD_SA."""
        if self.state in (IkeState.CLOSED, IkeState.DELETING):
            return
        if self.state not in (IkeState.ESTABLISHED, IkeState.REKEYED):
            self.close(reason)
            return
        collision = self._held_collision()
        self.window.clear()
        self.move_to(IkeState.DELETING)
        self.down_reason = reason
        self.send_request(IkeDelete(reason, collision=collision), now)

    def addresses_changed(self, local: str | None, additional: Sequence[str],
                          now: float) -> bool:
        """Our address set changed (MOBIKE, RFC 4555): `local` is the address the kernel
        now picks towards the peer (None: none yet), `additional` our other ones. As the
        original initiator with MOBIKE negotiated, the IKE_SA moves there (IkeSaMoved
        once the peer agreed). Returns whether an exchange was queued."""
        return mobike.addresses_changed(self, local, additional, now)

    def use_budget(self, budget: Budget) -> None:
        """Charge this SA's fragment buffers to `budget` (the manager's) from now on."""
        self.budget = budget

    def drop_half_open(self) -> None:
        """Give up a half-open responder SA without a word (the manager makes room for a
        newer one); an established SA is not touched."""
        if not self.is_initiator and self.state in (IkeState.CREATED, IkeState.INIT_DONE):
            self.close("half-open SA dropped", quiet=True)

    def liveness_check(self, now: float) -> None:
        if self.state is IkeState.ESTABLISHED and not self.window.outstanding \
                and not self.window.tasks:
            self.queue(Dpd(), now)

    def note_peer_activity(self, now: float) -> None:
        """The daemon saw inbound ESP from the peer: it is alive, postpone DPD."""
        self._last_peer_activity = now
        self.arm_dpd(now)

    def peer_moved(self, remote: Endpoint) -> bool:
        """The kernel saw the peer's ESP-in-UDP arrive from `remote` (a NAT MAPPING).
        Followed only when the peer is behind a NAT and we are not (as strongSwan does):
        returns whether the SA took the new address."""
        if not self.nat_remote or self.nat_local or self.state is not IkeState.ESTABLISHED:
            return False
        self.move_peer(remote)
        return True

    def move_peer(self, remote: Endpoint) -> None:
        old, self.remote = self.remote, remote
        if old != remote and self.state is IkeState.ESTABLISHED:
            self.emit(PeerMoved(self.id, self.name, old, remote))

    def child_state(self, spi_in: int) -> ChildState | None:
        """The state of our CHILD_SA with this inbound SPI (None: there is none)."""
        child = self.child_by_spi_in(spi_in)
        return child.state if child is not None else None

    def take_spawned(self) -> list[IkeSa]:
        """IKE SAs created by rekey exchanges since the last call (the manager registers
        them by SPI; until adopted they are silent)."""
        spawned, self.spawned = self.spawned, []
        return spawned

    # ----------------------------------------------------------------- timers

    def handle_timer(self, now: float) -> None:
        out, timers = self.window.outstanding, self.timers
        if out is not None and now >= out.deadline:
            self._retransmit(out, now)
        if timers.half_open is not None and now >= timers.half_open:
            timers.half_open = None
            if self.state in SETTING_UP:
                self.fail(FailureReason.HALF_OPEN_TIMEOUT,
                          "no IKE_AUTH before the half-open timeout")
        if timers.rekey is not None and now >= timers.rekey:
            timers.rekey = None
            self.rekey(now)
        if timers.reauth is not None and now >= timers.reauth:
            timers.reauth = None
            if self.state is IkeState.ESTABLISHED:
                self.emit(ReauthDue(self.id, self.name))
        if timers.expire is not None and now >= timers.expire:
            timers.expire = None
            if self.state is IkeState.ESTABLISHED:
                self.delete(now, "expired (over_time)")
        if timers.dpd is not None and now >= timers.dpd:
            timers.dpd = None
            self.liveness_check(now)
            self.arm_dpd(now)
        if timers.child_retries and self.state is IkeState.ESTABLISHED:
            self._run_child_retries(now)
        if timers.redundant is not None and now >= timers.redundant:
            timers.redundant = None
            if self.state is IkeState.ESTABLISHED and self.silent:
                rekeyed.delete_redundant(self, now)  # the peer did not: we do

    def _run_child_retries(self, now: float) -> None:
        timers = self.timers
        due = [r for r in timers.child_retries if r[0] <= now]
        timers.child_retries = [r for r in timers.child_retries if r[0] > now]
        for _, name, child_id in due:
            if child_id is None:
                self.create_child(name, now)
                continue
            child = self.children.get(child_id)
            if child is not None and child.state is ChildState.INSTALLED:
                self.rekey_child(child.spi_in, now)

    def _retransmit(self, out: Outstanding, now: float) -> None:
        retransmit = (self.config or self.candidates[0]).retransmit
        if out.attempt >= retransmit.tries:
            self.fail(FailureReason.PEER_UNREACHABLE,
                      f"no answer to {out.exchange.name} after {out.attempt + 1} transmissions")
            return
        out.attempt += 1
        out.deadline = now + retransmit.delay(out.attempt)
        self.emit_datagrams(out.datagrams)

    def arm_dpd(self, now: float) -> None:
        delay = self.config.dpd_delay if self.config else 0
        if delay and self.state is IkeState.ESTABLISHED:
            self.timers.dpd = max(now, self._last_peer_activity) + delay

    # ----------------------------------------------------------------- sending

    def emit_datagrams(self, datagrams: list[bytes],
                       path: tuple[Endpoint, Endpoint] | None = None) -> None:
        local, remote = path or (self.local, self.remote)
        self._out.extend(Datagram(d, local, remote) for d in datagrams)

    def queue(self, task: Task, now: float) -> None:
        self.window.tasks.append(task)
        self._next_task(now)

    def _next_task(self, now: float) -> None:
        window = self.window
        while window.outstanding is None and window.tasks and self.state in (
                IkeState.ESTABLISHED, IkeState.REKEYED):
            self.send_request(window.tasks.pop(0), now)

    def send_request(self, task: Task, now: float) -> None:
        """Build the task's request and send it as our outstanding one."""
        msg = task.build(self, now)
        if msg is None:
            return
        msg.message_id = self.window.claim_id()
        msg.is_response = False
        self._send(task, msg.exchange, self.encode(msg), msg.message_id, now)

    def send_init(self, task: IkeInit, now: float) -> None:
        """IKE_SA_INIT (again, after COOKIE or INVALID_KE_PAYLOAD): message ID 0."""
        task.build(self, now)
        assert self.setup is not None
        self.window.next_request_id = 1
        self._send(task, ExchangeType.IKE_SA_INIT, [self.setup.init_request], 0, now)

    def start_auth(self, now: float) -> None:
        self.send_request(IkeAuth(), now)

    def _send(self, task: Task, exchange: ExchangeType, datagrams: list[bytes],
              message_id: int, now: float) -> None:
        retransmit = (self.config or self.candidates[0]).retransmit
        self.window.outstanding = Outstanding(message_id, exchange, datagrams, task, 0,
                                              now + retransmit.delay(0))
        self.emit_datagrams(datagrams)

    def message(self, exchange: ExchangeType, protected: list[Payload], *,
                response: bool = False, message_id: int = 0) -> Message:
        return Message(exchange, self.spi_i, self.spi_r, message_id, self.is_initiator,
                       response, [], protected)

    def encode(self, msg: Message) -> list[bytes]:
        if msg.protected is None:
            return [encode(msg)]
        assert self.keys is not None
        cipher = self.keys.cipher_out
        data = encode(msg, cipher)
        conf = self.config or self.candidates[0]
        if (len(data) > conf.fragment_size and conf.fragmentation
                and (self.peer_fragmentation or conf.force_fragmentation)
                and msg.exchange != ExchangeType.IKE_SA_INIT):
            return encode_fragments(msg, cipher, conf.fragment_size)
        return [data]

    def respond(self, request: Message, payloads: list[Payload], *,
                plain: bool = False) -> list[bytes]:
        """Answer the peer's request (and cache the answer for its retransmissions)."""
        msg = self.message(ExchangeType(request.exchange), [], response=True,
                           message_id=request.message_id)
        if plain:
            msg.payloads, msg.protected = payloads, None
        else:
            msg.protected = payloads
        datagrams = self.encode(msg)
        self.window.cached_response = (request.message_id, datagrams)
        self.emit_datagrams(datagrams, self.path)  # RFC 7296 2.11: back where it came from
        return datagrams

    # ----------------------------------------------------------------- receiving

    def receive_datagram(self, data: bytes, local: Endpoint, remote: Endpoint,
                         now: float) -> None:
        """A datagram the manager routed to this SA (IKE header already checked)."""
        try:
            msg = decode(data, self.keys.cipher_in if self.keys else None)
        except IntegrityError:  # RFC 7296 2.21.2: drop silently, unless sent under the
            ike_intermediate.resend_for_old_keys(self, data)  # keys IKE_INTERMEDIATE replaced
            return
        except ProtocolError as exc:
            inbound.answer_malformed(self, data, exc)
            return
        if msg.fragment is not None:
            assembled = inbound.reassemble(self, msg)
            if assembled is None:
                return
            msg = assembled
        inbound.follow_peer(self, remote, local, msg)
        self.path = (local, remote)
        try:
            self.receive_message(msg, data, now)
        finally:
            self.path = None

    def receive_message(self, msg: Message, raw: bytes, now: float) -> None:
        if self.state is IkeState.CLOSED:
            return
        if self.keys is not None and msg.protected is None:
            inbound.plaintext_once_keyed(self, msg, raw)
            return
        self._last_peer_activity = now
        if msg.is_response:
            self._on_response(msg, raw, now)
        else:
            self._on_request(msg, raw, now)
        self.arm_dpd(now)
        self._next_task(now)

    def _on_response(self, msg: Message, raw: bytes, now: float) -> None:
        out = self.window.answered(msg.message_id)
        if out is None:
            return  # late or spoofed: ignore
        if msg.exchange == ExchangeType.IKE_SA_INIT and self.setup is not None:
            self.setup.init_response = raw
        self.process_response(out.task, msg, now)

    def process_response(self, task: Task, msg: Message, now: float) -> None:
        try:
            task.process(self, msg, now)
        except ProtocolError as exc:
            self.fail(FailureReason.PROTOCOL_ERROR, str(exc))

    def resume_auth(self, now: float) -> None:
        """Run the IKE_AUTH step that waited for revocation information (ike_auth.py)."""
        setup = self.setup
        if setup is None or setup.parked is None or self.state is IkeState.CLOSED:
            return
        step, setup.parked = setup.parked, None
        step(now)
        self._next_task(now)

    def _on_request(self, msg: Message, raw: bytes, now: float) -> None:
        window = self.window
        cached = window.cached_answer(msg.message_id)
        if cached is not None:
            self.emit_datagrams(cached, self.path)  # a retransmission: answer from the cache
            return
        if msg.message_id != window.expected_peer_id:
            return  # RFC 7296 2.3: drop requests outside the window
        if msg.exchange == ExchangeType.INFORMATIONAL and self.state is IkeState.INIT_DONE:
            return  # RFC 7296 1.4: only after the initial exchanges (the ID stays unused)
        window.expected_peer_id += 1
        responder = RESPONDERS.get(msg.exchange)
        if responder is None:
            return
        self.answer_request(responder, msg, raw, now)

    def answer_request(self, responder: Callable[[IkeSa, Message, bytes, float], None],
                       msg: Message, raw: bytes, now: float) -> None:
        try:
            responder(self, msg, raw, now)
        except ProtocolError as exc:
            if self.state is not IkeState.CLOSED:
                self.respond(msg, [notify(exc.notify, exc.notify_data)],
                             plain=msg.exchange == ExchangeType.IKE_SA_INIT)
            if self.state in (IkeState.CREATED, IkeState.INIT_DONE):
                self.fail(FailureReason.PROTOCOL_ERROR, str(exc))

    # ----------------------------------------------------------------- CHILD_SAs

    def child_by_spi_in(self, spi: int) -> ChildSa | None:
        return next((c for c in self.children.values() if c.spi_in == spi), None)

    def child_by_spi_out(self, spi: int, protocol: int) -> ChildSa | None:
        return next((c for c in self.children.values()
                     if c.spi_out == spi and c.protocol == protocol), None)

    def remove_child(self, child: ChildSa, reason: str) -> None:
        if self.children.pop(child.child_id, None) is None:
            return
        child.move_to(ChildState.CLOSED)
        self.emit(ChildSaDeleted(
            ike_sa=self.id, connection=self.conf().name, child=child.config.name,
            child_id=child.child_id, protocol=child.protocol, spi_in=child.spi_in,
            spi_out=child.spi_out, reason=reason))

    def _held_collision(self) -> IkeCollision | None:
        out = self.window.outstanding
        task = out.task if out is not None else None
        return task.collision if isinstance(task, (IkeRekey, IkeDelete)) else None

    # ----------------------------------------------------------------- ending

    def fail_from_notify(self, error: NotifyPayload, ours: Iterable[str] = ()) -> None:
        reason = reason_of(error.notify_type)
        self.fail(reason, f"peer answered {notify_name(error.notify_type)}", ours=tuple(ours))

    def fail(self, reason: FailureReason, message: str, ours: tuple[str, ...] = (),
             theirs: tuple[str, ...] = ()) -> None:
        name = self.config.name if self.config else ",".join(c.name for c in self.candidates)
        self.emit(NegotiationFailed(
            ike_sa=self.id, connection=name, reason=reason, message=message, ours=ours,
            theirs=theirs, local=self.local, remote=self.remote))
        self.close(reason.value, quiet=True)

    def close(self, reason: str, quiet: bool = False) -> None:
        if self.state is IkeState.CLOSED:
            return
        was_up = self.state in UP
        collision = self._held_collision()
        if collision is not None:  # the peer's new SA dies with us
            collision[1].close(reason, quiet=True)
            self.spawned.append(collision[1])  # so the manager sees it closed
        for child in list(self.children.values()):
            self.remove_child(child, reason)
        if self.config is not None and self.config.pool is not None and self.virtual_ip \
                and not self.is_initiator and self.successor is None:
            self.config.pool.release(self.lease_owner)
        self.move_to(IkeState.CLOSED)
        inbound.clear_reassembly(self)
        self.down_reason = self.down_reason or reason
        self.window.clear()
        self.setup = None
        self.timers.clear()
        if not self.silent and (was_up or not quiet):
            name = self.config.name if self.config else ""
            self.emit(IkeSaDown(self.id, name, reason))


__all__ = ["NONCE_SIZE", "ChildSa", "ChildState", "Datagram", "IkeSa", "IkeState",
           "TransformType", "random_child_spi"]
