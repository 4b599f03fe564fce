"""Crashes the fuzzing targets found, kept as cases (tests/fuzz/targets.py).

kernel_messages: a monitor-socket message the codec could not read raised whatever the
decoder hit (ValueError for an unknown protocol number, UnicodeDecodeError for an
algorithm name, struct.error for a cut message), which
escaped the monitor's reader callback and lost the rest of that datagram's events. Now
`decode_event` raises KernelMessageError only, and the monitor turns it into EventsLost
(the controller resyncs by dump).
"""

from __future__ import annotations

import struct
from ipaddress import ip_address

import pytest

from tests.fuzz.targets import identity, kernel_messages
from xfrmctl.kernel import codec
from xfrmctl.kernel.types import Algorithm, SaNotify, SaSpec

SPEC = SaSpec(ip_address("192.0.2.1"), ip_address("192.0.2.2"), 0x1234, 0x100,
              aead=Algorithm("rfc4106(gcm(aes))", bytes(20), 128))
PROTO_AT = 16 + 56 + 20  # nlmsghdr, xfrm_selector, xfrm_id.daddr + spi


def newsa() -> bytearray:
    return bytearray(codec.encode_sa(SPEC, 7))


def test_valid_newsa_decodes() -> None:
    assert codec.decode_event(bytes(newsa())) == SaNotify("new", SPEC.id, SPEC.reqid)


def unknown_protocol() -> bytes:
    raw = newsa()
    raw[PROTO_AT] = 52
    return bytes(raw)


def algorithm_name_not_utf8() -> bytes:
    raw = newsa()
    at = raw.index(b"rfc4106")
    raw[at] = 0x80
    return bytes(raw)


def fixed_part_cut() -> bytes:
    raw = newsa()[:100]  # xfrm_usersa_info is 224 octets
    struct.pack_into("=I", raw, 0, len(raw))
    return bytes(raw)


@pytest.mark.parametrize("raw", [unknown_protocol(), algorithm_name_not_utf8(),
                                 fixed_part_cut()],
                         ids=["unknown-protocol", "name-not-utf8", "fixed-part-cut"])
def test_undecodable_kernel_message_raises_kernel_message_error(raw: bytes) -> None:
    with pytest.raises(codec.KernelMessageError):
        codec.decode_event(raw)
    kernel_messages(raw)  # the fuzzing target's contract holds for it


def test_address_identity_of_wrong_length_formats() -> None:
    """identity target: IDi type ID_IPV4_ADDR with 17 octets of data. Printing it (as the
    responder does when no connection accepts the peer) raised ValueError; now the payload
    is refused as malformed (INVALID_SYNTAX) and such an identity prints as hex; live case:
    tests/hostile/test_auth.py::test_bad_address_identity_to_a_named_connection_is_refused."""
    identity(bytes.fromhex("01020000006c6566742e6578616d706c652e6f7267"))
