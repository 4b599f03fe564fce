"""CHILD_SA creation (RFC 7296 1.3.1, 2.9, 2.17): in IKE_AUTH or CREATE_CHILD_SA.

`ChildCreate` is the initiator's task; `finish_child_request` also takes the CHILD_SA
part of an IKE_AUTH answer. The responder picks the child configuration whose selectors
fit (`select_child`), narrows them and answers (`answer_child_request`). A rekey is the
same exchange with REKEY_SA (child_rekey.py). When the chosen proposal has additional
key exchanges (RFC 9370), the CHILD_SA is made only after the IKE_FOLLOWUP_KE exchanges
(followup_ke.py), keyed with every exchange's secret.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .. import dh, proposals, ts
from ..algorithms import encr_key_size, integ_key_size
from ..child import ChildSa, new_id
from ..config import ChildConfig, Mode
from ..constants import ExchangeType, NotifyType, ProtocolId, notify_name
from ..crypto import split_child_keymat
from ..errors import ProtocolError
from ..events import ChildSaNegotiated, FailureReason, NegotiationFailed
from ..keys import new_nonce
from ..message import Message
from ..payloads import (
    KePayload,
    NoncePayload,
    Payload,
    Proposal,
    SaPayload,
    TrafficSelector,
    TsiPayload,
    TsrPayload,
)
from ..proposals import DhRule, suite_of
from ..state import ChildState, IkeState
from . import collisions, followup_ke
from .base import (
    NOTIFY_FOR_REASON,
    ChildFailure,
    error_notify,
    group_of,
    notify,
    peer_takes_tfc,
    reason_of,
    retry_delay,
    tfc_notify,
)

if TYPE_CHECKING:
    from ..sa import IkeSa

Selectors = tuple[TrafficSelector, ...]


def _dynamic_ts(sa: IkeSa, local: bool) -> Selectors:
    if local:
        address = sa.virtual_ip if (sa.is_initiator and sa.virtual_ip) else sa.local[0]
        if sa.is_initiator and sa.conf().request_virtual_ip and not sa.virtual_ip:
            return (ts.any_of(ts.address(sa.local[0]).version),)
    else:
        address = sa.virtual_ip if (not sa.is_initiator and sa.virtual_ip) else sa.remote[0]
    return (ts.from_address(ts.address(address)),)


def child_ts(sa: IkeSa, child: ChildConfig) -> tuple[Selectors, Selectors]:
    local = child.local_ts or _dynamic_ts(sa, local=True)
    remote = child.remote_ts or _dynamic_ts(sa, local=False)
    return local, remote


@dataclass(slots=True)
class ChildRequest:
    """Our side of one CHILD_SA exchange in flight."""

    config: ChildConfig
    rekey_of: ChildSa | None
    spi_in: int
    nonce: bytes
    ke: dh.KeyExchange | None
    proposals: tuple[Proposal, ...]
    local_ts: Selectors
    remote_ts: Selectors
    payloads: list[Payload]
    nonce_r: bytes = b""


def new_request(sa: IkeSa, child: ChildConfig, rekey_of: ChildSa | None, *,
                create_child_sa: bool, group: int | None = None) -> ChildRequest:
    spi_in = sa.alloc_spi()
    spi = spi_in.to_bytes(4, "big")
    wire = tuple(spec.to_wire(i + 1, spi, with_dh=create_child_sa, with_addke=create_child_sa)
                 for i, spec in enumerate(child.proposals))
    nonce = new_nonce()
    groups = [g for spec in child.proposals for g in spec.dh_groups]
    ke = dh.new_key_exchange(group or groups[0]) if create_child_sa and groups else None
    if rekey_of is not None and child == rekey_of.config:
        local_ts, remote_ts = rekey_of.local_ts, rekey_of.remote_ts  # as negotiated
    else:
        local_ts, remote_ts = child_ts(sa, child)
    payloads: list[Payload] = []
    if rekey_of is not None:
        payloads.append(notify(NotifyType.REKEY_SA, protocol=rekey_of.protocol,
                               spi=rekey_of.spi_in_bytes))
    if child.mode is Mode.TRANSPORT:
        payloads.append(notify(NotifyType.USE_TRANSPORT_MODE))
    payloads += tfc_notify(child.mode)
    payloads.append(SaPayload(wire))
    if create_child_sa:
        payloads.append(NoncePayload(nonce))
        if ke is not None:
            payloads.append(KePayload(ke.group, ke.public_key))
    payloads += [TsiPayload(local_ts), TsrPayload(remote_ts)]
    return ChildRequest(child, rekey_of, spi_in, nonce, ke, wire, local_ts, remote_ts, payloads)


class ChildCreate:
    """CREATE_CHILD_SA for a new CHILD_SA (or, with `rekey_of`, its replacement)."""

    __slots__ = ("config", "group", "rekey_of", "request")

    def __init__(self, config: ChildConfig, rekey_of: ChildSa | None = None,
                 group: int | None = None) -> None:
        self.config = config
        self.rekey_of = rekey_of
        self.group = group  # the peer's choice after INVALID_KE_PAYLOAD
        self.request: ChildRequest | None = None

    @property
    def name(self) -> str:
        return f"create {self.config.name}"

    def build(self, sa: IkeSa, now: float) -> Message | None:
        self.request = new_request(sa, self.config, self.rekey_of, create_child_sa=True,
                                   group=self.group)
        return sa.message(ExchangeType.CREATE_CHILD_SA, self.request.payloads)

    def process(self, sa: IkeSa, msg: Message, now: float) -> None:
        request = self.request
        assert request is not None
        group = group_of(msg.notify(NotifyType.INVALID_KE_PAYLOAD))
        if group is not None and request.ke is not None \
                and group in {g for s in request.config.proposals for g in s.dh_groups} \
                and group != request.ke.group:
            sa.window.tasks.insert(0, type(self)(request.config, request.rekey_of, group))
            return
        finish_child_request(sa, request, msg, now)


def finish_child_request(sa: IkeSa, request: ChildRequest, msg: Message, now: float) -> None:
    """Initiator side of a CHILD_SA exchange (IKE_AUTH or CREATE_CHILD_SA)."""
    error = error_notify(msg)
    if error is not None and error.notify_type == NotifyType.TEMPORARY_FAILURE:
        _retry_later(sa, request, now)
        return
    try:
        child = _child_from_response(sa, request, msg, now)
    except ChildFailure as failure:
        _failed(sa, request, failure)
        return
    if child is not None:
        _made(sa, request, child, now)


def _made(sa: IkeSa, request: ChildRequest, child: ChildSa, now: float) -> None:
    old = request.rekey_of
    if old is not None:
        collisions.our_child_rekey_done(sa, old, min(request.nonce, request.nonce_r), child,
                                        now)


def _failed(sa: IkeSa, request: ChildRequest, failure: ChildFailure) -> None:
    old = request.rekey_of
    if old is not None and old.state is ChildState.REKEYING:
        old.move_to(ChildState.INSTALLED)
    if old is not None and old.child_id not in sa.children:
        return  # the peer deleted it meanwhile (RFC 7296 2.25.1): nothing to report
    sa.emit(NegotiationFailed(
        ike_sa=sa.id, connection=sa.conf().name, reason=failure.reason,
        message=failure.message, child=request.config.name, ours=failure.ours,
        theirs=failure.theirs))


def _retry_later(sa: IkeSa, request: ChildRequest, now: float) -> None:
    """TEMPORARY_FAILURE (the peer is rekeying the IKE SA or closing the CHILD_SA):
    try again after a short random delay, if there is still something to do."""
    old = request.rekey_of
    # If the IKE SA was rekeyed meanwhile, the retry belongs to its successor.
    target = sa.successor if sa.state is IkeState.REKEYED and sa.successor else sa
    if old is None:
        target.timers.child_retries.append((now + retry_delay(), request.config.name, None))
        return
    if old.state is ChildState.REKEYING:
        old.move_to(ChildState.INSTALLED)
    if old.child_id in target.children:
        target.timers.child_retries.append((now + retry_delay(), request.config.name,
                                            old.child_id))


def _child_from_response(sa: IkeSa, request: ChildRequest, msg: Message,
                         now: float) -> ChildSa | None:
    """The CHILD_SA the answer makes, or None while IKE_FOLLOWUP_KE exchanges are due."""
    error = error_notify(msg)
    ours = tuple(str(s) for s in request.config.proposals)
    if error is not None:
        raise ChildFailure(reason_of(error.notify_type),
                           f"peer refused CHILD_SA {request.config.name}: "
                           f"{notify_name(error.notify_type)}", ours)
    sa_payload, tsi, tsr = msg.find(SaPayload), msg.find(TsiPayload), msg.find(TsrPayload)
    if sa_payload is None or tsi is None or tsr is None or len(sa_payload.proposals) != 1:
        raise ChildFailure(FailureReason.PROTOCOL_ERROR,
                           "CHILD_SA response lacks SA, TSi or TSr", ours)
    chosen = sa_payload.proposals[0]
    if not proposals.accept_chosen(request.proposals, chosen) or len(chosen.spi) != 4:
        raise ChildFailure(FailureReason.NO_PROPOSAL_CHOSEN,
                           "peer chose an ESP proposal we did not offer", ours,
                           tuple(proposals.describe_offer([chosen])))
    local_ts, remote_ts = tsi.selectors, tsr.selectors
    if not (ts.all_covered(local_ts, request.local_ts)
            and ts.all_covered(remote_ts, request.remote_ts)):
        raise ChildFailure(FailureReason.TS_UNACCEPTABLE,
                           "peer's traffic selectors are not within ours",
                           tuple(map(ts.format_ts, request.local_ts + request.remote_ts)),
                           tuple(map(ts.format_ts, local_ts + remote_ts)))
    mode = Mode.TRANSPORT if msg.notify(NotifyType.USE_TRANSPORT_MODE) else Mode.TUNNEL
    if mode is not request.config.mode:
        raise ChildFailure(FailureReason.PROTOCOL_ERROR,
                           f"peer wants {mode.value} mode, we configured "
                           f"{request.config.mode.value}", ours)
    shared = None
    nonce_i, nonce_r = request.nonce, request.nonce_r  # IKE_AUTH: the IKE SA's nonces
    if msg.exchange == ExchangeType.CREATE_CHILD_SA:
        nonce = msg.find(NoncePayload)
        if nonce is None:
            raise ChildFailure(FailureReason.PROTOCOL_ERROR, "no nonce in response", ours)
        nonce_r = nonce.data
        suite = suite_of(chosen)
        if request.ke is not None:
            ke = msg.find(KePayload)
            if ke is None or suite.dh != request.ke.group or ke.group != request.ke.group:
                raise ChildFailure(FailureReason.PROTOCOL_ERROR,
                                   "PFS key exchange missing or of the wrong group", ours)
            shared = request.ke.shared_secret(ke.data)
    request.nonce_r = nonce_r
    peer_tfc = peer_takes_tfc(msg)

    def make(extra: bytes) -> ChildSa:
        return add_child(sa, request.config, chosen, request.spi_in,
                         int.from_bytes(chosen.spi, "big"), local_ts, remote_ts, mode,
                         (nonce_i, nonce_r), shared, now, exchange_initiator=True,
                         rekey_of=request.rekey_of, peer_tfc=peer_tfc, additional=extra)

    addke = list(suite_of(chosen).addke) if msg.exchange == ExchangeType.CREATE_CHILD_SA \
        else []
    if not addke:
        return make(b"")
    if request.ke is None:
        raise ChildFailure(FailureReason.PROTOCOL_ERROR,
                           "additional key exchanges chosen without a key exchange", ours)
    pending = followup_ke.Followups(
        addke, lambda sa_, extra, now_: _made(sa_, request, make(extra), now_),
        lambda sa_, reason, why, now_: _failed(sa_, request, ChildFailure(reason, why, ours)))
    try:
        followup_ke.start(sa, pending, msg)
    except ProtocolError as exc:
        raise ChildFailure(FailureReason.PROTOCOL_ERROR, str(exc), ours) from None
    return None


def add_child(sa: IkeSa, config: ChildConfig, chosen: Proposal, spi_in: int, spi_out: int,
              local_ts: Selectors, remote_ts: Selectors, mode: Mode,
              nonces: tuple[bytes, bytes], shared: bytes | None, now: float, *,
              exchange_initiator: bool, rekey_of: ChildSa | None,
              peer_tfc: bool = True, additional: bytes = b"") -> ChildSa:
    """A negotiated CHILD_SA: keyed (RFC 7296 2.17; `additional`: RFC 9370 secrets), kept,
    and announced to the daemon."""
    assert sa.keys is not None
    suite = suite_of(chosen)
    encr_size = encr_key_size(suite.encr, suite.encr_bits) if suite.encr is not None else 0
    integ_size = integ_key_size(suite.integ)
    keymat = sa.keys.child_keymat(nonces[0], nonces[1], 2 * (encr_size + integ_size), shared,
                                  additional)
    keys = split_child_keymat(keymat, encr_size, integ_size)
    child = ChildSa(new_id(), config, ProtocolId(chosen.protocol), mode, spi_in, spi_out,
                    tuple(local_ts), tuple(remote_ts), suite, now)
    sa.children[child.child_id] = child
    if exchange_initiator:
        enc_in, int_in, enc_out, int_out = keys.encr_r, keys.integ_r, keys.encr_i, keys.integ_i
    else:
        enc_in, int_in, enc_out, int_out = keys.encr_i, keys.integ_i, keys.encr_r, keys.integ_r
    sa.emit(ChildSaNegotiated(
        ike_sa=sa.id, connection=sa.conf().name, child=config.name, child_id=child.child_id,
        protocol=child.protocol, mode=mode, spi_in=spi_in, spi_out=spi_out,
        local=sa.local, remote=sa.remote, local_ts=child.local_ts,
        remote_ts=child.remote_ts, suite=suite, encr_key_in=enc_in, integ_key_in=int_in,
        encr_key_out=enc_out, integ_key_out=int_out,
        encap=sa.nat_local or sa.nat_remote, rekey_time=config.rekey_time,
        life_time=config.life_time, rekey_bytes=config.rekey_bytes,
        life_bytes=config.life_bytes, rekey_packets=config.rekey_packets,
        life_packets=config.life_packets,
        rekey_of=rekey_of.spi_in if rekey_of is not None else None,
        initiator=exchange_initiator, tfc_padding=peer_tfc))
    return child


def _select_child(sa: IkeSa, msg: Message, rekey_of: ChildSa | None
                  ) -> tuple[ChildConfig, Selectors, Selectors]:
    """Responder: the child config whose selectors fit, and the narrowed selectors
    (TSi is the peer's side, TSr ours)."""
    tsi, tsr = msg.find(TsiPayload), msg.find(TsrPayload)
    if tsi is None or tsr is None:
        raise ProtocolError("CHILD_SA request lacks TSi or TSr")
    configs = (sa.current_child_config(rekey_of.config),) if rekey_of else sa.conf().children
    best: tuple[int, ChildConfig, Selectors, Selectors] | None = None
    for child in configs:
        local, remote = child_ts(sa, child)
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
        ",".join(map(ts.format_ts, side)) for side in child_ts(sa, c)) for c in configs)
    raise ChildFailure(FailureReason.TS_UNACCEPTABLE,
                       "no CHILD_SA configuration matches the proposed selectors", ours, theirs)


def answer_child_request(sa: IkeSa, msg: Message, rekey_of: ChildSa | None, now: float, *,
                         auth_nonces: tuple[bytes, bytes] | None = None) -> list[Payload]:
    """Responder side of a CHILD_SA exchange; returns the response payloads. In IKE_AUTH
    (`auth_nonces` given) the CHILD_SA is keyed with the IKE SA's nonces."""
    conf = sa.conf()
    try:
        return _accept_child(sa, msg, rekey_of, now, auth_nonces)
    except ChildFailure as failure:
        sa.emit(NegotiationFailed(
            ike_sa=sa.id, connection=conf.name, reason=failure.reason,
            message=failure.message, child=failure.child, ours=failure.ours,
            theirs=failure.theirs))
        return [notify(NOTIFY_FOR_REASON.get(failure.reason, NotifyType.NO_PROPOSAL_CHOSEN),
                       failure.notify_data)]


def _accept_child(sa: IkeSa, msg: Message, rekey_of: ChildSa | None, now: float,
                  auth_nonces: tuple[bytes, bytes] | None) -> list[Payload]:
    sa_payload = msg.find(SaPayload)
    if sa_payload is None:
        raise ProtocolError("CHILD_SA request lacks an SA payload")
    config, local_ts, remote_ts = _select_child(sa, msg, rekey_of)
    ke = msg.find(KePayload)
    rule = DhRule.IGNORE if auth_nonces else (DhRule.REQUIRE if ke else DhRule.NONE)
    chosen = proposals.select(config.proposals, sa_payload.proposals, rule,
                              addke=rule is DhRule.REQUIRE)
    if chosen is None or len(chosen.spi) != 4:
        raise ChildFailure(FailureReason.NO_PROPOSAL_CHOSEN,
                           f"no common proposal for CHILD_SA {config.name}",
                           tuple(str(s) for s in config.proposals),
                           tuple(proposals.describe_offer(sa_payload.proposals)), config.name)
    mode = Mode.TRANSPORT if msg.notify(NotifyType.USE_TRANSPORT_MODE) else Mode.TUNNEL
    if mode is not config.mode:
        mode = Mode.TUNNEL  # RFC 7296 1.3.1: we may answer in tunnel mode
        if config.mode is Mode.TRANSPORT:
            raise ChildFailure(FailureReason.NO_PROPOSAL_CHOSEN,
                               f"CHILD_SA {config.name} requires transport mode",
                               child=config.name)
    suite = suite_of(chosen)
    spi_in, spi_out = sa.alloc_spi(), int.from_bytes(chosen.spi, "big")
    response: list[Payload] = []
    shared = None
    if auth_nonces is not None:
        nonce_i, nonce_r = auth_nonces
    else:
        nonce = msg.find(NoncePayload)
        if nonce is None:
            raise ProtocolError("CREATE_CHILD_SA request lacks a nonce")
        nonce_i, nonce_r = nonce.data, new_nonce()
        response.append(NoncePayload(nonce_r))
        if ke is not None:
            assert suite.dh is not None
            if ke.group != suite.dh:
                raise ChildFailure(FailureReason.INVALID_KE_PAYLOAD,
                                   f"PFS group {ke.group} instead of {suite.dh}",
                                   child=config.name, notify_data=struct.pack("!H", suite.dh))
            our_data, shared = dh.respond(suite.dh, ke.data)
            response.append(KePayload(suite.dh, our_data))
    chosen = Proposal(chosen.number, chosen.protocol, spi_in.to_bytes(4, "big"),
                      chosen.transforms)
    peer_tfc = peer_takes_tfc(msg)

    def make(sa_: IkeSa, extra: bytes, now_: float) -> None:
        child = add_child(sa_, config, chosen, spi_in, spi_out, local_ts, remote_ts, mode,
                          (nonce_i, nonce_r), shared, now_, exchange_initiator=False,
                          rekey_of=rekey_of, peer_tfc=peer_tfc, additional=extra)
        if rekey_of is not None:
            collisions.peer_child_rekey_done(sa_, rekey_of, min(nonce_i, nonce_r), child, now_)

    if suite.addke and shared is not None:  # made after the IKE_FOLLOWUP_KE exchanges
        response.append(followup_ke.offer(sa, followup_ke.Followups(list(suite.addke), make)))
    else:
        make(sa, b"", now)
    transport: list[Payload] = [notify(NotifyType.USE_TRANSPORT_MODE)] \
        if mode is Mode.TRANSPORT else []
    return [*transport, *tfc_notify(mode), SaPayload((chosen,)), *response,
            TsiPayload(remote_ts), TsrPayload(local_ts)]


def respond(sa: IkeSa, msg: Message, now: float) -> None:
    """The responder's CREATE_CHILD_SA for a new CHILD_SA."""
    sa.respond(msg, answer_child_request(sa, msg, None, now))
