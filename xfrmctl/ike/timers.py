"""The deadlines of one IKE SA (POSIX seconds, None: not armed); `IkeSa.handle_timer`
acts on them, `next()` is what the manager's timer heap needs."""

from __future__ import annotations

import os

from .config import IkeConfig


class Timers:
    __slots__ = ("child_retries", "dpd", "expire", "half_open", "reauth", "redundant", "rekey")

    def __init__(self) -> None:
        self.half_open: float | None = None  # responder: IKE_AUTH must come by then
        self.rekey: float | None = None
        self.reauth: float | None = None  # ReauthDue then
        self.expire: float | None = None  # the hard lifetime (over_time)
        self.dpd: float | None = None
        self.redundant: float | None = None  # delete a collision's redundant SA after this
        # CHILD_SA exchanges to try again (after TEMPORARY_FAILURE): (when, child config,
        # child_id to rekey or None to create)
        self.child_retries: list[tuple[float, str, int | None]] = []

    def next(self, retransmit_at: float | None) -> float | None:
        deadlines = [d for d in (
            retransmit_at, self.half_open, self.rekey, self.dpd, self.reauth, self.expire,
            min(r[0] for r in self.child_retries) if self.child_retries else None,
            self.redundant,
        ) if d is not None]
        return min(deadlines) if deadlines else None

    def arm_rekey(self, conf: IkeConfig, now: float) -> None:
        """rekey_time, up to 10% earlier (strongSwan's rand_time)."""
        if conf.rekey_time:
            jitter = int.from_bytes(os.urandom(2), "big") / 65535 * conf.rekey_time * 0.1
            self.rekey = now + conf.rekey_time - jitter

    def arm_lifetime(self, conf: IkeConfig, now: float, reauth_at: float | None = None
                     ) -> None:
        """Reauthentication (strongSwan's reauth_time, up to 10% earlier as its rand_time)
        and the hard lifetime: over_time after the later of rekey and reauth (default
        10% of the longer of the two), unless a rekey or reauthentication replaced it."""
        if reauth_at is None and conf.reauth_time:
            jitter = int.from_bytes(os.urandom(2), "big") / 65535 * conf.reauth_time * 0.1
            reauth_at = now + conf.reauth_time - jitter
        self.reauth = reauth_at
        due = [d for d in (self.rekey, reauth_at) if d is not None]
        over = conf.over_time or 0.1 * max(conf.rekey_time, conf.reauth_time)
        self.expire = max(due) + over if due else None

    def clear(self) -> None:
        self.half_open = self.rekey = self.dpd = None
        self.redundant = self.reauth = self.expire = None
        self.child_retries = []
