"""KernelIPsec over NETLINK_XFRM.

Two raw netlink sockets, both read by the event loop (add_reader), never blocking it:
- the request socket: writes go out batched (many messages per send(), chunked so
  the acks fit the receive buffer) and each answer is matched to its request by
  sequence number; errors carry the kernel's extended ack text.
- the monitor socket: bound to the multicast groups, decoded into events.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import socket
import struct
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field

from . import codec
from . import messages as m
from .addresses import AddressMonitor, RouteQueries
from .interface import AeState, KernelIPsec, Op, OpKind
from .messages import Group, MsgType
from .nsutil import open_socket
from .types import (
    Counters,
    EventsLost,
    IPAddress,
    KernelError,
    KernelEvent,
    Mark,
    PolicyKey,
    PolicySpec,
    PolicyState,
    Proto,
    ReplayState,
    SaId,
    SaSpec,
    SaState,
    SpdInfo,
    SpdThresholds,
)

log = logging.getLogger(__name__)

NETLINK_XFRM = 6
SOL_NETLINK = 270
NETLINK_CAP_ACK = 10
NETLINK_EXT_ACK = 11
SO_RCVBUFFORCE = 33
NLM_F_ACK_TLVS = 0x200
NLMSGERR_ATTR_MSG = 1
CHUNK = 256  # requests per send(): their acks must fit the receive buffer
BUFSIZE = 4 << 20

EVENT_GROUPS = (
    Group.ACQUIRE, Group.EXPIRE, Group.SA, Group.POLICY, Group.MIGRATE, Group.MAPPING,
)  # fmt: skip
DAEMON_GROUPS = (Group.ACQUIRE, Group.EXPIRE, Group.MIGRATE, Group.MAPPING)


def kernel_hz(release: str | None = None) -> int:
    """CONFIG_HZ of the running kernel (XFRMA_ETIMER_THRESH is written in jiffies);
    Debian's 250 when the config can't be read."""
    release = release or os.uname().release
    try:
        with open(f"/boot/config-{release}") as f:
            for line in f:
                if line.startswith("CONFIG_HZ="):
                    return int(line.split("=", 1)[1])
    except (OSError, ValueError):
        pass
    return 250


def _group_mask(groups: Sequence[Group]) -> int:
    mask = 0
    for g in groups:
        mask |= 1 << (g - 1)
    return mask


def _netlink_socket(netns: str | None, groups: int = 0) -> socket.socket:
    sock = open_socket(netns, socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_XFRM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, BUFSIZE)
    except PermissionError:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, BUFSIZE)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, BUFSIZE)
    sock.setsockopt(SOL_NETLINK, NETLINK_CAP_ACK, 1)
    sock.setsockopt(SOL_NETLINK, NETLINK_EXT_ACK, 1)
    sock.bind((0, groups))
    sock.setblocking(False)
    return sock


def _ext_ack_text(data: bytes, offset: int, length: int, flags: int) -> str:
    """The NLMSGERR_ATTR_MSG string of an extended ack, if any."""
    if not flags & NLM_F_ACK_TLVS:
        return ""
    pos, end = offset + 16 + 4 + 16, offset + length  # nlmsghdr, error, capped request hdr
    while pos + 4 <= end:
        size, kind = struct.unpack_from("=HH", data, pos)
        if size < 4:
            break
        if kind == NLMSGERR_ATTR_MSG:
            return data[pos + 4 : pos + size].rstrip(b"\0").decode(errors="replace")
        pos += (size + 3) & ~3
    return ""


@dataclass
class _Pending:
    dump: bool
    future: asyncio.Future[tuple[int, str, list[bytes]]]
    replies: list[bytes] = field(default_factory=list)


class Transport:
    """Requests out, answers matched by sequence number."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.loop = asyncio.get_running_loop()
        self.pending: dict[int, _Pending] = {}
        self.seq = 0
        self.loop.add_reader(sock.fileno(), self._readable)

    def next_seq(self) -> int:
        self.seq = (self.seq + 1) & 0xFFFFFFFF or 1
        return self.seq

    def expect(self, seq: int, dump: bool = False) -> asyncio.Future[tuple[int, str, list[bytes]]]:
        future = self.loop.create_future()
        self.pending[seq] = _Pending(dump, future)
        return future

    def send(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            sent = self.sock.send(view)
            view = view[sent:]

    def _readable(self) -> None:
        while True:
            try:
                data = self.sock.recv(1 << 20)
            except BlockingIOError:
                return
            except OSError as exc:
                self._fail_all(exc.errno or errno.EIO)
                return
            self._dispatch(data)

    def _dispatch(self, data: bytes) -> None:
        for offset, length, msg_type, seq in codec.split(data):
            entry = self.pending.get(seq)
            if entry is None:
                continue
            if msg_type == codec.NLMSG_ERROR:
                (flags,) = struct.unpack_from("=H", data, offset + 6)
                code = codec.error_code(data, offset)
                self._finish(seq, entry, code, _ext_ack_text(data, offset, length, flags))
            elif msg_type == codec.NLMSG_DONE:
                self._finish(seq, entry, 0, "")
            else:
                entry.replies.append(data[offset : offset + length])
                if not entry.dump:
                    self._finish(seq, entry, 0, "")

    def _finish(self, seq: int, entry: _Pending, code: int, text: str) -> None:
        del self.pending[seq]
        if not entry.future.done():
            entry.future.set_result((code, text, entry.replies))

    def _fail_all(self, code: int) -> None:
        for seq, entry in list(self.pending.items()):
            self._finish(seq, entry, code, "socket error")

    def close(self) -> None:
        self.loop.remove_reader(self.sock.fileno())
        self._fail_all(errno.ECANCELED)
        self.sock.close()


def _encode_op(op: Op, seq: int) -> bytes:
    obj = op.obj
    match op.kind:
        case OpKind.ADD_SA | OpKind.UPDATE_SA:
            assert isinstance(obj, SaSpec)
            return codec.encode_sa(obj, seq, update=op.kind == OpKind.UPDATE_SA)
        case OpKind.DELETE_SA:
            assert isinstance(obj, SaId)
            return codec.encode_sa_id(MsgType.DELSA, obj, seq)
        case OpKind.ADD_POLICY | OpKind.UPDATE_POLICY:
            assert isinstance(obj, PolicySpec)
            return codec.encode_policy(obj, seq, update=op.kind == OpKind.UPDATE_POLICY)
        case OpKind.DELETE_POLICY:
            assert isinstance(obj, PolicyKey)
            return codec.encode_policy_id(MsgType.DELPOLICY, obj, seq)
    raise AssertionError(op.kind)


class NetlinkKernel(KernelIPsec):
    """The real kernel (in `netns`, or the current namespace when None)."""

    def __init__(self, transport: Transport, monitor: socket.socket | None,
                 netns: str | None = None) -> None:
        super().__init__()
        self._transport = transport
        self._monitor = monitor
        self._queue: asyncio.Queue[KernelEvent] = asyncio.Queue()
        if monitor is not None:
            transport.loop.add_reader(monitor.fileno(), self._monitor_readable)
        self._routes = RouteQueries(netns)
        self._addresses: AddressMonitor | None = None

    @classmethod
    async def open(cls, netns: str | None = None, monitor: bool = True,
                   groups: Sequence[Group] = EVENT_GROUPS,
                   address_events: bool = False) -> NetlinkKernel:
        """`groups`: the multicast groups `events()` reports (the daemon leaves out SA and
        POLICY: they echo every write it makes, and decoding them costs CPU per install).
        `address_events`: also report address and route changes (rtnetlink), for MOBIKE."""
        sock = _netlink_socket(netns)
        mon = _netlink_socket(netns, _group_mask(groups)) if monitor else None
        kernel = cls(Transport(sock), mon, netns)
        if address_events:
            kernel._addresses = AddressMonitor(netns, kernel._queue.put_nowait)
        return kernel

    async def source_address(self, dst: IPAddress) -> IPAddress | None:
        return await self._routes.source_address(dst)

    async def local_addresses(self) -> list[IPAddress]:
        return await self._routes.local_addresses()

    # --- batched writes ----------------------------------------------------------------

    async def _execute(self, ops: Sequence[Op]) -> list[tuple[int, str]]:
        results: list[tuple[int, str]] = []
        t = self._transport
        for start in range(0, len(ops), CHUNK):
            chunk = ops[start : start + CHUNK]
            futures, parts = [], []
            for op in chunk:
                seq = t.next_seq()
                futures.append(t.expect(seq))
                parts.append(_encode_op(op, seq))
            try:
                t.send(b"".join(parts))
            except OSError as exc:
                for f in futures:
                    f.cancel()
                code = exc.errno or errno.EIO
                return results + [(code, str(exc))] * (len(ops) - len(results))
            for f in futures:
                code, text, _ = await f
                results.append((code, text))
        return results

    async def _query(self, op: str, obj: object, encode: bytes, seq: int) -> bytes:
        future = self._transport.expect(seq)
        self._transport.send(encode)
        code, text, replies = await future
        if code:
            raise KernelError(op, obj, code, text)
        return replies[0]

    async def _dump(self, msg_type: MsgType) -> list[bytes]:
        t = self._transport
        seq = t.next_seq()
        future = t.expect(seq, dump=True)
        t.send(codec.encode_dump(msg_type, seq))
        code, text, replies = await future
        if code:
            raise KernelError("dump", msg_type.name, code, text)
        return replies

    # --- SAs -------------------------------------------------------------------------

    async def _allocate_spi(
        self, src: IPAddress, dst: IPAddress, proto: Proto, reqid: int, lo: int, hi: int,
        mark: Mark | None,
    ) -> int:  # fmt: skip
        seq = self._transport.next_seq()
        data = codec.encode_allocspi(src, dst, proto, reqid, lo, hi, seq, mark)
        reply = await self._query("allocate SPI", f"{proto.name} dst {dst}", data, seq)
        return codec.decode_sa(m.decode(reply)).spec.spi

    async def get_sa(self, sa: SaId) -> SaState:
        seq = self._transport.next_seq()
        data = codec.encode_sa_id(MsgType.GETSA, sa, seq, flags=codec.NLM_F_REQUEST)
        reply = await self._query("get SA", sa, data, seq)
        return codec.decode_sa(m.decode(reply))

    async def _dump_sas(self) -> list[SaState]:
        out = []
        for i, raw in enumerate(await self._dump(MsgType.GETSA)):
            if codec.owned_sa_message(raw):
                out.append(codec.decode_sa(m.decode(raw)))
            if i % 512 == 511:
                await asyncio.sleep(0)
        return out

    async def _dump_policies(self) -> list[PolicyState]:
        out = []
        for i, raw in enumerate(await self._dump(MsgType.GETPOLICY)):
            msg = m.decode(raw)
            if not codec.socket_policy(msg):
                out.append(codec.decode_policy(msg))
            if i % 512 == 511:
                await asyncio.sleep(0)
        return out

    async def dump_all_policies(self) -> list[PolicyState]:
        """Every policy in the namespace, ours or not (read-only, for diagnostics)."""
        return await self._dump_policies()

    # --- async events: replay state and current lifetime -------------------------------

    async def get_ae(self, sa: SaId) -> AeState:
        seq = self._transport.next_seq()
        reply = await self._query("get AE", sa, codec.encode_getae(sa, seq), seq)
        return codec.decode_ae(m.decode(reply))

    async def set_ae(
        self, sa: SaId, replay: ReplayState | None = None, lifetime_cur: Counters | None = None,
        replay_threshold: int | None = None, timer_threshold_ms: int | None = None,
    ) -> None:  # fmt: skip
        # Some kernels copy an ESN replay state into a legacy SA without checking that
        # it has one (xfrm_update_ae_params): refuse it here, as the fake does.
        if replay is not None and replay.replay_window and not (await self.get_ae(sa)).esn_format:
            raise KernelError("set AE", sa, errno.EINVAL, "SA has no ESN replay state")
        timer = None
        if timer_threshold_ms is not None:
            timer = timer_threshold_ms * kernel_hz() // 1000
        seq = self._transport.next_seq()
        data = codec.encode_newae(sa, seq, replay, lifetime_cur, replay_threshold, timer)
        future = self._transport.expect(seq)
        self._transport.send(data)
        code, text, _ = await future
        if code:
            raise KernelError("set AE", sa, code, text)

    # --- SPD info --------------------------------------------------------------------

    async def get_spdinfo(self) -> SpdInfo:
        seq = self._transport.next_seq()
        reply = await self._query("get spdinfo", "SPD", codec.encode_getspdinfo(seq), seq)
        return codec.decode_spdinfo(m.decode(reply))

    async def set_spdinfo(self, thresholds: SpdThresholds) -> None:
        seq = self._transport.next_seq()
        future = self._transport.expect(seq)
        self._transport.send(codec.encode_newspdinfo(thresholds, seq))
        code, text, _ = await future
        if code:
            raise KernelError("set spdinfo", thresholds, code, text)

    # --- events ------------------------------------------------------------------------

    def _monitor_readable(self) -> None:
        assert self._monitor is not None
        while True:
            try:
                data = self._monitor.recv(1 << 20)
            except BlockingIOError:
                return
            except OSError as exc:  # ENOBUFS: events were lost; say so, keep going
                self._queue.put_nowait(EventsLost(exc.errno or errno.EIO))
                continue
            for offset, _length, _type, _seq in codec.split(data):
                try:
                    event = codec.decode_event(data, offset)
                except codec.KernelMessageError as exc:  # an event we cannot read: resync
                    log.warning("%s", exc)
                    event = EventsLost(errno.EBADMSG)
                if event is not None:
                    self._queue.put_nowait(event)

    async def events(self) -> AsyncIterator[KernelEvent]:
        while True:
            yield await self._queue.get()

    async def close(self) -> None:
        self._routes.close()
        if self._addresses is not None:
            self._addresses.close()
            self._addresses = None
        self._transport.close()
        if self._monitor is not None:
            self._transport.loop.remove_reader(self._monitor.fileno())
            self._monitor.close()
            self._monitor = None
