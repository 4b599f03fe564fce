"""One IKE SA and its CHILD_SAs: the sans-I/O state machine of RFC 7296.

Driven by `receive_message()` (the manager routes decoded datagrams here), `handle_timer(now)`
and the API calls (`initiate`, `create_child`, `rekey_child`, `rekey`, `delete_child`,
`delete`, `liveness_check`). Read back with `datagrams_to_send()`, `next_event()` and
`get_timer()`. It never touches a socket, a clock or the kernel: time comes in as `now`
(POSIX seconds), CHILD_SA SPIs from an injected allocator.

Rules kept in one place:
- IKE SA and CHILD_SA states change only along the tables of state.py.
- We keep one request outstanding (window size 1, RFC 7296 2.3); further requests queue.
- A request is retransmitted with exponential back-off; after `Retransmit.tries` the peer is
  unreachable and the SA is closed. A retransmitted request is answered from the cached
  response, never processed twice. Only integrity-checked requests are answered or use up
  a message ID; once keyed, plaintext messages are ignored.
- Rekey collisions (RFC 7296 2.8): for CHILD_SAs and IKE SAs alike, the exchange holding
  the lowest nonce made the redundant SA and its initiator deletes it; the other
  exchange's initiator deletes the old SA. A rekeying IKE SA answers CHILD_SA requests
  with TEMPORARY_FAILURE (and refuses an IKE rekey while one of our CHILD_SA rekeys is
  out); a TEMPORARY_FAILURE is retried after a short random delay, on the successor IKE
  SA if there is one by then. IKE SAs made by a rekey stay silent until adopted.
- Certificates (pubkey auth) are sent as `IkeConfig.send_cert` says (default: when the
  peer sent a CERTREQ); signatures use RFC 7427 when the peer announced
  SIGNATURE_HASH_ALGORITHMS, else the legacy method of the key type.
- Exchanges are small tasks: `build` makes a request, `on_response` processes the answer;
  the responder side is one `_respond_*` method per exchange.
"""

from __future__ import annotations

import hashlib
import ipaddress
import itertools
import os
import struct
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from cryptography import x509
from cryptography.hazmat.primitives import constant_time
from cryptography.hazmat.primitives.serialization import Encoding

from . import auth, dh, proposals, ts
from .algorithms import encr_key_size, integ_key_size
from .certs import TrustStore, id_for_certificate, identity_matches
from .config import AuthMethodName, ChildConfig, Identity, IkeConfig, LocalAuth, Mode, SendCert
from .constants import (
    IKE_HEADER_SIZE,
    PAYLOAD_HEADER_SIZE,
    AuthMethod,
    CertEncoding,
    CfgAttr,
    CfgType,
    ExchangeType,
    NotifyType,
    PayloadType,
    ProtocolId,
    TransformType,
    notify_name,
)
from .crypto import (
    IkeKeys,
    Prf,
    derive_child_keymat,
    derive_ike_keys,
    derive_rekeyed_ike_keys,
    new_sk_cipher,
    split_child_keymat,
)
from .errors import IntegrityError, LocalError, ProtocolError
from .events import (
    ChildSaDeleted,
    ChildSaNegotiated,
    Event,
    FailureReason,
    IkeSaDown,
    IkeSaRekeyed,
    IkeSaUp,
    NegotiationFailed,
    PeerMoved,
    ReauthDue,
    VirtualIpAssigned,
)
from .fragment import Reassembler, encode_fragments
from .limits import Budget, Limits
from .message import Message, decode, encode, parse_header
from .payloads import (
    AuthPayload,
    CertPayload,
    CertReqPayload,
    CfgAttribute,
    CpPayload,
    DeletePayload,
    IdiPayload,
    IdrPayload,
    KePayload,
    NoncePayload,
    NotifyPayload,
    Payload,
    Proposal,
    SaPayload,
    TrafficSelector,
    TsiPayload,
    TsrPayload,
    id_body,
    pull_chain,
)
from .proposals import DhRule, Suite, suite_of
from .sk import SkCipher
from .state import ChildState, IkeState, child_move, ike_move

Endpoint = tuple[str, int]
NONCE_SIZE = 32
MAX_INIT_RETRIES = 3  # COOKIE and INVALID_KE_PAYLOAD round trips before giving up
RETRY_DELAY = 2.0  # after TEMPORARY_FAILURE, plus up to as much again at random
REDUNDANT_TIMEOUT = 30.0  # a rekey collision's loser should have deleted its SA by then
_ids = itertools.count(1)
_DEFAULT_LIMITS = Limits()  # fragment caps of an SA made without a manager's budget


def _retry_delay() -> float:
    """A short random delay before retrying after TEMPORARY_FAILURE (RFC 7296 2.25)."""
    return RETRY_DELAY * (1 + int.from_bytes(os.urandom(2), "big") / 65535)


def random_child_spi() -> int:
    """A random inbound SPI outside the reserved 1..255 range."""
    while True:
        spi = int.from_bytes(os.urandom(4), "big")
        if spi > 255:
            return spi


@dataclass(slots=True)
class ChildSa:
    child_id: int
    config: ChildConfig
    protocol: ProtocolId
    mode: Mode
    spi_in: int
    spi_out: int
    local_ts: tuple[TrafficSelector, ...]
    remote_ts: tuple[TrafficSelector, ...]
    suite: Suite
    created: float
    _state: ChildState = field(default=ChildState.INSTALLED, init=False)
    # Rekey collision bookkeeping (RFC 7296 2.8.1): per side, the exchange's lowest nonce and
    # the CHILD_SA it created.
    rekeys: dict[str, tuple[bytes, ChildSa]] = field(default_factory=dict)

    @property
    def state(self) -> ChildState:
        return self._state

    def move_to(self, new: ChildState) -> None:
        """Change state along `CHILD_TRANSITIONS` (state.py)."""
        self._state = child_move(self._state, new, f"{self.spi_in:08x}")


@dataclass(slots=True)
class _Outstanding:
    message_id: int
    exchange: ExchangeType
    datagrams: list[bytes]
    on_response: Callable[[Message, float], None]
    attempt: int
    deadline: float


@dataclass(slots=True)
class _Task:
    """A queued exchange we initiate: builds its request when its turn comes."""

    name: str
    build: Callable[[float], tuple[Message, Callable[[Message, float], None]] | None]


@dataclass(frozen=True, slots=True)
class Datagram:
    data: bytes
    local: Endpoint
    remote: Endpoint


def nat_hash(spi_i: bytes, spi_r: bytes, endpoint: Endpoint) -> bytes:
    addr = ipaddress.ip_address(endpoint[0]).packed
    return hashlib.sha1(spi_i + spi_r + addr + struct.pack("!H", endpoint[1])).digest()


def _notify(ntype: NotifyType, data: bytes = b"", protocol: int = 0,
            spi: bytes = b"") -> NotifyPayload:
    return NotifyPayload(ntype, protocol, spi, data)


def _tfc_notify(mode: Mode) -> list[Payload]:
    """ESP_TFC_PADDING_NOT_SUPPORTED (RFC 7296 3.10.1) where we cannot take TFC padding:
    in transport mode Linux has no inner header to find where the payload ends."""
    return [_notify(NotifyType.ESP_TFC_PADDING_NOT_SUPPORTED)] if mode is Mode.TRANSPORT \
        else []


def _peer_takes_tfc(msg: Message) -> bool:
    """False when the peer said it does not accept TFC padding on this CHILD_SA."""
    return msg.notify(NotifyType.ESP_TFC_PADDING_NOT_SUPPORTED) is None


def _error_notify(msg: Message) -> NotifyPayload | None:
    return next((n for n in msg.notifies() if n.notify_type < 16384), None)


class IkeSa:
    """An IKE SA as initiator or responder. Create with `initiator()` or `responder()`."""

    # No per-instance dict: a gateway holds one of these per tunnel (memory per IKE_SA).
    __slots__ = ("_alloc_spi", "_auth_child", "_budget", "_cached_response", "_child_retries",
        "_cipher_in", "_cipher_out", "_collision", "_cookie", "_dpd_deadline", "_events",
        "_expected_peer_id", "_expire_deadline", "_half_open_deadline", "_ike_rekey_pending",
        "_init_request", "_init_response", "_init_retries", "_ke", "_keys", "_last_peer_activity",
        "_next_request_id", "_nonce_i", "_nonce_r", "_out", "_outstanding", "_peer_certreq",
        "_peer_certs", "_pending_children", "_prf", "_reassembly", "_reauth_deadline",
        "_redundant_deadline", "_rekey_deadline", "_sent_ike_proposals", "_silent", "_spawned",
        "_state", "_tasks", "candidates", "children", "config", "created", "down_reason",
        "established_at",
        "id", "is_initiator", "local", "local_id", "nat_local", "nat_remote",
        "peer_fragmentation", "peer_hashes", "remote", "remote_id", "spi_i", "spi_r",
        "successor", "suite", "virtual_ip", "wall_offset")

    def __init__(self, *, initiator: bool, local: Endpoint, remote: Endpoint, now: float,
                 config: IkeConfig | None, candidates: Sequence[IkeConfig] = (),
                 spi_allocator: Callable[[], int] = random_child_spi) -> None:
        self.id = next(_ids)
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
        self.nat_local = False
        self.nat_remote = False
        self.peer_fragmentation = False
        self.peer_hashes: set[int] = set()
        self.virtual_ip: str | None = None  # ours (initiator) or the peer's (responder)
        self.down_reason = ""
        self._alloc_spi = spi_allocator
        self._events: deque[Event] = deque()
        self._out: list[Datagram] = []
        self._tasks: deque[_Task] = deque()
        self._outstanding: _Outstanding | None = None
        self._next_request_id = 0
        self._expected_peer_id = 0
        self._cached_response: tuple[int, list[bytes]] | None = None
        self._prf: Prf | None = None
        self._keys: IkeKeys | None = None
        self._cipher_out: SkCipher | None = None
        self._cipher_in: SkCipher | None = None
        self._nonce_i = b""
        self._nonce_r = b""
        self._init_request = b""  # RealMessage1
        self._init_response = b""  # RealMessage2
        self._ke: dh.KeyExchange | None = None
        self._cookie: bytes | None = None
        self._init_retries = 0
        self._sent_ike_proposals: tuple[Proposal, ...] = ()
        self._peer_certs: list[x509.Certificate] = []
        self._peer_certreq = False
        self._last_peer_activity = now
        self._half_open_deadline: float | None = None
        self._rekey_deadline: float | None = None
        self._reauth_deadline: float | None = None  # ReauthDue then
        self._expire_deadline: float | None = None  # the hard lifetime (over_time)
        self._dpd_deadline: float | None = None
        self._pending_children: list[ChildConfig] = []
        self._auth_child: IkeSa._ChildRequest | None = None
        self._budget: Budget | None = None  # the manager's: fragment buffers are charged to it
        self._reassembly: dict[bool, Reassembler] | None = None  # by is_response
        self._ike_rekey_pending = False  # our IKE rekey request is out
        self._collision: tuple[bytes, IkeSa] | None = None  # peer's rekey during ours
        self._spawned: list[IkeSa] = []
        self._silent = False  # a rekey's IKE SA not (yet) adopted: no events
        self._redundant_deadline: float | None = None  # delete it ourselves after this
        # CHILD_SA exchanges to try again (after TEMPORARY_FAILURE): (when, child config,
        # child_id to rekey or None to create)
        self._child_retries: list[tuple[float, str, int | None]] = []

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
        sa._half_open_deadline = now + min(c.half_open_timeout for c in candidates)
        return sa

    @property
    def rekey_deadline(self) -> float | None:
        """When this IKE SA rekeys itself (POSIX time), if it will."""
        return self._rekey_deadline

    @property
    def reauth_deadline(self) -> float | None:
        """When the daemon is asked to reauthenticate it (ReauthDue), if ever."""
        return self._reauth_deadline

    @property
    def expire_deadline(self) -> float | None:
        """Its hard lifetime: deleted then unless rekeyed or reauthenticated."""
        return self._expire_deadline

    @property
    def our_spi(self) -> bytes:
        return self.spi_i if self.is_initiator else self.spi_r

    @property
    def name(self) -> str:
        return self.config.name if self.config else "?"

    def _conf(self) -> IkeConfig:
        if self.config is None:
            raise LocalError("IKE SA has no connection yet")
        return self.config

    # ----------------------------------------------------------------- outputs

    def datagrams_to_send(self) -> list[Datagram]:
        out, self._out = self._out, []
        return out

    def next_event(self) -> Event | None:
        return self._events.popleft() if self._events else None

    def get_timer(self) -> float | None:
        deadlines = [d for d in (
            self._outstanding.deadline if self._outstanding else None,
            self._half_open_deadline, self._rekey_deadline, self._dpd_deadline,
            self._reauth_deadline, self._expire_deadline,
            min(r[0] for r in self._child_retries) if self._child_retries else None,
            self._redundant_deadline,
        ) if d is not None]
        return min(deadlines) if deadlines else None

    @property
    def state(self) -> IkeState:
        return self._state

    def _set_state(self, new: IkeState) -> None:
        """Change state along `TRANSITIONS` (state.py)."""
        self._state = ike_move(self._state, new, self.id)

    # ----------------------------------------------------------------- API

    def initiate(self, now: float, children: Iterable[str] | None = None) -> None:
        """Start IKE_SA_INIT; the named children (default: all) come up with IKE_AUTH
        (the first) and CREATE_CHILD_SA (the others)."""
        conf = self._conf()
        if not self.is_initiator or self.state is not IkeState.CREATED:
            raise LocalError("initiate() needs a fresh initiator IKE SA")
        names = list(children) if children is not None else [c.name for c in conf.children]
        self._pending_children = [conf.child(n) for n in names]
        group = conf.proposals[0].dh_groups[0]
        self._ke = dh.new_key_exchange(group)
        self._nonce_i = os.urandom(NONCE_SIZE)
        self._set_state(IkeState.INIT_SENT)
        self._send_init_request(now)

    def create_child(self, name: str, now: float) -> None:
        child = self._conf().child(name)
        self._queue(_Task(f"create {name}", lambda t: self._build_create_child(child, None)),
                    now)

    def rekey_child(self, spi_in: int, now: float, config: ChildConfig | None = None) -> None:
        """Rekey a CHILD_SA with its child's current configuration, or `config`: a changed
        child is replaced this way, make-before-break on both ends (RFC 7296 2.9.2 only
        says the selectors and algorithms SHOULD NOT change)."""
        child = self._child_by_spi_in(spi_in)
        if child is None or child.state is not ChildState.INSTALLED:
            raise LocalError(f"no installed CHILD_SA with inbound SPI {spi_in:08x}")
        child.move_to(ChildState.REKEYING)
        new = config or self._current_child_config(child.config)
        self._queue(_Task(f"rekey {spi_in:08x}",
                          lambda t: self._build_create_child(new, child)), now)

    def _current_child_config(self, old: ChildConfig) -> ChildConfig:
        """The configuration of a running CHILD_SA's child as it is now (changed since?)."""
        try:
            return self.config.child(old.name) if self.config is not None else old
        except KeyError:
            return old

    def delete_child(self, spi_in: int, now: float, reason: str = "deleted") -> None:
        child = self._child_by_spi_in(spi_in)
        if child is None:
            raise LocalError(f"no CHILD_SA with inbound SPI {spi_in:08x}")
        self._queue(_Task(f"delete {spi_in:08x}",
                          lambda t: self._build_delete_child(child, reason)), now)

    def rekey(self, now: float) -> None:
        """Rekey this IKE SA (RFC 7296 2.18)."""
        if self.state is IkeState.ESTABLISHED and not self._ike_rekey_pending:
            self._queue(_Task("rekey IKE", self._build_rekey_ike), now)

    def delete(self, now: float, reason: str = "deleted") -> None:
        """Delete the IKE SA and with it every CHILD_SA."""
        if self.state in (IkeState.CLOSED, IkeState.DELETING):
            return
        if self.state not in (IkeState.ESTABLISHED, IkeState.REKEYED):
            self._close(reason)
            return
        self._tasks.clear()
        self._outstanding = None
        self._set_state(IkeState.DELETING)
        self.down_reason = reason
        self._start_request(ExchangeType.INFORMATIONAL, [DeletePayload(ProtocolId.IKE, ())],
                            lambda m, t: self._close(reason), now)

    def use_budget(self, budget: Budget) -> None:
        """Charge this SA's fragment buffers to `budget` (the manager's) from now on."""
        self._budget = budget

    def drop_half_open(self) -> None:
        """Give up a half-open responder SA without a word (the manager makes room for a
        newer one); an established SA is not touched."""
        if not self.is_initiator and self.state in (IkeState.CREATED, IkeState.INIT_DONE):
            self._close("half-open SA dropped", quiet=True)

    def liveness_check(self, now: float) -> None:
        if self.state is IkeState.ESTABLISHED and not self._outstanding and not self._tasks:
            self._queue(_Task("liveness", lambda t: (self._empty_informational(), self._noop)),
                        now)

    def note_peer_activity(self, now: float) -> None:
        """The daemon saw inbound ESP from the peer: it is alive, postpone DPD."""
        self._last_peer_activity = now
        self._arm_dpd(now)

    # ----------------------------------------------------------------- timers

    def handle_timer(self, now: float) -> None:
        out = self._outstanding
        if out is not None and now >= out.deadline:
            self._retransmit(out, now)
        if self._half_open_deadline is not None and now >= self._half_open_deadline:
            self._half_open_deadline = None
            if self.state not in (IkeState.ESTABLISHED, IkeState.REKEYED,
                                  IkeState.DELETING, IkeState.CLOSED):
                self._fail(FailureReason.HALF_OPEN_TIMEOUT, "no IKE_AUTH before the "
                           "half-open timeout")
        if self._rekey_deadline is not None and now >= self._rekey_deadline:
            self._rekey_deadline = None
            self.rekey(now)
        if self._reauth_deadline is not None and now >= self._reauth_deadline:
            self._reauth_deadline = None
            if self.state is IkeState.ESTABLISHED:
                self._events.append(ReauthDue(self.id, self.name))
        if self._expire_deadline is not None and now >= self._expire_deadline:
            self._expire_deadline = None
            if self.state is IkeState.ESTABLISHED:
                self.delete(now, "expired (over_time)")
        if self._dpd_deadline is not None and now >= self._dpd_deadline:
            self._dpd_deadline = None
            self.liveness_check(now)
            self._arm_dpd(now)
        if self._child_retries and self.state is IkeState.ESTABLISHED:
            self._run_child_retries(now)
        if self._redundant_deadline is not None and now >= self._redundant_deadline:
            self._redundant_deadline = None
            if self.state is IkeState.ESTABLISHED and self._silent:
                self._delete_redundant(now)  # the peer did not: we do

    def _arm_lifetime(self, now: float, reauth_at: float | None = None) -> None:
        """Reauthentication (strongSwan's reauth_time, up to 10% earlier as its rand_time)
        and the hard lifetime: over_time after the later of rekey and reauth (default
        10% of the longer of the two), unless a rekey or reauthentication replaced it."""
        conf = self._conf()
        if reauth_at is None and conf.reauth_time:
            jitter = int.from_bytes(os.urandom(2), "big") / 65535 * conf.reauth_time * 0.1
            reauth_at = now + conf.reauth_time - jitter
        self._reauth_deadline = reauth_at
        due = [d for d in (self._rekey_deadline, reauth_at) if d is not None]
        over = conf.over_time or 0.1 * max(conf.rekey_time, conf.reauth_time)
        self._expire_deadline = max(due) + over if due else None

    def _run_child_retries(self, now: float) -> None:
        due = [r for r in self._child_retries if r[0] <= now]
        self._child_retries = [r for r in self._child_retries if r[0] > now]
        for _, name, child_id in due:
            if child_id is None:
                self.create_child(name, now)
                continue
            child = self.children.get(child_id)
            if child is not None and child.state is ChildState.INSTALLED:
                self.rekey_child(child.spi_in, now)

    def _retransmit(self, out: _Outstanding, now: float) -> None:
        retransmit = (self.config or self.candidates[0]).retransmit
        if out.attempt >= retransmit.tries:
            self._outstanding = None
            self._fail(FailureReason.PEER_UNREACHABLE,
                       f"no answer to {out.exchange.name} after {out.attempt + 1} transmissions")
            return
        out.attempt += 1
        out.deadline = now + retransmit.delay(out.attempt)
        self._emit_datagrams(out.datagrams)

    def _arm_dpd(self, now: float) -> None:
        delay = self.config.dpd_delay if self.config else 0
        if delay and self.state is IkeState.ESTABLISHED:
            self._dpd_deadline = max(now, self._last_peer_activity) + delay

    # ----------------------------------------------------------------- sending

    def _emit_datagrams(self, datagrams: list[bytes]) -> None:
        self._out.extend(Datagram(d, self.local, self.remote) for d in datagrams)

    def _queue(self, task: _Task, now: float) -> None:
        self._tasks.append(task)
        self._next_task(now)

    def _next_task(self, now: float) -> None:
        while (self._outstanding is None and self._tasks
               and self.state in (IkeState.ESTABLISHED, IkeState.REKEYED)):
            task = self._tasks.popleft()
            built = task.build(now)
            if built is not None:
                message, on_response = built
                self._start_request(message.exchange, message.protected or [], on_response,
                                    now, message)

    def _start_request(self, exchange: ExchangeType, payloads: list[Payload],
                       on_response: Callable[[Message, float], None], now: float,
                       message: Message | None = None) -> None:
        msg = message or self._message(exchange, payloads)
        msg.message_id = self._next_request_id
        msg.is_response = False
        self._next_request_id += 1
        datagrams = self._encode(msg)
        retransmit = (self.config or self.candidates[0]).retransmit
        self._outstanding = _Outstanding(msg.message_id, exchange, datagrams, on_response, 0,
                                         now + retransmit.delay(0))
        self._emit_datagrams(datagrams)

    def _message(self, exchange: ExchangeType, protected: list[Payload], *,
                 response: bool = False, message_id: int = 0) -> Message:
        return Message(exchange, self.spi_i, self.spi_r, message_id, self.is_initiator,
                       response, [], protected)

    def _encode(self, msg: Message) -> list[bytes]:
        if msg.protected is None:
            return [encode(msg)]
        cipher = self._cipher_out
        assert cipher is not None
        data = encode(msg, cipher)
        conf = self.config or self.candidates[0]
        if (len(data) > conf.fragment_size and conf.fragmentation
                and (self.peer_fragmentation or conf.force_fragmentation)
                and msg.exchange != ExchangeType.IKE_SA_INIT):
            return encode_fragments(msg, cipher, conf.fragment_size)
        return [data]

    def _respond(self, request: Message, payloads: list[Payload], *,
                 plain: bool = False) -> None:
        msg = self._message(ExchangeType(request.exchange), [], response=True,
                            message_id=request.message_id)
        if plain:
            msg.payloads, msg.protected = payloads, None
        else:
            msg.protected = payloads
        datagrams = self._encode(msg)
        self._cached_response = (request.message_id, datagrams)
        self._emit_datagrams(datagrams)

    # ----------------------------------------------------------------- receiving

    def receive_datagram(self, data: bytes, local: Endpoint, remote: Endpoint,
                         now: float) -> None:
        """A datagram the manager routed to this SA (IKE header already checked)."""
        try:
            msg = decode(data, self._cipher_in if self._cipher_in else None)
        except IntegrityError:
            return  # RFC 7296 2.21.2: drop silently
        except ProtocolError as exc:
            self._on_bad_message(data, exc, now)
            return
        if msg.fragment is not None:
            assembled = self._reassemble(msg)
            if assembled is None:
                return
            msg = assembled
        self._update_remote(remote, local, msg)
        self.receive_message(msg, data, now)

    def _reassemble(self, msg: Message) -> Message | None:
        """Add an (integrity-checked) fragment; the whole message once complete.

        Only the message the window expects is reassembled (RFC 7383 2.6): the response to
        our outstanding request, or the peer's next request; fragment 1 of a request
        already answered resends the answer (2.6.1). At most one buffer per direction,
        within the per-SA caps; anything else is dropped."""
        frag = msg.fragment
        assert frag is not None
        if not self._fragment_in_window(msg, frag.number):
            return None
        store = self._reassembly if self._reassembly is not None else {}
        self._reassembly = store
        reassembler = store.get(msg.is_response)
        if reassembler is None:
            limits = self._budget.limits if self._budget is not None else _DEFAULT_LIMITS
            reassembler = store[msg.is_response] = Reassembler(
                limits.fragments_per_sa, limits.fragment_bytes_per_sa, self._budget)
        other = store.get(not msg.is_response)
        if other is not None and other.held_bytes + reassembler.held_bytes \
                + len(frag.plaintext) > reassembler.max_bytes:
            return None  # both directions together stay within the per-SA cap
        try:
            full = reassembler.add(msg)
        except ProtocolError:
            full = None
        if reassembler.pending_message_id is None:
            del store[msg.is_response]
            if not store:
                self._reassembly = None
        return full

    def _fragment_in_window(self, msg: Message, number: int) -> bool:
        if self.state is IkeState.CLOSED:
            return False
        if msg.is_response:
            return self._outstanding is not None \
                and msg.message_id == self._outstanding.message_id
        cached = self._cached_response
        if cached is not None and msg.message_id == cached[0]:
            # (an IKE_SA_INIT answer is never fragmented: an SKF cannot ask for it again)
            if number == 1 and cached[1][0] is not self._init_response:
                self._emit_datagrams(cached[1])
            return False
        return msg.message_id == self._expected_peer_id

    def _clear_reassembly(self) -> None:
        for reassembler in (self._reassembly or {}).values():
            reassembler.clear()
        self._reassembly = None

    def _update_remote(self, remote: Endpoint, local: Endpoint, msg: Message) -> None:
        # Follow the peer's port when NAT moves it (RFC 7296 2.23) once the SA is keyed.
        if self._cipher_in is not None and msg.protected is not None and remote != self.remote \
                and (self.nat_remote or remote[0] == self.remote[0]):
            self.local = local
            self._move_peer(remote)

    def peer_moved(self, remote: Endpoint) -> bool:
        """The kernel saw the peer's ESP-in-UDP arrive from `remote` (a NAT MAPPING).
        Followed only when the peer is behind a NAT and we are not (as strongSwan does):
        returns whether the SA took the new address."""
        if not self.nat_remote or self.nat_local or self.state is not IkeState.ESTABLISHED:
            return False
        self._move_peer(remote)
        return True

    def _move_peer(self, remote: Endpoint) -> None:
        old, self.remote = self.remote, remote
        if old != remote and self.state is IkeState.ESTABLISHED:
            self._events.append(PeerMoved(self.id, self.name, old, remote))

    def _on_bad_message(self, data: bytes, exc: ProtocolError, now: float) -> None:
        """Answer a malformed request with the notify the RFC asks for; ignore the rest.
        Only a request whose SK payload verifies is answered (and uses up its message ID):
        anything else could be forged by anyone."""
        if self._cipher_in is None or self.state is IkeState.CLOSED:
            return
        try:
            header = parse_header(data)
        except ProtocolError:
            return
        if header.is_response or header.message_id != self._expected_peer_id \
                or not self._authentic(data, header.next_payload):
            return
        self._expected_peer_id += 1
        request = Message(ExchangeType(header.exchange) if header.exchange in
                          ExchangeType._value2member_map_ else ExchangeType.INFORMATIONAL,
                          header.spi_i, header.spi_r, header.message_id,
                          header.is_initiator, False, [], [])
        self._respond(request, [_notify(exc.notify, exc.notify_data)])

    def _authentic(self, data: bytes, first_payload: int) -> bool:
        """Does the datagram's SK payload pass our integrity check?"""
        cipher = self._cipher_in
        try:
            _, enc_type, at = pull_chain(data, IKE_HEADER_SIZE, len(data), first_payload,
                                         stop_at_encrypted=True)
            body_at = at + PAYLOAD_HEADER_SIZE
            size = len(data) - body_at - (cipher.iv_size + cipher.icv_size if cipher else 0)
            if cipher is None or enc_type != PayloadType.SK or size <= 0 \
                    or size % cipher.block_size:
                return False
            cipher.open(data[:body_at], data[body_at:])
        except ProtocolError:
            return False
        return True

    def receive_message(self, msg: Message, raw: bytes, now: float) -> None:
        if self.state is IkeState.CLOSED:
            return
        if self._cipher_in is not None and msg.protected is None:
            # Once keyed, every message is protected (RFC 7296 3.14): a plaintext one is
            # a retransmitted IKE_SA_INIT request, or forged.
            cached = self._cached_response
            if msg.exchange == ExchangeType.IKE_SA_INIT and not msg.is_response \
                    and self.state is IkeState.INIT_DONE and cached and cached[0] == 0 \
                    and raw == self._init_request:
                self._emit_datagrams(cached[1])
            return
        self._last_peer_activity = now
        if msg.is_response:
            self._on_response(msg, raw, now)
        else:
            self._on_request(msg, raw, now)
        self._arm_dpd(now)
        self._next_task(now)

    def _on_response(self, msg: Message, raw: bytes, now: float) -> None:
        out = self._outstanding
        if out is None or msg.message_id != out.message_id:
            return  # late or spoofed: ignore
        self._outstanding = None
        if msg.exchange == ExchangeType.IKE_SA_INIT:
            self._init_response = raw
        try:
            out.on_response(msg, now)
        except ProtocolError as exc:
            self._fail(FailureReason.PROTOCOL_ERROR, str(exc))

    def _on_request(self, msg: Message, raw: bytes, now: float) -> None:
        cached = self._cached_response
        if cached is not None and msg.message_id == cached[0]:
            self._emit_datagrams(cached[1])  # a retransmission: answer from the cache
            return
        if msg.message_id != self._expected_peer_id:
            return  # RFC 7296 2.3: drop requests outside the window
        if msg.exchange == ExchangeType.INFORMATIONAL and self.state is IkeState.INIT_DONE:
            return  # RFC 7296 1.4: only after the initial exchanges (the ID stays unused)
        self._expected_peer_id += 1
        handler = self._REQUEST_HANDLERS.get(msg.exchange)
        if handler is None:
            return
        try:
            handler(self, msg, raw, now)
        except ProtocolError as exc:
            if self.state is not IkeState.CLOSED:
                self._respond(msg, [_notify(exc.notify, exc.notify_data)],
                              plain=msg.exchange == ExchangeType.IKE_SA_INIT)
            if self.state in (IkeState.CREATED, IkeState.INIT_DONE):
                self._fail(FailureReason.PROTOCOL_ERROR, str(exc))

    # ----------------------------------------------------------------- IKE_SA_INIT

    def _init_notifies(self) -> list[Payload]:
        conf = self.config or self.candidates[0]
        spi_r = self.spi_r if not self.is_initiator else b"\0" * 8
        src_hash = nat_hash(self.spi_i, spi_r, self.local)
        if conf.force_encap:
            src_hash = os.urandom(20)  # make the peer see a NAT: UDP-encapsulate ESP
        notifies: list[Payload] = [
            _notify(NotifyType.NAT_DETECTION_SOURCE_IP, src_hash),
            _notify(NotifyType.NAT_DETECTION_DESTINATION_IP,
                    nat_hash(self.spi_i, spi_r, self.remote)),
        ]
        if conf.fragmentation:
            notifies.append(_notify(NotifyType.IKEV2_FRAGMENTATION_SUPPORTED))
        hashes = b"".join(struct.pack("!H", h) for h in sorted(auth.SUPPORTED_HASHES))
        if hashes:
            notifies.append(_notify(NotifyType.SIGNATURE_HASH_ALGORITHMS, hashes))
        return notifies

    def _send_init_request(self, now: float) -> None:
        conf = self._conf()
        assert self._ke is not None
        self._sent_ike_proposals = tuple(
            spec.to_wire(i + 1, b"") for i, spec in enumerate(conf.proposals))
        payloads: list[Payload] = []
        if self._cookie is not None:
            payloads.append(_notify(NotifyType.COOKIE, self._cookie))
        payloads += [SaPayload(self._sent_ike_proposals),
                     KePayload(self._ke.group, self._ke.public_key),
                     NoncePayload(self._nonce_i), *self._init_notifies()]
        msg = Message(ExchangeType.IKE_SA_INIT, self.spi_i, b"\0" * 8, 0, True, False, payloads)
        self._next_request_id = 0
        self._init_request = encode(msg)
        self._next_request_id = 1
        retransmit = conf.retransmit
        self._outstanding = _Outstanding(0, ExchangeType.IKE_SA_INIT, [self._init_request],
                                         self._on_init_response, 0, now + retransmit.delay(0))
        self._emit_datagrams([self._init_request])

    def _on_init_response(self, msg: Message, now: float) -> None:
        cookie = msg.notify(NotifyType.COOKIE)
        invalid_ke = msg.notify(NotifyType.INVALID_KE_PAYLOAD)
        if cookie is not None or invalid_ke is not None:
            self._retry_init(cookie, invalid_ke, now)
            return
        error = _error_notify(msg)
        if error is not None:
            self._fail_from_notify(error, ours=proposals.describe_offer(
                self._sent_ike_proposals))
            return
        sa, ke, nonce = msg.find(SaPayload), msg.find(KePayload), msg.find(NoncePayload)
        if sa is None or ke is None or nonce is None or len(sa.proposals) != 1:
            raise ProtocolError("IKE_SA_INIT response lacks SA, KE or Nonce")
        chosen = sa.proposals[0]
        if not proposals.accept_chosen(self._sent_ike_proposals, chosen):
            raise ProtocolError("responder chose a proposal we did not offer",
                                notify=NotifyType.NO_PROPOSAL_CHOSEN)
        suite = suite_of(chosen)
        assert self._ke is not None
        if suite.dh != self._ke.group or ke.group != self._ke.group:
            raise ProtocolError("responder's key exchange group does not match")
        self.spi_r = msg.spi_r
        self._nonce_r = nonce.data
        self._read_init_notifies(msg)
        self._derive_ike_keys(suite, self._ke.shared_secret(ke.data))
        self._peer_certreq = msg.find(CertReqPayload) is not None
        self._set_state(IkeState.AUTH_SENT)
        self._send_auth_request(now)

    def _retry_init(self, cookie: NotifyPayload | None, invalid_ke: NotifyPayload | None,
                    now: float) -> None:
        conf = self._conf()
        self._init_retries += 1
        if self._init_retries > MAX_INIT_RETRIES:
            self._fail(FailureReason.PROTOCOL_ERROR, "too many IKE_SA_INIT retries")
            return
        if cookie is not None:
            self._cookie = cookie.data
        if invalid_ke is not None:
            group = int.from_bytes(invalid_ke.data[:2], "big") if len(invalid_ke.data) >= 2 \
                else 0
            offered = {g for spec in conf.proposals for g in spec.dh_groups}
            if group not in offered:
                self._fail(FailureReason.INVALID_KE_PAYLOAD,
                           f"peer wants key exchange group {group}, which we do not offer",
                           ours=tuple(str(g) for g in sorted(offered)), theirs=(str(group),))
                return
            self._ke = dh.new_key_exchange(group)
            self._cookie = None  # RFC 7296 2.6: a new KE invalidates the cookie exchange
        self._set_state(IkeState.INIT_SENT)
        self._send_init_request(now)

    def _read_init_notifies(self, msg: Message) -> None:
        src = msg.find_all(NotifyPayload)
        src_hashes = [n.data for n in src if n.notify_type == NotifyType.NAT_DETECTION_SOURCE_IP]
        dst_hashes = [n.data for n in src
                      if n.notify_type == NotifyType.NAT_DETECTION_DESTINATION_IP]
        if src_hashes:
            self.nat_remote = nat_hash(self.spi_i, msg.spi_r, self.remote) not in src_hashes
        if dst_hashes:
            self.nat_local = nat_hash(self.spi_i, msg.spi_r, self.local) not in dst_hashes
        if (self.config or self.candidates[0]).force_encap and src_hashes:
            self.nat_local = True
        self.peer_fragmentation = msg.notify(NotifyType.IKEV2_FRAGMENTATION_SUPPORTED) \
            is not None
        hashes = msg.notify(NotifyType.SIGNATURE_HASH_ALGORITHMS)
        if hashes is not None:
            data = hashes.data[: len(hashes.data) // 2 * 2]
            self.peer_hashes = {v for (v,) in struct.iter_unpack("!H", data)}
        if self.nat_local or self.nat_remote:
            self._switch_to_nat_t()

    def _switch_to_nat_t(self) -> None:
        """RFC 7296 2.23: after a NAT is detected, IKE moves to port 4500."""
        if self.is_initiator and self.remote[1] == 500:
            self.remote = (self.remote[0], 4500)
            self.local = (self.local[0], 4500)

    def _derive_ike_keys(self, suite: Suite, shared: bytes) -> None:
        assert suite.prf is not None and suite.encr is not None
        self.suite = suite
        self._prf = Prf(suite.prf)
        encr_size = encr_key_size(suite.encr, suite.encr_bits)
        integ_size = integ_key_size(suite.integ)
        self._keys = derive_ike_keys(self._prf, shared, self._nonce_i, self._nonce_r,
                                     self.spi_i, self.spi_r, encr_size, integ_size)
        self._install_ciphers(self._keys)

    def _install_ciphers(self, keys: IkeKeys) -> None:
        suite = self.suite
        assert suite is not None and suite.encr is not None
        enc_i = new_sk_cipher(suite.encr, suite.encr_bits, suite.integ, keys.sk_ei, keys.sk_ai)
        enc_r = new_sk_cipher(suite.encr, suite.encr_bits, suite.integ, keys.sk_er, keys.sk_ar)
        self._cipher_out, self._cipher_in = (enc_i, enc_r) if self.is_initiator else \
            (enc_r, enc_i)

    def _respond_init(self, msg: Message, raw: bytes, now: float) -> None:
        if self.state is not IkeState.CREATED or msg.message_id != 0:
            raise ProtocolError("unexpected IKE_SA_INIT", notify=NotifyType.INVALID_SYNTAX)
        sa, ke, nonce = msg.find(SaPayload), msg.find(KePayload), msg.find(NoncePayload)
        if sa is None or ke is None or nonce is None:
            raise ProtocolError("IKE_SA_INIT request lacks SA, KE or Nonce")
        self.spi_i = msg.spi_i
        self._init_request = raw
        ours = [spec for conf in self.candidates for spec in conf.proposals]
        # RFC 7296 3.3.1: an IKE_SA_INIT proposal carries no SPI (it is in the header); one
        # that does is skipped, and the SPI is never echoed.
        chosen = proposals.select(ours, sa.proposals, spi_size=0)
        if chosen is None:
            self._respond(msg, [_notify(NotifyType.NO_PROPOSAL_CHOSEN)], plain=True)
            self._fail(FailureReason.NO_PROPOSAL_CHOSEN, "no common IKE proposal",
                       ours=tuple(str(s) for s in ours),
                       theirs=tuple(proposals.describe_offer(sa.proposals)))
            return
        suite = suite_of(chosen)
        if suite.dh != ke.group:
            assert suite.dh is not None
            self._respond(msg, [_notify(NotifyType.INVALID_KE_PAYLOAD,
                                        struct.pack("!H", suite.dh))], plain=True)
            self._close(FailureReason.INVALID_KE_PAYLOAD.value, quiet=True)
            return
        self._ke = dh.new_key_exchange(suite.dh)
        shared = self._ke.shared_secret(ke.data)
        self._nonce_i, self._nonce_r = nonce.data, os.urandom(NONCE_SIZE)
        self._read_init_notifies(msg)
        self._derive_ike_keys(suite, shared)
        payloads: list[Payload] = [SaPayload((chosen,)), KePayload(suite.dh, self._ke.public_key),
                                   NoncePayload(self._nonce_r), *self._init_notifies()]
        certreq = self._certreq()
        if certreq is not None:
            payloads.append(certreq)
        self._respond(msg, payloads, plain=True)
        assert self._cached_response is not None
        self._init_response = self._cached_response[1][0]
        self._set_state(IkeState.INIT_DONE)

    def _certreq(self) -> CertReqPayload | None:
        for conf in self.candidates if self.config is None else (self.config,):
            trust = conf.remote_auth.trust
            if conf.send_certreq and trust is not None:
                return CertReqPayload(CertEncoding.X509_SIGNATURE, trust.certreq_data())
        return None

    # ----------------------------------------------------------------- IKE_AUTH

    def _local_identity(self, conf: IkeConfig) -> Identity:
        if conf.local_id is not None:
            return conf.local_id
        cert = conf.local_auth.certificate
        if cert is not None and conf.local_auth.method is AuthMethodName.PUBKEY:
            id_type, data = id_for_certificate(cert)
            return Identity(id_type, data, cert.subject.rfc4514_string())
        return Identity.from_address(self.local[0])

    def _auth_payloads(self, conf: IkeConfig, id_payload: IdiPayload | IdrPayload,
                       octets_prefix: bytes, peer_nonce: bytes) -> list[Payload]:
        """CERT and AUTH payloads proving our identity."""
        assert self._prf is not None and self._keys is not None
        sk_p = self._keys.sk_pi if self.is_initiator else self._keys.sk_pr
        octets = auth.signed_octets(octets_prefix, peer_nonce, self._prf, sk_p,
                                    id_body(id_payload))
        local: LocalAuth = conf.local_auth
        if local.method is AuthMethodName.PSK:
            if local.psk is None:
                raise LocalError(f"connection {conf.name}: PSK authentication without a PSK")
            return [AuthPayload(AuthMethod.PSK, auth.psk_auth(self._prf, local.psk, octets))]
        if local.private_key is None or local.certificate is None:
            raise LocalError(f"connection {conf.name}: pubkey auth needs a key and certificate")
        # RFC 7427 4: a peer without SIGNATURE_HASH_ALGORITHMS gets the legacy method of
        # the key type (RSA_SIG, ECDSA_SHA*_P*); auth.sign does that for an empty set.
        method, data = auth.sign(local.private_key, octets, set(self.peer_hashes))
        if not self._sends_cert(conf):
            return [AuthPayload(method, data)]
        certs: list[Payload] = [CertPayload(CertEncoding.X509_SIGNATURE,
                                            local.certificate.public_bytes(Encoding.DER))]
        certs += [CertPayload(CertEncoding.X509_SIGNATURE, c.public_bytes(Encoding.DER))
                  for c in local.intermediates]
        return [*certs, AuthPayload(method, data)]

    def _sends_cert(self, conf: IkeConfig) -> bool:
        """Our CERT payloads go out always, never, or (default) when the peer sent a
        CERTREQ, whichever CAs it named (as strongSwan's send_cert = ifasked)."""
        if conf.send_cert is SendCert.IFASKED:
            return self._peer_certreq
        return conf.send_cert is SendCert.ALWAYS

    def _send_auth_request(self, now: float) -> None:
        conf = self._conf()
        self.local_id = self._local_identity(conf)
        idi = IdiPayload(self.local_id.id_type, self.local_id.data)
        payloads: list[Payload] = [idi]
        auth_payloads = self._auth_payloads(conf, idi, self._init_request, self._nonce_r)
        payloads += [p for p in auth_payloads if isinstance(p, CertPayload)]
        certreq = self._certreq()
        if certreq is not None:
            payloads.append(certreq)
        if conf.initial_contact:
            payloads.append(_notify(NotifyType.INITIAL_CONTACT))
        if conf.remote_id is not None:
            payloads.append(IdrPayload(conf.remote_id.id_type, conf.remote_id.data))
        payloads += [p for p in auth_payloads if isinstance(p, AuthPayload)]
        if conf.request_virtual_ip:
            attr = CfgAttr.INTERNAL_IP6_ADDRESS if ":" in self.local[0] else \
                CfgAttr.INTERNAL_IP4_ADDRESS
            payloads.append(CpPayload(CfgType.REQUEST, (CfgAttribute(attr, b""),)))
        child_payloads: list[Payload] = []
        if self._pending_children:
            child = self._pending_children.pop(0)
            self._auth_child = self._new_child_request(child, None, create_child_sa=False)
            child_payloads = self._auth_child.payloads
        else:
            self._auth_child = None
        self._start_request(ExchangeType.IKE_AUTH, payloads + child_payloads,
                            self._on_auth_response, now)

    def _on_auth_response(self, msg: Message, now: float) -> None:
        conf = self._conf()
        idr = msg.find(IdrPayload)
        auth_payload = msg.find(AuthPayload)
        if idr is None or auth_payload is None:
            error = _error_notify(msg)
            if error is not None:
                self._fail_from_notify(error)
                return
            raise ProtocolError("IKE_AUTH response lacks IDr or AUTH")
        remote_id = Identity(idr.id_type, idr.data)
        if conf.remote_id is not None and remote_id != conf.remote_id:
            self._reject_responder(f"peer identity {remote_id} is not the configured "
                                   f"{conf.remote_id}", ours=(str(conf.remote_id),),
                                   theirs=(str(remote_id),))
            return
        why = self._verify_peer_auth(conf, msg, idr, auth_payload, self._init_response,
                                     self._nonce_i)
        if why is not None:
            self._reject_responder(why)
            return
        self.remote_id = remote_id
        self._read_virtual_ip(msg)  # before IkeSaUp, which carries it
        self._established(now)
        pending = self._auth_child
        self._auth_child = None
        if pending is not None:
            self._finish_child_request(pending, msg, now)
        for child in self._pending_children:
            self.create_child(child.name, now)
        self._pending_children = []

    def _reject_responder(self, why: str, ours: tuple[str, ...] = (),
                          theirs: tuple[str, ...] = ()) -> None:
        """The responder's AUTH failed: tell it in a new INFORMATIONAL request (RFC 7296
        2.21.2), sent once and not waited for, then give up the IKE SA."""
        notify = self._message(ExchangeType.INFORMATIONAL,
                               [_notify(NotifyType.AUTHENTICATION_FAILED)])
        notify.message_id = self._next_request_id
        self._next_request_id += 1
        self._emit_datagrams(self._encode(notify))
        self._fail(FailureReason.AUTHENTICATION_FAILED, why, ours=ours, theirs=theirs)

    def _verify_peer_auth(self, conf: IkeConfig, msg: Message, id_payload: IdiPayload |
                          IdrPayload, auth_payload: AuthPayload, octets_prefix: bytes,
                          our_nonce: bytes) -> str | None:
        """Check the peer's AUTH; None when good, else why not."""
        assert self._prf is not None and self._keys is not None
        sk_p = self._keys.sk_pr if self.is_initiator else self._keys.sk_pi
        octets = auth.signed_octets(octets_prefix, our_nonce, self._prf, sk_p,
                                    id_body(id_payload))
        remote = conf.remote_auth
        if remote.method is AuthMethodName.PSK:
            if auth_payload.method != AuthMethod.PSK:
                return f"peer used auth method {auth_payload.method}, we require PSK"
            if remote.psk is None:
                return "no PSK configured for the peer"
            expected = auth.psk_auth(self._prf, remote.psk, octets)
            if not constant_time.bytes_eq(expected, auth_payload.data):
                return "PSK AUTH payload does not verify (wrong pre-shared key?)"
            return None
        return self._verify_certificate_auth(remote.trust, msg, id_payload, auth_payload,
                                             octets)

    def _verify_certificate_auth(self, trust: TrustStore | None, msg: Message,
                                 id_payload: IdiPayload | IdrPayload,
                                 auth_payload: AuthPayload, octets: bytes) -> str | None:
        if trust is None:
            return "no CA configured to verify the peer's certificate"
        if auth_payload.method == AuthMethod.PSK:
            return "peer authenticated with a pre-shared key, we require a certificate"
        certs = [p for p in msg.find_all(CertPayload)
                 if p.encoding == CertEncoding.X509_SIGNATURE]
        if not certs:
            return "peer sent no certificate"
        try:
            chain = [x509.load_der_x509_certificate(c.data) for c in certs]
        except ValueError as exc:
            return f"peer certificate does not parse: {exc}"
        end_entity = chain[0]
        try:
            trust.verify(end_entity, chain[1:], datetime.fromtimestamp(self._wall, UTC))
            auth.verify(end_entity.public_key(), auth_payload.method, auth_payload.data,
                        octets)
        except ProtocolError as exc:
            return str(exc)
        if not identity_matches(end_entity, id_payload.id_type, id_payload.data):
            return f"identity {Identity(id_payload.id_type, id_payload.data)} is not in " \
                   f"the certificate of {end_entity.subject.rfc4514_string()}"
        self._peer_certs = chain
        return None

    @property
    def _wall(self) -> float:
        return self._last_peer_activity + self.wall_offset

    def _select_config(self, idi: Identity, idr: Identity | None) -> IkeConfig | None:
        for conf in self.candidates:
            if conf.remote_id is not None and conf.remote_id != idi:
                continue
            if idr is not None and conf.local_id is not None and conf.local_id != idr:
                continue
            return conf
        return None

    def _respond_auth(self, msg: Message, raw: bytes, now: float) -> None:
        if self.state is not IkeState.INIT_DONE:
            raise ProtocolError("unexpected IKE_AUTH")
        idi, auth_payload = msg.find(IdiPayload), msg.find(AuthPayload)
        if idi is None or auth_payload is None:
            raise ProtocolError("IKE_AUTH request lacks IDi or AUTH")
        idr = msg.find(IdrPayload)
        remote_id = Identity(idi.id_type, idi.data)
        conf = self._select_config(remote_id, Identity(idr.id_type, idr.data) if idr else None)
        if conf is None:
            self._reject_auth(msg, FailureReason.NO_MATCHING_CONFIG,
                              f"no connection accepts peer identity {remote_id}",
                              ours=tuple(str(c.remote_id or "%any") for c in self.candidates),
                              theirs=(str(remote_id),))
            return
        self.config = conf
        self._peer_certreq = msg.find(CertReqPayload) is not None
        why = self._verify_peer_auth(conf, msg, idi, auth_payload, self._init_request,
                                     self._nonce_r)
        if why is not None:
            self._reject_auth(msg, FailureReason.AUTHENTICATION_FAILED, why)
            return
        self.remote_id = remote_id
        self.local_id = self._local_identity(conf)
        our_idr = IdrPayload(self.local_id.id_type, self.local_id.data)
        payloads: list[Payload] = [our_idr, *self._auth_payloads(conf, our_idr,
                                                                  self._init_response,
                                                                  self._nonce_i)]
        cp = self._assign_virtual_ip(conf, msg)
        if cp is not None:
            payloads.append(cp)
        self._established(now)
        if msg.find(SaPayload) is not None:
            payloads += self._answer_child_request(msg, None, now, ike_auth=True)
        self._respond(msg, payloads)

    def _reject_auth(self, msg: Message, reason: FailureReason, why: str,
                     ours: tuple[str, ...] = (), theirs: tuple[str, ...] = ()) -> None:
        self._respond(msg, [_notify(NotifyType.AUTHENTICATION_FAILED)])
        self._fail(reason, why, ours=ours, theirs=theirs)

    def _established(self, now: float) -> None:
        conf = self._conf()
        self._set_state(IkeState.ESTABLISHED)
        self.established_at = now
        self._half_open_deadline = None
        # What only the setup needed: the IKE_SA_INIT messages, our DH private key, the
        # proposals we sent. A gateway keeps thousands of SAs: free it now.
        self._init_request = self._init_response = b""
        self._ke = None
        self._sent_ike_proposals = ()
        self._cookie = None
        if conf.rekey_time:
            jitter = int.from_bytes(os.urandom(2), "big") / 65535 * conf.rekey_time * 0.1
            self._rekey_deadline = now + conf.rekey_time - jitter
        self._arm_lifetime(now)
        self._arm_dpd(now)
        assert self.suite is not None and self.local_id and self.remote_id
        self._events.append(IkeSaUp(
            ike_sa=self.id, connection=conf.name, spi_i=self.spi_i, spi_r=self.spi_r,
            initiator=self.is_initiator, local=self.local, remote=self.remote,
            local_id=self.local_id, remote_id=self.remote_id, suite=self.suite,
            nat_local=self.nat_local, nat_remote=self.nat_remote, virtual_ip=self.virtual_ip))

    # ----------------------------------------------------------------- virtual IPs

    def _assign_virtual_ip(self, conf: IkeConfig, msg: Message) -> CpPayload | None:
        cp = msg.find(CpPayload)
        if cp is None or cp.cfg_type != CfgType.REQUEST or conf.pool is None:
            return None
        address = conf.pool.acquire(str(self.remote_id))
        if address is None:
            return None
        self.virtual_ip = str(address)
        attr = CfgAttr.INTERNAL_IP4_ADDRESS if address.version == 4 else \
            CfgAttr.INTERNAL_IP6_ADDRESS
        value = address.packed if address.version == 4 else address.packed + b"\x80"
        self._events.append(VirtualIpAssigned(self.id, conf.name, str(address), True))
        return CpPayload(CfgType.REPLY, (CfgAttribute(attr, value),))

    def _read_virtual_ip(self, msg: Message) -> None:
        cp = msg.find(CpPayload)
        if cp is None or cp.cfg_type != CfgType.REPLY:
            return
        for attr in cp.attributes:
            if attr.attr_type == CfgAttr.INTERNAL_IP4_ADDRESS and len(attr.value) == 4:
                self.virtual_ip = str(ipaddress.IPv4Address(attr.value))
            elif attr.attr_type == CfgAttr.INTERNAL_IP6_ADDRESS and len(attr.value) == 17:
                self.virtual_ip = str(ipaddress.IPv6Address(attr.value[:16]))
            else:
                continue
            self._events.append(VirtualIpAssigned(self.id, self._conf().name,
                                                  self.virtual_ip, False))
            return

    # ----------------------------------------------------------------- CHILD_SAs

    def _dynamic_ts(self, local: bool) -> tuple[TrafficSelector, ...]:
        if local:
            address = self.virtual_ip if (self.is_initiator and self.virtual_ip) else \
                self.local[0]
            if self.is_initiator and self._conf().request_virtual_ip and not self.virtual_ip:
                return (ts.any_of(ipaddress.ip_address(self.local[0]).version),)
        else:
            address = self.virtual_ip if (not self.is_initiator and self.virtual_ip) else \
                self.remote[0]
        return (ts.from_address(ipaddress.ip_address(address)),)

    def _child_ts(self, child: ChildConfig) -> tuple[tuple[TrafficSelector, ...],
                                                     tuple[TrafficSelector, ...]]:
        local = child.local_ts or self._dynamic_ts(local=True)
        remote = child.remote_ts or self._dynamic_ts(local=False)
        return local, remote

    @dataclass(slots=True)
    class _ChildRequest:
        config: ChildConfig
        rekey_of: ChildSa | None
        spi_in: int
        nonce: bytes
        ke: dh.KeyExchange | None
        proposals: tuple[Proposal, ...]
        local_ts: tuple[TrafficSelector, ...]
        remote_ts: tuple[TrafficSelector, ...]
        payloads: list[Payload]
        nonce_r: bytes = b""

    def _new_child_request(self, child: ChildConfig, rekey_of: ChildSa | None, *,
                           create_child_sa: bool, group: int | None = None
                           ) -> IkeSa._ChildRequest:
        spi_in = self._alloc_spi()
        spi = spi_in.to_bytes(4, "big")
        wire = tuple(spec.to_wire(i + 1, spi, with_dh=create_child_sa)
                     for i, spec in enumerate(child.proposals))
        nonce = os.urandom(NONCE_SIZE)
        groups = [g for spec in child.proposals for g in spec.dh_groups]
        ke = dh.new_key_exchange(group or groups[0]) if create_child_sa and groups else None
        if rekey_of is not None and child == rekey_of.config:
            local_ts, remote_ts = rekey_of.local_ts, rekey_of.remote_ts  # as negotiated
        else:
            local_ts, remote_ts = self._child_ts(child)
        payloads: list[Payload] = []
        if rekey_of is not None:
            payloads.append(_notify(NotifyType.REKEY_SA, protocol=rekey_of.protocol,
                                    spi=rekey_of.spi_in.to_bytes(4, "big")))
        if child.mode is Mode.TRANSPORT:
            payloads.append(_notify(NotifyType.USE_TRANSPORT_MODE))
        payloads += _tfc_notify(child.mode)
        payloads.append(SaPayload(wire))
        if create_child_sa:
            payloads.append(NoncePayload(nonce))
            if ke is not None:
                payloads.append(KePayload(ke.group, ke.public_key))
        payloads += [TsiPayload(local_ts), TsrPayload(remote_ts)]
        return IkeSa._ChildRequest(child, rekey_of, spi_in, nonce, ke, wire, local_ts,
                                   remote_ts, payloads)

    def _build_create_child(self, child: ChildConfig, rekey_of: ChildSa | None,
                            group: int | None = None,
                            ) -> tuple[Message, Callable[[Message, float], None]] | None:
        if rekey_of is not None and rekey_of.state not in (ChildState.REKEYING,
                                                           ChildState.CLOSED):
            return None  # rekeyed by the peer meanwhile (a deleted one: the peer says so)
        request = self._new_child_request(child, rekey_of, create_child_sa=True,
                                          group=group)
        msg = self._message(ExchangeType.CREATE_CHILD_SA, request.payloads)
        return msg, lambda m, t: self._on_create_child_response(request, m, t)

    def _on_create_child_response(self, request: IkeSa._ChildRequest, msg: Message,
                                  now: float) -> None:
        invalid_ke = msg.notify(NotifyType.INVALID_KE_PAYLOAD)
        if invalid_ke is not None and request.ke is not None and len(invalid_ke.data) >= 2:
            group = int.from_bytes(invalid_ke.data[:2], "big")
            if group in {g for s in request.config.proposals for g in s.dh_groups} \
                    and group != request.ke.group:
                retry = request
                self._tasks.appendleft(_Task("retry child", lambda t: self._build_create_child(
                    retry.config, retry.rekey_of, group)))
                return
        self._finish_child_request(request, msg, now)

    def _finish_child_request(self, request: IkeSa._ChildRequest, msg: Message,
                              now: float) -> None:
        """Initiator side of a CHILD_SA exchange (IKE_AUTH or CREATE_CHILD_SA)."""
        old = request.rekey_of
        error = _error_notify(msg)
        if error is not None and error.notify_type == NotifyType.TEMPORARY_FAILURE:
            self._retry_child_later(request, now)
            return
        try:
            child = self._child_from_response(request, msg, now)
        except _ChildFailure as failure:
            if old is not None and old.state is ChildState.REKEYING:
                old.move_to(ChildState.INSTALLED)
            if old is not None and old.child_id not in self.children:
                return  # the peer deleted it meanwhile (RFC 7296 2.25.1): nothing to report
            self._events.append(NegotiationFailed(
                ike_sa=self.id, connection=self._conf().name, reason=failure.reason,
                message=failure.message, child=request.config.name, ours=failure.ours,
                theirs=failure.theirs))
            return
        if old is None:
            return
        old.rekeys["ours"] = (min(request.nonce, request.nonce_r), child)
        self._resolve_rekey(old, now)

    def _retry_child_later(self, request: IkeSa._ChildRequest, now: float) -> None:
        """TEMPORARY_FAILURE (the peer is rekeying the IKE SA or closing the CHILD_SA):
        try again after a short random delay, if there is still something to do."""
        old = request.rekey_of
        # If the IKE SA was rekeyed meanwhile, the retry belongs to its successor.
        target = self.successor if self.state is IkeState.REKEYED and self.successor else self
        if old is None:
            target._child_retries.append((now + _retry_delay(), request.config.name, None))
            return
        if old.state is ChildState.REKEYING:
            old.move_to(ChildState.INSTALLED)
        if old.child_id in target.children:
            target._child_retries.append((now + _retry_delay(), request.config.name,
                                          old.child_id))

    def _child_from_response(self, request: IkeSa._ChildRequest, msg: Message,
                             now: float) -> ChildSa:
        error = _error_notify(msg)
        ours = tuple(str(s) for s in request.config.proposals)
        if error is not None:
            raise _ChildFailure(_reason_of(error.notify_type),
                                f"peer refused CHILD_SA {request.config.name}: "
                                f"{notify_name(error.notify_type)}", ours)
        sa, tsi, tsr = msg.find(SaPayload), msg.find(TsiPayload), msg.find(TsrPayload)
        if sa is None or tsi is None or tsr is None or len(sa.proposals) != 1:
            raise _ChildFailure(FailureReason.PROTOCOL_ERROR,
                                "CHILD_SA response lacks SA, TSi or TSr", ours)
        chosen = sa.proposals[0]
        if not proposals.accept_chosen(request.proposals, chosen) or len(chosen.spi) != 4:
            raise _ChildFailure(FailureReason.NO_PROPOSAL_CHOSEN,
                                "peer chose an ESP proposal we did not offer", ours,
                                tuple(proposals.describe_offer([chosen])))
        local_ts, remote_ts = tsi.selectors, tsr.selectors
        if not (ts.all_covered(local_ts, request.local_ts)
                and ts.all_covered(remote_ts, request.remote_ts)):
            raise _ChildFailure(FailureReason.TS_UNACCEPTABLE,
                                "peer's traffic selectors are not within ours",
                                tuple(map(ts.format_ts, request.local_ts + request.remote_ts)),
                                tuple(map(ts.format_ts, local_ts + remote_ts)))
        mode = Mode.TRANSPORT if msg.notify(NotifyType.USE_TRANSPORT_MODE) else Mode.TUNNEL
        if mode is not request.config.mode:
            raise _ChildFailure(FailureReason.PROTOCOL_ERROR,
                                f"peer wants {mode.value} mode, we configured "
                                f"{request.config.mode.value}", ours)
        shared = None
        nonce_r = self._nonce_r
        nonce_i = self._nonce_i
        if msg.exchange == ExchangeType.CREATE_CHILD_SA:
            nonce = msg.find(NoncePayload)
            if nonce is None:
                raise _ChildFailure(FailureReason.PROTOCOL_ERROR, "no nonce in response", ours)
            nonce_i, nonce_r = request.nonce, nonce.data
            suite = suite_of(chosen)
            if request.ke is not None:
                ke = msg.find(KePayload)
                if ke is None or suite.dh != request.ke.group or ke.group != request.ke.group:
                    raise _ChildFailure(FailureReason.PROTOCOL_ERROR,
                                        "PFS key exchange missing or of the wrong group", ours)
                shared = request.ke.shared_secret(ke.data)
        request.nonce_r = nonce_r
        return self._add_child(request.config, chosen, request.spi_in,
                               int.from_bytes(chosen.spi, "big"), local_ts, remote_ts, mode,
                               nonce_i, nonce_r, shared, now, exchange_initiator=True,
                               rekey_of=request.rekey_of, peer_tfc=_peer_takes_tfc(msg))

    def _add_child(self, config: ChildConfig, chosen: Proposal, spi_in: int, spi_out: int,
                   local_ts: tuple[TrafficSelector, ...], remote_ts: tuple[TrafficSelector, ...],
                   mode: Mode, nonce_i: bytes, nonce_r: bytes, shared: bytes | None,
                   now: float, *, exchange_initiator: bool, rekey_of: ChildSa | None,
                   peer_tfc: bool = True) -> ChildSa:
        assert self._prf is not None and self._keys is not None
        suite = suite_of(chosen)
        encr_size = encr_key_size(suite.encr, suite.encr_bits) if suite.encr is not None else 0
        integ_size = integ_key_size(suite.integ)
        keymat = derive_child_keymat(self._prf, self._keys.sk_d, nonce_i, nonce_r,
                                     2 * (encr_size + integ_size), shared)
        keys = split_child_keymat(keymat, encr_size, integ_size)
        child = ChildSa(next(_ids), config, ProtocolId(chosen.protocol), mode, spi_in, spi_out,
                        tuple(local_ts), tuple(remote_ts), suite, now)
        self.children[child.child_id] = child
        if exchange_initiator:
            enc_in, int_in, enc_out, int_out = keys.encr_r, keys.integ_r, keys.encr_i, \
                keys.integ_i
        else:
            enc_in, int_in, enc_out, int_out = keys.encr_i, keys.integ_i, keys.encr_r, \
                keys.integ_r
        conf = self._conf()
        self._events.append(ChildSaNegotiated(
            ike_sa=self.id, connection=conf.name, child=config.name, child_id=child.child_id,
            protocol=child.protocol, mode=mode, spi_in=spi_in, spi_out=spi_out,
            local=self.local, remote=self.remote, local_ts=child.local_ts,
            remote_ts=child.remote_ts, suite=suite, encr_key_in=enc_in, integ_key_in=int_in,
            encr_key_out=enc_out, integ_key_out=int_out,
            encap=self.nat_local or self.nat_remote, rekey_time=config.rekey_time,
            life_time=config.life_time, rekey_bytes=config.rekey_bytes,
            life_bytes=config.life_bytes, rekey_packets=config.rekey_packets,
            life_packets=config.life_packets,
            rekey_of=rekey_of.spi_in if rekey_of is not None else None,
            initiator=exchange_initiator, tfc_padding=peer_tfc))
        return child

    def _select_child(self, msg: Message, rekey_of: ChildSa | None
                      ) -> tuple[ChildConfig, tuple[TrafficSelector, ...],
                                 tuple[TrafficSelector, ...]]:
        """Responder: the child config whose selectors fit, and the narrowed selectors
        (TSi is the peer's side, TSr ours)."""
        tsi, tsr = msg.find(TsiPayload), msg.find(TsrPayload)
        if tsi is None or tsr is None:
            raise ProtocolError("CHILD_SA request lacks TSi or TSr")
        configs = (self._current_child_config(rekey_of.config),) if rekey_of \
            else self._conf().children
        best: tuple[int, ChildConfig, tuple[TrafficSelector, ...],
                    tuple[TrafficSelector, ...]] | None = None
        for child in configs:
            local, remote = self._child_ts(child)
            if rekey_of is not None and child == rekey_of.config:
                local, remote = rekey_of.local_ts, rekey_of.remote_ts
            narrowed_remote = tuple(ts.narrow(tsi.selectors, remote))
            narrowed_local = tuple(ts.narrow(tsr.selectors, local))
            if not (narrowed_local and narrowed_remote):
                continue
            # Prefer the config that is exactly what was proposed, then one that takes
            # it whole, then any that overlaps (in configuration order within a rank).
            rank = 2 if (set(local), set(remote)) == (set(tsr.selectors), set(tsi.selectors)) \
                else 1 if (set(narrowed_local), set(narrowed_remote)) == \
                (set(tsr.selectors), set(tsi.selectors)) else 0
            if best is None or rank > best[0]:
                best = (rank, child, narrowed_local, narrowed_remote)
        if best is not None:
            return best[1], best[2], best[3]
        theirs = tuple(map(ts.format_ts, tsi.selectors + tsr.selectors))
        ours = tuple(f"{c.name}: " + " === ".join(
            ",".join(map(ts.format_ts, side)) for side in self._child_ts(c)) for c in configs)
        raise _ChildFailure(FailureReason.TS_UNACCEPTABLE,
                            "no CHILD_SA configuration matches the proposed selectors",
                            ours, theirs)

    def _answer_child_request(self, msg: Message, rekey_of: ChildSa | None, now: float, *,
                              ike_auth: bool) -> list[Payload]:
        """Responder side of a CHILD_SA exchange; returns the response payloads."""
        conf = self._conf()
        try:
            return self._accept_child(msg, rekey_of, now, ike_auth=ike_auth)
        except _ChildFailure as failure:
            self._events.append(NegotiationFailed(
                ike_sa=self.id, connection=conf.name, reason=failure.reason,
                message=failure.message, child=failure.child, ours=failure.ours,
                theirs=failure.theirs))
            return [_notify(_NOTIFY_FOR_REASON.get(failure.reason,
                                                   NotifyType.NO_PROPOSAL_CHOSEN),
                            failure.notify_data)]

    def _accept_child(self, msg: Message, rekey_of: ChildSa | None, now: float, *,
                      ike_auth: bool) -> list[Payload]:
        sa = msg.find(SaPayload)
        if sa is None:
            raise ProtocolError("CHILD_SA request lacks an SA payload")
        config, local_ts, remote_ts = self._select_child(msg, rekey_of)
        ke = msg.find(KePayload)
        rule = DhRule.IGNORE if ike_auth else (DhRule.REQUIRE if ke else DhRule.NONE)
        chosen = proposals.select(config.proposals, sa.proposals, rule)
        if chosen is None or len(chosen.spi) != 4:
            raise _ChildFailure(FailureReason.NO_PROPOSAL_CHOSEN,
                                f"no common proposal for CHILD_SA {config.name}",
                                tuple(str(s) for s in config.proposals),
                                tuple(proposals.describe_offer(sa.proposals)), config.name)
        mode = Mode.TRANSPORT if msg.notify(NotifyType.USE_TRANSPORT_MODE) else Mode.TUNNEL
        if mode is not config.mode:
            mode = Mode.TUNNEL  # RFC 7296 1.3.1: we may answer in tunnel mode
            if config.mode is Mode.TRANSPORT:
                raise _ChildFailure(FailureReason.NO_PROPOSAL_CHOSEN,
                                    f"CHILD_SA {config.name} requires transport mode",
                                    child=config.name)
        suite = suite_of(chosen)
        spi_in, spi_out = self._alloc_spi(), int.from_bytes(chosen.spi, "big")
        response: list[Payload] = []
        shared, nonce_i, nonce_r = None, self._nonce_i, self._nonce_r
        if not ike_auth:
            nonce = msg.find(NoncePayload)
            if nonce is None:
                raise ProtocolError("CREATE_CHILD_SA request lacks a nonce")
            nonce_i, nonce_r = nonce.data, os.urandom(NONCE_SIZE)
            response.append(NoncePayload(nonce_r))
            if ke is not None:
                assert suite.dh is not None
                if ke.group != suite.dh:
                    raise _ChildFailure(FailureReason.INVALID_KE_PAYLOAD,
                                        f"PFS group {ke.group} instead of {suite.dh}",
                                        child=config.name,
                                        notify_data=struct.pack("!H", suite.dh))
                our_ke = dh.new_key_exchange(suite.dh)
                shared = our_ke.shared_secret(ke.data)
                response.append(KePayload(suite.dh, our_ke.public_key))
        chosen = Proposal(chosen.number, chosen.protocol, spi_in.to_bytes(4, "big"),
                          chosen.transforms)
        child = self._add_child(config, chosen, spi_in, spi_out, local_ts, remote_ts, mode,
                                nonce_i, nonce_r, shared, now, exchange_initiator=False,
                                rekey_of=rekey_of, peer_tfc=_peer_takes_tfc(msg))
        if rekey_of is not None:
            rekey_of.rekeys["theirs"] = (min(nonce_i, nonce_r), child)
            if rekey_of.state is ChildState.INSTALLED:
                rekey_of.move_to(ChildState.REKEYED)
            else:
                self._resolve_rekey(rekey_of, now)
        transport: list[Payload] = [_notify(NotifyType.USE_TRANSPORT_MODE)] \
            if mode is Mode.TRANSPORT else []
        return [*transport, *_tfc_notify(mode), SaPayload((chosen,)), *response,
                TsiPayload(remote_ts), TsrPayload(local_ts)]

    def _resolve_rekey(self, old: ChildSa, now: float) -> None:
        """After our rekey of `old` completed, or a collision became known (RFC 7296 2.8.1):
        the CHILD_SA made by the exchange with the lowest nonce is deleted by its maker;
        the surviving exchange's initiator deletes the old CHILD_SA."""
        ours, theirs = old.rekeys.get("ours"), old.rekeys.get("theirs")
        if ours is None:
            return
        if old.state in (ChildState.INSTALLED, ChildState.REKEYING):
            old.move_to(ChildState.REKEYED)
        if theirs is not None and ours[0] < theirs[0]:
            # We lost: our new SA is redundant (never to be sent on: DELETING from now);
            # the peer deletes the old one.
            redundant = ours[1]
            redundant.move_to(ChildState.DELETING)
            self._queue(_Task("delete redundant", lambda t: self._build_delete_child(
                redundant, "rekey collision lost")), now)
            return
        if old.state is ChildState.REKEYED and old.child_id in self.children:
            self._queue(_Task("delete rekeyed", lambda t: self._build_delete_child(
                old, "rekeyed")), now)

    def _build_delete_child(self, child: ChildSa, reason: str
                            ) -> tuple[Message, Callable[[Message, float], None]] | None:
        if child.child_id not in self.children:
            return None
        child.move_to(ChildState.DELETING)
        payload = DeletePayload(child.protocol, (child.spi_in.to_bytes(4, "big"),))
        msg = self._message(ExchangeType.INFORMATIONAL, [payload])
        return msg, lambda m, t: self._remove_child(child, reason)

    def _remove_child(self, child: ChildSa, reason: str) -> None:
        if self.children.pop(child.child_id, None) is None:
            return
        child.move_to(ChildState.CLOSED)
        self._events.append(ChildSaDeleted(
            ike_sa=self.id, connection=self._conf().name, child=child.config.name,
            child_id=child.child_id, protocol=child.protocol, spi_in=child.spi_in,
            spi_out=child.spi_out, reason=reason))

    def child_state(self, spi_in: int) -> ChildState | None:
        """The state of our CHILD_SA with this inbound SPI (None: there is none)."""
        child = self._child_by_spi_in(spi_in)
        return child.state if child is not None else None

    def _child_by_spi_in(self, spi: int) -> ChildSa | None:
        return next((c for c in self.children.values() if c.spi_in == spi), None)

    def _child_by_spi_out(self, spi: int, protocol: int) -> ChildSa | None:
        return next((c for c in self.children.values()
                     if c.spi_out == spi and c.protocol == protocol), None)

    def _respond_create_child(self, msg: Message, raw: bytes, now: float) -> None:
        if self.state is not IkeState.ESTABLISHED:
            self._respond(msg, [_notify(NotifyType.TEMPORARY_FAILURE)])
            return
        sa = msg.find(SaPayload)
        if sa is not None and sa.proposals and sa.proposals[0].protocol == ProtocolId.IKE:
            self._respond_rekey_ike(msg, sa, now)
            return
        if self._ike_rekey_pending:
            # RFC 7296 2.25.2: no new CHILD_SAs on an IKE SA being rekeyed; retry later.
            self._respond(msg, [_notify(NotifyType.TEMPORARY_FAILURE)])
            return
        rekey = msg.notify(NotifyType.REKEY_SA)
        old = None
        if rekey is not None:
            old = self._child_by_spi_out(int.from_bytes(rekey.spi, "big"), rekey.protocol) \
                if len(rekey.spi) == 4 else None
            if old is None:
                self._respond(msg, [_notify(NotifyType.CHILD_SA_NOT_FOUND,
                                            protocol=rekey.protocol, spi=rekey.spi)])
                return
            if old.state is ChildState.DELETING:
                # RFC 7296 2.25.1: we are closing it; the peer will see our delete.
                self._respond(msg, [_notify(NotifyType.TEMPORARY_FAILURE)])
                return
        self._respond(msg, self._answer_child_request(msg, old, now, ike_auth=False))

    # ----------------------------------------------------------------- IKE SA rekey

    def _build_rekey_ike(self, now: float, group: int | None = None
                         ) -> tuple[Message, Callable[[Message, float], None]] | None:
        if self.state is not IkeState.ESTABLISHED or self._ike_rekey_pending:
            return None  # rekeyed or deleted meanwhile
        conf = self._conf()
        assert self.suite is not None
        new_spi = os.urandom(8)
        wire = tuple(spec.to_wire(i + 1, new_spi) for i, spec in enumerate(conf.proposals))
        groups = [g for spec in conf.proposals for g in spec.dh_groups]
        # the current group while configured, else the first of the (changed) proposals
        ke = dh.new_key_exchange(group or (self.suite.dh if self.suite.dh in groups
                                           else groups[0]))
        nonce = os.urandom(NONCE_SIZE)
        msg = self._message(ExchangeType.CREATE_CHILD_SA, [
            SaPayload(wire), NoncePayload(nonce), KePayload(ke.group, ke.public_key)])
        self._ike_rekey_pending = True
        return msg, lambda m, t: self._on_rekey_ike_response(m, wire, new_spi, ke, nonce, t)

    def _on_rekey_ike_response(self, msg: Message, wire: tuple[Proposal, ...], new_spi: bytes,
                               ke: dh.KeyExchange, nonce_i: bytes, now: float) -> None:
        """Our IKE rekey was answered. If the peer rekeyed at the same time (RFC 7296
        2.8.2), the exchange with the lowest of the four nonces made the redundant SA;
        its initiator deletes it, the other exchange's initiator deletes the old SA."""
        self._ike_rekey_pending = False
        theirs, self._collision = self._collision, None
        invalid_ke = msg.notify(NotifyType.INVALID_KE_PAYLOAD)
        if theirs is None and invalid_ke is not None and len(invalid_ke.data) >= 2:
            group = int.from_bytes(invalid_ke.data[:2], "big")
            if group != ke.group:
                self._tasks.appendleft(_Task("rekey IKE", lambda t: self._build_rekey_ike(
                    t, group)))
                return
        error = _error_notify(msg)
        sa, nonce, peer_ke = msg.find(SaPayload), msg.find(NoncePayload), msg.find(KePayload)
        if error is not None or sa is None or nonce is None or peer_ke is None:
            if theirs is not None:
                self._adopt(theirs[1], now)  # the peer's rekey stands; it deletes us
            else:
                temporary = error is not None and \
                    error.notify_type == NotifyType.TEMPORARY_FAILURE
                self._rekey_deadline = now + (_retry_delay() if temporary else 60)
            return
        chosen = sa.proposals[0] if len(sa.proposals) == 1 else None
        if chosen is None or not proposals.accept_chosen(wire, chosen) or len(chosen.spi) != 8:
            raise ProtocolError("bad IKE rekey response")
        suite = suite_of(chosen)
        if suite.dh != ke.group or peer_ke.group != ke.group:
            raise ProtocolError("IKE rekey response key exchange group mismatch")
        ours = self._make_rekeyed(True, new_spi, chosen.spi, suite,
                                  ke.shared_secret(peer_ke.data), nonce_i, nonce.data, now)
        if theirs is not None and min(nonce_i, nonce.data) < theirs[0]:
            # We lost: ours is redundant and we delete it; the peer deletes the old SA.
            self._adopt(theirs[1], now)
            ours._delete_redundant(now)
            return
        # We won (or there was no collision): the peer deletes its redundant SA, if any;
        # as initiator of the surviving exchange we delete the old IKE SA.
        self._adopt(ours, now)
        if theirs is not None:
            theirs[1]._redundant_deadline = now + REDUNDANT_TIMEOUT
        self._tasks.clear()
        self._queue(_Task("delete old IKE SA", lambda t: (
            self._message(ExchangeType.INFORMATIONAL, [DeletePayload(ProtocolId.IKE, ())]),
            lambda m, t: self._close("rekeyed", quiet=True))), now)

    def _respond_rekey_ike(self, msg: Message, sa: SaPayload, now: float) -> None:
        nonce, peer_ke = msg.find(NoncePayload), msg.find(KePayload)
        if nonce is None or peer_ke is None:
            raise ProtocolError("IKE rekey request lacks Nonce or KE")
        if not self._ike_rekey_pending and any(
                c.state is ChildState.REKEYING for c in self.children.values()):
            # Finish our CHILD_SA rekey first; the peer retries (RFC 7296 2.25.2).
            self._respond(msg, [_notify(NotifyType.TEMPORARY_FAILURE)])
            return
        chosen = proposals.select(self._conf().proposals, sa.proposals)
        if chosen is None or len(chosen.spi) != 8:
            self._respond(msg, [_notify(NotifyType.NO_PROPOSAL_CHOSEN)])
            return
        suite = suite_of(chosen)
        if suite.dh != peer_ke.group:
            assert suite.dh is not None
            self._respond(msg, [_notify(NotifyType.INVALID_KE_PAYLOAD,
                                        struct.pack("!H", suite.dh))])
            return
        ke = dh.new_key_exchange(suite.dh)
        nonce_r = os.urandom(NONCE_SIZE)
        new_spi_r = os.urandom(8)
        answer = Proposal(chosen.number, ProtocolId.IKE, new_spi_r, chosen.transforms)
        self._respond(msg, [SaPayload((answer,)), NoncePayload(nonce_r),
                            KePayload(ke.group, ke.public_key)])
        new = self._make_rekeyed(False, chosen.spi, new_spi_r, suite,
                                 ke.shared_secret(peer_ke.data), nonce.data, nonce_r, now)
        if self._ike_rekey_pending:
            # Collision: decide when the answer to our own rekey arrives.
            self._collision = (min(nonce.data, nonce_r), new)
        else:
            self._adopt(new, now)  # the peer deletes the old SA

    def _make_rekeyed(self, initiator: bool, spi_i: bytes, spi_r: bytes, suite: Suite,
                      shared: bytes, nonce_i: bytes, nonce_r: bytes, now: float) -> IkeSa:
        """The IKE SA a rekey exchange made (RFC 7296 2.18): keyed and reachable, but
        silent and without CHILD_SAs until `_adopt` makes it this one's successor."""
        conf = self._conf()
        assert self._prf is not None and self._keys is not None and suite.prf is not None
        assert suite.encr is not None
        new = IkeSa(initiator=initiator, local=self.local, remote=self.remote, now=now,
                    config=conf, spi_allocator=self._alloc_spi)
        new.spi_i, new.spi_r = spi_i, spi_r
        new.suite = suite
        new._prf = Prf(suite.prf)
        new._nonce_i, new._nonce_r = nonce_i, nonce_r
        new._keys = derive_rekeyed_ike_keys(
            self._prf, self._keys.sk_d, new._prf, shared, nonce_i, nonce_r, spi_i, spi_r,
            encr_key_size(suite.encr, suite.encr_bits), integ_key_size(suite.integ))
        new._install_ciphers(new._keys)
        for attr in ("local_id", "remote_id", "nat_local", "nat_remote", "peer_fragmentation",
                     "peer_hashes", "virtual_ip"):
            setattr(new, attr, getattr(self, attr))
        new._silent = True
        new._set_state(IkeState.INIT_DONE)
        new._set_state(IkeState.ESTABLISHED)
        new.established_at = now
        new._arm_dpd(now)
        self._spawned.append(new)
        return new

    def _adopt(self, new: IkeSa, now: float) -> None:
        """`new` replaces this IKE SA: CHILD_SAs and pending CHILD_SA retries move over;
        this one waits for the delete (ours or the peer's)."""
        self._collision = None
        self._set_state(IkeState.REKEYED)
        new.children, self.children = self.children, {}
        for child in new.children.values():
            if child.state is ChildState.REKEYING:  # its queued rekey dies with our tasks
                child.move_to(ChildState.INSTALLED)
                new._child_retries.append((now + _retry_delay(), child.config.name,
                                           child.child_id))
        new._child_retries += self._child_retries
        self._child_retries = []
        new._silent = False
        conf = self._conf()
        if conf.rekey_time:
            new._rekey_deadline = now + conf.rekey_time * 0.9
        new._arm_lifetime(now, self._reauth_deadline)  # a rekey does not reauthenticate
        self.successor = new
        self._rekey_deadline = self._reauth_deadline = self._expire_deadline = None
        self._dpd_deadline = None
        assert new.suite is not None
        self._events.append(IkeSaRekeyed(self.id, new.id, new.spi_i, new.spi_r, new.suite))

    def _delete_redundant(self, now: float) -> None:
        """Delete this never-announced IKE SA, the loser of a rekey collision."""
        self._tasks.clear()
        self._set_state(IkeState.DELETING)
        self._start_request(ExchangeType.INFORMATIONAL, [DeletePayload(ProtocolId.IKE, ())],
                            lambda m, t: self._close("rekey collision lost", quiet=True), now)

    def take_spawned(self) -> list[IkeSa]:
        """IKE SAs created by rekey exchanges since the last call (the manager registers
        them by SPI; until adopted they are silent)."""
        spawned, self._spawned = self._spawned, []
        return spawned

    # ----------------------------------------------------------------- INFORMATIONAL

    def _empty_informational(self) -> Message:
        return self._message(ExchangeType.INFORMATIONAL, [])

    def _noop(self, msg: Message, now: float) -> None:
        return None

    def _respond_informational(self, msg: Message, raw: bytes, now: float) -> None:
        if msg.notify(NotifyType.AUTHENTICATION_FAILED) is not None:
            self._respond(msg, [])
            self._fail(FailureReason.AUTHENTICATION_FAILED,
                       "peer rejected our authentication (AUTHENTICATION_FAILED)")
            return
        response: list[Payload] = []
        ike_deleted = False
        for delete in msg.find_all(DeletePayload):
            if delete.protocol == ProtocolId.IKE:
                ike_deleted = True
                continue
            for spi in delete.spis:
                child = self._child_by_spi_out(int.from_bytes(spi, "big"), delete.protocol)
                if child is None:
                    continue
                if child.state is not ChildState.DELETING:
                    response.append(DeletePayload(child.protocol,
                                                  (child.spi_in.to_bytes(4, "big"),)))
                self._remove_child(child, "deleted by peer")
        self._respond(msg, [] if ike_deleted else response)
        if ike_deleted and self._collision is not None:
            # The peer finished its rekey (which we answered) before it saw ours: its new
            # SA is the survivor; ours, when answered, finds this SA gone.
            self._adopt(self._collision[1], now)
        if ike_deleted:
            self._close("rekeyed" if self.state is IkeState.REKEYED else "deleted by peer",
                        quiet=self.state is IkeState.REKEYED)

    _REQUEST_HANDLERS: dict[ExchangeType, Callable[[IkeSa, Message, bytes, float], None]] = {
        ExchangeType.IKE_SA_INIT: _respond_init,
        ExchangeType.IKE_AUTH: _respond_auth,
        ExchangeType.CREATE_CHILD_SA: _respond_create_child,
        ExchangeType.INFORMATIONAL: _respond_informational,
    }

    # ----------------------------------------------------------------- ending

    def _fail_from_notify(self, error: NotifyPayload, ours: Iterable[str] = ()) -> None:
        reason = _reason_of(error.notify_type)
        self._fail(reason, f"peer answered {notify_name(error.notify_type)}", ours=tuple(ours))

    def _fail(self, reason: FailureReason, message: str, ours: tuple[str, ...] = (),
              theirs: tuple[str, ...] = ()) -> None:
        name = self.config.name if self.config else ",".join(c.name for c in self.candidates)
        self._events.append(NegotiationFailed(
            ike_sa=self.id, connection=name, reason=reason, message=message, ours=ours,
            theirs=theirs, local=self.local, remote=self.remote))
        self._close(reason.value, quiet=True)

    def _close(self, reason: str, quiet: bool = False) -> None:
        if self.state is IkeState.CLOSED:
            return
        was_up = self.state in (IkeState.ESTABLISHED, IkeState.REKEYED, IkeState.DELETING)
        if self._collision is not None:  # the peer's new SA dies with us
            self._collision[1]._close(reason, quiet=True)
            self._spawned.append(self._collision[1])  # so the manager sees it closed
            self._collision = None
        for child in list(self.children.values()):
            self._remove_child(child, reason)
        if self.config is not None and self.config.pool is not None and self.virtual_ip \
                and not self.is_initiator and self.successor is None:
            self.config.pool.release(str(self.remote_id))
        self._set_state(IkeState.CLOSED)
        self._clear_reassembly()
        self.down_reason = self.down_reason or reason
        self._outstanding = None
        self._tasks.clear()
        self._half_open_deadline = self._rekey_deadline = self._dpd_deadline = None
        self._redundant_deadline = self._reauth_deadline = self._expire_deadline = None
        self._child_retries = []
        if not self._silent and (was_up or not quiet):
            name = self.config.name if self.config else ""
            self._events.append(IkeSaDown(self.id, name, reason))


class _ChildFailure(Exception):
    def __init__(self, reason: FailureReason, message: str, ours: tuple[str, ...] = (),
                 theirs: tuple[str, ...] = (), child: str | None = None,
                 notify_data: bytes = b"") -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.ours = ours
        self.theirs = theirs
        self.child = child
        self.notify_data = notify_data


_REASON_FOR_NOTIFY: dict[int, FailureReason] = {
    NotifyType.NO_PROPOSAL_CHOSEN: FailureReason.NO_PROPOSAL_CHOSEN,
    NotifyType.INVALID_KE_PAYLOAD: FailureReason.INVALID_KE_PAYLOAD,
    NotifyType.AUTHENTICATION_FAILED: FailureReason.AUTHENTICATION_FAILED,
    NotifyType.TS_UNACCEPTABLE: FailureReason.TS_UNACCEPTABLE,
    NotifyType.INTERNAL_ADDRESS_FAILURE: FailureReason.INTERNAL_ADDRESS_FAILURE,
    NotifyType.SINGLE_PAIR_REQUIRED: FailureReason.SINGLE_PAIR_REQUIRED,
    NotifyType.CHILD_SA_NOT_FOUND: FailureReason.CHILD_SA_NOT_FOUND,
}
_NOTIFY_FOR_REASON = {reason: NotifyType(n) for n, reason in _REASON_FOR_NOTIFY.items()}


def _reason_of(notify_type: int) -> FailureReason:
    return _REASON_FOR_NOTIFY.get(notify_type, FailureReason.PEER_ERROR)


__all__ = ["ChildSa", "ChildState", "Datagram", "IkeSa", "IkeState", "TransformType",
           "random_child_spi"]
