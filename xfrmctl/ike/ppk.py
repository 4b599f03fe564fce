"""Postquantum preshared keys (RFC 8784): a PPK mixed into the IKE SA's keys, so that a
recording of the exchange stays safe even from someone who can break the key exchange.

Both ends announce USE_PPK in IKE_SA_INIT. The initiator names its PPK in IKE_AUTH
(PPK_IDENTITY, type PPK_ID_FIXED as strongSwan sends it) and computes AUTH with
SK_pi = prf+(PPK, SK_pi'); when the PPK is optional for it, NO_PPK_AUTH carries the AUTH
data made with the original SK_pi' for a responder without that PPK. A responder that
uses the PPK answers with an empty PPK_IDENTITY and its AUTH from the new SK_pr. Once
both AUTHs are checked, SK_d, SK_pi and SK_pr are replaced (section 3); SK_e and SK_a
stay, and every CHILD_SA (and later IKE SA rekey) derives from the new SK_d.
"""

from __future__ import annotations

from dataclasses import replace

from .crypto import IkeKeys, Prf

PPK_ID_OPAQUE = 1
PPK_ID_FIXED = 2


def derive_ppk_keys(prf: Prf, ppk: bytes, keys: IkeKeys) -> IkeKeys:
    """RFC 8784 3: SK_d = prf+(PPK, SK_d'), SK_pi = prf+(PPK, SK_pi'),
    SK_pr = prf+(PPK, SK_pr'), each as long as before."""
    return replace(keys, sk_d=prf.plus(ppk, keys.sk_d, len(keys.sk_d)),
                   sk_pi=prf.plus(ppk, keys.sk_pi, len(keys.sk_pi)),
                   sk_pr=prf.plus(ppk, keys.sk_pr, len(keys.sk_pr)))


def encode_ppk_identity(ppk_id: bytes) -> bytes:
    """The PPK_IDENTITY notification data of the initiator."""
    return bytes([PPK_ID_FIXED]) + ppk_id


def parse_ppk_identity(data: bytes) -> bytes | None:
    """The PPK_ID of a PPK_IDENTITY notification (None: empty, or a type we lack)."""
    if len(data) < 2 or data[0] not in (PPK_ID_FIXED, PPK_ID_OPAQUE):
        return None
    return data[1:]
