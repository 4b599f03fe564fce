"""Which payloads each exchange allows (RFC 7296 section 1 and 3, after strongSwan's
message rules), as data.

Rules, in the order `check` applies them:
1. Every exchange but IKE_SA_INIT / IKE_SESSION_RESUME is encrypted: all its payloads
   are inside SK and an SK payload must be present. Unencrypted exchanges carry no SK.
2. A payload type not in the table for (exchange, is_response) is not allowed.
3. No type may occur more than its maximum.
4. Minimums hold unless the message carries a "sufficient" payload: in responses an error
   notify, or one of the status notifies listed for that message (COOKIE, REDIRECT), or
   for IKE_AUTH an EAP or AUTH payload. That is how error-only, COOKIE and
   INVALID_KE_PAYLOAD replies pass.
Non-critical unknown payloads are allowed anywhere and counted nowhere.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from .constants import ExchangeType, NotifyType, PayloadType
from .errors import ProtocolError
from .payloads import NotifyPayload, Payload, UnknownPayload

if TYPE_CHECKING:
    from .message import Message

P = PayloadType
MAX_NOTIFY = 32
MAX_DELETE = 32
MAX_VENDOR = 32
MAX_CERT = 16
MAX_CERTREQ = 32
_ERROR_LIMIT = 16384  # notify types below are errors


_Counts = dict[int, tuple[int, int]]  # payload type -> (min, max)


@dataclass(frozen=True, slots=True)
class MessageRule:
    encrypted: bool
    counts: _Counts
    sufficient_payloads: frozenset[int] = frozenset()
    sufficient_notifies: frozenset[int] = frozenset()
    errors_sufficient: bool = False  # any error notify makes the minimums void


_SA_INIT_REQUEST: _Counts = {
    P.SA: (1, 1),
    P.KE: (1, 1),
    P.NONCE: (1, 1),
    P.NOTIFY: (0, MAX_NOTIFY),
    P.VENDOR: (0, MAX_VENDOR),
}
_AUTH_COMMON: _Counts = {
    P.NOTIFY: (0, MAX_NOTIFY),
    P.EAP: (0, 1),
    P.AUTH: (0, 1),
    P.CERT: (0, MAX_CERT),
    P.IDR: (0, 1),
    P.SA: (0, 1),
    P.TSI: (0, 1),
    P.TSR: (0, 1),
    P.CP: (0, 1),
    P.VENDOR: (0, MAX_VENDOR),
}
_CHILD: _Counts = {
    P.SA: (1, 1),
    P.NONCE: (1, 1),
    P.KE: (0, 1),
    P.TSI: (0, 1),
    P.TSR: (0, 1),
    P.CP: (0, 1),
    P.NOTIFY: (0, MAX_NOTIFY),
    P.VENDOR: (0, MAX_VENDOR),
}
_INFORMATIONAL: _Counts = {
    P.NOTIFY: (0, MAX_NOTIFY),
    P.DELETE: (0, MAX_DELETE),
    P.CP: (0, 1),
    P.VENDOR: (0, MAX_VENDOR),
}
_INTERMEDIATE: _Counts = {P.KE: (0, 1), P.NOTIFY: (0, MAX_NOTIFY), P.VENDOR: (0, MAX_VENDOR)}
_FOLLOWUP_KE: _Counts = {P.KE: (1, 1), P.NOTIFY: (0, MAX_NOTIFY), P.VENDOR: (0, MAX_VENDOR)}
_RESUME: _Counts = {P.NONCE: (1, 1), P.NOTIFY: (0, MAX_NOTIFY), P.VENDOR: (0, MAX_VENDOR)}
_AUTH_SUFFICIENT = frozenset({P.EAP, P.AUTH})

RULES: dict[tuple[ExchangeType, bool], MessageRule] = {
    (ExchangeType.IKE_SA_INIT, False): MessageRule(False, _SA_INIT_REQUEST),
    (ExchangeType.IKE_SA_INIT, True): MessageRule(
        False,
        {**_SA_INIT_REQUEST, P.CERTREQ: (0, MAX_CERTREQ)},
        sufficient_notifies=frozenset({NotifyType.COOKIE, NotifyType.REDIRECT}),
        errors_sufficient=True,
    ),
    (ExchangeType.IKE_AUTH, False): MessageRule(
        True, {**_AUTH_COMMON, P.IDI: (0, 1), P.CERTREQ: (0, MAX_CERTREQ)}, _AUTH_SUFFICIENT
    ),
    (ExchangeType.IKE_AUTH, True): MessageRule(True, _AUTH_COMMON, _AUTH_SUFFICIENT),
    (ExchangeType.CREATE_CHILD_SA, False): MessageRule(True, _CHILD),
    (ExchangeType.CREATE_CHILD_SA, True): MessageRule(True, _CHILD, errors_sufficient=True),
    (ExchangeType.INFORMATIONAL, False): MessageRule(True, _INFORMATIONAL),
    (ExchangeType.INFORMATIONAL, True): MessageRule(True, _INFORMATIONAL),
    (ExchangeType.IKE_INTERMEDIATE, False): MessageRule(True, _INTERMEDIATE),
    (ExchangeType.IKE_INTERMEDIATE, True): MessageRule(True, _INTERMEDIATE),
    (ExchangeType.IKE_FOLLOWUP_KE, False): MessageRule(True, _FOLLOWUP_KE),
    (ExchangeType.IKE_FOLLOWUP_KE, True): MessageRule(True, _FOLLOWUP_KE,
                                                      errors_sufficient=True),
    (ExchangeType.IKE_SESSION_RESUME, False): MessageRule(False, _RESUME),
    (ExchangeType.IKE_SESSION_RESUME, True): MessageRule(False, _RESUME, errors_sufficient=True),
}


def _where(message: Message) -> str:
    role = "response" if message.is_response else "request"
    return f"{message.exchange.name} {role}"


def _name(ptype: int) -> str:
    return PayloadType(ptype).name


def _rule(message: Message) -> MessageRule:
    rule = RULES.get((message.exchange, message.is_response))
    if rule is None:
        raise ProtocolError(f"no rules for {_where(message)}")
    return rule


def _known(payloads: list[Payload]) -> list[Payload]:
    if not payloads:
        return payloads
    return [p for p in payloads if type(p) is not UnknownPayload]


def _is_sufficient(rule: MessageRule, p: Payload) -> bool:
    if type(p) is NotifyPayload:
        is_error = p.notify_type < _ERROR_LIMIT
        return (is_error and rule.errors_sufficient) or p.notify_type in rule.sufficient_notifies
    return p.payload_type in rule.sufficient_payloads


def _placement(rule: MessageRule, message: Message) -> list[Payload]:
    """Rule 1: return the payloads the counts apply to."""
    if not rule.encrypted:
        if message.protected is not None or message.fragment is not None:
            raise ProtocolError(f"encrypted payload in {_where(message)}")
        return _known(message.payloads)
    outside = _known(message.payloads)
    if outside:
        raise ProtocolError(f"{_name(outside[0].payload_type)} outside SK in {_where(message)}")
    if message.protected is None:
        raise ProtocolError(f"{_where(message)} without encrypted payload")
    return _known(message.protected)


def check(message: Message) -> None:
    """Raise ProtocolError if the payloads break the rules of this exchange."""
    rule = _rule(message)
    counts: dict[int, int] = {}
    sufficient = False
    for p in _placement(rule, message):
        ptype = p.payload_type
        counts[ptype] = count = counts.get(ptype, 0) + 1
        limits = rule.counts.get(ptype)
        if limits is None:
            raise ProtocolError(f"{_name(ptype)} not allowed in {_where(message)}")
        if count > limits[1]:
            raise ProtocolError(f"{count} {_name(ptype)} payloads in {_where(message)}")
        sufficient = sufficient or _is_sufficient(rule, p)
    if sufficient:
        return
    for ptype, (least, _) in rule.counts.items():
        if least and counts.get(ptype, 0) < least:
            raise ProtocolError(f"{_where(message)} without {_name(ptype)} payload")


def check_fragment(message: Message) -> None:
    """An SKF datagram: only in encrypted exchanges, nothing outside it."""
    rule = _rule(message)
    if not rule.encrypted:
        raise ProtocolError(f"encrypted fragment in {_where(message)}")
    outside = _known(message.payloads)
    if outside:
        raise ProtocolError(f"{_name(outside[0].payload_type)} outside SKF in {_where(message)}")
